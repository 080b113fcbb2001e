"""Any number of channels: .npy and multi-band TIFF arrays, grey images, per-channel normalisation,
the transforms, shards of arrays, the reconstruction pictures and the stats command's numbers."""

from __future__ import annotations

import io

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from simmim_swinv2.config import ConfigError
from simmim_swinv2.config.checks import data_normalization
from simmim_swinv2.data import (
    FolderDataset,
    MaskGenerator,
    ShardDataset,
    SimMIMTransform,
    build_eval_transform,
    build_finetune_transform,
)
from simmim_swinv2.data.arrays import is_array_bytes, read_array, to_hwc
from simmim_swinv2.data.decode import load_pixels
from simmim_swinv2.data.sharding import make_shards
from simmim_swinv2.data.transforms import check_normalization
from simmim_swinv2.stats import ChannelSums, channel_stats
from simmim_swinv2.training.callbacks import ReconstructionImages


def npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def tiff_bytes(arr: np.ndarray, **kwargs) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, arr, **kwargs)
    return buf.getvalue()


def bands(seed: int, c: int = 7, h: int = 40, w: int = 48, dtype=np.uint16) -> np.ndarray:
    """`(H, W, C)` random pixels of `dtype` (uint16: the full range)."""
    rng = np.random.default_rng(seed)
    if dtype == np.float32:
        return rng.normal(size=(h, w, c)).astype(np.float32)
    return rng.integers(0, np.iinfo(dtype).max, size=(h, w, c), endpoint=True).astype(dtype)


@pytest.mark.parametrize("layout", ["hwc", "chw"])
@pytest.mark.parametrize("store", ["npy", "tiff_contig", "tiff_planar"])
def test_arrays_read_as_hwc_whatever_the_layout(layout, store):
    arr = bands(0)
    stored = arr if layout == "hwc" else arr.transpose(2, 0, 1)
    if store == "npy":
        data = npy_bytes(stored)
    else:  # tifffile: 7 samples per pixel (contig) or 7 planes (separate); Pillow reads neither
        planar = "separate" if store == "tiff_planar" else "contig"
        data = tiff_bytes(
            arr if planar == "contig" else arr.transpose(2, 0, 1),
            photometric="minisblack",
            planarconfig=planar,
            compression="zlib",
        )
    assert is_array_bytes(data)
    out = load_pixels(data, channels=7)
    assert out.dtype == np.uint16 and np.array_equal(out, arr)


def test_array_layout_errors_name_the_channels():
    with pytest.raises(ValueError, match=r"no axis of 7 channels .*model.in_chans=7"):
        to_hwc(np.zeros((5, 16, 16), np.uint8), 7)
    with pytest.raises(ValueError, match="expected uint8, uint16 or float"):
        to_hwc(np.zeros((16, 16, 2), np.complex64), 2)
    assert to_hwc(np.zeros((16, 16), np.uint8), 1).shape == (
        16,
        16,
        1,
    )  # one channel without an axis
    assert read_array(npy_bytes(np.ones((2, 3), np.float32))).dtype == np.float32


def test_images_are_grey_for_one_channel_and_refused_for_seven():
    buf = io.BytesIO()
    Image.fromarray(bands(1, 3, dtype=np.uint8)).save(buf, "PNG")
    grey = load_pixels(buf.getvalue(), channels=1)
    assert grey.mode == "L" and grey.size == (48, 40)
    with pytest.raises(
        ValueError, match=r"1 or 3 channels, not model.in_chans=7.*\.npy or multi-band \.tif"
    ):
        load_pixels(buf.getvalue(), channels=7)


def test_pretrain_transform_scales_by_dtype_then_normalises_per_channel():
    mean, std = [0.1 * c for c in range(7)], [0.5 + 0.1 * c for c in range(7)]
    t = SimMIMTransform(32, MaskGenerator(32, 8, 4, 0.5), mean=mean, std=std)
    for dtype, value, scale in (
        (np.uint16, 13107, 65535),
        (np.uint8, 51, 255),
        (np.float32, 0.2, 1),
    ):
        x, mask = t(npy_bytes(np.full((40, 48, 7), value, dtype=dtype)))
        assert x.shape == (7, 32, 32) and mask.shape == (8, 8)
        expected = (value / scale - torch.tensor(mean)) / torch.tensor(
            std
        )  # a constant image stays constant
        # float32 arithmetic on values of order 1: a few ulps
        torch.testing.assert_close(x.mean(dim=(1, 2)), expected.float(), rtol=0, atol=1e-5)
    x, _ = SimMIMTransform(32, MaskGenerator(32, 8, 4, 0.5), mean=[0.5], std=[0.25])(
        npy_bytes(bands(2, 1, dtype=np.uint8))
    )
    assert x.shape == (1, 32, 32)


def test_finetune_and_eval_transforms_take_seven_channels():
    mean, std = (0.5,) * 7, (0.25,) * 7
    arr = bands(3)
    torch.manual_seed(0)
    assert build_finetune_transform(32, mean=mean, std=std)(arr).shape == (7, 32, 32)
    ev = build_eval_transform(32, 1.0, mean, std)
    x = ev(npy_bytes(np.full((40, 48, 7), 0.75, np.float32)))
    assert x.shape == (7, 32, 32)
    # a constant image resized stays constant, (0.75 - 0.5) / 0.25: float32 bicubic weights sum to 1
    torch.testing.assert_close(x, torch.ones(7, 32, 32), rtol=0, atol=1e-5)
    rgb = build_eval_transform(
        32, 1.0
    )  # 3 channels: the torchvision pipeline for RGB, arrays of uint8 included
    assert rgb(npy_bytes(bands(4, 3, dtype=np.uint8))).shape == (3, 32, 32)


def test_normalisation_one_value_broadcasts_and_mismatches_are_config_errors():
    assert check_normalization([0.5], [0.2], 3) == ((0.5,) * 3, (0.2,) * 3)
    assert data_normalization({"mean": None, "std": None}, 3) == (
        (0.485, 0.456, 0.406),
        (0.229, 0.224, 0.225),
    )
    with pytest.raises(
        ConfigError, match=r"model.in_chans=7 needs data.mean and data.std.*simmim_swinv2.stats"
    ):
        data_normalization({"mean": None, "std": None}, 7)
    with pytest.raises(ConfigError, match="data.mean has 2 and data.std 7 values for 7 channels"):
        data_normalization({"mean": [0.1, 0.2], "std": [0.3] * 7}, 7)
    with pytest.raises(ConfigError, match="must be > 0"):
        data_normalization({"mean": [0.1], "std": [0.0]}, 1)


@pytest.fixture
def band_folder(tmp_path):
    """Two classes of 7-band arrays (.npy, TIFF), and one corrupt .npy."""
    for c, name in enumerate(("crop", "forest")):
        (tmp_path / "src" / name).mkdir(parents=True)
        for i in range(3):
            np.save(tmp_path / "src" / name / f"{i}.npy", bands(10 * c + i))
        (tmp_path / "src" / name / "t.tif").write_bytes(
            tiff_bytes(bands(50 + c), photometric="minisblack")
        )
    (tmp_path / "src" / "crop" / "bad.npy").write_bytes(b"\x93NUMPY not really")
    return tmp_path / "src"


def test_folders_and_shards_of_arrays(band_folder, tmp_path):
    t = SimMIMTransform(32, MaskGenerator(32, 8, 4, 0.5), mean=(0.5,) * 7, std=(0.3,) * 7)
    folder = FolderDataset(band_folder, t)
    assert len(folder) == 9 and folder.classes == ["crop", "forest"]
    out = [folder[i] for i in range(len(folder))]
    assert all(x.shape == (7, 32, 32) for x, _, _ in out)
    seen, bad = folder.tracker.counts(0)
    assert bad == 1 and folder.tracker.names(0)[0][0].endswith(
        "bad.npy"
    )  # counted and named, then replaced
    summary = make_shards(band_folder, tmp_path / "shards", samples_per_shard=5, progress=False)
    assert (
        summary["samples"] == 8
        and len(summary["bad"]) == 1
        and summary["bad"][0][0].endswith("bad.npy")
    )
    shards = ShardDataset(
        sorted(str(p) for p in (tmp_path / "shards").glob("*.tar")), t, shuffle=False
    )
    got = list(shards)
    assert len(got) == 8 and all(x.shape == (7, 32, 32) for x, _, _ in got)
    assert sorted(label for _, _, label in got) == [0, 0, 0, 0, 1, 1, 1, 1]


def test_channel_stats_equal_numpy(band_folder):
    (band_folder / "crop" / "bad.npy").unlink()
    folder = FolderDataset(band_folder, ChannelSums(7))
    result = channel_stats(folder, 7, max_samples=None, progress=False)
    pixels = np.concatenate(
        [
            load_pixels(open(p, "rb").read(), 7).reshape(-1, 7) / 65535.0
            for p, _ in folder.samples.tolist()
        ]
    )
    assert result["samples"] == 8
    # float64 sums over ~15k pixels, rounded to 6 decimals when written
    np.testing.assert_allclose(result["mean"], pixels.mean(0), atol=1e-6)
    np.testing.assert_allclose(result["std"], pixels.std(0), atol=1e-6)


def test_reconstruction_picture_shows_named_channels():
    images, masks = torch.randn(2, 7, 32, 32), torch.zeros(2, 8, 8, dtype=torch.long)
    masks[:, :4] = 1
    mean, std = (0.5,) * 7, (0.2,) * 7
    grid = ReconstructionImages.grid(images, masks, images.clone(), 4, False, mean, std, [3, 2, 1])
    assert grid.shape == (3, 2 * 34 + 2, 4 * 34 + 2) and 0 <= grid.min() and grid.max() <= 1
    grey = ReconstructionImages.grid(images, masks, images.clone(), 4, False, mean, std, [6])
    tile = grey[
        :, 2:34, 2:34
    ]  # the first original: one band stretched to [0, 1], the same in R, G and B
    assert torch.equal(tile[0], tile[1]) and tile.min() == 0 and tile.max() == 1
    with pytest.raises(ValueError, match="1 or 3 indices of the model's 7 channels"):
        ReconstructionImages.grid(images, masks, images, 4, False, mean, std, [0, 9, 1])
