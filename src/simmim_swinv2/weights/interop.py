"""Weights in and out of other systems: transformers' Swinv2 directories, official SwinV2 / SimMIM checkpoints, timm
state dicts, and our own safetensors export. (Our runs and checkpoints, and the choice among all these formats, are
`load.load_model`'s; `python -m simmim_swinv2.convert to-transformers RUN_DIR OUT` goes through it.)

    from simmim_swinv2 import convert
    model = convert.from_transformers("path/to/hf_dir")   # classifier / SimMIM / encoder, per the checkpoint
    convert.to_transformers(model, "path/to/out_dir")     # config.json + model.safetensors
    model = convert.from_official("swinv2_base_window12to16.pth", img_size=256)  # windows read from the buffers
    model = convert.from_timm("swinv2_tiny.safetensors", window_size=8, img_size=256)

Reading needs neither transformers nor timm's hub: configs are JSON, weights safetensors (or a pickle loaded
with `weights_only=True`). The key maps live in `keys`; the command line (`python -m simmim_swinv2.convert`)
in `cli`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..inference.processor import ImageProcessor
from ..models import SimMIM, SwinV2Classifier, SwinV2Config, SwinV2Encoder
from .keys import (
    _BUFFERS,
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

Model = SwinV2Encoder | SimMIM | SwinV2Classifier


def _load_strict(module: torch.nn.Module, sd: dict[str, torch.Tensor], what: str) -> None:
    result = module.load_state_dict(sd, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith(_BUFFERS)]
    if missing or result.unexpected_keys:
        raise ValueError(f"{what}: missing keys {missing[:8]}, unexpected keys {result.unexpected_keys[:8]}")


# --------------------------------------------------------------------------------------------- transformers
def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


def from_transformers(path: str | Path, **config_overrides) -> Model:
    """Load a directory written by transformers' `save_pretrained` for `Swinv2Model`,
    `Swinv2ForMaskedImageModeling` or `Swinv2ForImageClassification`."""
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{config_file} not found: give a directory written by save_pretrained")
    hf = json.loads(config_file.read_text())
    weights = next((path / n for n in ("model.safetensors", "pytorch_model.bin") if (path / n).is_file()), None)
    if weights is None:
        raise FileNotFoundError(f"no model.safetensors or pytorch_model.bin in {path} (sharded checkpoints: "
                                "load and save_pretrained them once with max_shard_size large enough)")
    sd = _read_weights(weights)
    prefixed = any(k.startswith("swinv2.") for k in sd)
    enc_sd = encoder_from_transformers(_split(sd, "swinv2.") if prefixed else sd)
    cfg = config_from_transformers(hf, use_mask_token="mask_token" in enc_sd, **config_overrides)
    encoder = SwinV2Encoder(cfg)
    _load_strict(encoder, enc_sd, f"{path} (encoder)")
    if "classifier.weight" in sd:
        id2label = {int(k): v for k, v in hf.get("id2label", {}).items()} or None
        model = SwinV2Classifier(encoder, sd["classifier.weight"].shape[0], id2label=id2label)
        model.head.load_state_dict({"weight": sd["classifier.weight"], "bias": sd["classifier.bias"]})
        return model
    if "decoder.0.weight" in sd:
        model = SimMIM(encoder)
        model.decoder.load_state_dict(_split(sd, "decoder."))
        return model
    return encoder


def to_transformers(model: Model, out_dir: str | Path) -> Path:
    """Write `config.json` + `model.safetensors` that transformers' `Swinv2*.from_pretrained` loads with no
    missing or unexpected keys: a classifier → `Swinv2ForImageClassification`, SimMIM →
    `Swinv2ForMaskedImageModeling`, an encoder → `Swinv2Model`."""
    out_dir = Path(out_dir)
    encoder = model if isinstance(model, SwinV2Encoder) else model.encoder
    architecture = {SwinV2Classifier: "Swinv2ForImageClassification", SimMIM: "Swinv2ForMaskedImageModeling",
                    SwinV2Encoder: "Swinv2Model"}[type(model)]
    id2label = model.id2label if isinstance(model, SwinV2Classifier) else None
    config = config_to_transformers(encoder.cfg, architecture, id2label)  # refuses what it cannot express
    enc_sd = encoder_to_transformers(encoder.state_dict())
    if isinstance(model, SwinV2Classifier):
        sd = {f"swinv2.{k}": v for k, v in enc_sd.items()}
        sd.update({f"classifier.{k}": v for k, v in model.head.state_dict().items()})
    elif isinstance(model, SimMIM):
        if encoder.cfg.img_size[0] != encoder.cfg.img_size[1]:
            raise ValueError("transformers' Swinv2ForMaskedImageModeling handles square images only; "
                             "export the encoder (convert.to_transformers(model.encoder, ...)) instead")
        sd = {f"swinv2.{k}": v for k, v in enc_sd.items()}
        sd.update({f"decoder.{k}": v for k, v in model.decoder.state_dict().items()})
    else:  # transformers' Swinv2Model is built without a mask token
        sd = {k: v for k, v in enc_sd.items() if k != "embeddings.mask_token"}
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in sd.items()}, str(out_dir / "model.safetensors"),
              metadata={"format": "pt"})
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    ImageProcessor(encoder.cfg.img_size).save(out_dir)  # AutoImageProcessor / pipeline(...) load it as is
    return out_dir


# ------------------------------------------------------------------------------------- official and timm
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


def _weight_keys(path: Path) -> list[str]:
    """The key names of a weights file, unwrapped as `_read_any` unwraps it, without reading its tensors."""
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
    enc_sd = {k: v for k, v in enc_sd.items() if not k.endswith(_BUFFERS)}  # rebuilt, not loaded
    encoder = SwinV2Encoder(cfg)
    _load_strict(encoder, enc_sd, what)
    if decoder:
        model = SimMIM(encoder)
        model.decoder.load_state_dict(decoder)
        return model
    if head:
        model = SwinV2Classifier(encoder, head["weight"].shape[0])
        model.head.load_state_dict(head)
        return model
    return encoder


def from_official(source: str | Path | dict, **config_overrides) -> Model:
    """An official SwinV2 (microsoft/Swin-Transformer) or SimMIM (microsoft/SimMIM) checkpoint: weights
    under `model`, SimMIM's encoder under `encoder.`, older `rpe_mlp` names, patch merging at stage end.
    Position buffers are rebuilt, not loaded, but read first: `relative_position_index` gives the (clamped)
    window of each stage, `relative_coords_table` the pretrained window it was fine-tuned from (e.g.
    `swinv2_base_patch4_window12to16_192to256_22kto1k_ft`: 12, 12, 12, 6); a `pretrained_window_sizes` override
    that disagrees with the tables is refused."""
    enc_sd, head, decoder = official_to_ours(_read_any(source))
    return _build(enc_sd, head, decoder, "official checkpoint", **config_overrides)


def from_timm(source: str | Path | dict, **config_overrides) -> Model:
    """A timm `SwinTransformerV2` state dict (our module names; head under `head.fc`)."""
    enc_sd, head = timm_to_ours(_read_any(source))
    return _build(enc_sd, head, None, "timm state dict", **config_overrides)


def _guess_format(sd: dict | list[str]) -> str | None:
    """`official` (SimMIM's `encoder.` prefix, `rpe_mlp`, patch merging at a stage's end), `timm` (our names), or
    None for a state dict that is no SwinV2."""
    if any(k.startswith(("encoder.", "layers.0.downsample")) or "rpe_mlp" in k for k in sd):
        return "official"
    return "timm" if "patch_embed.proj.weight" in sd else None


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def save_model(model: Model, path: str | Path) -> None:
    """Our own export: `<path>` safetensors of the model's state dict + `<path>.json` with what rebuilds it."""
    path = Path(path)
    encoder = model if isinstance(model, SwinV2Encoder) else model.encoder
    meta: dict = {"kind": type(model).__name__, "config": encoder.cfg.to_dict()}
    if isinstance(model, SwinV2Classifier):
        meta["id2label"] = model.id2label
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items() if not k.endswith(_BUFFERS)}
    save_file(sd, str(path), metadata={"format": "pt"})
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2, default=list) + "\n")


def load_safetensors(path: str | Path) -> Model:
    """Inverse of `save_model`."""
    path = Path(path)
    meta = json.loads(path.with_suffix(".json").read_text())
    cfg = SwinV2Config.from_dict(meta["config"])
    sd = load_file(str(path))
    encoder = SwinV2Encoder(cfg)
    if meta["kind"] == "SwinV2Classifier":
        model: Model = SwinV2Classifier(encoder, sd["head.weight"].shape[0],
                                        id2label={int(k): v for k, v in meta["id2label"].items()})
    elif meta["kind"] == "SimMIM":
        model = SimMIM(encoder)
    else:
        model = encoder
    _load_strict(model, sd, str(path))
    return model


__all__ = ["Model", "config_from_transformers", "config_to_transformers", "encoder_from_transformers",
           "encoder_to_transformers", "from_official", "from_timm", "from_transformers", "infer_config", "load_safetensors",
           "official_to_ours", "recorded_pretrained_windows", "save_model", "timm_to_ours",
           "to_transformers"]
