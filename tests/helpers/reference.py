"""transformers' Swinv2 as the numeric reference: configs covering the cases that differ, random
weights."""

from __future__ import annotations

import math
import re

import pytest
import torch

from helpers.numerics import rounding_bound, swinv2_roundings

transformers = pytest.importorskip("transformers")

# Each case: transformers config kwargs, the input (H, W), and why it is here.
CASES = {
    # window 4 at 64 px: the last stage is 2x2, so its window clamps to 2 and shift switches off
    # there.
    "clamped_window": (
        dict(
            image_size=64, embed_dim=16, depths=[2, 2, 2, 2], num_heads=[2, 2, 4, 4], window_size=4
        ),
        (64, 64),
    ),
    # built at 128 px, run at 128x96: non-square input, padding to a window multiple; pretrained
    # window 6.
    "nonsquare_input_pretrained_window": (
        dict(
            image_size=128,
            embed_dim=16,
            depths=[2, 2, 2, 2],
            num_heads=[1, 2, 2, 4],
            window_size=8,
            pretrained_window_sizes=[6, 6, 6, 3],
        ),
        (128, 96),
    ),
    # a non-square configured size: windows clamp to the stage height, as transformers does.
    "nonsquare_config": (
        dict(
            image_size=[96, 64],
            embed_dim=24,
            depths=[1, 2, 2, 2],
            num_heads=[3, 3, 6, 6],
            window_size=4,
        ),
        (96, 64),
    ),
    # three stages, other widths and depths, odd window 3.
    "three_stages": (
        dict(
            image_size=48,
            embed_dim=24,
            depths=[1, 3, 2],
            num_heads=[2, 3, 6],
            window_size=3,
            encoder_stride=16,
        ),
        (48, 48),
    ),
    # no q/v bias, ReLU, mlp ratio 2, patch 2, one channel, other LayerNorm eps.
    "odd_options": (
        dict(
            image_size=32,
            patch_size=2,
            num_channels=1,
            embed_dim=8,
            depths=[2, 2, 2, 2],
            num_heads=[1, 2, 2, 4],
            window_size=4,
            qkv_bias=False,
            hidden_act="relu",
            mlp_ratio=2.0,
            layer_norm_eps=1e-6,
            encoder_stride=16,
        ),
        (32, 32),
    ),
}


def hf_config(name: str, **extra):
    kwargs, _ = CASES[name]
    return transformers.Swinv2Config(**{"drop_path_rate": 0.0, **kwargs, **extra})


def input_size(name: str) -> tuple[int, int]:
    return CASES[name][1]


@torch.no_grad()
def randomize_(
    model: torch.nn.Module, seed: int = 0, max_logit_scale: float = 5.0
) -> torch.nn.Module:
    """Random weights everywhere, so that nothing passes by being zero or one: norms around 1, a
    non-zero mask token, logit scales from log(3) up to `max_logit_scale` (the clamp is log(100) =
    4.6; above it a head's scale gets no gradient)."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        r = torch.randn(p.shape, generator=g)
        if "logit_scale" in name:
            p.copy_(1.1 + torch.rand(p.shape, generator=g) * (max_logit_scale - 1.1))
        elif name.endswith("weight") and p.ndim == 1:
            p.copy_(1.0 + 0.2 * r)
        else:
            p.copy_(r * 0.5 / math.sqrt(max(p.shape[-1], 1)) if p.ndim > 1 else 0.1 * r)
    return model.eval()


def bound(case_or_config, dtype: torch.dtype = torch.float32, batch_sum: int = 1) -> float:
    """The rounding bound (`helpers.numerics.rounding_bound`) for a model of case `case_or_config`
    (a name of CASES, or any SwinV2 config): its reductions' lengths, plus `batch_sum` terms for a
    gradient summed over positions."""
    config = hf_config(case_or_config) if isinstance(case_or_config, str) else case_or_config
    return rounding_bound(dtype, swinv2_roundings(config, batch_sum))


# Parameters that act on every (query, key) pair of a window: their gradients sum window**2 terms
# per position.
PAIR_PARAMETERS = ("logit_scale", "cpb_mlp")


def grad_terms(name: str, positions: int, window: int) -> int:
    """Terms parameter `name`'s gradient sums over: the batch's `positions`, times `window**2` keys
    for the parameters of `PAIR_PARAMETERS`."""
    return positions * window**2 if any(k in name for k in PAIR_PARAMETERS) else positions


def grad_bound(case_or_config, dtype: torch.dtype, positions: int, name: str) -> float:
    """`bound` for parameter `name`'s gradient (`grad_terms` of the model's largest window)."""
    config = hf_config(case_or_config) if isinstance(case_or_config, str) else case_or_config
    window = config.window_size if isinstance(config.window_size, int) else max(config.window_size)
    return bound(config, dtype, batch_sum=grad_terms(name, positions, window))


def random_mask(batch: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """`(B, h, w)` 0/1 with about 60% ones."""
    return (torch.rand(batch, h, w, generator=torch.Generator().manual_seed(seed)) < 0.6).long()


def as_official(model) -> dict:
    """Our SimMIM state dict laid out as microsoft/SimMIM saves it: `{'model': …}`, `encoder.`
    prefix, patch merging at the end of the previous stage, the older `rpe_mlp` name, position
    buffers included."""
    sd = {}
    buffers = {
        k: v
        for k, v in model.named_buffers()
        if k.endswith(("relative_position_index", "attn_mask"))
    }
    for key, value in {**model.state_dict(), **buffers}.items():
        if m := re.match(r"^encoder\.layers\.(\d+)\.downsample\.(.+)$", key):
            key = f"encoder.layers.{int(m[1]) - 1}.downsample.{m[2]}"
        sd[key.replace("cpb_mlp", "rpe_mlp")] = value
    return {"model": sd, "epoch": 99, "config": "not a state dict"}
