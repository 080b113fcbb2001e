"""Image decoding: PIL to RGB, and a fast fused decode → random-resized-crop for the pretrain path.

Images are shown upright: the EXIF orientation tag is applied everywhere (JPEG, PNG, WebP), a
choice the torchvision reference (``ImageFolder``'s PIL loader) does not make; it only changes
the few photos that carry a rotation tag.

The fast path (:func:`decode_resized_crop`) draws the crop on the *full-size* (upright) image,
with the same distribution and random draws as torchvision's ``RandomResizedCrop``, then:

* JPEG (YCbCr/grey/RGB, no rotation tag): libjpeg-turbo through ``simplejpeg``, straight to an
  HWC uint8 array. ``fast=True`` (default) turns on plain (non-"fancy") chroma upsampling:
  unbiased, a fraction of a level of mean absolute difference after the resize. The fast *IDCT*
  is never used: it saves little and shifts colours (a red and blue bias against PIL). If the
  crop is still at least the output size after a 2×/4×/8× reduction, the JPEG is decoded at that
  reduction in the DCT domain (never below the output size, so nothing gets upsampled that the
  full-size path would have downsampled). Only power-of-two reductions are used: the others
  (3/4, 5/8, …) decode *slower* than full size in libjpeg-turbo.
* anything else (PNG, WebP, BMP, CMYK JPEG, rotated JPEG, JPEGs libjpeg-turbo rejects with its
  strict checks, PIL images): PIL, converted to RGB.

The crop is resized with antialiased bilinear interpolation on uint8 channels-last tensors
(torch's vectorised kernel), like torchvision's default ``RandomResizedCrop`` on PIL images.

Decoding is most of a sample's cost, and most of decoding is entropy decoding, which no decoder
option removes; the per-step costs and the end-to-end comparison are in docs/benchmarks.md
(``scripts/benchmark_data.py``).
"""

from __future__ import annotations

import functools
import io
import math
import warnings

import numpy as np
import simplejpeg
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from .arrays import as_float, is_array_bytes, read_array, to_hwc

JPEG_MAGIC = b"\xff\xd8"
_FAST_COLORSPACES = ("YCbCr", "Gray", "RGB")  # what libjpeg-turbo converts to RGB exactly like PIL


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB.

    Args:
        img: a PIL image of any mode (L, P, RGBA, LA, CMYK, I;16, …).

    Returns:
        ``img`` itself if RGB, else an RGB copy: transparency goes onto black, 16/32-bit grey is
        scaled to its maximum.
    """
    if img.mode == "RGB":
        return img
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        img = Image.fromarray((255 * arr / max(arr.max(), 1)).astype(np.uint8))
    return img.convert("RGB")


def decode_rgb(data: bytes, min_shorter: int | None = None) -> Image.Image:
    """Decode encoded image bytes to an upright RGB PIL image (fully loaded, so truncation raises
    here).

    Args:
        data: encoded image bytes (any format PIL reads).
        min_shorter: decode JPEGs at the largest DCT reduction that keeps the shorter side
            ``>= min_shorter`` (a no-op for images already near that size); None: full size.

    Returns:
        An RGB PIL image, EXIF orientation applied.
    """
    return to_rgb(decode_image(data, min_shorter))


def decode_image(data: bytes, min_shorter: int | None = None) -> Image.Image:
    """:func:`decode_rgb` without the conversion: the upright image in its own mode (grey stays
    grey)."""
    img = Image.open(io.BytesIO(data))
    if min_shorter is not None and img.format == "JPEG":
        w, h = img.size
        s = min_shorter / min(w, h)
        if s < 0.5:
            img.draft("RGB", (math.ceil(w * s), math.ceil(h * s)))
    img.load()
    ImageOps.exif_transpose(img, in_place=True)
    return img


def image_to_channels(img: Image.Image, channels: int) -> Image.Image:
    """An encoded image as `channels` channels: RGB (3) or grey 'L' (1); 16-bit grey is scaled to 8
    bits first."""
    if channels == 3:
        return to_rgb(img)
    if channels != 1:
        raise ValueError(
            f"an image file ({img.format or img.mode}) gives 1 or 3 channels, not model.in_chans="
            f"{channels}: store {channels}-channel data as .npy or multi-band .tif files"
        )
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        return Image.fromarray((255 * arr / max(arr.max(), 1)).astype(np.uint8))
    if "A" in img.getbands() or (img.mode == "P" and "transparency" in img.info):
        img = to_rgb(img)  # transparency onto black, as for RGB
    return img.convert("L")


def load_pixels(data, channels: int = 3) -> Image.Image | np.ndarray:
    """Any sample's pixels: encoded image bytes or a PIL image → an upright PIL image of `channels`
    channels (RGB or 'L'); `.npy` / TIFF bytes or an array (a data set's array column) → an
    `(H, W, C)` array as stored."""
    if isinstance(data, np.ndarray):
        return to_hwc(data, channels)
    if isinstance(data, Image.Image):
        return image_to_channels(data, channels)
    if is_array_bytes(data):
        return to_hwc(read_array(data), channels)
    return image_to_channels(decode_image(data), channels)


def jpeg_orientation(data: bytes) -> int:
    """EXIF orientation tag (1–8) of JPEG bytes, read from the APP1 segment; 1 when absent or
    unreadable."""
    pos, end = 2, len(data)
    while pos + 4 <= end and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xDA, 0xD9):  # start of scan / end of image: the headers are over
            break
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if marker == 0xE1 and data[pos + 4 : pos + 10] == b"Exif\0\0":
            return _tiff_orientation(data[pos + 10 : pos + 2 + length])
        pos += 2 + length
    return 1


def _tiff_orientation(tiff: bytes) -> int:
    order = {b"II": "little", b"MM": "big"}.get(tiff[:2])
    if order is None or len(tiff) < 8:
        return 1
    ifd = int.from_bytes(tiff[4:8], order)
    count = int.from_bytes(tiff[ifd : ifd + 2], order) if ifd + 2 <= len(tiff) else 0
    for entry in range(ifd + 2, min(ifd + 2 + 12 * count, len(tiff) - 11), 12):
        if int.from_bytes(tiff[entry : entry + 2], order) == 0x0112:
            # SHORT, first in the value field
            value = int.from_bytes(tiff[entry + 8 : entry + 10], order)
            return value if 1 <= value <= 8 else 1
    return 1


@functools.lru_cache(maxsize=16)
def _log_ratio(ratio: tuple[float, float]) -> tuple[float, float]:
    # In float32 as torchvision computes it, so the draws below match its own bit for bit.
    return tuple(torch.log(torch.tensor(ratio)).tolist())


def sample_crop(
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator | None = None,
) -> tuple[int, int, int, int]:
    """``(top, left, h, w)`` drawn exactly as
    ``torchvision.transforms.RandomResizedCrop.get_params``."""
    area = height * width
    log_ratio = _log_ratio(tuple(ratio))
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1], generator=generator).item()
        aspect = math.exp(
            torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=generator).item()
        )
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, size=(1,), generator=generator).item())
            left = int(torch.randint(0, width - w + 1, size=(1,), generator=generator).item())
            return top, left, h, w
    # Fallback: central crop with the ratio clamped into range.
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        h, w = height, round(height * max(ratio))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def _hwc_to_nchw(arr: np.ndarray) -> torch.Tensor:
    # An HWC array viewed as NCHW is already channels-last: no copy. PIL's buffer is read-only, but
    # it is only ever read, so torch's warning about that is silenced.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).unsqueeze(0)


def _crop_resize(
    arr: np.ndarray, box: tuple[int, int, int, int], size: tuple[int, int], mode: str = "bilinear"
) -> torch.Tensor:
    """Crop ``box = (top, left, bottom, right)`` of an HWC array, resize (antialiased ``mode``).

    uint8 pixels resized bilinearly stay uint8 ``(C, H, W)``, channels-last in memory (strides
    ``(1, CW, C)``); any other pixels (uint16, float, bicubic) come back as float32 ``(C, H, W)``
    scaled by :func:`~.arrays.pixel_scale` (uint16 / 65535).
    """
    top, left, bottom, right = box
    if arr.dtype != np.uint8 or mode != "bilinear":
        arr = as_float(arr[top:bottom, left:right])
        top, left, bottom, right = 0, 0, arr.shape[0], arr.shape[1]
    x = _hwc_to_nchw(arr)[:, :, top:bottom, left:right].contiguous(
        memory_format=torch.channels_last
    )
    return F.interpolate(x, size=size, mode=mode, antialias=True, align_corners=False)[0]


def _dct_reduction(h: int, w: int, out_h: int, out_w: int) -> int:
    """Largest of 1, 2, 4, 8 that keeps an ``h × w`` crop at least ``out_h × out_w``."""
    reduction = 1
    while reduction < 8 and h // (2 * reduction) >= out_h and w // (2 * reduction) >= out_w:
        reduction *= 2
    return reduction


def _fast_jpeg_size(data: bytes) -> tuple[int, int] | None:
    """``(height, width)`` if libjpeg-turbo can take this file straight to upright RGB, else
    ``None``."""
    if data[:2] != JPEG_MAGIC:
        return None
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return None
    if colorspace not in _FAST_COLORSPACES or jpeg_orientation(data) != 1:
        return None
    return height, width


def decode_resized_crop(
    data: bytes | Image.Image | np.ndarray,
    size: tuple[int, int],
    scale: tuple[float, float] = (0.67, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    generator: torch.Generator | None = None,
    fast: bool = True,
    channels: int = 3,
    mode: str = "bilinear",
) -> torch.Tensor:
    """Decode and random-resized-crop one sample → ``(C, H, W)``, ``(H, W) = size``,
    ``C = channels``.

    Images (RGB, or grey for ``channels=1``) come back as uint8, channels-last; ``.npy`` / TIFF
    arrays (bytes or an ``(H, W, C)`` / ``(C, H, W)`` array) of uint8 as uint8 too, of any other
    type as float32 scaled to [0, 1] (uint16) or as stored (float): see :mod:`.arrays`.

    Args:
        data: encoded bytes, a PIL image, or an ``(H, W, C)`` / ``(C, H, W)`` array.
        size: ``(H, W)`` of the output.
        scale, ratio: ranges of the crop's area share and aspect ratio (``RandomResizedCrop``'s).
        generator: the random generator of the crop; None: torch's global one.
        fast: plain JPEG chroma upsampling; False: fancy (PIL's and torchvision's default), then
            JPEG pixels match PIL's decode to within 1 level.
        channels: 3 (RGB) or 1 (grey) for images; an array must have this many channels.
        mode: ``"bilinear"``, or ``"bicubic"`` (fine-tuning's), which resizes in float32.

    Returns:
        ``(channels, *size)``: uint8 channels-last, or float32 (see above).
    """
    if (
        channels != 3
        or mode != "bilinear"
        or isinstance(data, np.ndarray)
        or (not isinstance(data, Image.Image) and is_array_bytes(data))
    ):
        arr = np.asarray(load_pixels(data, channels))
        arr = arr[:, :, None] if arr.ndim == 2 else arr
        top, left, h, w = sample_crop(arr.shape[0], arr.shape[1], scale, ratio, generator)
        return _crop_resize(arr, (top, left, top + h, left + w), size, mode)
    jpeg_size = None if isinstance(data, Image.Image) else _fast_jpeg_size(data)
    if jpeg_size is None:
        img = to_rgb(data) if isinstance(data, Image.Image) else decode_rgb(data)
        top, left, h, w = sample_crop(img.height, img.width, scale, ratio, generator)
        return _crop_resize(np.asarray(img), (top, left, top + h, left + w), size)

    height, width = jpeg_size
    top, left, h, w = sample_crop(height, width, scale, ratio, generator)
    reduction = _dct_reduction(h, w, *size)
    min_h, min_w = (
        (math.ceil(height / reduction), math.ceil(width / reduction)) if reduction > 1 else (0, 0)
    )
    try:
        arr = simplejpeg.decode_jpeg(
            data,
            colorspace="RGB",
            fastdct=False,
            fastupsample=fast,
            min_height=min_h,
            min_width=min_w,
        )
    # truncated, or a recoverable warning under strict mode: PIL decides (same crop)
    except ValueError:
        arr = np.asarray(decode_rgb(data))
    if arr.shape[:2] == (height, width):
        return _crop_resize(arr, (top, left, top + h, left + w), size)
    sy, sx = arr.shape[0] / height, arr.shape[1] / width  # decoded at 1/reduction: map the box
    t0, l0 = round(top * sy), round(left * sx)
    t1 = max(t0 + 1, min(arr.shape[0], round((top + h) * sy)))
    l1 = max(l0 + 1, min(arr.shape[1], round((left + w) * sx)))
    return _crop_resize(arr, (t0, l0, t1, l1), size)


def apply_transform(transform, data: bytes | Image.Image | np.ndarray, label: int) -> tuple:
    """Run ``transform`` on the stored sample (encoded bytes, a PIL image or an array) if it
    ``accepts_bytes``, else on its upright RGB PIL image (an array: its ``(H, W, C)`` pixels,
    :func:`load_pixels`).

    Returns the transform's outputs flattened, then the label: ``(image, mask, label)`` for
    :class:`~.transforms.SimMIMTransform`, ``(image, label)`` for single-output transforms.
    Decoding errors propagate (the caller counts them as bad samples).
    """
    if transform is not None and getattr(transform, "accepts_bytes", False):
        out = transform(data)
    else:
        img = load_pixels(data, 3)
        out = transform(img) if transform is not None else img
    return (*out, label) if isinstance(out, tuple) else (out, label)
