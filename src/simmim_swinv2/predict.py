"""Classify images: `python -m simmim_swinv2.predict checkpoint=PATH images=[…] [top_k=5] [output=json]`.

`checkpoint` is a fine-tuning run directory, a `.ckpt` file or ZeRO directory of ours, our `.safetensors`, a
transformers directory (what `python -m simmim_swinv2.convert to-transformers RUN OUT` writes), or an official
classifier (anything `weights.load_model` reads). Prints the top-k labels (`id2label` names: the data set's
class names) with probabilities per image. Preprocessing is transformers' for
SwinV2 (`data/processor.py`), read from the checkpoint's `preprocessor_config.json` when it has one, so the
numbers equal `pipeline("image-classification", model=export_dir)`'s. Unreadable images are reported on stderr
and skipped.
"""

from __future__ import annotations

import glob
import json
import sys
from pathlib import Path

import torch
from omegaconf import DictConfig
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm import tqdm

from .config import ConfigError
from .config.checks import check_values
from .config.compose import command
from .config.schema import OutputFormat, PredictConfig, to_object
from .data import IMAGE_EXTENSIONS
from .inference import ImageProcessor, resolve_device
from .models import SwinV2Classifier
from .weights import load_model


def expand_images(specs: list[str] | str) -> list[Path]:
    """Files, folders (recursively, image extensions in any case) and globs → sorted unique paths."""
    specs = [specs] if isinstance(specs, str) else list(specs)
    found: list[Path] = []
    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        elif path.is_file():
            found.append(path)
        else:
            matches = sorted(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file())
            if not matches:
                raise FileNotFoundError(f"{spec}: no such file, folder or matching glob")
            found += matches
    return list(dict.fromkeys(found))


class Predictor:
    """A classifier with its preprocessing; `predict(paths)` → one result per readable image."""

    def __init__(self, checkpoint: str | Path, device: str = "auto") -> None:
        model = load_model(checkpoint)
        if not isinstance(model, SwinV2Classifier):
            raise ConfigError(f"{checkpoint} holds a {type(model).__name__}, not a classifier")
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        path = Path(checkpoint)
        self.processor = (ImageProcessor.from_dir(path) if path.is_dir() else None) or ImageProcessor(
            model.encoder.cfg.img_size)

    @torch.no_grad()
    def predict(self, paths: list[Path], top_k: int = 5, batch_size: int = 32, progress: bool = True,
                on_error=None) -> list[dict]:
        k = min(top_k, self.model.num_classes)
        results = []
        batches = range(0, len(paths), batch_size)
        for start in tqdm(batches, desc="predict", unit="batch", disable=not progress or len(batches) < 2,
                          file=sys.stderr):
            images, names = [], []
            for path in paths[start:start + batch_size]:
                try:
                    with Image.open(path) as img:
                        # as pipeline("image-classification") loads images: EXIF orientation applied, then a
                        # plain RGB conversion (transparency dropped; the processor alone would composite it)
                        images.append(self.processor.one(ImageOps.exif_transpose(img).convert("RGB")))
                    names.append(str(path))
                except (OSError, UnidentifiedImageError, ValueError) as err:
                    (on_error or _report)(path, err)
            if not images:
                continue
            logits = self.model(torch.stack(images).to(self.device)).logits.float()
            probs, ids = logits.softmax(-1).topk(k, dim=-1)
            for name, p, i in zip(names, probs.tolist(), ids.tolist()):
                results.append({"image": name, "predictions": [
                    {"label": self.model.id2label[c], "score": s} for c, s in zip(i, p)]})
        return results


def _report(path: Path, err: Exception) -> None:
    print(f"skipping {path}: cannot read it as an image ({type(err).__name__}: {err})", file=sys.stderr)


def predict(cfg: DictConfig) -> list[dict]:
    check_values(cfg)
    job = to_object(cfg, PredictConfig)  # output: text | json, checked at composition
    paths = expand_images(job.images)
    if not paths:
        raise ConfigError(f"no images found in {job.images}")
    skipped: list[str] = []

    def on_error(path, err):
        skipped.append(str(path))
        _report(path, err)

    results = Predictor(job.checkpoint, job.device).predict(paths, job.top_k, job.batch_size, on_error=on_error)
    if job.output is OutputFormat.json:
        print(json.dumps({"results": results, "skipped": skipped}, indent=2))
    else:
        for r in results:
            print(r["image"] + ": " + ", ".join(f"{p['label']} {p['score']:.4f}" for p in r["predictions"]))
        if skipped:
            print(f"{len(skipped)} unreadable image(s) skipped", file=sys.stderr)
    return results


@command("predict")
def main(cfg: DictConfig) -> None:
    predict(cfg)


if __name__ == "__main__":
    main()
