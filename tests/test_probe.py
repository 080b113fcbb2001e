"""`python -m simmim_swinv2.probe`: kNN and linear-probe top-1 of a frozen encoder, from our run and
from its transformers export (the same weights: the same numbers)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.config import compose_config
from helpers.pretrained import simmim_hf, simmim_run  # noqa: F401 - fixtures

from simmim_swinv2.config import ConfigError
from simmim_swinv2.inference.probe import linear_probe_top1
from simmim_swinv2.probe import probe

REPO = Path(__file__).resolve().parents[1]


def printed(out: str, name: str) -> float:
    return float(re.search(rf"^{name} ([0-9.]+)", out, re.M)[1])


def test_probe_on_a_run_and_on_its_transformers_export(
    simmim_run,  # noqa: F811
    simmim_hf,  # noqa: F811
    tmp_path,
    capsys,
):
    results = {}
    for name, source in (("run", simmim_run), ("hf", simmim_hf)):
        overrides = [f"checkpoint={source}", "num_workers=0", "train_samples=500"]
        results[name] = probe(compose_config("probe", tmp_path / name, overrides))
        captured = capsys.readouterr()
        assert printed(captured.out, "kNN top-1") == pytest.approx(
            results[name]["knn_top1"], abs=5e-5
        )
        assert printed(captured.out, "linear probe top-1") == pytest.approx(
            results[name]["linear_top1"], abs=5e-5
        )
        # the progress bars
        assert "train features" in captured.err and "val features" in captured.err
    run, hf = results["run"], results["hf"]
    # a 500 subset of digits' train split; all val
    assert (run["train_samples"], run["val_samples"]) == (500, 360)
    assert 0.3 < run["knn_top1"] <= 1 and 0.3 < run["linear_top1"] <= 1  # chance is 0.1
    # the same weights, the same numbers
    assert hf["knn_top1"] == pytest.approx(run["knn_top1"], abs=1e-9)
    assert hf["linear_top1"] == pytest.approx(run["linear_top1"], abs=1 / 360)


def test_linear_probe_standardises_features():
    """Two classes apart along one feature of tiny scale, beside a huge noisy one: only standardised
    features let an L2-regularised logistic regression see the small one."""
    import numpy as np

    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 100)
    x = np.stack([rng.normal(0, 1e3, 200), (y * 2 - 1) * 1e-4 + rng.normal(0, 1e-5, 200)], 1)
    assert linear_probe_top1(x[::2], y[::2], x[1::2], y[1::2]) == 1.0


def test_probe_refuses_unlabelled_data(simmim_run, tmp_path):  # noqa: F811
    from helpers.data import photo

    root = tmp_path / "images"
    root.mkdir()
    for i in range(4):
        photo(i).save(root / f"{i}.png")
    cfg = compose_config(
        "probe",
        tmp_path / "p",
        [f"checkpoint={simmim_run}", "data=folder", f"data.root={root}", f"data.val_root={root}"],
    )
    with pytest.raises(ConfigError, match="unlabelled"):
        probe(cfg)
    with pytest.raises(ConfigError, match="data.val_split"):
        probe(
            compose_config(
                "probe",
                tmp_path / "q",
                [f"checkpoint={simmim_run}", "data=folder", f"data.root={root}"],
            )
        )


def test_probe_on_class_folders_with_a_val_root(simmim_run, tmp_path):  # noqa: F811
    """`data=folder data.root=TRAIN data.val_root=VAL`: both splits built with the train node's
    settings."""
    from helpers.data import photo

    for split, n in (("train", 4), ("val", 3)):
        for c in ("cat", "dog"):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(n):
                photo(i + (10 if c == "dog" else 0)).save(tmp_path / split / c / f"{i}.png")
    result = probe(
        compose_config(
            "probe",
            tmp_path / "p",
            [
                f"checkpoint={simmim_run}",
                "data=folder",
                f"data.root={tmp_path / 'train'}",
                f"data.val_root={tmp_path / 'val'}",
                "k=3",
                "num_workers=0",
            ],
        )
    )
    assert (result["train_samples"], result["val_samples"]) == (8, 6)
    assert 0.0 <= result["knn_top1"] <= 1.0 and 0.0 <= result["linear_top1"] <= 1.0


@pytest.mark.slow
def test_probe_and_visualize_command_lines(simmim_run, tmp_path):  # noqa: F811
    from helpers.data import photo

    photo(0, (90, 70)).save(tmp_path / "cat.jpg")
    for module, args in (
        ("simmim_swinv2.probe", ["train_samples=200", "linear=false"]),
        ("simmim_swinv2.visualize", [f"images=[{tmp_path / 'cat.jpg'}]"]),
    ):
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                module,
                f"checkpoint={simmim_run}",
                *args,
                f"hydra.run.dir={tmp_path / module}",
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert out.returncode == 0, out.stderr[-3000:]
        if module.endswith("probe"):
            # linear=false: the kNN alone
            assert "kNN top-1 " in out.stdout and "linear probe" not in out.stdout
            assert "200 train / 360 val images at 64 px" in out.stdout
        else:
            assert "masked-pixel L1 " in out.stdout
    assert (tmp_path / "simmim_swinv2.visualize" / "cat.png").is_file()


def test_probe_reads_official_and_timm_weights(simmim_run, tmp_path):  # noqa: F811
    """The same weights as an official SimMIM checkpoint and as a timm state dict probe to the same
    kNN top-1 as the run. What these files do not record goes through model_overrides: the image
    size (official checkpoints record it in their shift masks, which ours do not write) and, for
    timm, the window."""
    import torch
    from helpers.reference import as_official

    from simmim_swinv2.weights import load_model

    trained = load_model(simmim_run)
    torch.save(as_official(trained), tmp_path / "official.pth")
    timm_sd = {
        k: v
        for k, v in trained.encoder.state_dict().items()
        if not k.endswith(("index", "table", "attn_mask"))
    }
    torch.save(timm_sd, tmp_path / "timm.pth")
    quick = ["num_workers=0", "train_samples=100", "linear=false"]
    knn = {}
    for name, extra in (
        ("run", [f"checkpoint={simmim_run}"]),
        ("official", [f"checkpoint={tmp_path / 'official.pth'}", "+model_overrides.img_size=64"]),
        (
            "timm",
            [
                f"checkpoint={tmp_path / 'timm.pth'}",
                "+model_overrides.window_size=4",
                "+model_overrides.img_size=64",
            ],
        ),
    ):
        knn[name] = probe(compose_config("probe", tmp_path / name, [*extra, *quick]))["knn_top1"]
    assert knn["official"] == pytest.approx(knn["run"], abs=1e-9) and knn["timm"] == pytest.approx(
        knn["run"], abs=1e-9
    )
