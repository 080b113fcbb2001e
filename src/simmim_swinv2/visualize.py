"""Reconstructions of your own images: `python -m simmim_swinv2.visualize checkpoint=PATH images=[…]
[mask.mask_ratio=…]`.

For each image (files, folders searched recursively, globs: as `predict`), writes
`<output_dir>/<name>.png`: the picture the training callback draws (`ReconstructionImages`:
original | masked input | reconstruction | reconstruction pasted into the visible pixels), at the
model's input size — the image resized (shorter side) and centre-cropped by the eval transform — and
prints the masked-pixel L1 (the training loss of that image and mask).

PATH must hold a SimMIM model (encoder + decoder): a pretraining run directory or `.ckpt` of ours, a
transformers `Swinv2ForMaskedImageModeling` directory
(`python -m simmim_swinv2.convert to-transformers RUN OUT`), or an official SimMIM checkpoint. The
mask is SimMIM's block mask (`data.MaskGenerator`), drawn from `seed`; its block size and ratio
default to the run's (its `config.yaml`), else SimMIM's 32 px at 0.6.
"""

from __future__ import annotations

import io
import re
import sys
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image, ImageOps
from torchvision.utils import save_image

from .config import ConfigError
from .config.checks import check_values
from .config.compose import command
from .data import MaskGenerator
from .data.arrays import is_array_bytes
from .inference import resolve_device
from .inference.inputs import expand_inputs
from .models import SimMIM
from .training.callbacks import ReconstructionImages
from .training.knn import eval_transform
from .weights import load_model
from .weights.meta import normalization

# microsoft/SimMIM data/data_simmim.py defaults
SIMMIM_MASK = {"mask_patch_size": 32, "mask_ratio": 0.6}


def load_simmim(checkpoint: str | Path, **overrides) -> SimMIM:
    model = load_model(checkpoint, **overrides)
    if not isinstance(model, SimMIM):
        raise ConfigError(
            f"{checkpoint} holds a {type(model).__name__}, which has no SimMIM decoder to "
            "reconstruct with: give a pretraining run or .ckpt of ours, a transformers "
            "Swinv2ForMaskedImageModeling directory or an official SimMIM checkpoint (with its "
            "decoder)"
        )
    return model


def run_settings(checkpoint: str | Path) -> dict:
    """The mask and target settings the checkpoint was pretrained with, from its run's `config.yaml`
    (a run directory, or a `.ckpt` in its `checkpoints/`); empty for anything else."""
    path = Path(checkpoint)
    for folder in (path, path.parent, path.parent.parent):
        config = folder / "config.yaml"
        if config.is_file() and (folder / "checkpoints").is_dir():
            cfg = OmegaConf.load(config)
            mask = cfg.get("mask") or {}
            found = {
                "mask_patch_size": mask.get("mask_patch_size"),
                "mask_ratio": mask.get("mask_ratio"),
                "norm_target": cfg.get("norm_target"),
                "norm_target_window": cfg.get("norm_target_window"),
            }
            return {k: v for k, v in found.items() if v is not None}
    return {}


def visualize(cfg: DictConfig) -> list[dict]:
    """Write one picture per readable image; returns `[{"image", "picture", "l1"}]`."""
    check_values(cfg)
    overrides = (
        OmegaConf.to_container(cfg.model_overrides, resolve=True)
        if cfg.get("model_overrides")
        else {}
    )
    model = load_simmim(cfg.checkpoint, **overrides)
    recorded = run_settings(cfg.checkpoint)

    def setting(name, value):
        return value if value is not None else recorded.get(name, SIMMIM_MASK.get(name))

    model.norm_target = bool(setting("norm_target", cfg.norm_target))
    model.norm_target_window = int(recorded.get("norm_target_window", model.norm_target_window))
    enc = model.encoder.cfg
    mask = MaskGenerator(
        enc.img_size,
        setting("mask_patch_size", cfg.mask.mask_patch_size),
        enc.patch_size,
        setting("mask_ratio", cfg.mask.mask_ratio),
    )
    paths = expand_inputs(list(cfg.images) if not isinstance(cfg.images, str) else cfg.images)
    if not paths:
        raise ConfigError(f"no images found in {cfg.images}")
    device = resolve_device(cfg.device)
    mean, std = normalization(model)
    channels = list(cfg.channels) if cfg.get("channels") else None
    model = model.to(device).eval()
    transform = eval_transform(enc.img_size, cfg.crop_pct, mean, std)
    # masks in image order: the same run draws the same masks
    generator = torch.Generator().manual_seed(cfg.seed)
    out_dir = Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    print(
        f"{cfg.checkpoint}: {enc.img_size[0]}x{enc.img_size[1]} px, {mask}, normalised target "
        f"{model.norm_target}"
    )
    results, names = [], set()
    for item in paths:
        try:
            data = item.read()
            if len(mean) == 3 and isinstance(data, bytes) and not is_array_bytes(data):
                with Image.open(io.BytesIO(data)) as img:
                    data = ImageOps.exif_transpose(img).convert("RGB")
            x = transform(data).unsqueeze(0)
        except Exception as err:  # noqa: BLE001 - any unreadable input is reported and skipped
            print(
                f"skipping {item.name}: cannot read it ({type(err).__name__}: {err})",
                file=sys.stderr,
            )
            continue
        m = mask(generator).unsqueeze(0)
        with torch.no_grad():
            out = model(x.to(device), m.to(device))
        grid = ReconstructionImages.grid(
            x,
            m,
            out.reconstruction.float().cpu(),
            enc.patch_size,
            model.norm_target,
            mean,
            std,
            channels,
        )
        stem = Path(item.name).stem
        if item.name.startswith("hf:"):  # hf:PATH:split#row -> PATH_split_row
            stem = re.sub(r"[^\w.-]+", "_", item.name.removeprefix("hf:")).strip("_")
        name, n = stem, 1
        while name in names:
            name, n = f"{stem}_{n}", n + 1
        names.add(name)
        picture = out_dir / f"{name}.png"
        save_image(grid, picture)
        results.append({"image": item.name, "picture": str(picture), "l1": float(out.loss)})
        print(f"{item.name}: masked-pixel L1 {float(out.loss):.4f} -> {picture}")
    return results


@command("visualize")
def main(cfg: DictConfig) -> None:
    visualize(cfg)


if __name__ == "__main__":
    main()
