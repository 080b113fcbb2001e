"""`python -m simmim_swinv2.convert`: weights between transformers, official, timm and our format."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..models import SwinV2Encoder
from . import _count, _guess_format, _read_any, from_official, from_timm, from_transformers, save_model, to_transformers


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m simmim_swinv2.convert",
        description="Convert SwinV2 / SimMIM weights between transformers, official, timm and our format.")
    sub = parser.add_subparsers(dest="command", required=True)
    to_hf = sub.add_parser("to-transformers", help="official / timm / transformers weights → a transformers dir")
    to_hf.add_argument("source", help="checkpoint file or transformers directory")
    to_hf.add_argument("out_dir")
    to_hf.add_argument("--format", choices=("auto", "transformers", "official", "timm"), default="auto")
    to_hf.add_argument("--window-size", type=int, help="window size, for checkpoints that do not record it")
    to_hf.add_argument("--img-size", type=int, help="image size the windows are sized for")
    to_hf.add_argument("--encoder-only", action="store_true", help="drop decoder/head, write a Swinv2Model")
    from_hf = sub.add_parser("from-transformers", help="a transformers dir → our safetensors + config.json")
    from_hf.add_argument("source")
    from_hf.add_argument("out_file", help="output .safetensors (its config lands beside it as .json)")
    args = parser.parse_args(argv)

    if args.command == "from-transformers":
        model = from_transformers(args.source)
        save_model(model, args.out_file)
        print(f"wrote {args.out_file} ({type(model).__name__}, {_count(model) / 1e6:.1f}M parameters)")
        return
    overrides = {k: v for k, v in (("window_size", args.window_size), ("img_size", args.img_size)) if v}
    fmt = args.format
    if fmt == "auto":
        fmt = "transformers" if Path(args.source).is_dir() else _guess_format(_read_any(args.source))
    loader = {"transformers": from_transformers, "official": from_official, "timm": from_timm}[fmt]
    model = loader(args.source, **overrides)
    if args.encoder_only and not isinstance(model, SwinV2Encoder):
        model = model.encoder
    to_transformers(model, args.out_dir)
    print(f"wrote {args.out_dir} ({type(model).__name__} from {fmt} weights, {_count(model) / 1e6:.1f}M parameters)")
