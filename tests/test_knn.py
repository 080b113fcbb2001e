"""The kNN monitor: DINO's weighted cosine kNN against a brute-force reference, and the callback in
real pretraining runs (one process, and two DDP processes whose values must agree)."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.config import FAST, compose_config
from helpers.zero import FINAL, check_consolidated
from torch.utils.data import DataLoader, Subset

from simmim_swinv2.data import build_digits
from simmim_swinv2.inference.probe import knn_predict, knn_top1, pooled_features, subset_indices
from simmim_swinv2.pretrain import pretrain
from simmim_swinv2.training.knn import KNNMonitor, eval_transform
from simmim_swinv2.weights import load_model

REPO = Path(__file__).resolve().parents[1]
# `++`: added here, or set where conf/callbacks has the monitor already
KNN = [
    "++callbacks.knn._target_=simmim_swinv2.training.knn.KNNMonitor",
    "++callbacks.knn.train_samples=200",
    "++callbacks.knn.val_samples=null",
    "++callbacks.knn.every_n_epochs=1",
    "callbacks.reconstructions.every_n_steps=0",
]


def brute_force_knn(train, train_labels, val, k, T, num_classes):
    """One validation row at a time, in float64 numpy: cosine similarities, the k largest, exp(s/T)
    votes."""
    train = train / np.linalg.norm(train, axis=1, keepdims=True)
    preds = []
    for row in val:
        sims = train @ (row / np.linalg.norm(row))
        nearest = sorted(range(len(sims)), key=lambda i: -sims[i])[:k]
        votes = np.zeros(num_classes)
        for i in nearest:
            votes[train_labels[i]] += math.exp(sims[i] / T)
        preds.append(int(np.argmax(votes)))
    return np.array(preds)


@pytest.mark.parametrize("k, T", [(20, 0.07), (5, 0.5), (1, 0.07)])
def test_knn_equals_a_brute_force_reference(k, T):
    gen = torch.Generator().manual_seed(k)
    train, val = torch.randn(300, 16, generator=gen), torch.randn(97, 16, generator=gen)
    labels = torch.randint(0, 7, (300,), generator=gen)
    got = knn_predict(train, labels, val, k=k, temperature=T, num_classes=7)
    expected = brute_force_knn(
        train.double().numpy(), labels.numpy(), val.double().numpy(), k, T, 7
    )
    assert (got.numpy() == expected).all()


def test_knn_chunked_equals_unchunked_and_knows_the_answer():
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(5, 32, generator=gen) * 4
    train_labels = torch.arange(5).repeat_interleave(40)
    train = centres[train_labels] + torch.randn(200, 32, generator=gen)
    val_labels = torch.arange(5).repeat(20)
    val = centres[val_labels] + torch.randn(100, 32, generator=gen)
    one = knn_predict(train, train_labels, val, chunk_size=100_000)
    assert torch.equal(knn_predict(train, train_labels, val, chunk_size=7), one)
    # separated clusters: every query right
    assert knn_top1(train, train_labels, val, val_labels) == 1.0
    # every label shifted: every query wrong
    assert knn_top1(train, (train_labels + 1) % 5, val, val_labels) == 0.0
    # scale does not matter (cosine), and k is clamped to the memory size
    assert torch.equal(
        knn_predict(train * 10, train_labels, val, k=500),
        knn_predict(train, train_labels, val, k=200),
    )


def test_bad_knn_inputs_fail_clearly():
    with pytest.raises(ValueError, match="at least one labelled training sample"):
        knn_predict(torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), torch.randn(3, 4))
    with pytest.raises(ValueError, match="k=0"):
        knn_predict(torch.randn(3, 4), torch.zeros(3, dtype=torch.int64), torch.randn(3, 4), k=0)
    with pytest.raises(ValueError, match="every_n_epochs=-1"):
        KNNMonitor(every_n_epochs=-1)


def test_off_means_nothing_runs():
    """every_n_epochs=0: the hook returns before touching the trainer or the model (None for both
    here)."""
    monitor = KNNMonitor(every_n_epochs=0)
    monitor.on_train_epoch_end(None, None)
    assert monitor.history == [] and monitor.disabled == "every_n_epochs=0"


def knn_rows(run_dir) -> list[dict]:
    with open(Path(run_dir) / "metrics.csv") as f:
        return [r for r in csv.DictReader(f) if r.get("val/knn_top1")]


def recompute(run_dir, train_samples=200) -> float:
    """The kNN top-1 of the run's final weights, computed here from scratch on the same samples."""
    encoder = load_model(Path(run_dir) / "checkpoints" / "last.ckpt").encoder
    transform = eval_transform((64, 64))
    train = build_digits("train", transform=transform, image_size=64)
    train = Subset(train, subset_indices(len(train), train_samples, 0))
    val = build_digits("val", transform=transform, image_size=64)
    x_train, y_train = pooled_features(encoder, DataLoader(train, batch_size=128))
    x_val, y_val = pooled_features(encoder, DataLoader(val, batch_size=128))
    return knn_top1(x_train, y_train, x_val, y_val)


def test_monitor_logs_knn_top1_in_a_real_run(tmp_path, caplog):
    caplog.set_level("INFO")
    pretrain(compose_config("pretrain", tmp_path, [*FAST, *KNN]))
    rows = knn_rows(tmp_path)
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    values = [float(r["val/knn_top1"]) for r in rows]
    assert all(0.3 < v <= 1.0 for v in values), values  # chance is 0.1: features and labels line up
    assert values[-1] == pytest.approx(recompute(tmp_path), abs=1e-12)
    assert (
        "kNN monitor, epoch 1: val/knn_top1" in caplog.text
        and "200 train / 360 val samples" in caplog.text
    )


@pytest.mark.parametrize(
    "data, reason", [("unlabelled", "the data is unlabelled"), ("no_val", "no validation split")]
)
def test_monitor_turns_itself_off_without_labels_or_validation(data, reason, tmp_path, caplog):
    from helpers.data import photo

    caplog.set_level("INFO")
    root = tmp_path / "images"
    root.mkdir()
    for i in range(24):
        photo(i, (72, 64)).save(root / f"{i}.png")
    val = (
        f"data.val={{_target_:simmim_swinv2.data.build_folder,root:{root}}}"
        if data == "unlabelled"
        else "data.val=null"
    )
    run = tmp_path / "run"
    pretrain(
        compose_config("pretrain", run, [*FAST, *KNN, "data=folder", f"data.root={root}", val])
    )
    assert caplog.text.count("kNN monitor off") == 1 and reason in caplog.text
    assert not knn_rows(run)


# ZeRO-3 on the CPU: as tests/test_deepspeed.py runs it (Lightning's DeepSpeed strategy refuses the
# CPU)
ZERO3 = [
    "trainer=deepspeed_zero3",
    "trainer.strategy._target_=simmim_swinv2.distributed.strategy.CPUDeepSpeedStrategy",
]


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "zero3"])
def test_two_ranks_log_the_same_value_over_all_samples(strategy, tmp_path):
    """Each rank extracts half of the features (101 and 100 of the 201 train samples: one padded, so
    both run the same forwards, which ZeRO-3's sharded parameters need); after the gather both hold
    all of them and log the same number, the one a single process computes from the final weights.
    The DDP case is also the suite's plain two-process `pretrain`: Lightning launches the second
    process itself (gloo), both share Hydra's run dir."""
    run = tmp_path / "run"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]),
        "DS_ACCELERATOR": "cpu",
    }
    # ZeRO-3: its checkpoint consolidates to the live fp32 weights
    final = tmp_path / "final_fp32.pt"
    trainer = (
        ["trainer=ddp"] if strategy == "ddp" else [*ZERO3, *FINAL, f"+callbacks.final.path={final}"]
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "simmim_swinv2.pretrain",
            *FAST,
            *KNN,
            *trainer,
            "trainer.devices=2",
            # 101 + 100 (+1 pad)
            "trainer.accelerator=cpu",
            f"hydra.run.dir={run}",
            "callbacks.knn.train_samples=201",
            "+callbacks.record._target_=helpers.knn_record.RecordKNN",
            f"+callbacks.record.dirpath={tmp_path / 'record'}",
        ],
        # ZeRO-3 on 2 busy cores: ~7 min
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    assert "global batch 16 = 8 per device x 2 devices" in out
    if strategy == "ddp":
        assert (run / "checkpoints" / "last.ckpt").is_file()
        with open(run / "metrics.csv") as f:  # 2 epochs x 3 steps, logged once (rank 0)
            assert len([r for r in csv.DictReader(f) if r.get("train/loss_step")]) == 6
    else:
        check_consolidated(run, final, tmp_path)
    # both processes ran (the second one's own record: knn_rank1.json)
    ranks = [json.loads((tmp_path / "record" / f"knn_rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["history"] and len(ranks[0]["history"]) == 2
    for r in ranks:
        assert [(h["train_samples"], h["val_samples"]) for h in r["history"]] == [(201, 360)] * 2
        assert r["callback_metric"] == r["history"][-1]["knn_top1"]
    assert [h["knn_top1"] for h in ranks[0]["history"]] == [
        h["knn_top1"] for h in ranks[1]["history"]
    ]
    assert [float(r["val/knn_top1"]) for r in knn_rows(run)] == [
        h["knn_top1"] for h in ranks[0]["history"]
    ]
    # Recomputed here in fp32 from the final weights. DDP: features of other batches differ in the
    # last bits, one query may flip; ZeRO-3 ran the forward with bf16 parameters (a few may; 0.7472
    # against 0.7444 when written).
    flips = 1 if strategy == "ddp" else 5
    assert ranks[0]["history"][-1]["knn_top1"] == pytest.approx(
        recompute(run, 201), abs=flips / 360 + 1e-9
    )
