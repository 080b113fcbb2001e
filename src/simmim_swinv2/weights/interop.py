"""Weights in and out of other systems: transformers' Swinv2 directories, official SwinV2 / SimMIM
checkpoints, timm state dicts. (Our own files are `ours`'s; the choice among all these formats is
`load.identify`'s, and `load.load_model` reads any of them; `python -m simmim_swinv2.convert
to-transformers RUN_DIR OUT` goes through it.)

    from simmim_swinv2 import convert
    model = convert.from_transformers("path/to/hf_dir")
        # classifier / SimMIM / encoder, per the checkpoint
    convert.to_transformers(model, "path/to/out_dir")  # config.json + model.safetensors
    model = convert.from_official("swinv2_base_window12to16.pth", img_size=256)
        # windows read from the buffers
    model = convert.from_timm("swinv2_tiny.safetensors", window_size=8, img_size=256)

Reading needs neither transformers nor timm's hub: configs are JSON, weights safetensors (or a
pickle loaded with `weights_only=True`). The key maps live in `keys`; the command line
(`python -m simmim_swinv2.convert`) in `cli`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..inference.processor import ImageProcessor
from ..models import SimMIM, SwinV2Classifier, encoder_of
from .keys import (
    _split,
    config_from_transformers,
    config_to_transformers,
    encoder_from_transformers,
    encoder_to_transformers,
    infer_config,
    official_to_ours,
    recorded_pretrained_windows,
    timm_to_ours,
)
from .meta import BUFFERS, Model, ModelMeta, load_strict, normalization, set_normalization


# ------------------------------------------------------------------------------------- transformers
def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


def from_transformers(path: str | Path, **config_overrides) -> Model:
    """Load a directory written by transformers' `save_pretrained` for `Swinv2Model`,
    `Swinv2ForMaskedImageModeling` or `Swinv2ForImageClassification`.

    Neither transformers nor the hub is needed: `config.json` is read as JSON, the weights from
    `model.safetensors` (or `pytorch_model.bin`, with `weights_only=True`).

    Args:
        path: the directory (`config.json` + `model.safetensors` or `pytorch_model.bin`; sharded
            checkpoints are refused).
        **config_overrides: `SwinV2Config` fields to set instead of the config's (e.g. `img_size`).

    Returns:
        A `SwinV2Classifier` (with the config's `id2label`), `SimMIM` or bare `SwinV2Encoder`, as
        the weights say, with the normalisation of its `preprocessor_config.json` when there is
        one.
    """
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(
            f"{config_file} not found: give a directory written by save_pretrained"
        )
    hf = json.loads(config_file.read_text())
    weights = next(
        (path / n for n in ("model.safetensors", "pytorch_model.bin") if (path / n).is_file()), None
    )
    if weights is None:
        raise FileNotFoundError(
            f"no model.safetensors or pytorch_model.bin in {path} (sharded checkpoints: "
            "load and save_pretrained them once with max_shard_size large enough)"
        )
    sd = _read_weights(weights)
    prefixed = any(k.startswith("swinv2.") for k in sd)
    enc_sd = encoder_from_transformers(_split(sd, "swinv2.") if prefixed else sd)
    cfg = config_from_transformers(hf, use_mask_token="mask_token" in enc_sd, **config_overrides)
    if "classifier.weight" in sd:
        id2label = {int(k): v for k, v in hf.get("id2label", {}).items()} or None
        meta = ModelMeta(
            "SwinV2Classifier", cfg, num_classes=sd["classifier.weight"].shape[0], id2label=id2label
        )
    else:
        meta = ModelMeta("SimMIM" if "decoder.0.weight" in sd else "SwinV2Encoder", cfg)
    model = meta.build()
    load_strict(encoder_of(model), enc_sd, f"{path} (encoder)")
    if isinstance(model, SwinV2Classifier):
        model.head.load_state_dict(
            {"weight": sd["classifier.weight"], "bias": sd["classifier.bias"]}
        )
    elif isinstance(model, SimMIM):
        model.decoder.load_state_dict(_split(sd, "decoder."))
    # its normalisation, when it has a preprocessor_config.json
    processor = ImageProcessor.from_dir(path)
    if processor is not None and len(processor.mean) == cfg.in_chans:
        set_normalization(model, processor.mean, processor.std)
    return model


def to_transformers(model: Model, out_dir: str | Path) -> Path:
    """Write a directory that transformers' `Swinv2*.from_pretrained` loads with no missing or
    unexpected keys: a classifier → `Swinv2ForImageClassification`, SimMIM →
    `Swinv2ForMaskedImageModeling`, an encoder → `Swinv2Model`.

    Args:
        model: a `SwinV2Classifier`, `SimMIM` (square images only) or `SwinV2Encoder`; what
            transformers' Swinv2 cannot express (extra norms, per-stage windows that do not only
            clamp) is refused with `ValueError`.
        out_dir: the directory to write (created if needed).

    Returns:
        `out_dir`, holding `config.json`, `model.safetensors` and `preprocessor_config.json`
        (the model's normalisation; mean 0, std 1 for a model of other than 3 channels that
        records none).
    """
    out_dir = Path(out_dir)
    meta, encoder = ModelMeta.of(model), encoder_of(model)
    architecture = {
        "SwinV2Classifier": "Swinv2ForImageClassification",
        "SimMIM": "Swinv2ForMaskedImageModeling",
        "SwinV2Encoder": "Swinv2Model",
    }[meta.kind]
    # refuses what it cannot express
    config = config_to_transformers(meta.config, architecture, meta.id2label)
    enc_sd = encoder_to_transformers(encoder.state_dict())
    if isinstance(model, SwinV2Classifier):
        sd = {f"swinv2.{k}": v for k, v in enc_sd.items()}
        sd.update({f"classifier.{k}": v for k, v in model.head.state_dict().items()})
    elif isinstance(model, SimMIM):
        if encoder.cfg.img_size[0] != encoder.cfg.img_size[1]:
            raise ValueError(
                "transformers' Swinv2ForMaskedImageModeling handles square images only; "
                "export the encoder (convert.to_transformers(model.encoder, ...)) instead"
            )
        sd = {f"swinv2.{k}": v for k, v in enc_sd.items()}
        sd.update({f"decoder.{k}": v for k, v in model.decoder.state_dict().items()})
    else:  # transformers' Swinv2Model is built without a mask token
        sd = {k: v for k, v in enc_sd.items() if k != "embeddings.mask_token"}
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.detach().contiguous().cpu() for k, v in sd.items()},
        str(out_dir / "model.safetensors"),
        metadata={"format": "pt"},
    )
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    # AutoImageProcessor / pipeline(...) load it as is; the normalisation the model was trained with
    # (a model of other than 3 channels that records none, e.g. converted foreign weights: mean 0,
    # std 1, the pixels as given)
    try:
        mean, std = normalization(model)
    except ValueError:
        mean, std = (0.0,) * encoder.cfg.in_chans, (1.0,) * encoder.cfg.in_chans
    ImageProcessor(encoder.cfg.img_size, mean, std).save(out_dir)
    return out_dir


# -------------------------------------------------------------------------------- official and timm
def _unwrap(obj: dict) -> dict[str, torch.Tensor]:
    for key in ("model", "state_dict", "module"):
        if isinstance(obj.get(key), dict):
            return _unwrap(obj[key])
    return obj


def _read_any(source: str | Path | dict) -> dict[str, torch.Tensor]:
    if isinstance(source, dict):
        return _unwrap(source)
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    return _unwrap(_read_weights(path))


def weight_keys(path: Path) -> list[str]:
    """The key names of a weights file, without reading its tensors.

    Args:
        path: a `.safetensors` file, or a pickle (`.pth`/`.pt`/`.bin`, read with
            `weights_only=True`, memory-mapped where it can be).

    Returns:
        The keys, unwrapped as `_read_any` unwraps them (from under `model`, `state_dict` or
        `module`).
    """
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            return list(f.keys())
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # a legacy (pre-zip) pickle cannot be memory-mapped
        obj = torch.load(path, map_location="cpu", weights_only=True)
    return list(_unwrap(obj))


def _build(enc_sd: dict, head: dict | None, decoder: dict | None, what: str, **overrides) -> Model:
    cfg = infer_config(enc_sd, **overrides)
    enc_sd = {k: v for k, v in enc_sd.items() if not k.endswith(BUFFERS)}  # rebuilt, not loaded
    if head:
        meta = ModelMeta("SwinV2Classifier", cfg, num_classes=head["weight"].shape[0])
    else:
        meta = ModelMeta("SimMIM" if decoder else "SwinV2Encoder", cfg)
    model = meta.build()
    load_strict(encoder_of(model), enc_sd, what)
    if isinstance(model, SwinV2Classifier):
        model.head.load_state_dict(head)
    elif isinstance(model, SimMIM):
        model.decoder.load_state_dict(decoder)
    return model


def from_official(source: str | Path | dict, **config_overrides) -> Model:
    """Load an official SwinV2 (microsoft/Swin-Transformer) or SimMIM (microsoft/SimMIM)
    checkpoint: weights under `model`, SimMIM's encoder under `encoder.`, the bias MLP named
    `rpe_mlp` in some, patch merging at stage end (`keys.official_to_ours`).

    Position buffers are rebuilt, not loaded, but read first: `relative_position_index` gives the
    (clamped) window of each stage, `relative_coords_table` the pretrained window it was
    fine-tuned from (e.g. `swinv2_base_patch4_window12to16_192to256_22kto1k_ft`: 12, 12, 12, 6),
    the shift masks the image size (`keys.infer_config`).

    Args:
        source: a checkpoint file (`.pth`/`.pt`/`.bin`/`.safetensors`) or its loaded dict.
        **config_overrides: `SwinV2Config` fields the file does not record (e.g. `img_size`,
            `window_size` when it has no position buffers); a `pretrained_window_sizes` that
            disagrees with the tables is refused.

    Returns:
        A `SwinV2Classifier` (with a `head.`), `SimMIM` (with a decoder) or `SwinV2Encoder`.
    """
    enc_sd, head, decoder = official_to_ours(_read_any(source))
    return _build(enc_sd, head, decoder, "official checkpoint", **config_overrides)


def from_timm(source: str | Path | dict, **config_overrides) -> Model:
    """Load a timm `SwinTransformerV2` state dict (our module names; the head under `head.fc`).

    Args:
        source: a weights file (`.safetensors`, or a pickle read with `weights_only=True`) or its
            loaded dict.
        **config_overrides: `SwinV2Config` fields the weights do not record: `window_size` when
            there are no position buffers, `img_size` (e.g. `window_size=8, img_size=256`).

    Returns:
        A `SwinV2Classifier` (with a `head.fc`) or a `SwinV2Encoder`.
    """
    enc_sd, head = timm_to_ours(_read_any(source))
    return _build(enc_sd, head, None, "timm state dict", **config_overrides)


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = [
    "Model",
    "config_from_transformers",
    "config_to_transformers",
    "encoder_from_transformers",
    "encoder_to_transformers",
    "from_official",
    "from_timm",
    "from_transformers",
    "infer_config",
    "official_to_ours",
    "recorded_pretrained_windows",
    "timm_to_ours",
    "to_transformers",
]
