"""`python -m simmim_swinv2.models`: each named variant's size, counted on the meta device (no
memory)."""

from __future__ import annotations

import argparse

import torch

from .classifier import SwinV2Classifier
from .config import PAPER_PARAMS, VARIANTS, swinv2_config
from .simmim import SimMIM


def count_parameters(variant: str, num_classes: int = 1000, img_size: int = 192) -> dict[str, int]:
    """Parameter counts of a variant's classifier (the paper's convention) and SimMIM model."""
    cfg = swinv2_config(variant, img_size=img_size)
    with torch.device("meta"):
        classifier = SwinV2Classifier.from_config(cfg, num_classes)
        simmim = SimMIM.from_config(cfg)
    return {
        "classifier": sum(p.numel() for p in classifier.parameters()),
        "simmim": sum(p.numel() for p in simmim.parameters()),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m simmim_swinv2.models", description=__doc__)
    parser.add_argument(
        "variants", nargs="*", default=list(VARIANTS), help="variants to count (default: all)"
    )
    parser.add_argument("--num-classes", type=int, default=1000)
    args = parser.parse_args(argv)
    print(
        "| variant | embed | depths | heads | classifier params | paper | ratio | SimMIM params |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name in args.variants:
        cfg = swinv2_config(name)
        counts = count_parameters(name, args.num_classes)
        paper = PAPER_PARAMS.get(cfg.variant)
        ratio = f"{counts['classifier'] / paper:.3f}" if paper else "-"
        paper_s = f"{paper / 1e6:,.0f}M" if paper else "-"
        print(
            f"| {name} | {cfg.embed_dim} | {','.join(map(str, cfg.depths))} | "
            f"{','.join(map(str, cfg.num_heads))} | {counts['classifier'] / 1e6:,.1f}M | "
            f"{paper_s} | {ratio} | {counts['simmim'] / 1e6:,.1f}M |"
        )


if __name__ == "__main__":
    main()
