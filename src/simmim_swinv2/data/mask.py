"""SimMIM random block mask, made once per sample in the data pipeline.

Convention (used everywhere in this project): **1 = masked** (``True`` = masked token).

The image is split into ``mask_patch_size`` blocks (6×6 = 36 blocks at 192 px / 32 px);
``ceil(n_blocks · mask_ratio)`` blocks (22 at ratio 0.6) are chosen uniformly without
replacement, and the block grid is repeated ``mask_patch_size / model_patch_size`` times per
side to reach the model's token grid (48×48 at patch size 4).
"""

from __future__ import annotations

import math

import torch


def _pair(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


class MaskGenerator:
    """Draw SimMIM masks: ``mask = MaskGenerator()()`` → bool tensor ``(H/p, W/p)``, True = masked.

    Args:
        input_size: image size ``S`` or ``(H, W)``; must be divisible by ``mask_patch_size``.
        mask_patch_size: side of one masked block in pixels.
        model_patch_size: the model's patch-embedding stride (4 for Swin).
        mask_ratio: target fraction of masked blocks, in (0, 1); rounded *up* to whole blocks.

    Randomness comes from torch's global generator (seeded per DataLoader worker by torch),
    or from ``generator`` when one is passed to ``__call__``.
    """

    def __init__(
        self,
        input_size: int | tuple[int, int] = 192,
        mask_patch_size: int = 32,
        model_patch_size: int = 4,
        mask_ratio: float = 0.6,
    ) -> None:
        h, w = _pair(input_size)
        if mask_patch_size <= 0 or model_patch_size <= 0:
            raise ValueError(
                f"mask_patch_size ({mask_patch_size}) and model_patch_size ({model_patch_size}) "
                "must be positive"
            )
        if h % mask_patch_size or w % mask_patch_size:
            raise ValueError(
                f"input_size {(h, w)} is not divisible by mask_patch_size={mask_patch_size}; "
                f"use an input size that is a multiple of {mask_patch_size} (e.g. 192 for 32) "
                "or a mask patch size that divides the input size"
            )
        if mask_patch_size % model_patch_size:
            raise ValueError(
                f"mask_patch_size={mask_patch_size} is not a multiple of "
                f"model_patch_size={model_patch_size}; pick a mask patch size in "
                f"{{{model_patch_size}, {2 * model_patch_size}, ...}} so that each masked block "
                "covers whole tokens"
            )
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(
                f"mask_ratio={mask_ratio} must lie strictly between 0 and 1 (SimMIM uses 0.6)"
            )
        self.input_size = (h, w)
        self.mask_patch_size = mask_patch_size
        self.model_patch_size = model_patch_size
        self.mask_ratio = mask_ratio
        self.block_grid = (h // mask_patch_size, w // mask_patch_size)
        self.scale = mask_patch_size // model_patch_size
        self.num_blocks = self.block_grid[0] * self.block_grid[1]
        self.num_masked_blocks = math.ceil(self.num_blocks * mask_ratio)
        self.token_grid = (h // model_patch_size, w // model_patch_size)

    def __call__(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw one mask.

        Args:
            generator: the random generator to draw from; None: torch's global one.

        Returns:
            bool ``(H/model_patch_size, W/model_patch_size)``, True = masked, exactly
            ``num_masked_blocks`` blocks of ``mask_patch_size`` pixels.
        """
        chosen = torch.randperm(self.num_blocks, generator=generator)[: self.num_masked_blocks]
        blocks = torch.zeros(self.num_blocks, dtype=torch.bool)
        blocks[chosen] = True
        blocks = blocks.view(self.block_grid)
        return blocks.repeat_interleave(self.scale, 0).repeat_interleave(self.scale, 1)

    def __repr__(self) -> str:
        return (
            f"MaskGenerator(input_size={self.input_size}, mask_patch_size={self.mask_patch_size}, "
            f"model_patch_size={self.model_patch_size}, mask_ratio={self.mask_ratio})"
        )
