"""Pixels with any number of channels: `.npy` arrays and multi-band TIFF files, read to `(H, W, C)`
arrays (the one rule that turns any stored image or array into pixels, `decode.load_pixels`, reads
arrays through here).

Arrays are `(H, W, C)` or `(C, H, W)` (told apart by the channel count the model expects), or
`(H, W)` for one channel; uint8, uint16 or float. Integer pixels are scaled to [0, 1] by their
type's maximum (255, 65535), as torchvision's `ToTensor` scales uint8; float pixels are taken as
they are.
`data.mean` / `data.std` are per-channel statistics of these scaled values
(`python -m simmim_swinv2.stats` computes them).

TIFF files are read with `tifffile` (Pillow decodes no more than 4 samples per pixel: a 7-band TIFF
is refused there); LZW- or JPEG-compressed ones need `imagecodecs` beside it, uncompressed and
deflate ones do not. Encoded images (JPEG, PNG, …) keep the PIL / libjpeg-turbo path of `decode.py`:
RGB for 3 channels, grey ('L') for 1."""

from __future__ import annotations

import io

import numpy as np

ARRAY_EXTENSIONS = (".npy", ".tif", ".tiff")
NPY_MAGIC = b"\x93NUMPY"
TIFF_MAGICS = (
    b"II*\x00",
    b"MM\x00*",
    b"II+\x00",
    b"MM\x00+",
)  # classic and BigTIFF, both byte orders
IMAGE_CHANNELS = (1, 3)  # what an encoded image file (JPEG, PNG, ...) is converted to: grey or RGB


def is_array_bytes(data: bytes) -> bool:
    """Whether encoded bytes hold an `.npy` array or a TIFF file (read by `read_array`, not PIL)."""
    head = bytes(data[:6])
    return head.startswith(NPY_MAGIC) or head[:4] in TIFF_MAGICS


def read_array(data: bytes) -> np.ndarray:
    """The array an `.npy` or TIFF file holds, as stored (no pickles: `allow_pickle=False`)."""
    if bytes(data[:6]).startswith(NPY_MAGIC):
        return np.load(io.BytesIO(data), allow_pickle=False)
    import tifffile  # only TIFF input needs it

    return tifffile.imread(io.BytesIO(data))


def to_hwc(arr: np.ndarray, channels: int | None = None) -> np.ndarray:
    """`(H, W)`, `(H, W, C)` or `(C, H, W)` → `(H, W, C)`. With `channels`, the axis of that length
    is the channel axis (the last one when both fit) and an array with neither is refused;
    without, the shorter end axis is."""
    if arr.ndim == 2:
        arr = arr[:, :, None]
    elif arr.ndim != 3:
        raise ValueError(f"an array of shape {arr.shape}: expected (H, W), (H, W, C) or (C, H, W)")
    elif channels is not None:
        if arr.shape[-1] != channels:
            if arr.shape[0] != channels:
                raise ValueError(
                    f"an array of shape {arr.shape} has no axis of {channels} channels "
                    "(model.in_chans="
                    f"{channels}): give (H, W, {channels}) or ({channels}, H, W) arrays"
                )
            arr = arr.transpose(1, 2, 0)
    elif arr.shape[0] < arr.shape[-1]:
        arr = arr.transpose(1, 2, 0)
    if channels is not None and arr.shape[-1] != channels:
        raise ValueError(f"an array of {arr.shape[-1]} channel(s) where model.in_chans={channels}")
    if arr.dtype.kind not in "uif" and arr.dtype != bool:
        raise ValueError(f"an array of dtype {arr.dtype}: expected uint8, uint16 or float pixels")
    return arr


def pixel_scale(dtype: np.dtype) -> float:
    """What an array of `dtype` is divided by to make its pixels [0, 1]: 255 for uint8, 65535 for
    uint16, else 1."""
    return {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}.get(np.dtype(dtype), 1.0)


def as_float(arr: np.ndarray) -> np.ndarray:
    """`(H, W, C)` float32 pixels, scaled by `pixel_scale`."""
    out = arr.astype(np.float32)
    scale = pixel_scale(arr.dtype)
    return out / scale if scale != 1.0 else out


def pixels_to_float(pixels) -> np.ndarray:
    """`(H, W, C)` float32 pixels in the scaled space the normalisation statistics are given in."""
    arr = np.asarray(pixels)
    return as_float(arr[:, :, None] if arr.ndim == 2 else arr)


__all__ = [
    "ARRAY_EXTENSIONS",
    "IMAGE_CHANNELS",
    "as_float",
    "is_array_bytes",
    "pixel_scale",
    "pixels_to_float",
    "read_array",
    "to_hwc",
]
