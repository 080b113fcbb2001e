"""Progress as lines of text where no terminal shows the bar (training/progress.py): a real run's
lines agree with its metrics.csv; `when=auto` decides by a real pseudo-terminal."""

from __future__ import annotations

import csv
import logging
import os
import pty
import re
import sys
from pathlib import Path

import lightning as L
import pytest
from helpers.config import FAST, compose_config

from simmim_swinv2.pretrain import pretrain
from simmim_swinv2.training.progress import ProgressLog, duration


def progress_lines(run_dir, caplog, every: int, when: str) -> list[str]:
    """The progress lines of a debug=fast pretraining run (2 epochs of 3 optimizer steps)."""
    progress = [
        f"callbacks.progress_log.every_n_steps={every}",
        f"callbacks.progress_log.when={when}",
    ]
    with caplog.at_level(logging.INFO):
        pretrain(compose_config("pretrain", run_dir, [*FAST, *progress]))
    return [m for m in caplog.messages if m.startswith("epoch ")]


def test_a_runs_lines_say_its_step_loss_rate_eta_and_validation(tmp_path, caplog):
    lines = progress_lines(tmp_path, caplog, every=2, when="always")
    steps = [m for m in lines if " done" not in m]
    epochs = [m for m in lines if " done" in m]
    # debug=fast: 2 epochs of 3 optimizer steps
    assert [re.search(r"step (\d+/\d+)", m)[1] for m in steps] == ["2/6", "4/6", "6/6"]
    assert [m.split(" | ")[0] for m in epochs] == ["epoch 0/1 done", "epoch 1/1 done"]
    with open(tmp_path / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    logged = {int(r["step"]): float(r["train/loss_step"]) for r in rows if r.get("train/loss_step")}
    for line in steps:  # the loss of the step the line is at (Lightning's step column: step - 1)
        step = int(re.search(r"step (\d+)/", line)[1])
        assert f"loss {logged[step - 1]:.4f}" in line, (line, logged)
        assert re.search(r"\| \d+ img/s \| eta (\d\d:)+\d\d \| peak mem [\d.]+ GiB", line), line
    assert "(33.3%)" in steps[0] and "lr " in steps[0]
    val = [float(r["val/loss"]) for r in rows if r.get("val/loss")]
    for line, v in zip(epochs, val, strict=True):  # each epoch's own validation
        assert f"val/loss {v:.4f}" in line and "val/knn_top1 " in line, (line, val)


def test_never_writes_nothing(tmp_path, caplog):
    assert progress_lines(tmp_path, caplog, every=1, when="never") == []


def test_auto_writes_only_without_a_terminal_or_a_progress_bar(monkeypatch):
    """A real pseudo-terminal as standard output: with the progress bar, the bar shows progress;
    without it, or without a terminal, the lines do."""
    auto = ProgressLog(when="auto")
    with_bar, without_bar = (
        L.Trainer(enable_progress_bar=True),
        L.Trainer(enable_progress_bar=False),
    )
    leader, follower = pty.openpty()
    try:
        with os.fdopen(follower, "w", closefd=False) as terminal:
            monkeypatch.setattr(sys, "stdout", terminal)
            assert sys.stdout.isatty()
            assert not auto._is_active(with_bar) and auto._is_active(without_bar)
            assert ProgressLog(when="always")._is_active(with_bar)
            monkeypatch.undo()
    finally:
        os.close(leader)
        os.close(follower)
    pipe_r, pipe_w = os.pipe()
    with os.fdopen(pipe_w, "w") as pipe, os.fdopen(pipe_r):
        monkeypatch.setattr(sys, "stdout", pipe)
        assert auto._is_active(with_bar) and not ProgressLog(when="never")._is_active(without_bar)


def test_durations_and_bad_settings():
    assert [duration(s) for s in (5, 65, 3725, 3 * 86400 + 4 * 3600 + 12 * 60 + 9)] == [
        "00:05",
        "01:05",
        "01:02:05",
        "3d 04:12",
    ]
    assert duration(float("inf")) == "?"
    with pytest.raises(ValueError, match="one of auto, always, never"):
        ProgressLog(when="sometimes")
    with pytest.raises(ValueError, match="0 or more"):
        ProgressLog(every_n_steps=-1)


def test_the_commands_log_lands_once_on_stderr_and_with_times_in_the_run_dir(tmp_path):
    """Through the command line (conf/hydra/job_logging/simmim.yaml): Lightning's messages and ours
    reach `<run dir>/pretrain.log` with times, and stderr once each, plain; stdout has none."""
    from helpers.config import run_cli

    r = run_cli(
        "simmim_swinv2.pretrain",
        *FAST,
        "callbacks.progress_log.every_n_steps=2",
        "+callbacks.warn._target_=helpers.callbacks.WarnAtStart",
        "+callbacks.warn.message=a warning for the log file",
        f"hydra.run.dir={tmp_path}",
        env={
            "PYTHONPATH": os.pathsep.join(
                [str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]
            )
        },
    )
    assert r.returncode == 0, r.stderr[-3000:]
    log = (tmp_path / "pretrain.log").read_text()
    for message in ("[PretrainTask] SimMIM", "epoch 1/1 | step 6/6 (100.0%)", "epoch 1/1 done"):
        assert re.search(
            r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+\]\[\S+\]\[INFO\] - " + re.escape(message), log
        ), log
        assert r.stderr.count(message) == 1 and message not in r.stdout, r.stderr[-3000:]
    assert "INFO: " not in r.stderr  # Lightning's own handler no longer doubles its lines
    # a warning, and an error that stops a command, are in the log file too
    assert re.search(r"\[py.warnings\]\[WARNING\] - .*UserWarning: a warning for the log file", log)
    stopped = run_cli(
        "simmim_swinv2.pretrain", "data=folder", "data.root=nothere", f"hydra.run.dir={tmp_path}"
    )
    assert stopped.returncode == 2 and "error: image folder nothere" in stopped.stderr
    assert (
        "[simmim_swinv2][ERROR] - error: image folder nothere"
        in (tmp_path / "pretrain.log").read_text()
    )
