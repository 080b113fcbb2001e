"""Data layer: mask generator, transforms, digits, folders, presets, synthetic source,
datamodule."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest
import torch
from helpers.data import photo, write_class_folder, write_corrupt, write_mixed_folder
from PIL import Image
from torchvision import transforms as T

from simmim_swinv2.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    BadSampleTracker,
    FolderDataset,
    MaskGenerator,
    SimMIMDataModule,
    SimMIMTransform,
    TooManyBadSamples,
    build_digits,
    build_eval_transform,
    build_finetune_transform,
    build_imagenet1k,
    build_mixup,
    build_pretrain_transform,
    build_synthetic,
)
from simmim_swinv2.data.decode import sample_crop

# --- mask -----------------------------------------------------------------------------------------


def test_mask_reference_numbers_and_block_alignment():
    # microsoft/SimMIM data/data_simmim.py: 6x6 = 36 blocks at 192/32, ceil(36*0.6) = 22 masked,
    # repeated 8x to 48x48 tokens.
    gen = MaskGenerator(192, 32, 4, 0.6)
    for _ in range(20):
        mask = gen()
        assert mask.shape == (48, 48) and mask.dtype == torch.bool
        blocks = mask.view(6, 8, 6, 8)
        assert (blocks == blocks[:, :1, :, :1]).all(), (
            "each 8x8 token block must be all-masked or all-visible"
        )
        assert int(blocks[:, 0, :, 0].sum()) == 22
        assert int(mask.sum()) == 22 * 64


def test_mask_is_uniform_over_blocks_and_random():
    gen = MaskGenerator(192, 32, 4, 0.6)
    masks = torch.stack([gen()[::8, ::8] for _ in range(3000)]).float()
    freq = masks.mean(0)
    assert torch.allclose(freq, torch.full_like(freq, 22 / 36), atol=0.04)
    assert not torch.equal(masks[0], masks[1]) or not torch.equal(masks[1], masks[2])


def test_mask_nonsquare_and_generator_determinism():
    gen = MaskGenerator((128, 256), mask_patch_size=32, model_patch_size=4, mask_ratio=0.5)
    mask = gen(torch.Generator().manual_seed(0))
    assert mask.shape == (32, 64)
    assert int(mask[::8, ::8].sum()) == 16  # ceil(4*8*0.5)
    assert torch.equal(mask, gen(torch.Generator().manual_seed(0)))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(input_size=200), "not divisible by mask_patch_size"),
        (dict(input_size=(192, 100)), "not divisible by mask_patch_size"),
        (dict(mask_patch_size=32, model_patch_size=6), "not a multiple of model_patch_size"),
        (dict(mask_ratio=0.0), "strictly between 0 and 1"),
        (dict(mask_ratio=1.0), "strictly between 0 and 1"),
    ],
)
def test_mask_validation_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MaskGenerator(**kwargs)


# --- transforms -----------------------------------------------------------------------------------


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize("as_bytes", [False, True])
def test_pretrain_transform_shapes_and_normalisation(as_bytes):
    t = build_pretrain_transform(192)
    mean = tuple(round(m * 255) for m in IMAGENET_MEAN)
    img = Image.new("RGB", (300, 250), mean)
    image, mask = t(_png_bytes(img) if as_bytes else img)
    assert image.shape == (3, 192, 192) and image.dtype == torch.float32
    assert mask.shape == (48, 48) and mask.dtype == torch.bool
    assert image.abs().max() < 0.01  # mean colour → 0
    white, _ = t(Image.new("RGB", (300, 250), (255, 255, 255)))
    expected = torch.tensor([(1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)])
    torch.testing.assert_close(white.mean((1, 2)), expected, atol=1e-4, rtol=0)


def test_crop_parameters_match_torchvision():
    img = torch.zeros(3, 375, 500)
    for seed in range(50):
        torch.manual_seed(seed)
        ours = sample_crop(375, 500, (0.67, 1.0), (3 / 4, 4 / 3))
        torch.manual_seed(seed)
        theirs = T.RandomResizedCrop.get_params(img, [0.67, 1.0], [3 / 4, 4 / 3])
        assert ours == tuple(theirs)


def test_mask_generator_size_must_match_transform():
    with pytest.raises(ValueError, match="same input size"):
        SimMIMTransform(224, MaskGenerator(192))


def test_finetune_eval_transforms_and_mixup():
    img = photo(1, (300, 200))
    x = build_finetune_transform(224)(img)
    assert x.shape == (3, 224, 224)
    ev = build_eval_transform(224)
    assert (
        ev.transforms[0].size == 256
        and ev.transforms[0].interpolation == T.InterpolationMode.BICUBIC
    )
    assert ev(img).shape == (3, 224, 224)
    mixup = build_mixup(num_classes=10)
    images, targets = mixup(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3]))
    assert images.shape == (4, 3, 32, 32) and targets.shape == (4, 10)
    torch.testing.assert_close(targets.sum(1), torch.ones(4))
    assert targets.min() >= 0.1 / 10 - 1e-6  # label smoothing 0.1 → off-class mass 0.01
    assert build_mixup(10, mixup_alpha=0, cutmix_alpha=0) is None


def test_finetune_posterize_to_zero_bits_gives_black_not_an_error():
    # rand-m9-mstd0.5-inc1 sometimes draws magnitude 10 -> PosterizeIncreasing keeps 0 bits; Pillow
    # 13 raises there.
    t = build_finetune_transform(224)
    rand_augment = next(x for x in t.transforms if hasattr(x, "ops"))
    ops = [op for op in rand_augment.ops if "Posterize" in op.name]
    assert ops
    for op in ops:
        op.prob, op.magnitude, op.magnitude_std = 1.0, 10, 0
        out = op(photo(1, (64, 48)))
        assert out.size == (64, 48) and out.getextrema() == ((0, 0),) * 3


# --- digits ---------------------------------------------------------------------------------------


def test_digits_shapes_and_split():
    t = build_pretrain_transform(64, mask_patch_size=16)
    train, val = build_digits("train", t, image_size=64), build_digits("val", image_size=64)
    assert (len(train), len(val)) == (1437, 360)
    assert set(train.indices).isdisjoint(val.indices) and len(train) + len(val) == 1797
    assert set(val.labels.tolist()) == set(range(10))
    image, mask, label = train[0]
    assert image.shape == (3, 64, 64) and mask.shape == (16, 16) and 0 <= label < 10
    img, _ = val[0]
    assert img.mode == "RGB" and img.size == (64, 64)
    again = build_digits("val", image_size=64)
    assert (again.indices == val.indices).all()
    assert not (build_digits("val", seed=1).indices == val.indices).all()


# --- folders --------------------------------------------------------------------------------------


def test_folder_labelled_modes_and_rgb(tmp_path):
    kinds = write_mixed_folder(tmp_path)
    ds = FolderDataset(tmp_path)
    assert ds.classes == ["a_dog", "b_cat"] and len(ds) == len(kinds)
    for i in range(len(ds)):
        img, label = ds[i]
        assert img.mode == "RGB" and img.size == (80, 60)
        assert label == (0 if "/a_dog/" in ds.samples[i][0] else 1)
    flat = FolderDataset(tmp_path, labelled=False)
    assert len(flat) == len(kinds) and {label for _, label in flat.samples} == {-1}
    image, mask, label = FolderDataset(tmp_path, build_pretrain_transform(64, 16))[3]
    assert image.shape == (3, 64, 64) and mask.shape == (16, 16)


def test_folder_unlabelled_tree_auto_and_empty(tmp_path):
    photo(0).save(tmp_path / "top.jpg")
    (tmp_path / "sub").mkdir()
    photo(1).save(tmp_path / "sub" / "x.png")
    ds = FolderDataset(tmp_path)
    assert len(ds) == 2 and ds.num_classes == 0 and ds[0][1] == -1
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no images"):
        FolderDataset(tmp_path / "empty")


def test_folder_corrupt_file_is_skipped_counted_and_logged(tmp_path, caplog):
    write_class_folder(tmp_path, [3])
    write_corrupt(tmp_path / "class0" / "img000.jpg")  # first in sorted order
    ds = FolderDataset(tmp_path, build_pretrain_transform(64, 16), max_bad_fraction=0.5)
    with caplog.at_level(logging.WARNING):
        image, mask, label = ds[0]  # replaced by img001
    assert image.shape == (3, 64, 64) and label == 0
    assert ds.tracker.counts() == (1, 1)  # (seen, bad): the replacement is no sample of its own
    assert [(Path(w).name, n) for w, n, _ in ds.tracker.names()] == [("img000.jpg", 1)]
    assert "img000.jpg" in caplog.text


def test_folder_never_judges_alone_and_gives_up_only_when_nothing_reads(tmp_path):
    """Past max_bad_fraction a folder keeps going (the whole epoch is judged, by BadSampleMonitor);
    only when no replacement can be read either does it stop, naming the folder."""
    write_class_folder(tmp_path, [4])
    for i in range(3):
        write_corrupt(tmp_path / "class0" / f"img00{i}.jpg")
    ds = FolderDataset(tmp_path, max_bad_fraction=0.25)
    assert [ds[i][1] for i in range(4)] == [0] * 4 and ds.tracker.counts() == (4, 3)
    write_corrupt(tmp_path / "class0" / "img003.jpg")
    with pytest.raises(TooManyBadSamples, match="seems unreadable"):
        ds[0]
    with pytest.raises(ValueError, match="max_bad_fraction"):
        BadSampleTracker(max_bad_fraction=1.5)


# --- presets, synthetic, datamodule ---------------------------------------------------------------


def test_imagenet_preset_errors(tmp_path, monkeypatch):
    monkeypatch.delenv("SIMMIM_IMAGENET1K_ROOT", raising=False)
    with pytest.raises(FileNotFoundError, match="make_shards.py"):
        build_imagenet1k()
    (tmp_path / "empty" / "train").mkdir(parents=True)
    monkeypatch.setenv("SIMMIM_IMAGENET1K_ROOT", str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="make_shards.py"):
        build_imagenet1k()
    write_class_folder(tmp_path / "small" / "train", [1, 1])
    with pytest.raises(ValueError, match="2 class folders but imagenet1k has 1000"):
        build_imagenet1k(root=tmp_path / "small")


def test_synthetic_shapes():
    ds = build_synthetic(
        length=10, input_size=64, num_classes=5, mask_generator=MaskGenerator(64, 16)
    )
    image, mask, label = ds[7]
    assert len(ds) == 10 and image.shape == (3, 64, 64) and mask.shape == (16, 16) and label == 2
    # as pretrain builds it (data=synthetic): the mask generator comes with the SimMIM transform
    ds = build_synthetic(length=10, input_size=64, transform=build_pretrain_transform(64, 16))
    image, mask, _ = ds[3]
    assert image.shape == (3, 64, 64) and mask.shape == (16, 16) and mask.float().mean() > 0.3


def test_datamodule_batches_digits():
    transform = build_pretrain_transform(32, 16)
    dm = SimMIMDataModule(
        build_digits("train", image_size=32, transform=transform),
        build_digits("val", image_size=32, transform=transform),
        batch_size=16,
        num_workers=0,
    )
    images, masks, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (16, 3, 32, 32) and masks.shape == (16, 8, 8) and labels.shape == (16,)
    assert len(dm.train_dataloader()) == 1437 // 16  # drop_last for training
    assert len(dm.val_dataloader()) == -(-360 // 16)
    assert dm.pin_memory == torch.cuda.is_available() and dm.persistent_workers is False


def test_data_and_mask_configs_instantiate(tmp_path, monkeypatch):
    from pathlib import Path

    from hydra.errors import InstantiationException
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    conf = Path(__file__).resolve().parents[1] / "conf"
    monkeypatch.delenv("SIMMIM_LISTING_DIR", raising=False)
    write_class_folder(tmp_path / "imgs", [2])
    # what pretrain.yaml provides
    root = {"img_size": 32, "seed": 0, "paths": {"run_dir": str(tmp_path / "run")}}
    mask_cfg = OmegaConf.merge(
        {"img_size": 192}, {"mask": OmegaConf.load(conf / "mask" / "simmim.yaml")}
    )
    mask = instantiate(mask_cfg.mask)
    assert isinstance(mask, MaskGenerator) and mask.num_masked_blocks == 22
    overrides = {
        "folder": {"root": str(tmp_path / "imgs")},
        "digits": {},
        "synthetic": {"train": {"length": 4}},
    }
    for name, values in overrides.items():
        cfg = OmegaConf.merge(
            root, {"data": OmegaConf.load(conf / "data" / f"{name}.yaml")}, {"data": values}
        )
        for split in ["train", "val"]:
            if cfg.data[split] is not None:
                assert len(instantiate(cfg.data[split])) > 0
    # the folder's, kept beside the run
    assert len(list((tmp_path / "run" / "listing").glob("*.listing"))) == 1
    assert OmegaConf.is_missing(OmegaConf.load(conf / "data" / "folder.yaml"), "root")
    assert OmegaConf.is_missing(OmegaConf.load(conf / "data" / "webdataset.yaml"), "urls")
    monkeypatch.delenv("SIMMIM_IMAGENET22K_ROOT", raising=False)
    cfg = OmegaConf.merge(root, {"data": OmegaConf.load(conf / "data" / "imagenet22k.yaml")})
    with pytest.raises(InstantiationException) as info:  # Hydra's, around build_imagenet22k's
        instantiate(cfg.data.train)
    assert isinstance(info.value.__cause__, FileNotFoundError)
    assert "SIMMIM_IMAGENET22K_ROOT" in str(info.value.__cause__)
