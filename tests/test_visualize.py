"""`python -m simmim_swinv2.visualize`: the training callback's picture for your own images, with
the masked L1."""

from __future__ import annotations

import re

import numpy as np
import pytest
from helpers.config import compose_config
from helpers.pretrained import simmim_hf, simmim_run  # noqa: F401 - fixtures
from PIL import Image

from simmim_swinv2.config import ConfigError
from simmim_swinv2.visualize import visualize


@pytest.fixture
def images(tmp_path):
    from helpers.data import photo

    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    photo(0, (96, 64)).save(folder / "wide.jpg")
    photo(1, (50, 80)).save(folder / "sub" / "tall.png")
    # the same name as another: written as wide_1.png
    photo(2, (64, 64)).save(folder / "sub" / "wide.png")
    (folder / "notes.txt").write_text("not an image")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    return folder


def test_visualize_writes_the_pictures_and_prints_the_l1(
    simmim_run,  # noqa: F811
    simmim_hf,  # noqa: F811
    images,
    tmp_path,
    capsys,
):
    args = [f"images=[{images},{tmp_path / 'broken.jpg'}]", "seed=3"]
    got = visualize(
        compose_config("visualize", tmp_path / "out", [f"checkpoint={simmim_run}", *args])
    )
    captured = capsys.readouterr()
    assert "skipping" in captured.err and "broken.jpg" in captured.err
    # 4 tiles + padding
    assert sorted(Image.open(r["picture"]).size for r in got) == [(4 * (64 + 2) + 2, 64 + 4)] * 3
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == [
        "tall.png",
        "wide.png",
        "wide_1.png",
    ]
    printed = [float(v) for v in re.findall(r"masked-pixel L1 ([0-9.]+)", captured.out)]
    assert printed == pytest.approx([r["l1"] for r in got], abs=5e-5) and all(
        0 < v < 5 for v in printed
    )
    # the run's mask (config.yaml)
    assert "mask_patch_size=16, model_patch_size=4, mask_ratio=0.6" in captured.out

    # the transformers export (no config.yaml: SimMIM's 32-px blocks unless told) draws the same
    # with the same mask
    again = visualize(
        compose_config(
            "visualize",
            tmp_path / "hf",
            [f"checkpoint={simmim_hf}", *args, "mask.mask_patch_size=16"],
        )
    )
    assert [r["l1"] for r in again] == pytest.approx([r["l1"] for r in got], abs=1e-6)
    a, b = Image.open(got[0]["picture"]), Image.open(again[0]["picture"])
    assert np.array_equal(np.asarray(a), np.asarray(b))
    # a higher mask ratio masks more: the pictures' masked tiles differ
    more = visualize(
        compose_config(
            "visualize",
            tmp_path / "more",
            [f"checkpoint={simmim_run}", *args, "mask.mask_ratio=0.9"],
        )
    )
    assert not np.array_equal(np.asarray(Image.open(more[0]["picture"])), np.asarray(a))


def test_visualize_refuses_models_without_a_decoder(tmp_path, images):
    from simmim_swinv2.models import SwinV2Classifier, SwinV2Encoder, swinv2_config
    from simmim_swinv2.weights import save_model

    encoder = SwinV2Encoder(swinv2_config("debug", img_size=64, window_size=4))
    for name, model in (("encoder", encoder), ("classifier", SwinV2Classifier(encoder, 10))):
        save_model(model, tmp_path / f"{name}.safetensors")
        cfg = compose_config(
            "visualize",
            tmp_path / name,
            [f"checkpoint={tmp_path / name}.safetensors", f"images=[{images}]"],
        )
        with pytest.raises(ConfigError, match="no SimMIM decoder"):
            visualize(cfg)
