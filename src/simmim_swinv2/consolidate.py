"""Consolidate a DeepSpeed ZeRO checkpoint (a `*.ckpt/` directory of per-rank shards) into one fp32 safetensors
file plus the `.json` model description that `convert.load_model`, `finetune pretrained=…` and
`convert.to_transformers` read:

    python -m simmim_swinv2.consolidate RUN_DIR_OR_CKPT_DIR OUT.safetensors          # the encoder
    python -m simmim_swinv2.consolidate RUN_DIR_OR_CKPT_DIR OUT.safetensors --full   # + decoder / head

Runs on one CPU process, whatever world size wrote the checkpoint: the fp32 master weights are rebuilt from the
optimizer shards (DeepSpeed's `get_fp32_state_dict_from_zero_checkpoint`), not from the bf16 module copies.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from .checkpoint import is_zero_checkpoint, zero_checkpoint, zero_model_states

# Lightning wraps the LightningModule (`_forward_module.`), our tasks hold the network as `model.`.
_PREFIXES = ("_forward_module.", "module.", "model.")


def _strip(key: str) -> str:
    for prefix in _PREFIXES:
        key = key.removeprefix(prefix)
    return key


def zero_state_dict(ckpt_dir: str | Path) -> tuple[dict[str, torch.Tensor], dict | None]:
    """(fp32 state dict with our module names — `encoder.…`, `decoder.…`/`head.…` —, the `simmim_swinv2` model
    description the task saved) from a ZeRO checkpoint directory."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    ckpt_dir = Path(ckpt_dir)
    if not is_zero_checkpoint(ckpt_dir):
        raise FileNotFoundError(f"{ckpt_dir} is not a complete DeepSpeed checkpoint directory (no `latest` file "
                                "naming a folder of *model_states.pt / *optim_states.pt)")
    sd = get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir))
    sd = {_strip(k): v.float() if v.is_floating_point() else v for k, v in sd.items()}
    return sd, zero_model_states(ckpt_dir).get("simmim_swinv2")


def consolidate(source: str | Path, out: str | Path, full: bool = False) -> Path:
    """Write `out` (fp32 safetensors) + `out.json` for the encoder (or, with `full`, the whole model) of the
    ZeRO checkpoint `source` (a `*.ckpt/` directory, or a run directory: its newest checkpoint)."""
    from . import convert
    from .checkpoint import load_model

    source = zero_checkpoint(source)
    model = load_model(source)
    if not full:
        model = getattr(model, "encoder", model)
    out = Path(out)
    convert.save_model(model, out)
    print(f"consolidated {source} -> {out} ({type(model).__name__}, "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, fp32) + {out.with_suffix('.json')}")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="ZeRO checkpoint directory (*.ckpt/) or run directory")
    parser.add_argument("out", help="output .safetensors (the model description goes beside it as .json)")
    parser.add_argument("--full", action="store_true", help="keep the decoder / classification head")
    args = parser.parse_args(argv)
    if not args.out.endswith(".safetensors"):
        parser.error("out must end in .safetensors")
    consolidate(args.source, args.out, full=args.full)


if __name__ == "__main__":
    main()
