"""Pretraining and fine-tuning end to end on the CPU: entry points, checkpoints, resume, loading
matrix."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.config import FAST, compose_config

from simmim_swinv2 import convert
from simmim_swinv2.evaluate import evaluate
from simmim_swinv2.finetune import finetune
from simmim_swinv2.models import SimMIM, SwinV2Encoder, swinv2_config
from simmim_swinv2.pretrain import pretrain
from simmim_swinv2.training.base import NonFiniteLossError
from simmim_swinv2.weights import (
    AtomicCheckpointIO,
    encoder_state_dict,
    load_model,
    load_pretrained_encoder,
)

REPO = Path(__file__).resolve().parents[1]


def metrics(run_dir) -> list[dict]:
    with open(Path(run_dir) / "metrics.csv") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def pretrained_run(tmp_path_factory):
    """One fast pretraining run shared by the tests below (in-process, the real composed config)."""
    run = tmp_path_factory.mktemp("pretrain")
    cfg = compose_config("pretrain", run, FAST)
    result = pretrain(cfg)
    return run, result


def test_pretrain_writes_checkpoints_metrics_pictures_and_config(pretrained_run):
    run, result = pretrained_run
    assert {"train/loss_step", "val/loss"} <= set(result)
    ckpts = sorted(p.name for p in (run / "checkpoints").glob("*.ckpt"))
    assert ckpts == ["epoch0000-step0000003.ckpt", "epoch0001-step0000006.ckpt", "last.ckpt"]
    assert not list((run / "checkpoints").glob("*.tmp-*"))
    rows = metrics(run)
    losses = [float(r["train/loss_step"]) for r in rows if r.get("train/loss_step")]
    assert len(losses) == 6 and all(l == l for l in losses)
    assert any(r.get("train/device/samples_per_sec") for r in rows)  # throughput (img/s)
    assert any(r.get("train/grad_norm") for r in rows) and any(
        r.get("lr-AdamW/decay") or any(k.startswith("lr-") and r[k] for k in r) for r in rows
    )
    pictures = sorted((run / "reconstructions").glob("step_*.png"))
    assert [p.name for p in pictures] == [
        "step_0000002.png",
        "step_0000004.png",
        "step_0000006.png",
    ]
    from PIL import Image

    assert Image.open(pictures[-1]).size[0] == 4 * (64 + 2) + 2  # 4 columns of 64 px + padding
    assert "img_size: 64" in (run / "config.yaml").read_text()  # resolved, no ${...}
    assert "${" not in (run / "config.yaml").read_text()
    meta = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["simmim_swinv2"]
    assert meta["kind"] == "SimMIM" and meta["config"]["variant"] == "debug"


def test_pretrain_logs_data_wait_flops_and_mfu(pretrained_run):
    """Every run logs the share of time spent waiting for data, and FLOP/s and MFU from the model's
    FLOPs counted once (the CPU's peak: its measured matmul rate)."""
    rows = metrics(pretrained_run[0])
    waits = [float(r["train/data_wait"]) for r in rows if r.get("train/data_wait")]
    flops = [
        float(r["train/device/flops_per_sec"]) for r in rows if r.get("train/device/flops_per_sec")
    ]
    mfu = [float(r["train/device/mfu"]) for r in rows if r.get("train/device/mfu")]
    assert waits and all(0.0 <= w <= 1.0 for w in waits)
    assert flops and all(f > 0 for f in flops)
    assert mfu and all(m > 0 for m in mfu)


def test_finetune_from_the_pretrain_run_then_evaluate(pretrained_run, tmp_path, capsys):
    run, _ = pretrained_run
    cfg = compose_config("finetune", tmp_path / "ft", [*FAST, f"pretrained={run}"])
    result = finetune(cfg)
    out = capsys.readouterr().out
    # mask token dropped, nothing else
    assert "pretrained: 1" in out and "missing 0, unexpected 0" in out
    assert 0.0 <= result["val/top1"] <= result["val/top5"] <= 1.0
    assert "validation: top-1" in out
    ev = evaluate(
        compose_config(
            "evaluate",
            tmp_path / "ev",
            [
                f"checkpoint={tmp_path / 'ft'}",
                "batch_size=8",
                # as debug=fast
                "trainer.limit_val_batches=1",
            ],
        )
    )
    # a fraction of the same batch of 8 (a multiple of 1/8): equal, approx only for the float that
    # carries it
    assert ev["val/top1"] == pytest.approx(result["val/top1"])


def test_resume_auto_continues_a_finished_run_without_training_again(pretrained_run, tmp_path):
    run, _ = pretrained_run
    before = len(metrics(run))
    cfg = compose_config("pretrain", run, FAST)
    pretrain(cfg)  # resume=auto: max_epochs already reached
    rows = metrics(run)
    assert len([r for r in rows if r.get("train/loss_step")]) == 6  # no new training steps
    assert len(rows) >= before


@pytest.mark.parametrize(
    "kind", ["lightning_ckpt", "run_dir", "safetensors", "transformers", "official", "timm"]
)
def test_finetune_loads_pretrained_weights_from_anything(kind, pretrained_run, tmp_path):
    run, _ = pretrained_run
    simmim = load_model(run)
    assert isinstance(simmim, SimMIM)
    source = {"lightning_ckpt": run / "checkpoints" / "last.ckpt", "run_dir": run}.get(kind)
    if kind == "safetensors":
        convert.save_model(simmim, tmp_path / "model.safetensors")
        source = tmp_path / "model.safetensors"
    elif kind == "transformers":
        source = convert.to_transformers(simmim, tmp_path / "hf")
    elif kind == "official":
        from helpers.reference import as_official

        torch.save(as_official(simmim), tmp_path / "official.pth")
        source = tmp_path / "official.pth"
    elif kind == "timm":
        sd = {k: v for k, v in simmim.encoder.state_dict().items() if k != "mask_token"}
        torch.save(sd, tmp_path / "timm.pth")
        source = tmp_path / "timm.pth"
    cfg = simmim.encoder.cfg
    encoder = SwinV2Encoder(cfg.replace(use_mask_token=False))
    report = load_pretrained_encoder(encoder, source)
    assert report == {"missing": [], "unexpected": [], "shape_mismatch": []}
    for name, value in encoder.state_dict().items():
        if not name.endswith(
            ("relative_position_index", "relative_coords_table", "attn_mask", "k_bias")
        ):
            torch.testing.assert_close(
                value, simmim.encoder.state_dict()[name], rtol=0, atol=0, msg=name
            )


def test_pretrained_weights_load_into_another_window(pretrained_run):
    """Window 4 -> 8 at a larger size: the position-bias MLP carries over, tables are rebuilt."""
    run, _ = pretrained_run
    encoder = SwinV2Encoder(
        swinv2_config("debug", img_size=128, window_size=8, pretrained_window_sizes=(4, 4, 4, 2))
    )
    report = load_pretrained_encoder(encoder, run)
    assert report["missing"] == [] and report["shape_mismatch"] == []
    assert encoder.layers[0].blocks[0].attn.relative_position_index.shape == (64, 64)
    assert encoder(torch.randn(1, 3, 128, 128)).last_hidden_state.shape == (1, 4, 4, 256)


def test_wrong_pretrained_weights_fail_clearly(tmp_path):
    torch.save({"conv1.weight": torch.zeros(3)}, tmp_path / "resnet.pth")
    encoder = SwinV2Encoder(swinv2_config("debug", img_size=64, window_size=4))
    with pytest.raises(Exception, match="patch_embed|no encoder weights"):
        load_pretrained_encoder(encoder, tmp_path / "resnet.pth")
    with pytest.raises(FileNotFoundError):
        encoder_state_dict(tmp_path / "missing.ckpt")


def test_atomic_checkpoint_survives_a_failed_save(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "ckpts" / "last.ckpt"
    io.save_checkpoint({"step": 1, "w": torch.ones(3)}, path)

    def dying_save(obj, f):  # writes half a file, then the process "dies"
        f.write(b"partial")
        raise KeyboardInterrupt("killed mid-save")

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["step"] == 1
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]


def test_a_save_that_runs_out_of_disk_names_the_fix_and_keeps_the_last_checkpoint(
    tmp_path, monkeypatch
):
    """ENOSPC from the kernel (torch's writer on /dev/full, as a full disk answers it; torch turns
    it into a RuntimeError) while a checkpoint is written: an error naming the file, its size, the
    space left, the older checkpoints resuming does not need and how to keep fewer; the earlier
    checkpoint still loads, no temp file left."""
    io = AtomicCheckpointIO()
    path = tmp_path / "ckpts" / "last.ckpt"
    io.save_checkpoint({"step": 0, "w": torch.ones(3)}, path.with_name("epoch0.ckpt"))
    io.save_checkpoint({"step": 1, "w": torch.ones(3)}, path)

    real_save = torch.save

    def full_disk_save(obj, f):  # torch's own writer, on a file the kernel says is full
        with open("/dev/full", "wb") as full:
            real_save(obj, full)

    monkeypatch.setattr(torch, "save", full_disk_save)
    with pytest.raises(OSError, match=r"no space left") as err:
        io.save_checkpoint({"step": 2, "w": torch.zeros(2**18)}, path)
    monkeypatch.undo()
    message = str(err.value)
    assert err.value.errno == 28 and str(path) in message and "(~1.0 MiB; " in message
    assert "intact" in message and "resume=auto" in message and "save_top_k=1" in message
    assert "needs only the newest (last.ckpt); older ones here: epoch0.ckpt" in message
    assert torch.load(path, weights_only=True)["step"] == 1
    assert sorted(p.name for p in path.parent.iterdir()) == ["epoch0.ckpt", "last.ckpt"]


def test_a_run_whose_checkpoints_may_outgrow_its_disk_is_told_at_start(tmp_path):
    """`distributed.disk.short_of_disk`: the retention's checkpoints, and one more while a save is
    written, against the run directory's real free space plus its checkpoints now."""
    import shutil

    from simmim_swinv2.distributed.disk import CheckpointPlan, short_of_disk

    run = tmp_path / "new" / "run"  # not made yet
    free = shutil.disk_usage(tmp_path).free
    plan = lambda each: CheckpointPlan(each, 12, (("newest 2", 2), ("last.ckpt", 1)))  # noqa: E731
    assert short_of_disk(plan(1e6), run) is None
    message = short_of_disk(plan(free / 2), run)
    assert "(3 kept at most x " in message
    assert f"file system of {run} has" in message and "save_top_k=1" in message
    (run / "checkpoints").mkdir(parents=True)  # a resumed run: its checkpoints will be replaced
    (run / "checkpoints" / "old.ckpt").write_bytes(b"x" * 2**20)
    assert "(+ 1.0 MiB in its checkpoints now)" in short_of_disk(plan(free / 2), run)
    assert short_of_disk(None, run) is None


def test_without_the_stability_guard_a_non_finite_loss_stops_the_run(tmp_path, monkeypatch):
    from simmim_swinv2 import pretrain as entry

    real = entry.SimMIM.from_config

    def poisoned(*args, **kwargs):
        model = real(*args, **kwargs)
        with torch.no_grad():
            model.decoder[0].bias.fill_(float("nan"))
        return model

    monkeypatch.setattr(entry.SimMIM, "from_config", poisoned)
    cfg = compose_config("pretrain", tmp_path, [*FAST, "callbacks.stability=null"])  # on: skipped
    with pytest.raises(NonFiniteLossError, match="non-finite loss .* at step 0"):
        pretrain(cfg)


def test_a_run_stopped_after_an_epoch_resumes_from_it_and_matches_an_uninterrupted_one(
    tmp_path, caplog
):
    """A run that dies in epoch 2 (nothing saved at the crash; SIGKILL itself: test_checkpoints) is
    started again with the same command: it resumes by itself from the end of epoch 1, and its later
    losses equal those of a run that was never interrupted (same seed, same data order)."""
    caplog.set_level("INFO")
    args = [
        *FAST,
        "trainer.max_epochs=3",
        "trainer.limit_train_batches=4",
        "callbacks.reconstructions.every_n_steps=0",
    ]
    pretrain(compose_config("pretrain", tmp_path / "ref", args))
    run = tmp_path / "run"
    with pytest.raises(InterruptedError):
        pretrain(
            compose_config(
                "pretrain",
                run,
                [
                    *args,
                    "+callbacks.stop._target_=helpers.callbacks.StopAt",
                    "+callbacks.stop.step=10",
                ],
            )
        )
    last = run / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 8  # the end of epoch 1
    caplog.clear()
    pretrain(compose_config("pretrain", run, args))
    assert f"resuming from {last}" in caplog.text

    def losses(path):  # the last value logged for each step (a resumed run logs its steps again)
        return {
            int(r["step"]): float(r["train/loss_step"])
            for r in metrics(path)
            if r.get("train/loss_step")
        }

    expected, got = losses(tmp_path / "ref"), losses(run)
    assert sorted(expected) == sorted(got) == list(range(12))
    for step in range(8, 12):  # epoch 2, trained after the resume
        # the same operations on the same values in the same order: equal up to a few fp32 ulps
        assert got[step] == pytest.approx(expected[step], rel=1e-6, abs=1e-7), step


def test_bf16_mixed_precision_and_accumulation_on_cpu(tmp_path, caplog):
    caplog.set_level("INFO")
    cfg = compose_config(
        "pretrain",
        tmp_path,
        [
            *FAST,
            "trainer.precision=bf16-mixed",
            "trainer.accumulate_grad_batches=2",
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=4",
        ],
    )
    result = pretrain(cfg)
    assert "global batch 16 = 8 per device x 1 devices x 2 accumulation" in caplog.text
    assert "precision bf16-mixed" in caplog.text
    assert torch.isfinite(torch.tensor(result["train/loss_epoch"]))
    steps = {r["step"] for r in metrics(tmp_path) if r.get("train/loss_step")}
    assert len(steps) == 2  # 4 batches, 2 optimizer steps


@pytest.mark.slow
def test_two_nodes_of_one_process_agree_on_the_weights(tmp_path):
    """Two launched processes, one per "node" (NODE_RANK 0 and 1 on localhost, gloo), train a few
    steps with trainer.num_nodes=2 and end with identical weights."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = [
        *FAST,
        "trainer=ddp",
        "trainer.num_nodes=2",
        "trainer.devices=1",
        "trainer.accelerator=cpu",
        f"hydra.run.dir={tmp_path / 'run'}",
        "+callbacks.dump._target_=helpers.callbacks.SaveFinalWeights",
        f"+callbacks.dump.dirpath={tmp_path / 'weights'}",
    ]
    env = {
        **os.environ,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]),
    }
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "simmim_swinv2.pretrain", *args],
            cwd=REPO,
            env={**env, "NODE_RANK": str(rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:]
    assert "global batch 16 = 8 per device x 2 devices" in outputs[0]
    w0, w1 = (
        torch.load(tmp_path / "weights" / f"weights_rank{r}.pt", weights_only=True) for r in (0, 1)
    )
    assert w0.keys() == w1.keys() and len(w0) > 0
    for name in w0:
        torch.testing.assert_close(w0[name], w1[name], rtol=0, atol=0, msg=name)
    # they did train
    assert len([r for r in metrics(tmp_path / "run") if r.get("train/loss_step")]) == 6


def test_a_runs_log_drops_lightnings_adverts_and_its_own_deprecation(caplog):
    """What a run's log cannot act on is dropped once a Trainer is built: Lightning's tips for its
    cloud products, and torch's FutureWarning about a pytree class Lightning itself uses. Other
    Lightning messages and warnings still come through."""
    import logging
    import warnings

    from lightning.pytorch.utilities import rank_zero_info
    from torch.utils._pytree import LeafSpec

    from simmim_swinv2.training.build import quiet_library_notices

    quiet_library_notices()
    with caplog.at_level(logging.INFO):
        rank_zero_info("💡 Tip: For seamless cloud logging, try installing something")
        rank_zero_info("GPU available: False, used: False")
    assert caplog.messages == ["GPU available: False, used: False"]
    for quiet in (False, True):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if quiet:
                quiet_library_notices()
            LeafSpec()  # as lightning.pytorch.utilities._pytree builds one
            warnings.warn("kept", FutureWarning, stacklevel=1)
        said = [str(w.message).split(" is deprecated")[0] for w in caught]
        assert said == (["kept"] if quiet else ["`isinstance(treespec, LeafSpec)`", "kept"])
