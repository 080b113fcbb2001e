"""Decoding: the libjpeg-turbo fast path against PIL + torchvision, EXIF orientation, fallbacks."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from helpers.data import oriented_jpeg, photo
from PIL import Image, ImageFile, ImageOps
from torchvision import transforms as T

from simmim_swinv2.data import SimMIMTransform, decode_resized_crop, decode_rgb
from simmim_swinv2.data.decode import jpeg_orientation

RRC = T.RandomResizedCrop(192, scale=(0.67, 1.0), ratio=(3 / 4, 4 / 3))


def _jpeg(img: Image.Image, quality: int = 90, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality, **kwargs)
    return buf.getvalue()


def _vs_reference(data: bytes, fast: bool, seeds: int = 4) -> tuple[float, float, np.ndarray]:
    """Same crops (same seeds), ours vs PIL + torchvision: mean |diff|, min PSNR, mean diff per
    channel."""
    decoded = Image.open(io.BytesIO(data)).convert("RGB")
    diffs = []
    for seed in range(seeds):
        torch.manual_seed(seed)
        ours = decode_resized_crop(data, (192, 192), fast=fast).float()
        torch.manual_seed(seed)
        diffs.append(ours - T.functional.pil_to_tensor(RRC(decoded)).float())
    d = torch.stack(diffs)
    psnr = min(10 * np.log10(255**2 / max(x.pow(2).mean().item(), 1e-12)) for x in d)
    return d.abs().mean().item(), psnr, d.mean((0, 2, 3)).numpy()


@pytest.mark.parametrize("quality", [75, 95])
def test_accurate_decode_matches_reference_pixels(quality):
    mad, _, _ = _vs_reference(_jpeg(photo(3, (500, 375)), quality), fast=False)
    # rounding in the last bit only: same libjpeg-turbo IDCT and upsampling as PIL
    assert mad < 0.05


@pytest.mark.parametrize("quality, seed", [(75, 3), (95, 4), (90, 5)])
def test_fast_decode_is_close_and_unbiased(quality, seed):
    # Plain chroma upsampling differs from PIL's fancy one at colour edges only. Measured: mean
    # |diff| 0.1-0.5 levels, PSNR >= 48 dB, per-channel bias < 0.05 levels. Bounds: 1 level, 40 dB,
    # 0.25 level (libjpeg-turbo's fast IDCT, never used, would shift red/blue by -1.2/-1.3 levels
    # and fail the last one).
    mad, psnr, bias = _vs_reference(_jpeg(photo(seed, (500, 375)), quality), fast=True)
    assert mad < 1.0 and psnr > 40
    assert np.abs(bias).max() < 0.25


def test_grey_jpeg_and_large_jpeg_dct_reduction():
    grey = _jpeg(photo(6, (400, 300)).convert("L"))
    out = decode_resized_crop(grey, (192, 192))
    assert (
        out.shape == (3, 192, 192) and torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])
    )
    # crops >= 2x the output: decoded at 1/2 or 1/4 in the DCT domain
    big = _jpeg(photo(5, (1600, 1200)), 95)
    full = Image.open(io.BytesIO(big)).convert("RGB")
    for seed in range(3):
        torch.manual_seed(seed)
        fast = decode_resized_crop(big, (192, 192)).float()
        torch.manual_seed(seed)
        slow = decode_resized_crop(full, (192, 192)).float()
        assert (fast - slow).abs().mean() < 3.0


def test_transform_output_layout_and_values():
    t = SimMIMTransform(192, hflip=0.0)
    data = _jpeg(photo(7, (500, 375)))
    torch.manual_seed(0)
    image, _ = t(data)
    assert image.is_contiguous() and image.dtype == torch.float32
    torch.manual_seed(0)
    crop = decode_resized_crop(data, (192, 192)).float() / 255
    expected = T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))(crop)
    # the same pixels, normalised (values < 3)
    torch.testing.assert_close(image, expected, atol=1e-5, rtol=0)
    flips = SimMIMTransform(192, hflip=1.0)
    torch.manual_seed(0)
    flipped, _ = flips(data)
    torch.testing.assert_close(flipped, expected.flip(-1), atol=1e-5, rtol=0)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(orientation):
    upright = photo(8, (120, 80))  # landscape; orientations 5-8 store it as portrait
    data = oriented_jpeg(upright, orientation)
    assert (
        jpeg_orientation(data) == orientation == Image.open(io.BytesIO(data)).getexif().get(0x0112)
    )
    expected = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    assert expected.size == (120, 80)
    assert decode_rgb(data).tobytes() == expected.tobytes()
    # Whole-image crop (scale 1, the image's own ratio): the output is the upright image, resized.
    crop = decode_resized_crop(data, (64, 96), scale=(1.0, 1.0), ratio=(1.5, 1.5)).float()
    ref = (
        torch.from_numpy(np.asarray(expected.resize((96, 64), Image.Resampling.BILINEAR)))
        .permute(2, 0, 1)
        .float()
    )
    assert (crop - ref).abs().mean() < 2.0


def test_jpeg_orientation_without_or_with_odd_exif():
    plain = _jpeg(photo(0))
    assert jpeg_orientation(plain) == 1
    exif = Image.Exif()
    exif[0x010F] = "camera maker"  # EXIF without an orientation tag
    assert jpeg_orientation(_jpeg(photo(0), exif=exif.tobytes())) == 1
    assert jpeg_orientation(b"\xff\xd8\xff\xe1\x00\x10Exif\x00\x00MM") == 1  # cut short
    assert jpeg_orientation(b"") == 1


def test_jpeg_that_libjpeg_turbo_rejects_goes_through_pil():
    data = _jpeg(photo(1, (120, 90)))
    sos = data.index(b"\xff\xda")
    # "extraneous bytes before marker": a warning PIL ignores
    odd = data[:sos] + b"\x00\x00" + data[sos:]
    torch.manual_seed(0)
    out = decode_resized_crop(odd, (64, 64), fast=False)
    torch.manual_seed(0)
    ref = decode_resized_crop(Image.open(io.BytesIO(data)), (64, 64))
    assert (out.float() - ref.float()).abs().mean() < 0.05


def test_truncated_jpeg_raises_unless_pil_allows_it(monkeypatch):
    data = _jpeg(photo(2, (300, 200)))
    cut = data[: len(data) // 2]
    with pytest.raises(OSError) as pil:  # what PIL itself makes of the bytes
        Image.open(io.BytesIO(cut)).load()
    with pytest.raises(OSError) as ours:  # the same error: PIL decides
        decode_resized_crop(cut, (64, 64))
    assert (type(ours.value), ours.value.args) == (type(pil.value), pil.value.args)
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # the user's choice is respected
    assert decode_resized_crop(cut, (64, 64)).shape == (3, 64, 64)


def test_non_jpeg_and_cmyk_inputs():
    img = photo(9, (100, 70))
    for fmt, mode in [("PNG", "RGBA"), ("WEBP", "RGB"), ("JPEG", "CMYK"), ("PNG", "P")]:
        buf = io.BytesIO()
        img.convert(mode).save(buf, fmt)
        out = decode_resized_crop(buf.getvalue(), (32, 32))
        assert out.shape == (3, 32, 32) and out.dtype == torch.uint8
