"""Test-only callbacks, added to real runs with a Hydra override
(`+callbacks.x._target_=helpers.callbacks.…`)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch


class SaveFinalWeights(L.Callback):
    """Every process writes its final model weights to `<dirpath>/weights_rank<global rank>.pt`."""

    def __init__(self, dirpath: str) -> None:
        self.dirpath = Path(dirpath)

    def on_train_end(self, trainer, pl_module) -> None:
        self.dirpath.mkdir(parents=True, exist_ok=True)
        weights = {k: v.detach().cpu().clone() for k, v in pl_module.model.state_dict().items()}
        torch.save(weights, self.dirpath / f"weights_rank{trainer.global_rank}.pt")


class SignalAt(L.Callback):
    """Sends `signal` to its own process when a batch starts at optimizer step `step` — on rank
    `rank` only (all ranks when None): a scheduler's signal arriving at one rank before the
    others."""

    def __init__(self, step: int, signal: str = "SIGUSR1", rank: int | None = None) -> None:
        self.step, self.signal, self.rank = step, signal, rank
        self.sent = False

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        import os
        import signal

        if (
            not self.sent
            and trainer.global_step == self.step
            and self.rank in (None, trainer.global_rank)
        ):
            self.sent = True
            os.kill(os.getpid(), signal.Signals[self.signal])


class KillAt(L.Callback):
    """SIGKILLs its own process when a batch starts at optimizer step `step`: an out-of-memory kill,
    a node that dies, a scheduler past its grace time. Nothing runs after it: no handler, no
    save."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        import os
        import signal

        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class WaitAt(L.Callback):
    """When a batch starts at optimizer step `s` (each of `steps`), every rank writes
    `<dirpath>/ready_<s>_<rank>` and waits until the test writes `<dirpath>/go_<s>` (polling, so a
    signal's handler runs meanwhile; `timeout` s at most): a signal sent from outside then lands at
    a known step, however fast or slow the machine. A resumed run that starts past a step does not
    wait there."""

    def __init__(self, dirpath: str, steps: list[int], timeout: float = 300.0) -> None:
        self.dirpath, self.steps, self.timeout = Path(dirpath), set(steps), timeout

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        import time

        step = trainer.global_step
        if step not in self.steps:
            return
        self.steps.discard(step)
        self.dirpath.mkdir(parents=True, exist_ok=True)
        (self.dirpath / f"ready_{step}_{trainer.global_rank}").touch()
        deadline = time.monotonic() + self.timeout
        while not (self.dirpath / f"go_{step}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)


class StopAt(L.Callback):
    """Raises when a batch starts at optimizer step `step`: a run that ends there without saving
    anything."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise InterruptedError(f"stopped by the test at step {self.step}")


class WeightsAt(L.Callback):
    """Every process writes its model's weights to `<dirpath>/step<s>_rank<global rank>.pt` when a
    batch starts at each optimizer step in `steps`: the fp32 master weights under DeepSpeed
    (gathered from the ZeRO partitions, every rank taking part), the parameters elsewhere."""

    def __init__(self, dirpath: str, steps: list[int]) -> None:
        self.dirpath, self.steps, self.done = Path(dirpath), set(steps), set()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        step = trainer.global_step
        if step not in self.steps or step in self.done:
            return
        self.done.add(step)
        if hasattr(trainer.strategy, "deepspeed_engine"):
            from deepspeed.utils import safe_get_full_fp32_param

            weights = {
                n: safe_get_full_fp32_param(p).detach().cpu().clone()
                for n, p in pl_module.model.named_parameters()
            }
        else:
            weights = {n: p.detach().cpu().clone() for n, p in pl_module.model.named_parameters()}
        self.dirpath.mkdir(parents=True, exist_ok=True)
        torch.save(weights, self.dirpath / f"step{step}_rank{trainer.global_rank}.pt")


class PoisonWeightsAt(L.Callback):
    """Makes one weight NaN when the batch of optimizer step `step` ends (after its optimizer step,
    before the checkpoint callbacks run): weights gone bad by any route."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step + 1:
            with torch.no_grad():
                next(pl_module.model.parameters()).view(-1)[0] = float("nan")


class PoisonGradAt(L.Callback):
    """Makes one gradient element NaN after the backward of optimizer step `step` (the loss stays
    finite): a gradient gone bad on its own, e.g. an overflow in a backward kernel."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_after_backward(self, trainer, pl_module) -> None:
        if trainer.global_step == self.step:
            grad = next(p.grad for p in pl_module.model.parameters() if p.grad is not None)
            grad.view(-1)[0] = float("nan")


class CopyLastAt(L.Callback):
    """Copies `<run dir>/checkpoints/last.ckpt` to `path` when the batch of optimizer step `step`
    starts: the checkpoint a process killed at that moment would resume from."""

    def __init__(self, step: int, path: str) -> None:
        self.step, self.path = step, Path(path)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step and trainer.is_global_zero and not self.path.exists():
            import shutil

            self.path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt", self.path)


class WarnAtStart(L.Callback):
    """`warnings.warn(message)` when fitting starts: a warning every run has, wherever it runs."""

    def __init__(self, message: str) -> None:
        self.message = message

    def on_fit_start(self, trainer, pl_module) -> None:
        import warnings

        warnings.warn(self.message, UserWarning, stacklevel=1)
