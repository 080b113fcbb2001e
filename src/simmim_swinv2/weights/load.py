"""Model weights from anything we or the peers save: one format detector (`weights_format`), one `load_model`, and
the encoder of any of them for `pretrained=` (`encoder_state_dict`, `load_pretrained_encoder`)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..distributed.zero import is_universal_checkpoint, is_zero_checkpoint, zero_state_dict
from ..models import SimMIM, SwinV2Classifier, SwinV2Config, SwinV2Encoder
from . import interop
from .runs import find_resume_checkpoint

log = logging.getLogger(__name__)
_REBUILT = ("relative_position_index", "relative_coords_table", "attn_mask", "k_bias")


# --------------------------------------------------------------------------------- pretrained weights
EXPECTED = ("a run directory of ours (checkpoints/*.ckpt), a Lightning .ckpt, a DeepSpeed ZeRO checkpoint directory "
            "(*.ckpt/ with a `latest` file), our .safetensors with its .json (convert.save_model), a transformers "
            "directory (config.json), or an official SwinV2 / SimMIM or timm state dict (.pth/.pt/.bin/.safetensors)")
FORMATS = ("ours", "transformers", "official", "timm")


def weights_format(source: str | Path) -> str:
    """What `source` is, one of `FORMATS`; ours are recognised first: `ours` — a run directory, a Lightning
    `.ckpt`, a ZeRO checkpoint directory, or `convert.save_model`'s `.safetensors` + `.json`; `transformers` — a
    `save_pretrained` directory; `official` / `timm` — any other weights file, told apart by its key names
    (read with `weights_only=True`). Anything else is refused with the list of what is expected."""
    path = Path(source)
    if is_zero_checkpoint(path):
        return "ours"
    if path.is_dir():
        if (path / "config.json").is_file():
            return "transformers"
        if find_resume_checkpoint(path) is not None:
            return "ours"
        raise FileNotFoundError(f"{path} is a directory with neither checkpoints/*.ckpt (a run of ours), a `latest` "
                                f"file (a ZeRO checkpoint) nor config.json (transformers); expected {EXPECTED}")
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; expected {EXPECTED}")
    if path.suffix == ".ckpt" or (path.suffix == ".safetensors" and path.with_suffix(".json").is_file()):
        return "ours"
    try:
        keys = interop._weight_keys(path)
    except Exception as err:  # not a pickle / safetensors at all, or one that needs a full unpickle
        raise ValueError(f"cannot read {path} as weights ({type(err).__name__}: {err}); expected {EXPECTED}") from err
    fmt = interop._guess_format(keys)
    if fmt is None:
        raise ValueError(f"{path} holds no SwinV2 weights we know (no patch_embed.proj.weight, no SimMIM `encoder.` "
                         f"keys; first keys: {keys[:5]}); expected {EXPECTED}")
    return fmt


def _run_checkpoint(run_dir: Path) -> Path:
    """The checkpoint of a run directory to read weights from: the newest (`find_resume_checkpoint`), but for a
    resharded universal copy (`simmim_swinv2.reshard`) the checkpoint it was made from, which holds the same
    weights in a form `load_model` reads."""
    found = find_resume_checkpoint(run_dir)
    if found is not None and is_universal_checkpoint(found):
        plain = [p for p in run_dir.glob("checkpoints/*.ckpt") if p.is_file() or is_zero_checkpoint(p)]
        found = max(plain, key=lambda p: p.stat().st_mtime) if plain else None
    if found is None:
        raise FileNotFoundError(f"no checkpoints/*.ckpt in run directory {run_dir}")
    return found


def _from_lightning(path: Path) -> tuple[dict, dict | None]:
    """(state dict in our module names, the `simmim_swinv2` model description) of a Lightning checkpoint."""
    if path.is_dir():  # a ZeRO checkpoint: consolidated in memory
        return zero_state_dict(path)
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    sd = ckpt.get("state_dict", ckpt)
    if any(k.startswith("model.") for k in sd):  # our tasks hold the network as `model`
        sd = {k.removeprefix("model."): v for k, v in sd.items() if k.startswith("model.")}
    return sd, ckpt.get("simmim_swinv2")


def encoder_state_dict(source: str | Path) -> tuple[dict, str]:
    """Encoder weights (our module names, no prefix) from anything `weights_format` accepts, and what it was:
    a run directory of ours (its newest checkpoint), a Lightning `.ckpt` or ZeRO directory (pretraining or
    fine-tuning), our `.safetensors`, a transformers directory, an official SimMIM / Swin-Transformer checkpoint
    or a timm state dict. Decoder and head weights are left out; pickles load with `weights_only=True`. Official
    checkpoints keep their `relative_coords_table` buffers (`load_pretrained_encoder` reads them)."""
    path = Path(source)
    fmt = weights_format(path)
    if fmt == "transformers":
        model = interop.from_transformers(path)
        encoder = model if isinstance(model, interop.SwinV2Encoder) else model.encoder
        return encoder.state_dict(), "transformers directory"
    if fmt == "official":
        return interop.official_to_ours(interop._read_any(path))[0], "official checkpoint"
    if fmt == "timm":
        return interop.timm_to_ours(interop._read_any(path))[0], "timm state dict"
    if is_zero_checkpoint(path):
        sd, kind = _from_lightning(path)[0], "DeepSpeed ZeRO checkpoint (consolidated)"
    elif path.is_dir():
        ckpt = _run_checkpoint(path)
        sd, kind = _from_lightning(ckpt)[0], f"run directory ({ckpt.name})"
    elif path.suffix == ".ckpt":
        sd, kind = _from_lightning(path)[0], "Lightning checkpoint"
    else:
        from safetensors.torch import load_file

        sd, kind = load_file(str(path)), "safetensors"
    if any(k.startswith("encoder.") for k in sd):
        sd = {k.removeprefix("encoder."): v for k, v in sd.items() if k.startswith("encoder.")}
    return sd, kind


def _pretrained_window_note(encoder: torch.nn.Module, sd: dict) -> str | None:
    """A line for the load summary when the source's position tables (official checkpoints save them) were
    normalised for other windows than `encoder` normalises by (`pretrained_window_sizes`, else its own clamped
    windows): a new window size then changes the position bias unless the config names the old window."""
    from .keys import _effective_windows, recorded_pretrained_windows

    cfg = getattr(encoder, "cfg", None)
    try:
        recorded = recorded_pretrained_windows(sd)
    except ValueError as err:  # the tables are rebuilt anyway: say so, do not stop the fine-tune
        return f"note: {err}"
    if cfg is None or not recorded:
        return None
    windows = _effective_windows(cfg)
    ours = [p or w for p, w in zip(cfg.pretrained_window_sizes, windows)]
    if all(ours[s] == w for s, w in recorded.items() if s < len(ours)):
        return None
    suggest = [p if s not in recorded else 0 if recorded[s] == w else recorded[s]
               for s, (p, w) in enumerate(zip(cfg.pretrained_window_sizes, windows))]
    return (f"note: the source's position tables normalise offsets by windows "
            f"{[recorded.get(s, '-') for s in range(len(ours))]}, this model by {ours} "
            f"(pretrained_window_sizes={list(cfg.pretrained_window_sizes)}); to keep the source's position bias "
            f"set model.pretrained_window_sizes={suggest}")


def load_pretrained_encoder(encoder: torch.nn.Module, source: str | Path) -> dict[str, list[str]]:
    """Load pretrained weights into `encoder`, reporting what did not fit. The mask token is pretraining-only;
    window-dependent buffers are rebuilt for this encoder's windows, so a new window size works as long as the
    config's `pretrained_window_sizes` names the old one (the summary notes when an official source's tables say
    otherwise: the config decides, since a fine-tune at a new window sets it on purpose)."""
    sd, kind = encoder_state_dict(source)
    note = _pretrained_window_note(encoder, sd)
    own = encoder.state_dict()
    skipped_shape = [k for k, v in sd.items() if k in own and own[k].shape != v.shape]
    sd = {k: v for k, v in sd.items() if k not in skipped_shape and not k.endswith(_REBUILT)}
    if getattr(encoder, "mask_token", None) is None:
        sd.pop("mask_token", None)
    result = encoder.load_state_dict(sd, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith(_REBUILT)]
    report = {"missing": missing, "unexpected": list(result.unexpected_keys), "shape_mismatch": skipped_shape}
    loaded = len(sd) - len(result.unexpected_keys)
    if loaded == 0:
        raise ValueError(f"no encoder weights of {source} ({kind}) fit this model: is it a SwinV2 of the same "
                         f"variant? unexpected keys: {list(result.unexpected_keys)[:5]}")
    log.info("loaded %d encoder tensors from %s (%s); missing %s, unexpected %s, shape mismatch %s",
             loaded, source, kind, missing, report["unexpected"], skipped_shape)
    if note:
        log.warning(note)
    print(f"pretrained: {loaded} tensors from {source} ({kind}); missing {len(missing)}, unexpected "
          f"{len(report['unexpected'])}, shape mismatch {len(skipped_shape)}"
          + (f"\n  missing: {missing}" if missing else "")
          + (f"\n  unexpected: {report['unexpected']}" if report["unexpected"] else "")
          + (f"\n  shape mismatch (left at init): {skipped_shape}" if skipped_shape else "")
          + (f"\n  {note}" if note else ""))
    return report


def load_model(source: str | Path, format: str = "auto", **config_overrides):
    """A whole model (classifier, SimMIM or encoder) from anything `weights_format` accepts (`format` names it
    instead of detecting it). Ours — a run directory (its newest checkpoint), a Lightning `.ckpt`, a ZeRO `.ckpt/`
    directory, `convert.save_model`'s safetensors — are rebuilt from the model description our tasks save in
    them; transformers directories, official and timm checkpoints go through `convert.from_*`, with
    `config_overrides` (e.g. `window_size`, `img_size`) for what those files do not record."""

    path = Path(source)
    fmt = weights_format(path) if format == "auto" else format
    if fmt not in FORMATS:
        raise ValueError(f"format={format!r}: use auto or one of {FORMATS}")
    if fmt != "ours":
        return {"transformers": interop.from_transformers, "official": interop.from_official,
                "timm": interop.from_timm}[fmt](path, **config_overrides)
    if config_overrides:
        raise ValueError(f"{path} is a checkpoint of ours and records its own config; {sorted(config_overrides)} "
                         "apply to official / timm / transformers weights only")
    if path.suffix == ".safetensors":
        return interop.load_safetensors(path)
    if path.is_dir() and not is_zero_checkpoint(path):
        path = _run_checkpoint(path)
    if not (path.is_file() or is_zero_checkpoint(path)):
        raise FileNotFoundError(f"checkpoint {path} not found")
    sd, meta = _from_lightning(path)
    if meta is None:
        raise ValueError(f"{path} carries no model description (not written by simmim_swinv2's tasks); "
                         "for other weights use simmim_swinv2.convert")
    encoder = SwinV2Encoder(SwinV2Config.from_dict(meta["config"]))
    if meta["kind"] == "SwinV2Classifier":
        id2label = {int(k): v for k, v in meta["id2label"].items()}
        model = SwinV2Classifier(encoder, len(id2label), id2label=id2label)
    elif meta["kind"] == "SimMIM":
        model = SimMIM(encoder)
    else:
        model = encoder
    result = model.load_state_dict(sd, strict=False)
    bad = [k for k in result.missing_keys if not k.endswith(_REBUILT)] + list(result.unexpected_keys)
    if bad:
        raise ValueError(f"{path}: checkpoint does not match its own model description: {bad[:8]}")
    return model
