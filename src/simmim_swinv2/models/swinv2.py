"""SwinV2 encoder built from timm's SwinV2 parts, computing what transformers' `Swinv2Model`
computes.

Reused from timm: `PatchEmbed`, `PatchMerging`, `WindowAttention` (its parameters, buffers and its
forward, which stays the eager reference path), `Mlp`, `DropPath` and the block itself. Added here:
- transformers' window semantics: one square window per stage, clamped to the stage height at the
  configured `img_size` (shift off when that height fits one window); the feature map is zero-padded
  to a window multiple *before* the cyclic shift, and the shift mask is rebuilt for inputs of
  another size;
- fused attention paths (q and k normalised, the clamped logit scale folded into q, `scale=1`):
  through `F.scaled_dot_product_attention` (position bias + shift mask as the additive mask; the
  default) or, opt-in, FlexAttention (the two read inside its score_mod, `flex.py`);
- a mask token that replaces masked patch embeddings (`mask`: 1 = masked);
- huge/giant's extra LayerNorm at the end of every n-th block (`norm3`, as mmpretrain names it);
- per-stage activation checkpointing and per-stage hidden states.

Module names follow timm (`layers.{s}.downsample` opens stage s), so timm state dicts load as they
are. Tensors inside the encoder are NHWC: `(B, H, W, C)`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint
from timm.layers import PatchEmbed, to_2tuple, trunc_normal_
from timm.models.swin_transformer_v2 import (
    PatchMerging,
    SwinTransformerV2Block,
    window_partition,
    window_reverse,
)

from . import flex
from .config import ATTN_BACKENDS, SwinV2Config, stage_window

_MAX_LOGIT_SCALE = math.log(1.0 / 0.01)
_NORM_EPS = 1e-12  # F.normalize's default


class _GatherTokens(torch.autograd.Function):
    """`x.index_select(1, order)` for a permutation `order` of the tokens of `x` `(B, L, C)`. The
    gradient is the gather by the inverse permutation, a copy (index_select's own backward
    scatter-adds into zeros)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, order: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(order, inverse)
        return x.index_select(1, order)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        order, inverse = ctx.saved_tensors
        return _GatherTokens.apply(grad, inverse, order), None, None


class SwinV2Block(SwinTransformerV2Block):
    """timm's residual post-norm block with transformers' windowing, fused attention paths and an
    optional extra norm.

    Args:
        attn_backend: "sdpa" (default), "flex" (`flex.py`) or "eager" (timm's `WindowAttention`).
        extra_norm: add huge/giant's LayerNorm (`norm3`) at the end of the block.
        **kwargs: timm's `SwinTransformerV2Block` arguments: `dim`, `input_resolution` (the
            stage's token grid at the configured `img_size`), `num_heads`, `window_size`,
            `shift_size`, `pretrained_window_size`, dropouts, `act_layer`, `norm_layer`.
    """

    def __init__(
        self,
        *,
        attn_backend: str = "sdpa",
        extra_norm: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if attn_backend not in ATTN_BACKENDS:
            raise ValueError(f"attn_backend {attn_backend!r} is not one of {ATTN_BACKENDS}")
        self.attn_backend = attn_backend
        self.norm3 = kwargs.get("norm_layer", nn.LayerNorm)(self.dim) if extra_norm else None

    def _calc_window_shift(self, target_window_size, target_shift_size=None):
        # transformers' rule, evaluated on the stage size at the configured img_size: a square
        # window clamped to the stage height; no shift when the height fits one window.
        window = to_2tuple(target_window_size)[0]
        if target_shift_size is None:  # timm's set_input_size: keep a shifted block shifted
            shift = window // 2 if any(self.target_shift_size) else 0
        else:
            shift = to_2tuple(target_shift_size)[0]
        height = self.input_resolution[0]
        window = stage_window(height, window)
        shift = 0 if height <= window else shift
        return (window, window), (shift, shift)

    def get_attn_mask(self, x=None, device=None, dtype=None):
        """timm's shifted-window mask with -inf across window regions (0 within).

        Returns:
            `(num_windows, N, N)` for the padded map `x` `(B, Hp, Wp, C)` (None: for the
            configured size), or None without shift.
        """
        # Pairs across shifted-window seams are masked fully (-inf). The official code uses -100 and
        # transformers -200 (it adds its -100 mask twice); with logit scales at their clamp (100)
        # both can leak attention across the seam. For trained weights the three agree to float
        # precision.
        mask = super().get_attn_mask(x, device=device, dtype=dtype)
        return None if mask is None else mask.masked_fill(mask != 0, float("-inf"))

    def _init_buffers(self) -> None:
        super()._init_buffers()  # timm's shift mask for the configured size
        order = self._window_order(*self._configured_padded_size(), self.norm1.weight.device)
        self.register_buffer("window_order", order, persistent=False)

    def _window_order(self, Hp: int, Wp: int, device: torch.device) -> torch.Tensor | None:
        """For a shifted block, `(2, Hp * Wp)`: row 0 lists the position in the padded `(Hp, Wp)`
        map of each token of the shifted windows (cyclic shift, then `window_partition`'s order);
        row 1 is its inverse (windows back to the map, shift undone). None without shift."""
        if not any(self.shift_size):
            return None
        position = torch.arange(Hp * Wp, device=device).view(1, Hp, Wp, 1)
        shifted = torch.roll(
            position, shifts=(-self.shift_size[0], -self.shift_size[1]), dims=(1, 2)
        )
        order = window_partition(shifted, self.window_size).flatten()
        return torch.stack((order, order.argsort()))

    def _shift_mask(self, x: torch.Tensor) -> torch.Tensor | None:
        """`(num_windows, N, N)` mask (0 / -inf) for the padded map `x`, or None without shift."""
        if not any(self.shift_size):
            return None
        if self.attn_mask is not None and x.shape[1:3] == self._configured_padded_size():
            return self.attn_mask.to(x.dtype)
        return self.get_attn_mask(x)

    def _configured_padded_size(self) -> tuple[int, int]:
        return tuple(math.ceil(r / s) * s for r, s in zip(self.input_resolution, self.window_size))

    def _attn(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        wh, ww = self.window_size
        pad_h, pad_w = (wh - H % wh) % wh, (ww - W % ww) % ww
        if pad_h or pad_w:  # zeros, unmasked, before the shift: transformers' order
            x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
        Hp, Wp = H + pad_h, W + pad_w
        mask = self._shift_mask(x)
        if any(self.shift_size):
            # Cyclic shift + window partition as one gather of tokens (and its inverse after
            # attention): one copy each way instead of torch.roll's (one per dim on the CPU) plus
            # the partition's.
            order = (
                getattr(self, "window_order", None)
                if (Hp, Wp) == self._configured_padded_size()
                else None
            )
            order = self._window_order(Hp, Wp, x.device) if order is None else order
            windows = _GatherTokens.apply(x.reshape(B, Hp * Wp, C), order[0], order[1])
            windows = self._window_attention(windows.view(-1, self.window_area, C), mask)
            x = _GatherTokens.apply(windows.view(B, Hp * Wp, C), order[1], order[0]).view(
                B, Hp, Wp, C
            )
        else:
            windows = window_partition(x, self.window_size).view(-1, self.window_area, C)
            windows = self._window_attention(windows, mask)
            x = window_reverse(windows.view(-1, wh, ww, C), self.window_size, (Hp, Wp))
        if pad_h or pad_w:
            x = x[:, :H, :W, :].contiguous()
        return x

    def _window_attention(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """`(B * num_windows, N, C)` → same. The eager path is timm's `WindowAttention.forward`."""
        attn = self.attn
        if self.attn_backend == "eager":
            return attn(x, mask=mask)
        if self.attn_backend == "flex":
            return self._flex_attention(x, mask)
        B_, N, C = x.shape
        heads = attn.num_heads
        # With a shift mask, windows and heads share one dim, (B, windows * heads, N, d), so the
        # per-window mask broadcasts over the batch and SDPA gets the 4-D tensors its fused kernels
        # need.
        groups = 1 if mask is None else mask.shape[0]
        q, k, v = self._cosine_qkv(x, groups)
        bias = self._position_bias(N)
        if mask is not None:
            bias = (bias.unsqueeze(0) + mask.unsqueeze(1)).flatten(0, 1)  # (windows * heads, N, N)
        bias = bias.to(q.dtype)
        if q.device.type == "cpu" and bias.requires_grad:
            # SDPA's CPU kernel takes no mask that needs a gradient: it would fall back to its math
            # reference, which is this plus two multiplies by sqrt(scale) = 1 and a safe softmax's
            # all/isneginf/where.
            scores = q @ k.transpose(-2, -1)
            scores += bias  # in place: the matmul's backward needs q and k, not its output
            out = attn.attn_drop(scores.softmax(-1)) @ v
        else:
            dropout = attn.attn_drop.p if self.training else 0.0
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=bias.unsqueeze(0), dropout_p=dropout, scale=1.0
            )
        out = out.view(B_ // groups, groups, heads, N, -1).transpose(2, 3).reshape(B_, N, C)
        return attn.proj_drop(attn.proj(out))

    def _flex_attention(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """The FlexAttention path (`flex.window_attention`): q, k, v as
        `(B * num_windows, heads, N, d)`, the position bias `(heads, N, N)` and the shift mask
        `(num_windows, N, N)` read inside its score_mod."""
        attn = self.attn
        if self.training and attn.attn_drop.p > 0:
            raise ValueError(
                f"attn_backend='flex' has no attention dropout (attn_drop={attn.attn_drop.p}): set "
                f"attn_drop_rate=0 (every SimMIM/SwinV2 recipe does) or use attn_backend='sdpa'"
            )
        B_, N, C = x.shape
        q, k, v = self._cosine_qkv(x, 1)
        out = flex.window_attention(q, k, v, self._position_bias(N), mask)
        return attn.proj_drop(attn.proj(out.transpose(1, 2).reshape(B_, N, C)))

    def _cosine_qkv(
        self, x: torch.Tensor, groups: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`(B_, N, C)` → q, k, v `(B_ / groups, groups * heads, N, d)`: q and k L2-normalised, the
        clamped logit scale folded into q (so attention needs `scale=1`)."""
        attn = self.attn
        B_, N, C = x.shape
        heads, d = attn.num_heads, C // attn.num_heads
        bias = None if attn.q_bias is None else torch.cat((attn.q_bias, attn.k_bias, attn.v_bias))
        qkv = F.linear(x, attn.qkv.weight, bias).view(B_ // groups, groups, N, 3, heads, d)
        # One copy to the head-major layout; q, k, v are then contiguous (B_ / groups, groups,
        # heads, N, d).
        q, k, v = qkv.permute(3, 0, 1, 4, 2, 5).contiguous().unbind(0)
        # q * (scale / |q|) in one pass over q: F.normalize's clamp, the scale on the (…, N, 1)
        # norms.
        logit_scale = torch.clamp(attn.logit_scale, max=_MAX_LOGIT_SCALE).exp()  # (heads, 1, 1)
        q = q * (
            logit_scale / torch.linalg.vector_norm(q, dim=-1, keepdim=True).clamp_min(_NORM_EPS)
        )
        k = F.normalize(k, dim=-1, eps=_NORM_EPS)
        shape = (B_ // groups, groups * heads, N, d)
        return q.view(shape), k.view(shape), v.view(shape)

    def _position_bias(self, N: int) -> torch.Tensor:
        """SwinV2's continuous position bias for one window, `16 * sigmoid(cpb_mlp(table))`:
        `(heads, N, N)`."""
        attn = self.attn
        table = attn.cpb_mlp(attn.relative_coords_table).view(-1, attn.num_heads)
        pos_bias = table[attn.relative_position_index.view(-1)].view(N, N, -1).permute(2, 0, 1)
        return 16 * torch.sigmoid(pos_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Windowed attention then MLP, each a residual post-norm branch, then `norm3` if any.

        Args:
            x: `(B, H, W, C)` tokens; any H, W (padded to a window multiple inside).

        Returns:
            `(B, H, W, C)`.
        """
        x = super().forward(x)
        return x if self.norm3 is None else self.norm3(x)


class SwinV2PatchMerging(PatchMerging):
    """timm's `PatchMerging` (2x2 neighbours concatenated, Linear 4C → 2C, LayerNorm), padding odd
    sizes only: timm pads every input, and a zero-size `F.pad` is still a copy of the map.
    `(B, H, W, C)` → `(B, H/2, W/2, 2C)`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        if H % 2 or W % 2:
            x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))
            H, W = H + H % 2, W + W % 2
        x = x.reshape(B, H // 2, 2, W // 2, 2, C).permute(0, 1, 3, 4, 2, 5).flatten(3)
        return self.norm(self.reduction(x))


class SwinV2Stage(nn.Module):
    """Patch merging (all stages but the first, as in timm) then `depth` blocks. `(B, H, W, C)` in,
    `(B, H/2, W/2, 2C)` out (the first stage: `(B, H, W, C)`)."""

    def __init__(self, cfg: SwinV2Config, index: int, drop_path: list[float]) -> None:
        super().__init__()
        dim = cfg.stage_dims[index]
        resolution = cfg.stage_resolutions[index]
        self.downsample = (
            SwinV2PatchMerging(cfg.stage_dims[index - 1], dim) if index > 0 else nn.Identity()
        )
        self.grad_checkpointing = cfg.grad_checkpointing[index]
        window = cfg.window_size[index]
        every = cfg.extra_norm_every
        self.blocks = nn.ModuleList(
            SwinV2Block(
                dim=dim,
                input_resolution=resolution,
                num_heads=cfg.num_heads[index],
                window_size=window,
                shift_size=0 if i % 2 == 0 else window // 2,
                mlp_ratio=cfg.mlp_ratio,
                qkv_bias=cfg.qkv_bias,
                proj_drop=cfg.proj_drop_rate,
                attn_drop=cfg.attn_drop_rate,
                drop_path=drop_path[i],
                act_layer=cfg.act_layer,
                norm_layer=partial(nn.LayerNorm, eps=cfg.norm_eps),
                pretrained_window_size=cfg.pretrained_window_sizes[index],
                attn_backend=cfg.attn_backend,
                extra_norm=every > 0 and (i + 1) % every == 0,
            )
            for i in range(cfg.depths[index])
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        for block in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x


@dataclass
class SwinV2EncoderOutput:
    """What `SwinV2Encoder.forward` returns (NHWC, as inside the encoder).

    Attributes:
        last_hidden_state: `(B, H/stride, W/stride, C_last)` after the final norm.
        pooler_output: `(B, C_last)`, the mean of `last_hidden_state` over the tokens.
        hidden_states: on request, the patch embeddings (after the mask token) then each stage's
            output before the next merge, `(B, H_i, W_i, C_i)` — transformers'
            `output_hidden_states_before_downsampling`; else None.
    """

    last_hidden_state: torch.Tensor
    pooler_output: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None = None


class SwinV2Encoder(nn.Module):
    """Patch embedding → optional mask token → stages → final LayerNorm.

    Args:
        cfg: the architecture (`SwinV2Config`); `cfg.use_mask_token` adds SimMIM's mask token.
    """

    # Name substrings kept out of weight decay besides every 1-D parameter
    # (microsoft/Swin-Transformer `optimizer.py` and the SwinV2 model's `no_weight_decay_keywords`):
    # `logit_scale` is (heads, 1, 1) and the `cpb_mlp` weights are 2-D, so the 1-D rule alone would
    # decay them.
    NO_WEIGHT_DECAY_KEYWORDS = (
        "absolute_pos_embed",
        "mask_token",
        "cpb_mlp",
        "logit_scale",
        "relative_position_bias_table",
    )

    def __init__(self, cfg: SwinV2Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.patch_embed = PatchEmbed(
            img_size=cfg.img_size,
            patch_size=cfg.patch_size,
            in_chans=cfg.in_chans,
            embed_dim=cfg.embed_dim,
            norm_layer=nn.LayerNorm,
            strict_img_size=False,
            output_fmt="NHWC",
        )
        self.mask_token = (
            nn.Parameter(torch.zeros(1, 1, cfg.embed_dim)) if cfg.use_mask_token else None
        )
        total = sum(cfg.depths)  # stochastic depth grows linearly over all blocks
        rates = [cfg.drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        starts = [sum(cfg.depths[:i]) for i in range(cfg.num_stages)]
        self.layers = nn.Sequential(
            *(
                SwinV2Stage(cfg, i, rates[start : start + depth])
                for i, (start, depth) in enumerate(zip(starts, cfg.depths))
            )
        )
        self.norm = nn.LayerNorm(cfg.num_features, eps=cfg.norm_eps)
        self.init_weights()

    @property
    def num_features(self) -> int:
        """Channels of the last stage's output (`C_last`)."""
        return self.cfg.num_features

    @property
    def stride(self) -> int:
        """Pixels per token of the last stage (`SwinV2Config.stride`)."""
        return self.cfg.stride

    @torch.no_grad()
    def init_weights(self) -> None:
        """The official initialisation: trunc-normal(0.02) linears with zero bias, residual
        post-norms at zero (each block starts as the identity), mask token trunc-normal(0.02)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for stage in self.layers:
            for block in stage.blocks:
                for norm in (block.norm1, block.norm2):
                    nn.init.zeros_(norm.weight)
                    nn.init.zeros_(norm.bias)
        if self.mask_token is not None:
            trunc_normal_(self.mask_token, std=0.02)

    def set_grad_checkpointing(self, enable: bool = True, stages: list[int] | None = None) -> None:
        """Recompute activations in the backward pass (activation checkpointing), per stage.

        Args:
            enable: turn it on (True) or off.
            stages: indices of the stages to change; None: all.
        """
        for i, stage in enumerate(self.layers):
            if stages is None or i in stages:
                stage.grad_checkpointing = enable

    def no_weight_decay(self) -> set[str]:
        """Parameter names to keep out of weight decay besides 1-D ones, as timm's models declare
        them; `training.optim.param_groups` reads them from every module that has this method.

        Returns:
            The names of the parameters that match `NO_WEIGHT_DECAY_KEYWORDS`.
        """
        keys = self.NO_WEIGHT_DECAY_KEYWORDS
        return {n for n, _ in self.named_parameters() if any(k in n for k in keys)}

    def embed(self, pixel_values: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Patch embeddings, masked tokens replaced by the mask token.

        Args:
            pixel_values: `(B, C_in, H, W)`, H and W multiples of `stride`.
            mask: `(B, H/p, W/p)`, 1 = masked (p: `cfg.patch_size`); needs the mask token.

        Returns:
            `(B, H/p, W/p, C)`.
        """
        H, W = pixel_values.shape[-2:]
        if H % self.stride or W % self.stride:
            raise ValueError(
                f"input {H}x{W} is not a multiple of the encoder stride {self.stride}: "
                f"resize or crop images to a multiple of {self.stride} pixels"
            )
        x = self.patch_embed(pixel_values)
        if mask is not None:
            if self.mask_token is None:
                raise ValueError(
                    "this encoder has no mask token: build it with use_mask_token=True"
                )
            if mask.shape != x.shape[:3]:
                raise ValueError(
                    f"mask has shape {tuple(mask.shape)}, expected {tuple(x.shape[:3])} "
                    f"(B, H/{self.cfg.patch_size}, W/{self.cfg.patch_size})"
                )
            # x * (1 - mask) + token * mask for a 0/1 mask, in one pass
            x = torch.where(mask.unsqueeze(-1).bool(), self.mask_token.to(x.dtype), x)
        return x

    def forward(
        self,
        pixel_values: torch.Tensor,
        mask: torch.Tensor | None = None,
        output_hidden_states: bool = False,
    ) -> SwinV2EncoderOutput:
        """Encode images.

        Args:
            pixel_values: `(B, C_in, H, W)` normalised pixels, H and W multiples of `stride` (other
                sizes than `cfg.img_size` run too: the shift masks are rebuilt for them).
            mask: `(B, H/p, W/p)`, 1 = masked (p: `cfg.patch_size`); needs the mask token.
            output_hidden_states: also return the embeddings and every stage's output.

        Returns:
            `SwinV2EncoderOutput`: `last_hidden_state` `(B, H/stride, W/stride, C_last)`,
            `pooler_output` `(B, C_last)`, `hidden_states` on request.
        """
        x = self.embed(pixel_values, mask)
        hidden = [x] if output_hidden_states else None
        for stage in self.layers:
            x = stage(x)
            if hidden is not None:
                hidden.append(x)
        x = self.norm(x)
        return SwinV2EncoderOutput(
            x, x.mean(dim=(1, 2)), tuple(hidden) if hidden is not None else None
        )
