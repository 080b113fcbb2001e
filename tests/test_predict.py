"""Inference as transformers users expect it: the same preprocessing, the same predictions as
pipeline()."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers.config import compose_config
from helpers.reference import bound, randomize_, transformers
from PIL import Image

from simmim_swinv2 import convert
from simmim_swinv2.inference import ImageProcessor
from simmim_swinv2.models import SwinV2Classifier, swinv2_config
from simmim_swinv2.predict import expand_images, predict

LABELS = {0: "apple", 1: "bee", 2: "cat", 3: "dog", 4: "eel", 5: "fox"}


def _images(rng: np.random.Generator) -> dict[str, Image.Image]:
    """Several sizes and modes, smooth enough that resizing matters."""

    def smooth(h, w, c):
        base = rng.random((h // 8 + 2, w // 8 + 2, c))
        up = np.kron(base, np.ones((8, 8, 1)))[:h, :w]
        return (up * 255).astype(np.uint8)

    rgba = smooth(64, 48, 4)
    rgba[..., 3] = np.where(rng.random((64, 48)) < 0.3, 0, 255)
    palette = Image.fromarray(smooth(90, 120, 3)).convert("P", palette=Image.Palette.ADAPTIVE)
    palette.info["transparency"] = 0
    return {
        "small_rgb": Image.fromarray(smooth(37, 53, 3)),
        "gray": Image.fromarray(smooth(200, 300, 1)[..., 0], mode="L"),
        "rgba": Image.fromarray(rgba, mode="RGBA"),
        "palette": palette,
        "large_rgb": Image.fromarray(smooth(480, 640, 3)),
    }


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    model = SwinV2Classifier.from_config(
        swinv2_config("debug", img_size=64, window_size=4), 6, id2label=LABELS
    )
    randomize_(model, max_logit_scale=4.0)
    out = tmp_path_factory.mktemp("export")
    convert.to_transformers(model, out)
    return model, out


def test_our_processor_equals_transformers_on_several_sizes_and_modes(exported):
    _, out = exported
    theirs = transformers.AutoImageProcessor.from_pretrained(out)
    ours = ImageProcessor((64, 64))
    for name, img in _images(np.random.default_rng(0)).items():
        expected = theirs(img, return_tensors="pt").pixel_values
        # the same uint8 resize, then (x / 255 - mean) / std in fp32: a few roundings of values
        # below 3
        torch.testing.assert_close(ours([img]), expected, rtol=0, atol=1e-5, msg=name)
    config = json.loads((out / "preprocessor_config.json").read_text())
    assert config["size"] == {"height": 64, "width": 64} and config["resample"] == 3


def test_predict_equals_the_transformers_pipeline(exported, tmp_path, capsys):
    model, out = exported
    folder = tmp_path / "imgs"
    folder.mkdir()
    images = _images(np.random.default_rng(1))
    for name, img in images.items():
        img.save(folder / f"{name}.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    pipe = transformers.pipeline("image-classification", model=str(out), device="cpu")
    cfg = compose_config(
        "predict",
        tmp_path / "run",
        [f"checkpoint={out}", f"images=[{folder}]", "top_k=3", "output=json"],
    )
    results = {r["image"]: r["predictions"] for r in predict(cfg)}
    printed = json.loads(capsys.readouterr().out)
    assert printed["skipped"] == [str(folder / "broken.jpg")]
    assert len(results) == len(images)
    for name in images:
        path = folder / f"{name}.png"
        expected = pipe(Image.open(path), top_k=3)
        got = results[str(path)]
        assert [p["label"] for p in got] == [p["label"] for p in expected], name
        # top-k probabilities (away from zero): relative error = the logits' absolute error, within
        # the model's rounding bound for logits of order one
        np.testing.assert_allclose(
            [p["score"] for p in got], [p["score"] for p in expected], rtol=bound(model.encoder.cfg)
        )
    assert {p["label"] for r in results.values() for p in r} <= set(LABELS.values())


def test_predict_from_our_own_checkpoints_matches_the_export(exported, tmp_path):
    model, out = exported
    convert.save_model(model, tmp_path / "clf.safetensors")
    img = tmp_path / "x.png"
    _images(np.random.default_rng(2))["large_rgb"].save(img)
    a = predict(
        compose_config(
            "predict",
            tmp_path / "a",
            [f"checkpoint={tmp_path / 'clf.safetensors'}", f"images=[{img}]"],
        )
    )
    b = predict(compose_config("predict", tmp_path / "b", [f"checkpoint={out}", f"images=[{img}]"]))
    assert [p["label"] for p in a[0]["predictions"]] == [p["label"] for p in b[0]["predictions"]]
    np.testing.assert_allclose(
        [p["score"] for p in a[0]["predictions"]],
        [p["score"] for p in b[0]["predictions"]],
        rtol=bound(model.encoder.cfg),
    )


def test_bad_paths_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file, folder or matching glob"):
        expand_images([str(tmp_path / "nothing*.jpg")])
    (tmp_path / "a.JPG").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("not an image")
    assert expand_images([str(tmp_path)]) == [tmp_path / "a.JPG"]
