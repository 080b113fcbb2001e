"""SimMIM: a SwinV2 encoder with a mask token, a 1×1 conv + PixelShuffle decoder, and an L1 loss on the
masked pixels only (arXiv 2111.09886; the numbers of transformers' `Swinv2ForMaskedImageModeling`).

Mask convention, here and everywhere in this package: `mask` is `(B, H/patch, W/patch)`, **1 = masked**.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import SwinV2Config
from .swinv2 import SwinV2Encoder


def normalize_target(target: torch.Tensor, window: int = 47) -> torch.Tensor:
    """Per-pixel standardisation over a `window`×`window` neighbourhood (the SwinV2-B SimMIM recipe):
    mean and unbiased variance from stride-1 average pooling that ignores the padding. `(B, C, H, W)` → same."""
    if window % 2 != 1:
        raise ValueError(f"the normalised-target window must be odd, got {window}")
    pool = dict(kernel_size=window, stride=1, padding=window // 2)
    mean = F.avg_pool2d(target, count_include_pad=False, **pool)
    mean_sq = F.avg_pool2d(target**2, count_include_pad=False, **pool)
    count = F.avg_pool2d(torch.ones_like(target[:, :1]), count_include_pad=True, **pool) * window**2
    var = ((mean_sq - mean**2) * (count / (count - 1))).clamp(min=0.0)
    return (target - mean) / (var + 1e-6).sqrt()


def masked_l1_loss(
    target: torch.Tensor, reconstruction: torch.Tensor, mask: torch.Tensor, patch_size: int
) -> torch.Tensor:
    """Mean absolute error over the masked pixel-channels. `target`, `reconstruction`: `(B, C, H, W)`;
    `mask`: `(B, H/patch, W/patch)`, 1 = masked."""
    B, C, H, W = target.shape
    h, w = mask.shape[-2:]
    if (H, W) != (h * patch_size, w * patch_size):
        raise ValueError(f"mask {tuple(mask.shape)} does not cover images {H}x{W} in patches of {patch_size}: "
                         f"the mask needs (B, H/{patch_size}, W/{patch_size})")
    error = (target.float() - reconstruction.float()).abs()
    # Summed per patch first, then weighted by the token mask: the pixel mask (the token mask repeated
    # `patch_size` times per side) is never built.
    per_patch = error.reshape(B, C, h, patch_size, w, patch_size).sum(dim=(1, 3, 5))  # (B, h, w)
    weight = mask.to(per_patch.dtype)
    return (per_patch * weight).sum() / (weight.sum() * patch_size**2 + 1e-5) / C


@dataclass
class SimMIMOutput:
    """`loss`: scalar; `reconstruction`: `(B, C, H, W)` in the normalised pixel space of the input."""

    loss: torch.Tensor
    reconstruction: torch.Tensor


class SimMIM(nn.Module):
    """Masked image modelling on a SwinV2 encoder."""

    def __init__(self, encoder: SwinV2Encoder, norm_target: bool = False, norm_target_window: int = 47) -> None:
        super().__init__()
        if encoder.mask_token is None:
            raise ValueError("SimMIM needs an encoder with a mask token (SwinV2Config(use_mask_token=True))")
        self.encoder = encoder
        self.norm_target = norm_target
        self.norm_target_window = norm_target_window
        stride = encoder.stride
        self.decoder = nn.Sequential(
            nn.Conv2d(encoder.num_features, stride**2 * encoder.cfg.in_chans, kernel_size=1),
            nn.PixelShuffle(stride),
        )

    @classmethod
    def from_config(cls, cfg: SwinV2Config, **kwargs) -> SimMIM:
        return cls(SwinV2Encoder(cfg.replace(use_mask_token=True)), **kwargs)

    def forward(self, pixel_values: torch.Tensor, mask: torch.Tensor) -> SimMIMOutput:
        """`pixel_values`: `(B, C, H, W)` normalised; `mask`: `(B, H/patch, W/patch)`, 1 = masked."""
        z = self.encoder(pixel_values, mask=mask).last_hidden_state  # (B, h, w, C)
        reconstruction = self.decoder(z.permute(0, 3, 1, 2))
        target = pixel_values
        if self.norm_target:
            target = normalize_target(target.float(), self.norm_target_window)
        loss = masked_l1_loss(target, reconstruction, mask, self.encoder.cfg.patch_size)
        return SimMIMOutput(loss=loss, reconstruction=reconstruction)
