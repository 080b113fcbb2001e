"""SimMIM: a SwinV2 encoder with a mask token, a 1×1 conv + PixelShuffle decoder, and an L1 loss on
the masked pixels only (arXiv 2111.09886; the numbers of transformers'
`Swinv2ForMaskedImageModeling`).

Mask convention, here and everywhere in this package: `mask` is `(B, H/patch, W/patch)`, **1 =
masked**.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from .config import SwinV2Config
from .swinv2 import SwinV2Encoder


def _window_counts(length: int, window: int, device: torch.device) -> torch.Tensor:
    """Pixels inside the image in each stride-1 window along one side: `(length,)` float64."""
    i = torch.arange(length, device=device, dtype=torch.float64)
    return (i + window // 2 + 1).clamp(max=length) - (i - window // 2).clamp(min=0)


def normalize_target(target: torch.Tensor, window: int = 47) -> torch.Tensor:
    """Per-pixel standardisation over a `window`×`window` neighbourhood (SimMIM's normalised target,
    microsoft/Swin-Transformer models/simmim.py `norm_targets`): the mean and the unbiased variance
    of the pixels of the window that lie inside the image (stride-1 average pools with
    `count_include_pad=False`), then `(x - mean) / sqrt(var + 1e-6)`.

    The window sums are running sums: a cumulative sum along each side and one difference per pixel,
    so the cost does not depend on `window` (a stride-1 pool adds `window²` numbers per pixel).

    Args:
        target: `(B, C, H, W)`, any float dtype; any size, also smaller than the window.
        window: odd side of the neighbourhood.

    Returns:
        `(B, C, H, W)` in float32 (float64 for float64 input).
    """
    if window % 2 != 1:
        raise ValueError(f"the normalised-target window must be odd, got {window}")
    B, C, H, W = target.shape
    p = window // 2
    # Sums and statistics in float64. A running sum's difference loses the bits of the partial sums:
    # with |x| <= M and sides of L pixels, the box sum of x² is off by at most ~L²·M²·2^-53 (L =
    # 1024, M = 3: ~1e-9), so the variance by ~1e-12, far below the 1e-6 added under the root; in
    # float32 the same error (2^-24) would pass that floor. The official float32 pools lose E[x²] -
    # E[x]² the same way on smooth images. (Autocast leaves float64 and in-place ops alone.)
    f64 = dict(dtype=torch.float64, device=target.device)
    # Rows: x and x² between p + 1 zeros in front and p behind; after the cumulative sum, column j +
    # 2p + 1 minus column j is the sum over [j - p, j + p] ∩ [0, W).
    rows = torch.zeros(2, B, C, H, W + 2 * p + 1, **f64)
    inner = rows[..., p + 1 : p + 1 + W]
    inner[0] = target
    torch.mul(inner[0], inner[0], out=inner[1])
    rows.cumsum_(-1)
    cols = torch.zeros(2, B, C, H + 2 * p + 1, W, **f64)
    torch.sub(rows[..., 2 * p + 1 :], rows[..., :W], out=cols[..., p + 1 : p + 1 + H, :])
    del rows
    cols.cumsum_(-2)  # then the same along the columns
    sums = cols[..., 2 * p + 1 :, :] - cols[..., :H, :]  # (2, B, C, H, W): Σx, Σx²
    n = _window_counts(H, window, target.device)[:, None] * _window_counts(W, window, target.device)
    mean = sums[0].div_(n)
    var = sums[1].div_(n).addcmul_(mean, mean, value=-1).mul_(n / (n - 1))
    out = mean.neg_().add_(target).mul_(var.add_(1e-6).rsqrt_())
    return out.to(torch.promote_types(target.dtype, torch.float32))


def masked_l1_loss(
    target: torch.Tensor, reconstruction: torch.Tensor, mask: torch.Tensor, patch_size: int
) -> torch.Tensor:
    """SimMIM's loss: the mean absolute error over the masked pixel-channels only.

    Args:
        target: `(B, C, H, W)`, the pixels (or their normalised target, `normalize_target`).
        reconstruction: `(B, C, H, W)`, the decoder's output.
        mask: `(B, H/patch_size, W/patch_size)`, 1 = masked.
        patch_size: pixels per mask token along each side.

    Returns:
        A float32 scalar: the L1 error summed over masked pixels and channels, divided by their
        count (+ 1e-5, so an empty mask gives 0).
    """
    B, C, H, W = target.shape
    h, w = mask.shape[-2:]
    if (H, W) != (h * patch_size, w * patch_size):
        raise ValueError(
            f"mask {tuple(mask.shape)} does not cover images {H}x{W} in patches of {patch_size}: "
            f"the mask needs (B, H/{patch_size}, W/{patch_size})"
        )
    error = (target.float() - reconstruction.float()).abs()
    # Summed per patch first, then weighted by the token mask: the pixel mask (the token mask
    # repeated `patch_size` times per side) is never built.
    per_patch = error.reshape(B, C, h, patch_size, w, patch_size).sum(dim=(1, 3, 5))  # (B, h, w)
    weight = mask.to(per_patch.dtype)
    return (per_patch * weight).sum() / (weight.sum() * patch_size**2 + 1e-5) / C


@dataclass
class SimMIMOutput:
    """What `SimMIM.forward` returns.

    Attributes:
        loss: scalar, the masked L1 loss (`masked_l1_loss`).
        reconstruction: `(B, C, H, W)` in the normalised pixel space of the input (of the
            normalised target with `norm_target`).
    """

    loss: torch.Tensor
    reconstruction: torch.Tensor


class SimMIM(nn.Module):
    """Masked image modelling on a SwinV2 encoder: the encoder with its mask token, a 1×1 conv to
    `stride² · C_in` channels and a PixelShuffle back to pixels, the L1 loss on masked pixels.

    Args:
        encoder: a `SwinV2Encoder` built with a mask token (`use_mask_token=True`).
        norm_target: regress the per-pixel normalised target (`normalize_target`) instead of the
            pixels, as the official SwinV2-B SimMIM config does.
        norm_target_window: odd side of the target's normalisation window, in pixels.
    """

    def __init__(
        self, encoder: SwinV2Encoder, norm_target: bool = False, norm_target_window: int = 47
    ) -> None:
        super().__init__()
        if encoder.mask_token is None:
            raise ValueError(
                "SimMIM needs an encoder with a mask token (SwinV2Config(use_mask_token=True))"
            )
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
        """A freshly initialised SimMIM on `cfg` (the mask token added); `kwargs`: `__init__`'s."""
        return cls(SwinV2Encoder(cfg.replace(use_mask_token=True)), **kwargs)

    def forward(self, pixel_values: torch.Tensor, mask: torch.Tensor) -> SimMIMOutput:
        """Reconstruct the masked patches and score them.

        Args:
            pixel_values: `(B, C, H, W)` normalised pixels, H and W multiples of the stride.
            mask: `(B, H/patch, W/patch)`, 1 = masked.

        Returns:
            `SimMIMOutput`: `loss` (scalar) and `reconstruction` `(B, C, H, W)`.
        """
        z = self.encoder(pixel_values, mask=mask).last_hidden_state  # (B, h, w, C)
        reconstruction = self.decoder(z.permute(0, 3, 1, 2))
        target = pixel_values
        if self.norm_target:
            target = normalize_target(target, self.norm_target_window)  # float32 out
        loss = masked_l1_loss(target, reconstruction, mask, self.encoder.cfg.patch_size)
        return SimMIMOutput(loss=loss, reconstruction=reconstruction)
