"""SwinV2 architecture config and the named variants (defined here once; Hydra's `conf/model/` picks
a name).

Sizes follow the Swin V2 paper; huge and giant head counts are mmpretrain's choice (the paper never
states them), and both add a LayerNorm at the end of the main branch every 6 blocks.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace

# name: (embed_dim, depths, num_heads, extra_norm_every, params quoted by the paper)
VARIANTS: dict[str, dict] = {
    # A few hundred thousand parameters: tests, the CPU quickstart.
    "debug": dict(embed_dim=32, depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8)),
    "tiny": dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24)),
    "small": dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24)),
    "base": dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32)),
    "large": dict(embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48)),
    "huge": dict(
        embed_dim=352, depths=(2, 2, 18, 2), num_heads=(8, 16, 32, 64), extra_norm_every=6
    ),
    "giant": dict(
        embed_dim=512, depths=(2, 2, 42, 4), num_heads=(16, 32, 64, 128), extra_norm_every=6
    ),
}

# Parameter counts quoted by the Swin V2 paper (encoder with a 1000-class head).
PAPER_PARAMS: dict[str, float] = {
    "tiny": 28e6,
    "small": 50e6,
    "base": 88e6,
    "large": 197e6,
    "huge": 658e6,
    "giant": 3.0e9,
}

ACTIVATIONS = ("gelu", "gelu_tanh", "relu", "silu")
ATTN_BACKENDS = ("sdpa", "flex", "eager")


def stage_window(height: int, window: int) -> int:
    """The window a stage of `height` token rows attends in: transformers' rule, the configured
    square window clamped to the stage height (and then no shift: the stage is one window high)."""
    return min(height, window)


def _per_stage(value, num_stages: int, name: str) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * num_stages
    value = tuple(int(v) for v in value)
    if len(value) != num_stages:
        raise ValueError(
            f"{name} has {len(value)} entries but the model has {num_stages} stages: "
            f"give one value, or one per stage."
        )
    return value


@dataclass
class SwinV2Config:
    """Everything that shapes a SwinV2 encoder; checked on creation (`ValueError`).

    Args:
        img_size: `S` or `(H, W)` the windows are sized for (other sizes that are multiples of
            `stride` run too, as in transformers); a multiple of `stride`.
        patch_size: pixels per patch-embedding token along each side.
        in_chans: input channels.
        embed_dim: channels of stage 0 (doubled at every stage).
        depths: blocks per stage.
        num_heads: attention heads per stage (one value, or one per stage).
        window_size: attention window per stage (one value, or one per stage), clamped to the
            stage's height (`stage_window`).
        pretrained_window_sizes: per stage, the window the position bias was pretrained with
            (SwinV2's log-spaced coordinates are normalised by it); 0: the stage's own window.
        mlp_ratio: MLP hidden width over the block's width.
        qkv_bias: q and v biases (k has none, as in SwinV2).
        drop_path_rate: stochastic depth of the last block (rising linearly from 0).
        attn_drop_rate, proj_drop_rate: dropout of the attention weights / the projections.
        act_layer: MLP activation, one of `ACTIVATIONS`.
        norm_eps: LayerNorm epsilon.
        extra_norm_every: huge/giant's extra LayerNorm after every n-th block; 0: none.
        attn_backend: "sdpa" (`F.scaled_dot_product_attention`, the default), "flex"
            (FlexAttention, opt-in: compiled on CUDA, inference only on the CPU, no attention
            dropout; see `models/flex.py`) or "eager" (timm's `WindowAttention`, the reference).
        grad_checkpointing: activation checkpointing, one flag or one per stage.
        use_mask_token: add SimMIM's mask token.
        variant: the named variant it came from (`swinv2_config`), for the record only.
    """

    img_size: int | tuple[int, int] = 192
    patch_size: int = 4
    in_chans: int = 3
    embed_dim: int = 96
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    window_size: int | tuple[int, ...] = 6
    pretrained_window_sizes: int | tuple[int, ...] = 0
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    drop_path_rate: float = 0.0
    attn_drop_rate: float = 0.0
    proj_drop_rate: float = 0.0
    act_layer: str = "gelu"
    norm_eps: float = 1e-5
    extra_norm_every: int = 0
    attn_backend: str = "sdpa"
    grad_checkpointing: bool | tuple[bool, ...] = False
    use_mask_token: bool = False
    variant: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        self.depths = tuple(int(d) for d in self.depths)
        n = len(self.depths)
        if n == 0 or min(self.depths) < 1:
            raise ValueError(f"depths must be a non-empty list of positive ints, got {self.depths}")
        self.num_heads = _per_stage(self.num_heads, n, "num_heads")
        self.window_size = _per_stage(self.window_size, n, "window_size")
        self.pretrained_window_sizes = _per_stage(
            self.pretrained_window_sizes, n, "pretrained_window_sizes"
        )
        if isinstance(self.grad_checkpointing, bool):
            self.grad_checkpointing = (self.grad_checkpointing,) * n
        self.grad_checkpointing = tuple(bool(g) for g in self.grad_checkpointing)
        if len(self.grad_checkpointing) != n:
            raise ValueError(f"grad_checkpointing needs one flag or {n} (one per stage)")
        h, w = (
            (self.img_size, self.img_size)
            if isinstance(self.img_size, int)
            else tuple(self.img_size)
        )
        self.img_size = (int(h), int(w))
        for i, (dim, heads) in enumerate(zip(self.stage_dims, self.num_heads)):
            if dim % heads:
                raise ValueError(
                    f"stage {i}: width {dim} is not divisible by {heads} heads; "
                    f"pick num_heads that divide embed_dim * 2**stage"
                )
        if min(self.window_size) < 1:
            raise ValueError(f"window_size must be >= 1, got {self.window_size}")
        if any(s % self.stride for s in self.img_size):
            raise ValueError(
                f"img_size {self.img_size} must be a multiple of the encoder stride {self.stride} "
                f"(patch_size {self.patch_size} x 2**{n - 1} merges)"
            )
        if self.act_layer not in ACTIVATIONS:
            raise ValueError(f"act_layer {self.act_layer!r} is not one of {ACTIVATIONS}")
        if self.attn_backend not in ATTN_BACKENDS:
            raise ValueError(f"attn_backend {self.attn_backend!r} is not one of {ATTN_BACKENDS}")
        if self.attn_backend == "flex" and self.attn_drop_rate > 0:
            raise ValueError(
                "attn_backend='flex' has no attention dropout "
                f"(attn_drop_rate={self.attn_drop_rate}): set attn_drop_rate=0 (every "
                "SimMIM/SwinV2 recipe does) or use attn_backend='sdpa'"
            )

    @property
    def num_stages(self) -> int:
        """Number of stages (`len(depths)`)."""
        return len(self.depths)

    @property
    def stage_dims(self) -> tuple[int, ...]:
        """Each stage's width: `embed_dim * 2**stage`."""
        return tuple(self.embed_dim * 2**i for i in range(self.num_stages))

    @property
    def num_features(self) -> int:
        """Width of the last stage, the encoder's output channels."""
        return self.stage_dims[-1]

    @property
    def stage_resolutions(self) -> tuple[tuple[int, int], ...]:
        """Each stage's token grid (rows, columns) at `img_size`."""
        return tuple(
            tuple(s // self.patch_size // 2**i for s in self.img_size)
            for i in range(self.num_stages)
        )

    def stage_windows(self, window: int | None = None) -> tuple[int, ...]:
        """Each stage's attention window at `img_size` (`stage_window`).

        Args:
            window: one window for every stage; None: the configured `window_size`.

        Returns:
            One window side per stage, each clamped to its stage's height.
        """
        windows = self.window_size if window is None else (window,) * self.num_stages
        return tuple(stage_window(h, w) for (h, _), w in zip(self.stage_resolutions, windows))

    @property
    def stride(self) -> int:
        """Pixels per token of the last stage (SimMIM's `encoder_stride`)."""
        return self.patch_size * 2 ** (self.num_stages - 1)

    def to_dict(self) -> dict:
        """Every field as plain values (tuples stay tuples); `from_dict` reads it back."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> SwinV2Config:
        """The config `d` describes (`to_dict`'s output, or its JSON form with lists).

        Args:
            d: field values; missing fields take their defaults, unknown ones are refused
                (`ValueError`). A `fused_attn` key is read as `attn_backend` (False: "eager").

        Returns:
            The `SwinV2Config`.
        """
        d = dict(d)
        if not d.pop("fused_attn", True):  # the boolean form of attn_backend: False means eager
            d["attn_backend"] = "eager"
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(
                f"unknown SwinV2Config fields {sorted(unknown)}; known: {sorted(names)}"
            )
        return cls(**d)

    def replace(self, **changes) -> SwinV2Config:
        """A copy with `changes` to its fields, checked again."""
        return replace(self, **changes)


def variant_spec(variant: str) -> tuple[str, dict]:
    """`(name, sizes)` of a named variant (`debug`, `tiny` … `giant`, with or without a `swinv2_`
    prefix)."""
    name = str(variant).removeprefix("swinv2_")
    if name not in VARIANTS:
        raise ValueError(f"unknown SwinV2 variant {variant!r}; choose one of {sorted(VARIANTS)}")
    return name, VARIANTS[name]


def swinv2_config(variant: str, **overrides) -> SwinV2Config:
    """The config of a named variant.

    Args:
        variant: `debug`, `tiny`, `small`, `base`, `large`, `huge` or `giant`, with or without a
            `swinv2_` prefix (`variant_spec`).
        **overrides: `SwinV2Config` fields to change (e.g. `img_size`, `window_size`).

    Returns:
        The `SwinV2Config`, its `variant` set to the bare name.
    """
    name, sizes = variant_spec(variant)
    return SwinV2Config(**{**sizes, **overrides, "variant": name})
