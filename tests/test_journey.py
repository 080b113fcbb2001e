"""A newcomer's first hour with a folder of their own photos, typed as the README's quick start
types it: pretrain -> fine-tune -> evaluate -> predict -> export, with `data.val_split` the only key
to learn; and the mistakes a newcomer makes, each ending the command with one sentence that names
the fix (exit status 2)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from helpers.config import FAST
from helpers.data import photo
from PIL import Image

from simmim_swinv2 import evaluate, finetune, predict, pretrain
from simmim_swinv2.config.machine import native_bf16_cpu

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["cat", "dog"]
ONE_FOLDER = ["data=folder", "data.val_split=0.25"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """photos/cat, photos/dog: 16 JPEGs each, of another size than the model's input."""
    root = tmp_path_factory.mktemp("photos")
    for c, name in enumerate(CLASSES):
        (root / name).mkdir()
        for i in range(16):
            photo(100 * c + i, (80, 60)).save(root / name / f"{i:02d}.jpg", quality=90)
    return root


def cli(module: str, *args: str, cwd: Path) -> str:
    """`python -m simmim_swinv2.<module> ARGS` in `cwd`, as typed; its output, or the failure with
    its stderr."""
    done = subprocess.run(
        [sys.executable, "-m", f"simmim_swinv2.{module}", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env=os.environ,
    )
    assert done.returncode == 0, f"{module}: {done.stderr[-3000:]}"
    return done.stdout + done.stderr


@pytest.mark.slow
def test_own_folder_pretrain_finetune_evaluate_predict_export(photos, tmp_path, capsys):
    """From another directory, with relative paths as a user types them."""
    (tmp_path / "photos").symlink_to(photos)
    data = [*ONE_FOLDER, "data.root=photos"]
    out = cli("pretrain", *FAST, *data, "hydra.run.dir=runs/pre", cwd=tmp_path)
    assert "global batch 8 = 8 per device x 1 devices x 1 accumulation" in out
    with open(tmp_path / "runs/pre/metrics.csv") as f:  # the kNN monitor on the held-out 25%
        knn = [float(r["val/knn_top1"]) for r in csv.DictReader(f) if r.get("val/knn_top1")]
    assert len(knn) == 2 and all(0 <= v <= 1 for v in knn)

    out = cli(
        "finetune", *FAST, *data, "pretrained=runs/pre", "hydra.run.dir=runs/ft", cwd=tmp_path
    )
    assert "validation: top-1" in out  # 2 classes, counted from the folders: no num_classes given
    top1 = float(out.split("validation: top-1 ")[1].split(",")[0])
    last = torch.load(tmp_path / "runs/ft/checkpoints/last.ckpt", weights_only=True)
    # the newest weights, not the best epoch's (which it keeps beside)
    assert last["global_step"] == 6
    out = cli("evaluate", "checkpoint=runs/ft", *data, "hydra.run.dir=runs/ev", cwd=tmp_path)
    # the same held-out 8, printed to 4 decimals both times
    assert float(out.split("top-1 ")[1].split(",")[0]) == pytest.approx(top1, abs=1e-4)
    ft, ev = f"checkpoint={tmp_path / 'runs/ft'}", f"hydra.run.dir={tmp_path / 'runs/ev2'}"
    err = run_main(evaluate, [ft, "data=folder", f"data.root={photos}", ev], capsys)
    # the key that adds a validation split, not a dump of the config
    assert "data.val_split=0.15" in err
    err = run_main(evaluate, [ft, ev], capsys)  # data left out: the digits, 10 classes
    assert "classifies 2 classes (cat, dog)" in err and "data=folder data.root=PATH" in err

    queries = [photos / "cat" / "00.jpg", photos / "dog" / "03.jpg"]
    printed = cli(
        "predict",
        "checkpoint=runs/ft",
        f"images=[{','.join(map(str, queries))}]",
        "top_k=2",
        "output=json",
        "hydra.run.dir=runs/pred",
        cwd=tmp_path,
    )
    expected = {
        r["image"]: r["predictions"] for r in json.loads(printed[printed.index("{") :])["results"]
    }
    assert {p["label"] for r in expected.values() for p in r} == set(CLASSES)  # the folders' names

    out = cli("convert", "to-transformers", "runs/ft", "hf", cwd=tmp_path)
    assert "labels cat, dog" in out
    pipe = transformers.pipeline("image-classification", model=str(tmp_path / "hf"), device="cpu")
    for path in queries:
        got = pipe(Image.open(path), top_k=2)
        assert [p["label"] for p in got] == [p["label"] for p in expected[str(path)]], path
        # probabilities of two classes: relative error ~ the logits' absolute error (a few fp32 ulps
        # of O(1))
        np.testing.assert_allclose(
            [p["score"] for p in got], [p["score"] for p in expected[str(path)]], rtol=1e-4
        )


def run_main(module, argv: list[str], capsys) -> str:
    """`python -m simmim_swinv2.<module> ARGV` through its real `main` (Hydra's command line), in
    this process; the command must stop with exit status 2 and one `error:` line, which is
    returned."""
    saved = sys.argv
    sys.argv = [module.__name__, *argv]
    try:
        with pytest.raises(SystemExit) as stop:
            module.main()
    finally:
        sys.argv = saved
    assert stop.value.code == 2
    err = capsys.readouterr().err  # the run's log (conf/hydra/job_logging), then the error
    lines = err.strip().splitlines()
    assert lines[-1].startswith("error: ") and sum(x.startswith("error: ") for x in lines) == 1, err
    return lines[-1] + "\n"


def test_newcomer_mistakes_stop_with_one_sentence_naming_the_fix(photos, tmp_path, capsys):
    run = f"hydra.run.dir={tmp_path / 'run'}"
    if not torch.cuda.is_available():  # a real model's recipe brings trainer=gpu
        err = run_main(pretrain, ["model=swinv2_base", run], capsys)
        assert "model=swinv2_base brings trainer=gpu" in err and "add trainer=cpu" in err
        # what that run then is: the recipe's per-GPU batch
        assert "128 images per step at 192 px" in err
    err = run_main(pretrain, ["data=folder", run], capsys)  # the images' folder not given
    assert "data.root is required by this data source: add data.root=" in err
    err = run_main(pretrain, ["data=folder", f"data.root={photos}x", run], capsys)  # a typo
    assert f"image folder {photos}x does not exist" in err  # not Hydra's instantiation trace
    err = run_main(evaluate, [run], capsys)  # the checkpoint not given
    assert err.startswith(
        "error: checkpoint not given: python -m simmim_swinv2.evaluate checkpoint="
    )
    err = run_main(predict, ["checkpoint=somewhere", "images=[nope.jpg]", run], capsys)
    assert "nope.jpg: no such file, folder or matching glob" in err
    err = run_main(pretrain, [f"data.root={photos}", run], capsys)  # data=folder left out
    assert "but data=digits reads no folder" in err and f"add data=folder data.root={photos}" in err
    err = run_main(pretrain, ["img_size=100", run], capsys)
    assert "img_size (100, 100)" in err and "multiple of the encoder stride 32" in err
    err = run_main(
        pretrain, [*FAST, "trainer.precision=16-mixed", "trainer.accelerator=cpu", run], capsys
    )
    # the CPU's own mixed precision where it has bf16 instructions, else fp32 (config/machine.py)
    assert ("trainer.precision=bf16-mixed" in err) == native_bf16_cpu()
    assert "32-true" in err

    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(8):
        photo(i, (48, 40)).save(flat / f"{i}.jpg")
    err = run_main(finetune, [*FAST, "data=folder", f"data.root={flat}", run], capsys)
    assert "fine-tuning needs labelled images" in err and "subfolder" in err
    err = run_main(
        finetune, [*FAST, "data=folder", f"data.root={photos}", "num_classes=3", run], capsys
    )
    assert "names 2 classes (cat, dog) but num_classes=3" in err and "set num_classes=2" in err

    err = run_main(
        finetune,
        [*FAST, *ONE_FOLDER, f"data.root={photos}", f"data.val_root={photos}", run],
        capsys,
    )
    assert "data.val_split" in err and "data.val_root" in err  # one or the other
    err = run_main(
        finetune, [*FAST, "data=folder", f"data.root={photos}", "batch_size=40", run], capsys
    )
    assert "batch_size=40" in err  # more than the 32 training images: not a single batch
    assert not (tmp_path / "run" / "checkpoints").exists()  # nothing trained


@pytest.mark.parametrize("command", ["convert", "consolidate", "reshard"])
def test_the_weight_commands_stop_with_one_line_on_a_missing_path(command, tmp_path, capsys):
    """The argparse commands end a path that is not there as the Hydra ones do: one `error:` line
    naming it, exit status 2."""
    import importlib

    module = importlib.import_module(f"simmim_swinv2.{command}")
    missing = tmp_path / "nothing"
    argv = {
        "convert": ["to-transformers", str(missing), str(tmp_path / "hf")],
        "consolidate": [str(missing), str(tmp_path / "out.safetensors")],
        "reshard": [str(missing)],
    }[command]
    with pytest.raises(SystemExit) as stop:
        module.main(argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"python -m simmim_swinv2.{command}: error: ") and str(missing) in err


@pytest.mark.parametrize("command", ["pretrain", "evaluate", "predict"])
def test_help_starts_with_the_commands_usage(command, capsys, monkeypatch):
    """`python -m simmim_swinv2.<command> --help` (conf/hydra/help/simmim.yaml, every command's):
    the usage line of the command's docstring, then the groups and the config."""
    import importlib

    from simmim_swinv2.config.compose import usage

    module = importlib.import_module(f"simmim_swinv2.{command}")
    monkeypatch.setattr(sys, "argv", [module.__file__, "--help"])
    with pytest.raises(SystemExit) as stop:
        module.main()
    out = capsys.readouterr().out
    assert stop.value.code in (0, None)
    assert out.splitlines()[0] == usage(command)
    assert usage(command).startswith(f"python -m simmim_swinv2.{command} ")
    assert "== Groups (group=option) ==" in out and "\ndata: digits, folder, hf," in out
    assert "== Config (with the overrides given) ==" in out
