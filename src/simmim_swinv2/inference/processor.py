"""Inference preprocessing, the same numbers as transformers' image processor for SwinV2
(`ViTImageProcessor`, torchvision backend): RGB with transparency composited onto white, bicubic
resize of the uint8 image to the model size (antialiased), rescale 1/255 and ImageNet normalisation
fused into one step.

`ImageProcessor.to_dict()` is the `preprocessor_config.json` our transformers exports carry, so that
`AutoImageProcessor.from_pretrained(export_dir)` rebuilds this very processor. Models of other than
3 channels take arrays (`.npy`, multi-band TIFF) or grey images (1 channel): `ImageProcessor.pixels`
resizes their scaled pixels (`data.arrays`) the same way, in float32; their config says
`do_convert_rgb: false` and lists one mean and std per channel.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as tvF
from PIL import Image

from ..data.arrays import pixels_to_float
from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD

_BICUBIC = 3  # PIL.Image.Resampling.BICUBIC, as transformers' configs write it


def to_rgb_white(img: Image.Image) -> Image.Image:
    """RGB, with any transparency composited onto a white background (transformers'
    `convert_to_rgb`)."""
    if "A" in img.getbands() or img.info.get("transparency") is not None:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


@dataclass
class ImageProcessor:
    """`processor(images) -> (B, C, H, W)` float tensor; `size` is (height, width),
    `C = len(mean)`."""

    size: tuple[int, int] = (224, 224)
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    _scaled: tuple[torch.Tensor, torch.Tensor] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.size = (int(self.size[0]), int(self.size[1]))
        self.mean, self.std = tuple(self.mean), tuple(self.std)
        # rescale (1/255) folded into the normalisation, as transformers fuses them
        self._scaled = (torch.tensor(self.mean) * 255.0, torch.tensor(self.std) * 255.0)

    def one(self, img: Image.Image) -> torch.Tensor:
        """`(3, H, W)` for one PIL image."""
        pixels = tvF.pil_to_tensor(to_rgb_white(img))
        pixels = tvF.resize(
            pixels, list(self.size), interpolation=tvF.InterpolationMode.BICUBIC, antialias=True
        )
        return tvF.normalize(
            pixels.to(torch.float32), self._scaled[0].tolist(), self._scaled[1].tolist()
        )

    def pixels(self, pixels: Image.Image | np.ndarray) -> torch.Tensor:
        """`(C, H, W)` for an `(H, W, C)` array or a grey image (`data.decode.load_pixels`): scaled
        to float32 (uint8 / 255, uint16 / 65535), bicubic antialiased resize, normalised."""
        x = torch.from_numpy(pixels_to_float(pixels)).permute(2, 0, 1).unsqueeze(0)
        x = F.interpolate(x, size=self.size, mode="bicubic", antialias=True, align_corners=False)[0]
        return (x - torch.tensor(self.mean).view(-1, 1, 1)) / torch.tensor(self.std).view(-1, 1, 1)

    def __call__(self, images: Image.Image | list[Image.Image]) -> torch.Tensor:
        images = [images] if isinstance(images, Image.Image) else images
        return torch.stack([self.one(img) for img in images])

    def to_dict(self) -> dict:
        return {
            "image_processor_type": "ViTImageProcessor",
            "do_convert_rgb": len(self.mean) == 3,
            "do_resize": True,
            "size": {"height": self.size[0], "width": self.size[1]},
            "resample": _BICUBIC,
            "do_rescale": True,
            "rescale_factor": 1 / 255,
            "do_normalize": True,
            "image_mean": list(self.mean),
            "image_std": list(self.std),
        }

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / "preprocessor_config.json"
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def from_dir(cls, directory: str | Path) -> ImageProcessor | None:
        """The processor a transformers directory describes, or None when it has no preprocessor
        config."""
        path = Path(directory) / "preprocessor_config.json"
        if not path.is_file():
            return None
        cfg = json.loads(path.read_text())
        if cfg.get("resample", _BICUBIC) != _BICUBIC or cfg.get("do_center_crop"):
            raise ValueError(
                f"{path}: only bicubic resize without centre crop is supported (SwinV2's processor)"
            )
        size = cfg.get("size", {"height": 224, "width": 224})
        if "shortest_edge" in size:
            raise ValueError(f"{path}: size.shortest_edge is not supported; give height/width")
        return cls(
            (size["height"], size["width"]),
            tuple(cfg.get("image_mean", IMAGENET_MEAN)),
            tuple(cfg.get("image_std", IMAGENET_STD)),
        )
