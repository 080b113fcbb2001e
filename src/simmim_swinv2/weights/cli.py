"""`python -m simmim_swinv2.convert`: weights between our runs, transformers, official, timm and our
format.

python -m simmim_swinv2.convert to-transformers outputs/finetune/<run> hf_export/
    # our run -> transformers
python -m simmim_swinv2.convert to-transformers swinv2_tiny_patch4_window8_256.pth hf/ --img-size 256
python -m simmim_swinv2.convert from-transformers hf_export/ model.safetensors
"""  # noqa: E501 - a command line longer than 100 characters

from __future__ import annotations

import argparse

from ..models import SwinV2Classifier, encoder_of
from .interop import _count, from_transformers, to_transformers
from .load import EXPECTED, FORMATS, identify, load_model
from .ours import save_model


def main(argv: list[str] | None = None) -> None:
    """Run the command: `to-transformers SOURCE OUT_DIR` (`load_model`, then `to_transformers`) or
    `from-transformers HF_DIR OUT.safetensors` (`from_transformers`, then `save_model`).

    Args:
        argv: the arguments; None: `sys.argv[1:]`.
    """
    parser = argparse.ArgumentParser(
        prog="python -m simmim_swinv2.convert",
        description=(
            "Convert SwinV2 / SimMIM weights between our runs, transformers, official, timm and "
            "our format."
        ),
    )
    sub = parser.add_subparsers(dest="command", required=True)
    to_hf = sub.add_parser(
        "to-transformers",
        help="our run / checkpoint, official, timm or transformers weights → a "
        "transformers dir (config.json, model.safetensors, preprocessor)",
    )
    to_hf.add_argument("source", help=f"one of: {EXPECTED}")
    to_hf.add_argument("out_dir")
    to_hf.add_argument(
        "--format",
        choices=("auto", *FORMATS),
        default="auto",
        help=(
            "auto: ours first (run dir, .ckpt, ZeRO dir, .safetensors + .json), then a "
            "transformers dir, then an official or timm state dict told apart by its key names"
        ),
    )
    to_hf.add_argument(
        "--window-size", type=int, help="window size, for checkpoints that do not record it"
    )
    to_hf.add_argument(
        "--img-size", type=int, help="image size the windows are sized for (official / timm)"
    )
    to_hf.add_argument(
        "--encoder-only", action="store_true", help="drop decoder/head, write a Swinv2Model"
    )
    from_hf = sub.add_parser(
        "from-transformers", help="a transformers dir → our safetensors + config.json"
    )
    from_hf.add_argument("source")
    from_hf.add_argument(
        "out_file", help="output .safetensors (its config lands beside it as .json)"
    )
    args = parser.parse_args(argv)

    if args.command == "from-transformers":
        model = from_transformers(args.source)
        save_model(model, args.out_file)
        print(
            f"wrote {args.out_file} ({type(model).__name__}, {_count(model) / 1e6:.1f}M parameters)"
        )
        return
    overrides = {
        k: v for k, v in (("window_size", args.window_size), ("img_size", args.img_size)) if v
    }
    fmt = identify(args.source, args.format).format
    model = load_model(args.source, format=fmt, **overrides)
    if args.encoder_only:
        model = encoder_of(model)
    to_transformers(model, args.out_dir)
    labels = ""
    if isinstance(model, SwinV2Classifier):
        names = list(model.id2label.values())
        labels = f", labels {', '.join(names[:5])}{', …' if len(names) > 5 else ''}"
    what = "our checkpoint" if fmt == "ours" else f"{fmt} weights"
    print(
        f"wrote {args.out_dir} ({type(model).__name__} from {what}, {_count(model) / 1e6:.1f}M "
        f"parameters{labels})"
    )
