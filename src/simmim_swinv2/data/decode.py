"""Image decoding: PIL to RGB, and a fast fused decode → random-resized-crop for the pretrain path.

The fast path (:func:`decode_resized_crop`) draws the crop on the *full-size* image (same
distribution as torchvision's ``RandomResizedCrop``), then decodes as little as it can:

* JPEG whose crop would still have at least the output size after a 2×/4×/8× DCT reduction:
  PIL ``draft`` decodes at that reduction (never below the output size, so nothing gets
  upsampled that the full-size path would have downsampled);
* other JPEGs: libjpeg-turbo through ``torchvision.io.decode_jpeg``;
* everything else (PNG, WebP, BMP, PIL images): PIL, converted to RGB.

The crop is resized with antialiased bilinear interpolation on uint8 channels-last tensors
(torch's vectorised kernel), like torchvision's default ``RandomResizedCrop`` on PIL images.
"""

from __future__ import annotations

import io
import math
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg

JPEG_MAGIC = b"\xff\xd8"


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode (L, P, RGBA, LA, CMYK, I;16, …) to RGB; transparency goes onto black."""
    if img.mode == "RGB":
        return img
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        img = Image.fromarray((255 * arr / max(arr.max(), 1)).astype(np.uint8))
    return img.convert("RGB")


def decode_rgb(data: bytes, min_shorter: int | None = None) -> Image.Image:
    """Decode encoded image bytes to an RGB PIL image (fully loaded, so truncation raises here).

    With ``min_shorter``, JPEGs are decoded at the largest DCT reduction that keeps the shorter
    side ``>= min_shorter`` (a no-op for images already near that size).
    """
    img = Image.open(io.BytesIO(data))
    if min_shorter is not None and img.format == "JPEG":
        w, h = img.size
        s = min_shorter / min(w, h)
        if s < 0.5:
            img.draft("RGB", (math.ceil(w * s), math.ceil(h * s)))
    img.load()
    return to_rgb(img)


def sample_crop(
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator | None = None,
) -> tuple[int, int, int, int]:
    """``(top, left, h, w)`` drawn exactly as ``torchvision.transforms.RandomResizedCrop.get_params``."""
    area = height * width
    log_ratio = torch.log(torch.tensor(ratio))
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1], generator=generator).item()
        aspect = math.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=generator).item())
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, size=(1,), generator=generator).item())
            left = int(torch.randint(0, width - w + 1, size=(1,), generator=generator).item())
            return top, left, h, w
    # Fallback: central crop with the ratio clamped into range.
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def _resize_uint8(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(1, 3, h, w)`` uint8 (any memory format) → ``(3, H, W)`` uint8, antialiased bilinear."""
    x = x.contiguous(memory_format=torch.channels_last)
    out = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    return out[0]


def _hwc_to_nchw(arr: np.ndarray) -> torch.Tensor:
    # An HWC array viewed as NCHW is already channels-last: no copy needed. The array is read-only
    # (PIL's buffer) and is only ever read, so torch's warning about that is silenced.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).unsqueeze(0)


def decode_resized_crop(
    data: bytes | Image.Image,
    size: tuple[int, int],
    scale: tuple[float, float] = (0.67, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Decode and random-resized-crop one image → uint8 ``(3, H, W)`` with ``(H, W) = size``."""
    out_h, out_w = size
    if isinstance(data, Image.Image):
        img = to_rgb(data)
        top, left, h, w = sample_crop(img.height, img.width, scale, ratio, generator)
        x = _hwc_to_nchw(np.asarray(img))[:, :, top : top + h, left : left + w]
        return _resize_uint8(x, size)

    img = Image.open(io.BytesIO(data))  # reads the header only
    width, height = img.size
    top, left, h, w = sample_crop(height, width, scale, ratio, generator)
    if img.format != "JPEG":
        img.load()
        x = _hwc_to_nchw(np.asarray(to_rgb(img)))
        return _resize_uint8(x[:, :, top : top + h, left : left + w], size)

    reduction = 1
    while reduction < 8 and h // (2 * reduction) >= out_h and w // (2 * reduction) >= out_w:
        reduction *= 2
    if reduction == 1:
        buf = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        x = decode_jpeg(buf, mode=ImageReadMode.RGB).unsqueeze(0)
        return _resize_uint8(x[:, :, top : top + h, left : left + w], size)

    img.draft("RGB", (math.ceil(width / reduction), math.ceil(height / reduction)))
    img.load()
    img = to_rgb(img)
    sy, sx = img.height / height, img.width / width
    t0, l0 = int(round(top * sy)), int(round(left * sx))
    t1 = max(t0 + 1, min(img.height, int(round((top + h) * sy))))
    l1 = max(l0 + 1, min(img.width, int(round((left + w) * sx))))
    x = _hwc_to_nchw(np.asarray(img))[:, :, t0:t1, l0:l1]
    return _resize_uint8(x, size)


def apply_transform(transform, data: bytes | Image.Image, label: int) -> tuple:
    """Run ``transform`` on encoded bytes (if it ``accepts_bytes``) or on the RGB PIL image.

    Returns the transform's outputs flattened, then the label: ``(image, mask, label)`` for
    :class:`~.transforms.SimMIMTransform`, ``(image, label)`` for single-output transforms.
    Decoding errors propagate (the caller counts them as bad samples).
    """
    if transform is not None and getattr(transform, "accepts_bytes", False):
        out = transform(data)
    else:
        img = to_rgb(data) if isinstance(data, Image.Image) else decode_rgb(data)
        out = transform(img) if transform is not None else img
    return (*out, label) if isinstance(out, tuple) else (out, label)
