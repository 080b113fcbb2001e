"""Test-only: every process writes what its kNN monitor logged, to compare the ranks of a DDP
run."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L

from simmim_swinv2.training.knn import KNNMonitor


class RecordKNN(L.Callback):
    """At the end of training, each rank writes its `KNNMonitor.history` (and its own `val/knn_top1`
    from `trainer.callback_metrics`) to `<dirpath>/knn_rank<global rank>.json`."""

    def __init__(self, dirpath: str) -> None:
        self.dirpath = Path(dirpath)

    def on_train_end(self, trainer, pl_module) -> None:
        (monitor,) = [c for c in trainer.callbacks if isinstance(c, KNNMonitor)]
        metric = trainer.callback_metrics.get("val/knn_top1")
        self.dirpath.mkdir(parents=True, exist_ok=True)
        record = {
            "history": monitor.history,
            "callback_metric": None if metric is None else float(metric),
        }
        (self.dirpath / f"knn_rank{trainer.global_rank}.json").write_text(json.dumps(record))
