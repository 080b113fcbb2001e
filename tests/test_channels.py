"""`model.in_chans=N` end to end, N = 1 (grey PNG folders) and 7 (folders of 7-band .npy arrays):
pretrain -> fine-tune -> transformers export, which loads in `Swinv2ForMaskedImageModeling` /
`Swinv2ForImageClassification` with `num_channels=N` and gives our outputs; `predict` reads the
arrays with the run's normalisation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers.config import FAST, compose_config
from helpers.numerics import norm_rel
from helpers.reference import bound, random_mask, transformers
from PIL import Image

from simmim_swinv2 import convert
from simmim_swinv2.finetune import finetune
from simmim_swinv2.predict import Predictor
from simmim_swinv2.pretrain import pretrain
from simmim_swinv2.weights import load_model

pytestmark = pytest.mark.slow  # two pretrain + fine-tune runs, ~25 s each on 2 cores

ONE_STEP = [*FAST, "trainer.max_epochs=1", "trainer.limit_train_batches=1"]
MEAN = {1: [0.5], 7: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]}
STD = {1: [0.25], 7: [0.2] * 7}


def _write(root, channels: int) -> None:
    """Two classes of 6 smooth samples: grey PNGs (1 channel) or (7, H, W) uint16 .npy arrays."""
    rng = np.random.default_rng(channels)
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for i in range(6):
            base = rng.random((6, 7, channels))
            pixels = np.kron(base, np.ones((8, 8, 1)))
            if channels == 1:
                Image.fromarray((pixels[:, :, 0] * 255).astype(np.uint8)).save(
                    root / name / f"{i}.png"
                )
            else:
                np.save(
                    root / name / f"{i}.npy", (pixels * 65535).astype(np.uint16).transpose(2, 0, 1)
                )


@pytest.fixture(scope="module", params=[1, 7])
def runs(request, tmp_path_factory):
    n = request.param
    root = tmp_path_factory.mktemp(f"data{n}")
    _write(root, n)
    data = [
        "data=folder",
        f"data.root={root}",
        f"model.in_chans={n}",
        f"data.mean={MEAN[n]}".replace(" ", ""),
        f"data.std={STD[n]}".replace(" ", ""),
    ]
    pre, ft = tmp_path_factory.mktemp(f"pre{n}"), tmp_path_factory.mktemp(f"ft{n}")
    pretrain(compose_config("pretrain", pre, [*ONE_STEP, *data]))
    finetune(
        compose_config(
            "finetune",
            ft,
            [*ONE_STEP, *data, f"pretrained={pre}", "callbacks.checkpoint.monitor=null"],
        )
    )
    return n, root, pre, ft


def test_runs_record_channels_and_normalisation(runs):
    n, _, pre, ft = runs
    mim, clf = load_model(pre), load_model(ft)
    assert (
        mim.encoder.cfg.in_chans == n and mim.decoder[0].out_channels == 32**2 * n
    )  # stride^2 x N outputs
    assert (mim.pixel_mean, clf.pixel_std) == (tuple(MEAN[n]), tuple(STD[n]))
    assert clf.id2label == {0: "a", 1: "b"}  # the class folders; num_classes from them
    assert sorted(p.name for p in (pre / "reconstructions").glob("*.png"))


def test_exports_load_in_transformers_and_match(runs, tmp_path):
    n, _, pre, ft = runs
    convert.main(["to-transformers", str(pre), str(tmp_path / "mim")])
    convert.main(["to-transformers", str(ft), str(tmp_path / "clf")])
    config = json.loads((tmp_path / "clf" / "config.json").read_text())
    processor = json.loads((tmp_path / "clf" / "preprocessor_config.json").read_text())
    assert config["num_channels"] == n and processor["image_mean"] == MEAN[n]
    assert processor["do_convert_rgb"] is False
    x, mask = torch.randn(2, n, 64, 64), random_mask(2, 16, 16)
    theirs = transformers.Swinv2ForMaskedImageModeling.from_pretrained(tmp_path / "mim").eval()
    ours = load_model(pre).eval()
    with torch.no_grad():
        got = theirs(x, bool_masked_pos=mask.flatten(1).bool())
        expected = ours(x, mask)
    # the same fp32 forward on both sides: the whole tensor's norm-relative error, within the
    # rounding bound of the model's reductions (helpers.numerics.rounding_bound); the loss is a mean
    # of it (masked L1 over N)
    tol = bound(ours.encoder.cfg)
    assert got.reconstruction.shape == (2, n, 64, 64)
    assert norm_rel(got.reconstruction, expected.reconstruction) < tol
    assert abs(float(got.loss) / float(expected.loss) - 1) < tol
    clf = transformers.Swinv2ForImageClassification.from_pretrained(tmp_path / "clf").eval()
    with torch.no_grad():
        assert norm_rel(clf(x).logits, load_model(ft).eval()(x).logits) < tol
    assert load_model(tmp_path / "clf").pixel_mean == tuple(
        MEAN[n]
    )  # and back, with its normalisation


def test_predict_reads_the_samples_with_the_run_normalisation(runs):
    n, root, _, ft = runs
    files = sorted((root / "a").iterdir())[:2]
    predictor = Predictor(ft, device="cpu")
    results = predictor.predict(files, top_k=2, progress=False)
    assert [r["image"] for r in results] == [str(f) for f in files]
    first = predictor.processor.pixels(
        np.load(files[0]).transpose(1, 2, 0) if n == 7 else Image.open(files[0])
    )
    with torch.no_grad():
        probs = predictor.model(first[None]).logits.softmax(-1)[0]
    top = results[0]["predictions"][0]
    assert top["label"] == predictor.model.id2label[int(probs.argmax())]
    # a probability in [0, 1] from the same model on the same pixels (batched vs single): fp32 ulps
    # of O(1)
    assert abs(top["score"] - float(probs.max())) < 1e-5
