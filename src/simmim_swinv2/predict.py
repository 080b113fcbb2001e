"""Classify images: `python -m simmim_swinv2.predict checkpoint=PATH images=[…] [top_k=5]
[output=json]`.

`checkpoint` is a fine-tuning run directory, a `.ckpt` file or ZeRO directory of ours, our
`.safetensors`, a transformers directory (what
`python -m simmim_swinv2.convert to-transformers RUN OUT` writes), or an official classifier
(anything `weights.load_model` reads). Prints the top-k labels (`id2label` names: the data set's
class names) with probabilities per image. Preprocessing is transformers' for SwinV2
(`inference/processor.py`), read from the checkpoint's `preprocessor_config.json` when it has one,
so the numbers equal `pipeline("image-classification", model=export_dir)`'s. Unreadable images are
reported on stderr and skipped.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import torch
from omegaconf import DictConfig
from PIL import Image, ImageOps
from tqdm import tqdm

from .config import ConfigError
from .config.checks import check_values
from .config.compose import command
from .config.schema import OutputFormat, PredictConfig, to_object
from .data.arrays import is_array_bytes
from .data.decode import load_pixels
from .inference import ImageProcessor, resolve_device
from .inference.inputs import Input, expand_images, expand_inputs
from .models import SwinV2Classifier
from .weights import load_model
from .weights.meta import normalization

__all__ = ["Predictor", "expand_images", "prepare", "predict"]


def prepare(processor: ImageProcessor, data) -> torch.Tensor:
    """`(C, H, W)` model input of a stored sample (encoded bytes or an array). RGB images as
    pipeline("image-classification") loads them: EXIF orientation applied, then a plain RGB
    conversion (transparency dropped; the processor alone would composite it); arrays and grey
    images through `ImageProcessor.pixels`."""
    channels = len(processor.mean)
    if channels == 3 and isinstance(data, bytes) and not is_array_bytes(data):
        with Image.open(io.BytesIO(data)) as img:
            return processor.one(ImageOps.exif_transpose(img).convert("RGB"))
    pixels = load_pixels(data, channels)
    if isinstance(pixels, Image.Image) and channels == 3:
        return processor.one(pixels)
    return processor.pixels(pixels)


class Predictor:
    """A classifier with its preprocessing; `predict(inputs)` → one result per readable input."""

    def __init__(self, checkpoint: str | Path, device: str = "auto") -> None:
        model = load_model(checkpoint)
        if not isinstance(model, SwinV2Classifier):
            raise ConfigError(f"{checkpoint} holds a {type(model).__name__}, not a classifier")
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        path = Path(checkpoint)
        self.processor = (
            ImageProcessor.from_dir(path) if path.is_dir() else None
        ) or ImageProcessor(model.encoder.cfg.img_size, *normalization(model))

    @torch.no_grad()
    def predict(
        self,
        inputs: list[Input | Path],
        top_k: int = 5,
        batch_size: int = 32,
        progress: bool = True,
        on_error=None,
    ) -> list[dict]:
        """Top-k `{"label", "score"}` per input (`Input`s or file paths); an unreadable one goes to
        `on_error`."""
        inputs = [Input(str(i), i.read_bytes) if isinstance(i, Path) else i for i in inputs]
        k = min(top_k, self.model.num_classes)
        results = []
        batches = range(0, len(inputs), batch_size)
        for start in tqdm(
            batches,
            desc="predict",
            unit="batch",
            disable=not progress or len(batches) < 2,
            file=sys.stderr,
        ):
            images, names = [], []
            for item in inputs[start : start + batch_size]:
                try:
                    images.append(prepare(self.processor, item.read()))
                    names.append(item.name)
                # any unreadable input is reported and skipped
                except Exception as err:  # noqa: BLE001
                    (on_error or _report)(item.name, err)
            if not images:
                continue
            logits = self.model(torch.stack(images).to(self.device)).logits.float()
            probs, ids = logits.softmax(-1).topk(k, dim=-1)
            for name, p, i in zip(names, probs.tolist(), ids.tolist()):
                results.append(
                    {
                        "image": name,
                        "predictions": [
                            {"label": self.model.id2label[c], "score": s} for c, s in zip(i, p)
                        ],
                    }
                )
        return results


def _report(path: Path, err: Exception) -> None:
    print(
        f"skipping {path}: cannot read it as an image ({type(err).__name__}: {err})",
        file=sys.stderr,
    )


def predict(cfg: DictConfig) -> list[dict]:
    check_values(cfg)
    job = to_object(cfg, PredictConfig)  # output: text | json, checked at composition
    paths = expand_inputs(job.images)
    if not paths:
        raise ConfigError(f"no images found in {job.images}")
    skipped: list[str] = []

    def on_error(path, err):
        skipped.append(str(path))
        _report(path, err)

    results = Predictor(job.checkpoint, job.device).predict(
        paths, job.top_k, job.batch_size, on_error=on_error
    )
    if job.output is OutputFormat.json:
        print(json.dumps({"results": results, "skipped": skipped}, indent=2))
    else:
        for r in results:
            print(
                r["image"]
                + ": "
                + ", ".join(f"{p['label']} {p['score']:.4f}" for p in r["predictions"])
            )
        if skipped:
            print(f"{len(skipped)} unreadable image(s) skipped", file=sys.stderr)
    return results


@command("predict")
def main(cfg: DictConfig) -> None:
    predict(cfg)


if __name__ == "__main__":
    main()
