"""Consolidate a DeepSpeed ZeRO checkpoint (a `*.ckpt/` directory of per-rank shards) into one fp32
safetensors file plus the `.json` model description that `weights.load_model`,
`finetune pretrained=…` and `convert.to_transformers` read:

    python -m simmim_swinv2.consolidate RUN_DIR_OR_CKPT_DIR OUT.safetensors  # the encoder
    python -m simmim_swinv2.consolidate RUN_DIR_OR_CKPT_DIR OUT.safetensors --full
        # + decoder / head

Runs on one CPU process, whatever world size wrote the checkpoint: the fp32 master weights are
rebuilt from the optimizer shards (DeepSpeed's `get_fp32_state_dict_from_zero_checkpoint`), not from
the bf16 module copies.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .config.compose import stops_cleanly
from .models import encoder_of
from .weights import load_model, save_model, zero_checkpoint


def consolidate(source: str | Path, out: str | Path, full: bool = False) -> Path:
    """Write `out` (fp32 safetensors) + `out.json` for the encoder (or, with `full`, the whole
    model) of the ZeRO checkpoint `source` (a `*.ckpt/` directory, or a run directory: its newest
    checkpoint)."""
    source = zero_checkpoint(source)
    model = load_model(source)  # distributed.zero.zero_state_dict: the fp32 master weights
    if not full:
        model = encoder_of(model)
    out = Path(out)
    save_model(model, out)
    print(
        f"consolidated {source} -> {out} ({type(model).__name__}, "
        f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, fp32) + "
        f"{out.with_suffix('.json')}"
    )
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m simmim_swinv2.consolidate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("source", help="ZeRO checkpoint directory (*.ckpt/) or run directory")
    parser.add_argument(
        "out", help="output .safetensors (the model description goes beside it as .json)"
    )
    parser.add_argument(
        "--full", action="store_true", help="keep the decoder / classification head"
    )
    args = parser.parse_args(argv)
    if not args.out.endswith(".safetensors"):
        parser.error("out must end in .safetensors")
    with stops_cleanly(parser.prog):
        consolidate(args.source, args.out, full=args.full)


if __name__ == "__main__":
    main()
