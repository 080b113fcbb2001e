"""Test-only callbacks, added to real runs with a Hydra override (`+callbacks.x._target_=_callbacks.…`)."""

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
