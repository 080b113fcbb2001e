"""Key and config maps between our SwinV2 and transformers' / the official / timm's: pure functions
on dicts. Our module names follow timm, so these are the whole difference: transformers splits q/k/v
into three Linears and puts a stage's patch merging at the *end* of the stage
(`encoder.layers.{s}.downsample`), where timm and we open stage s+1 with it
(`layers.{s+1}.downsample`); the official code names the bias MLP `rpe_mlp`."""

from __future__ import annotations

import math
import re

import torch

from ..models import SwinV2Config
from .meta import BUFFERS as _BUFFERS

_HF_ACT = {
    "gelu": "gelu",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_new": "gelu_tanh",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
}
_OUR_ACT = {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "relu": "relu", "silu": "silu"}

# ours (encoder-relative) -> transformers (relative to `swinv2.`), for everything but q/k/v and
# merges.
_HF_BLOCK = {
    "attn.logit_scale": "attention.self.logit_scale",
    "attn.cpb_mlp.0.weight": "attention.self.continuous_position_bias_mlp.0.weight",
    "attn.cpb_mlp.0.bias": "attention.self.continuous_position_bias_mlp.0.bias",
    "attn.cpb_mlp.2.weight": "attention.self.continuous_position_bias_mlp.2.weight",
    "attn.proj.weight": "attention.output.dense.weight",
    "attn.proj.bias": "attention.output.dense.bias",
    "norm1.weight": "layernorm_before.weight",
    "norm1.bias": "layernorm_before.bias",
    "norm2.weight": "layernorm_after.weight",
    "norm2.bias": "layernorm_after.bias",
    "mlp.fc1.weight": "intermediate.dense.weight",
    "mlp.fc1.bias": "intermediate.dense.bias",
    "mlp.fc2.weight": "output.dense.weight",
    "mlp.fc2.bias": "output.dense.bias",
}
_HF_TOP = {
    "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
    "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
    "patch_embed.norm.weight": "embeddings.norm.weight",
    "patch_embed.norm.bias": "embeddings.norm.bias",
    "mask_token": "embeddings.mask_token",
    "norm.weight": "layernorm.weight",
    "norm.bias": "layernorm.bias",
}


# ------------------------------------------------------------------------------------------ configs
def config_from_transformers(hf: dict, **overrides) -> SwinV2Config:
    """Our config from a transformers `Swinv2Config` dict.

    Args:
        hf: the dict of a `config.json`; transformers' defaults fill what it leaves out.
        **overrides: `SwinV2Config` fields to set instead.

    Returns:
        The `SwinV2Config`. Absolute position embeddings, non-square patches and activations
        with no equivalent here are refused (`ValueError`).
    """
    if hf.get("use_absolute_embeddings"):
        raise ValueError(
            "use_absolute_embeddings=True is not supported (SwinV2 uses relative position bias "
            "only, and transformers' own Swinv2 cannot run with it at its configured size)"
        )
    act = hf.get("hidden_act", "gelu")
    if act not in _HF_ACT:
        raise ValueError(f"hidden_act {act!r} has no equivalent here; supported: {sorted(_HF_ACT)}")
    patch = hf.get("patch_size", 4)
    if not isinstance(patch, int):
        if patch[0] != patch[1]:
            raise ValueError(f"non-square patch_size {patch} is not supported")
        patch = patch[0]
    depths = tuple(hf.get("depths", (2, 2, 6, 2)))
    size = hf.get("image_size", 224)
    kwargs = dict(
        img_size=size if isinstance(size, int) else tuple(size),
        patch_size=patch,
        in_chans=hf.get("num_channels", 3),
        embed_dim=hf.get("embed_dim", 96),
        depths=depths,
        num_heads=tuple(hf.get("num_heads", (3, 6, 12, 24))),
        window_size=hf.get("window_size", 7),
        # transformers reads only the first len(depths) entries (its default has four)
        pretrained_window_sizes=tuple(hf.get("pretrained_window_sizes") or (0,) * len(depths))[
            : len(depths)
        ],
        mlp_ratio=hf.get("mlp_ratio", 4.0),
        qkv_bias=hf.get("qkv_bias", True),
        drop_path_rate=hf.get("drop_path_rate", 0.1),
        attn_drop_rate=hf.get("attention_probs_dropout_prob", 0.0),
        proj_drop_rate=hf.get("hidden_dropout_prob", 0.0),
        act_layer=_HF_ACT[act],
        norm_eps=hf.get("layer_norm_eps", 1e-5),
    )
    kwargs.update(overrides)
    return SwinV2Config(**kwargs)


def config_to_transformers(
    cfg: SwinV2Config, architecture: str, id2label: dict[int, str] | None = None
) -> dict:
    """A transformers `Swinv2Config` dict for our config.

    Args:
        cfg: the encoder's config.
        architecture: the transformers class it is for (`Swinv2Model`,
            `Swinv2ForMaskedImageModeling`, `Swinv2ForImageClassification`).
        id2label: class names, written with `label2id` (a classifier's).

    Returns:
        The `config.json` dict. What transformers cannot express is refused (`ValueError`): extra
        norms (huge/giant), per-stage windows that are not one window clamped to the stages.
    """
    if cfg.extra_norm_every:
        raise ValueError(
            "transformers' Swinv2 has no extra norms (huge/giant's LayerNorm every "
            f"{cfg.extra_norm_every} blocks): export these as safetensors with our own loader"
        )
    window = max(cfg.window_size)
    if cfg.stage_windows(window) != cfg.stage_windows():
        raise ValueError(
            f"per-stage windows {cfg.window_size} at img_size {cfg.img_size} cannot be written as "
            f"transformers' single window_size (tried {window}): use one window for all stages, "
            f"or windows that only clamp to the stage size"
        )
    h, w = cfg.img_size
    out = {
        "model_type": "swinv2",
        "architectures": [architecture],
        "image_size": h if h == w else [h, w],
        "patch_size": cfg.patch_size,
        "num_channels": cfg.in_chans,
        "embed_dim": cfg.embed_dim,
        "depths": list(cfg.depths),
        "num_heads": list(cfg.num_heads),
        "num_layers": cfg.num_stages,
        "window_size": window,
        "pretrained_window_sizes": list(cfg.pretrained_window_sizes),
        "mlp_ratio": cfg.mlp_ratio,
        "qkv_bias": cfg.qkv_bias,
        "hidden_dropout_prob": cfg.proj_drop_rate,
        "attention_probs_dropout_prob": cfg.attn_drop_rate,
        "drop_path_rate": cfg.drop_path_rate,
        "hidden_act": _OUR_ACT[cfg.act_layer],
        "use_absolute_embeddings": False,
        "initializer_range": 0.02,
        "layer_norm_eps": cfg.norm_eps,
        "encoder_stride": cfg.stride,
        "hidden_size": cfg.num_features,
    }
    if id2label is not None:
        out["id2label"] = {str(k): v for k, v in id2label.items()}
        out["label2id"] = {v: int(k) for k, v in id2label.items()}
    return out


# -------------------------------------------------------------------------------------- state dicts
_BLOCK_RE = re.compile(r"^layers\.(\d+)\.blocks\.(\d+)\.(.+)$")
_MERGE_RE = re.compile(r"^layers\.(\d+)\.downsample\.(.+)$")


def encoder_to_transformers(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our encoder's state dict in transformers' `Swinv2Model` keys.

    Args:
        sd: our encoder state dict (timm's names); rebuilt buffers are left out.

    Returns:
        The state dict in transformers' names, without the `swinv2.` prefix: `qkv` split into
        query / key / value, patch merging moved to the end of the previous stage.

    Raises:
        KeyError: a key with no transformers equivalent.
    """
    out = {}
    for key, value in sd.items():
        if key.endswith(_BUFFERS):
            continue
        if key in _HF_TOP:
            out[_HF_TOP[key]] = value
        elif m := _MERGE_RE.match(key):
            out[f"encoder.layers.{int(m[1]) - 1}.downsample.{m[2]}"] = value
        elif m := _BLOCK_RE.match(key):
            prefix, rest = f"encoder.layers.{m[1]}.blocks.{m[2]}.", m[3]
            if rest == "attn.qkv.weight":
                q, k, v = value.chunk(3, dim=0)
                for name, t in zip(("query", "key", "value"), (q, k, v)):
                    out[prefix + f"attention.self.{name}.weight"] = t.clone()
            elif rest in ("attn.q_bias", "attn.v_bias"):
                out[
                    prefix + f"attention.self.{'query' if rest == 'attn.q_bias' else 'value'}.bias"
                ] = value
            elif rest in _HF_BLOCK:
                out[prefix + _HF_BLOCK[rest]] = value
            else:
                raise KeyError(f"{key} has no transformers equivalent")
        else:
            raise KeyError(f"{key} has no transformers equivalent")
    return out


def encoder_from_transformers(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers' `Swinv2Model` weights in our encoder's keys (the inverse of
    `encoder_to_transformers`).

    Args:
        sd: the state dict without the `swinv2.` prefix; buffers and the pooler are dropped.

    Returns:
        Our encoder state dict: query / key / value fused into `attn.qkv.weight`, patch merging
        at the start of the next stage.

    Raises:
        KeyError: an unexpected transformers key.
    """
    top = {v: k for k, v in _HF_TOP.items()}
    block = {v: k for k, v in _HF_BLOCK.items()}
    out: dict[str, torch.Tensor] = {}
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in sd.items():
        if key.endswith(_BUFFERS) or key.startswith("pooler"):
            continue
        if key in top:
            out[top[key]] = value
        elif m := re.match(r"^encoder\.layers\.(\d+)\.downsample\.(.+)$", key):
            out[f"layers.{int(m[1]) + 1}.downsample.{m[2]}"] = value
        elif m := re.match(r"^encoder\.layers\.(\d+)\.blocks\.(\d+)\.(.+)$", key):
            prefix, rest = f"layers.{m[1]}.blocks.{m[2]}.", m[3]
            if a := re.match(r"^attention\.self\.(query|key|value)\.(weight|bias)$", rest):
                if a[2] == "weight":
                    qkv.setdefault(prefix, {})[a[1]] = value
                elif a[1] != "key":
                    out[prefix + f"attn.{a[1][0]}_bias"] = value
            elif rest in block:
                out[prefix + block[rest]] = value
            else:
                raise KeyError(f"unexpected transformers key {key}")
        else:
            raise KeyError(f"unexpected transformers key {key}")
    for prefix, parts in qkv.items():
        out[prefix + "attn.qkv.weight"] = torch.cat(
            [parts["query"], parts["key"], parts["value"]], dim=0
        )
    return out


def _split(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}


def infer_config(sd: dict[str, torch.Tensor], **overrides) -> SwinV2Config:
    """A config from an encoder state dict's shapes (our/timm names).

    `window_size` comes from the position-index buffers when present, else from `overrides` (it has
    no weight of its own), `img_size` from the shift masks (`attn_mask`) when present, and
    `pretrained_window_sizes` from the `relative_coords_table` buffers when present
    (`recorded_pretrained_windows`).

    Args:
        sd: the encoder state dict, buffers included where the checkpoint has them.
        **overrides: `SwinV2Config` fields to set; a `pretrained_window_sizes` that disagrees with
            the recorded tables is refused (`ValueError`), as is a missing `window_size` that no
            buffer gives.

    Returns:
        The `SwinV2Config`.
    """
    proj = sd["patch_embed.proj.weight"]
    depths: dict[int, int] = {}
    heads: dict[int, int] = {}
    for key, value in sd.items():
        if m := re.match(r"^layers\.(\d+)\.blocks\.(\d+)\.attn\.logit_scale$", key):
            depths[int(m[1])] = max(depths.get(int(m[1]), 0), int(m[2]) + 1)
            heads[int(m[1])] = value.shape[0]
    stages = sorted(depths)
    kwargs: dict = dict(
        patch_size=proj.shape[-1],
        in_chans=proj.shape[1],
        embed_dim=proj.shape[0],
        depths=tuple(depths[s] for s in stages),
        num_heads=tuple(heads[s] for s in stages),
        mlp_ratio=sd["layers.0.blocks.0.mlp.fc1.weight"].shape[0] / proj.shape[0],
        qkv_bias="layers.0.blocks.0.attn.q_bias" in sd,
        use_mask_token="mask_token" in sd,
    )
    norms = [
        int(m[2])
        for k in sd
        if (m := re.match(r"^layers\.(\d+)\.blocks\.(\d+)\.norm3\.weight$", k))
    ]
    if norms:
        kwargs["extra_norm_every"] = min(n + 1 for n in norms)
    if "window_size" not in overrides:
        windows = [
            int(round(v.shape[0] ** 0.5))
            for k, v in sd.items()
            if re.match(r"^layers\.(\d+)\.blocks\.0\.attn\.relative_position_index$", k)
        ]
        if len(windows) != len(stages):
            raise ValueError(
                "the checkpoint has no position-index buffers to read the window size from: "
                "pass window_size=… (and img_size=…, pretrained_window_sizes=… if it was "
                "fine-tuned from another window)"
            )
        kwargs["window_size"] = tuple(windows)
    if "img_size" not in overrides and (size := _img_size_from_masks(sd, kwargs["patch_size"])):
        kwargs["img_size"] = size
    kwargs.update(overrides)
    cfg = SwinV2Config(**kwargs)
    recorded = recorded_pretrained_windows(sd)
    if not recorded:
        return cfg
    # The model normalises stage s's offsets by `pretrained or window` (its window clamped to the
    # stage): with that equal to the recorded window the position bias is the checkpoint's, so 0
    # says it.
    windows = list(cfg.stage_windows())
    wanted = tuple(
        p if s not in recorded else 0 if recorded[s] == w else recorded[s]
        for s, (p, w) in enumerate(zip(cfg.pretrained_window_sizes, windows))
    )
    if "pretrained_window_sizes" in overrides:
        bad = [s for s in recorded if (cfg.pretrained_window_sizes[s] or windows[s]) != recorded[s]]
        if bad:
            raise ValueError(
                f"pretrained_window_sizes={list(cfg.pretrained_window_sizes)} disagrees with the "
                f"checkpoint: its relative_coords_table buffers record {list(wanted)} at windows "
                f"{windows} (stage {bad[0]}'s offsets are normalised by window "
                f"{recorded[bad[0]]}). Leave pretrained_window_sizes out (it is read from the "
                f"checkpoint) or pass {list(wanted)}"
            )
    return cfg.replace(pretrained_window_sizes=wanted)


def _img_size_from_masks(sd: dict[str, torch.Tensor], patch: int) -> int | None:
    """The (square) image size an official checkpoint was built for, from a shifted block's
    `attn_mask` `(windows, N, N)`, N = window²: stage s is `window * sqrt(windows)` tokens high, the
    image that times `patch * 2**s`. None without masks (every stage one window) or for non-square
    maps."""
    for key, mask in sd.items():
        if (m := re.match(r"^layers\.(\d+)\.blocks\.\d+\.attn_mask$", key)) and mask.ndim == 3:
            per_side, window = math.isqrt(mask.shape[0]), math.isqrt(mask.shape[-1])
            if per_side**2 == mask.shape[0] and window**2 == mask.shape[-1]:
                return per_side * window * patch * 2 ** int(m[1])
    return None


def coords_table(window: tuple[int, int], pretrained: int) -> torch.Tensor:
    """A window's relative coordinates, as microsoft/Swin-Transformer
    models/swin_transformer_v2.py (`WindowAttention`) builds its `relative_coords_table`: offsets
    divided by `pretrained - 1` (by `window - 1` when `pretrained` is 0), times 8, then
    `sign(x) log2(|x| + 1) / log2(8)`.

    Args:
        window: `(Wh, Ww)`.
        pretrained: the pretrained window; 0: the window itself.

    Returns:
        `(1, 2Wh-1, 2Ww-1, 2)` float64.
    """
    axes = [torch.arange(-(n - 1), n, dtype=torch.float64) for n in window]
    table = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)
    norm = torch.tensor(
        [max((pretrained if pretrained > 0 else n) - 1, 1) for n in window], dtype=torch.float64
    )
    table = table / norm * 8
    return (torch.sign(table) * torch.log2(table.abs() + 1) / 3).unsqueeze(0)


_TABLE_RE = re.compile(r"^layers\.(\d+)\.blocks\.(\d+)\.attn\.relative_coords_table$")


def recorded_pretrained_windows(sd: dict[str, torch.Tensor]) -> dict[int, int]:
    """`{stage: window}`: the window by which each stage's `relative_coords_table` buffers (official
    SwinV2 checkpoints save them) normalise position offsets — the pretrained window, or the stage's
    own (clamped) window when the checkpoint was made with `pretrained_window_size=0`. Empty when
    there are no tables.

    The largest entry m of a table (offset W-1 along its longer axis, W > 1) is log2(8 (W-1)/(P-1)
    + 1) / log2(8), so P = 8 (W-1) / (8^m - 1) + 1; P is rounded and the whole table of every block
    checked against the one `coords_table` builds for it. 1×1 windows carry no offset, hence nothing
    to read.

    Args:
        sd: an encoder state dict in our names (`official_to_ours` keeps the tables).

    Returns:
        `{stage: window}` for the stages whose tables tell; a table that fits no window raises
        `ValueError` (a damaged checkpoint, or not a SwinV2).
    """
    tables: dict[int, dict[int, torch.Tensor]] = {}
    for key, value in sd.items():
        if m := _TABLE_RE.match(key):
            tables.setdefault(int(m[1]), {})[int(m[2])] = value
    out = {}
    for stage, blocks in sorted(tables.items()):
        first = blocks[min(blocks)]
        size = tuple((n + 1) // 2 for n in first.shape[-3:-1])
        axis = 0 if size[0] >= size[1] else 1
        if size[axis] == 1:
            continue
        peak = float(first[..., axis].double().abs().max())
        pretrained = round(8 * (size[axis] - 1) / max(8**peak - 1, 1e-12) + 1)
        expected = coords_table(size, pretrained)
        for block, table in sorted(blocks.items()):
            atol = 1e-5 if table.dtype in (torch.float32, torch.float64) else 1e-2
            if table.shape[-3:] != expected.shape[-3:] or not torch.allclose(
                table.double().reshape(expected.shape), expected, rtol=0, atol=atol
            ):
                raise ValueError(
                    f"layers.{stage}.blocks.{block}.attn.relative_coords_table "
                    f"{tuple(table.shape)} is not the table of a {size[0]}x{size[1]} window for "
                    f"any pretrained window (nearest: {pretrained}); the checkpoint is damaged or "
                    "not a SwinV2"
                )
        out[stage] = pretrained
    return out


def official_to_ours(sd: dict[str, torch.Tensor]) -> tuple[dict, dict, dict]:
    """An official SwinV2 / SimMIM state dict in our names: SimMIM's `encoder.`/`decoder.`
    prefixes split off, `rpe_mlp` renamed `cpb_mlp`, patch merging moved from the end of stage s to
    the start of stage s+1.

    Args:
        sd: the state dict (already unwrapped from under `model`).

    Returns:
        `(encoder, head, decoder)` state dicts; head and decoder are empty when absent. Position
        buffers and shift masks stay in the encoder dict (they tell the window size, the
        pretrained window sizes and the image size; `infer_config`). Absolute position embeddings
        are refused (`ValueError`).
    """
    if any(k.startswith("encoder.") for k in sd):
        decoder, sd = _split(sd, "decoder."), _split(sd, "encoder.")
    else:
        decoder = {}
    enc_sd, head = {}, {}
    for key, value in sd.items():
        key = key.replace("rpe_mlp", "cpb_mlp")
        if key.startswith("head."):
            head[key[len("head.") :]] = value
        elif m := _MERGE_RE.match(key):
            enc_sd[f"layers.{int(m[1]) + 1}.downsample.{m[2]}"] = value
        else:
            enc_sd[key] = value
    if "absolute_pos_embed" in enc_sd:
        raise ValueError(
            "checkpoints with an absolute position embedding (ape=True) are not supported"
        )
    return enc_sd, head, decoder


def timm_to_ours(sd: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    """A timm `SwinTransformerV2` state dict split into our encoder and head.

    Args:
        sd: the state dict (timm's names are ours).

    Returns:
        `(encoder, head)`: everything but `head.*`, and `head.fc.*` without its prefix (empty
        without a head).
    """
    head = {k[len("head.fc.") :]: v for k, v in sd.items() if k.startswith("head.fc.")}
    return {k: v for k, v in sd.items() if not k.startswith("head.")}, head
