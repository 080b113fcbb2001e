"""Bad samples judged on the whole data set: counted over loader workers and ranks, logged per
epoch, named in `<run dir>/bad_samples.tsv`, and a stop once an epoch's bad samples pass
`max_bad_fraction` of the epoch."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import IterableDataset

from ..data.faults import BadSampleTracker, TooManyBadSamples

METRICS = {"train": "data/bad_samples", "val": "data/val_bad_samples"}
HEADER = "epoch\tsplit\trank\tsamples\twhere\treason\n"


def _loaders(loaders) -> list:
    if loaders is None:
        return []
    if isinstance(loaders, dict):
        return [x for v in loaders.values() for x in _loaders(v)]
    if isinstance(loaders, list | tuple):
        return [x for v in loaders for x in _loaders(v)]
    return [loaders]


class BadSampleMonitor(L.Callback):
    """Judges the training and validation data by their epochs, not by what one loader worker saw
    first.

    The datasets count their undecodable samples per pass in a
    :class:`~simmim_swinv2.data.BadSampleTracker` shared by their loader workers. This callback, on
    every rank, reads them:

    * after every batch: on one rank, against the limit (reading shared memory, no collective); on
      several, every ``check_every_n_steps`` batches, summed over ranks (a two-number all-reduce at
      the same batch on every rank, so all stop together);
    * at the end of each epoch (and validation pass): the sum over ranks is logged as
      ``data/bad_samples`` (``data/val_bad_samples``), and rank 0 gathers where they came from (a
      file path, ``shard.tar:key``, or a shard given up on with its unread samples), appends them to
      ``<run dir>/<filename>`` (``epoch split rank samples where reason``) and logs a summary line.

    The run stops with :class:`~simmim_swinv2.data.TooManyBadSamples` once the bad samples of an
    epoch exceed ``max_bad_fraction`` (the dataset's setting) x the samples of one epoch over all
    ranks (for streaming shards: ``samples_per_epoch``); until then the epoch may still end under
    the limit. A resumed epoch counts from the resume point on. Sources without a tracker (digits,
    synthetic) are left alone.
    """

    def __init__(
        self,
        check_every_n_steps: int = 10,
        filename: str = "bad_samples.tsv",
        max_listed: int = 100_000,
    ) -> None:
        if check_every_n_steps < 1:
            raise ValueError(f"check_every_n_steps={check_every_n_steps} must be >= 1")
        self.check_every_n_steps = check_every_n_steps
        self.filename = filename
        self.max_listed = max_listed
        self._tags: dict[str, int] = {}  # split -> the pass its batches came from
        # (tracker id, tag) already in the TSV from this rank
        self._written: set[tuple[int, int]] = set()

    # ---------------------------------------------------------------------------------------- hooks
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._check(trainer, pl_module, "train", batch_idx)

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        self._check(trainer, pl_module, "val", batch_idx)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._epoch_end(trainer, pl_module, "train")

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self._epoch_end(trainer, pl_module, "val")

    def on_exception(self, trainer, pl_module, exception) -> None:
        """A stop raised elsewhere (a loader worker finding nothing readable): name what this rank
        saw."""
        if not isinstance(exception, TooManyBadSamples):
            return
        for split, tag in self._tags.items():
            found = self._source(trainer, split)
            if found is not None and (id(found[1]), tag) not in self._written:
                self._write(trainer, split, [(trainer.global_rank, found[1].names(tag))])

    # --------------------------------------------------------------------------------------- checks
    def _source(self, trainer, split: str):
        loaders = trainer.train_dataloader if split == "train" else trainer.val_dataloaders
        for loader in _loaders(loaders):
            dataset = getattr(loader, "dataset", None)
            tracker = getattr(dataset, "tracker", None)
            if isinstance(tracker, BadSampleTracker):
                return dataset, tracker
        return None

    @staticmethod
    def epoch_samples(dataset, world: int) -> int:
        """Samples in one epoch over all ranks: an iterable dataset's length is per rank, a
        map-style one's is the data set's."""
        return len(dataset) * world if isinstance(dataset, IterableDataset) else len(dataset)

    def _check(self, trainer, pl_module, split: str, batch_idx: int) -> None:
        found = self._source(trainer, split)
        if found is None:
            return
        dataset, tracker = found
        tag = self._tags[split] = tracker.current_pass
        if trainer.world_size == 1:
            seen, bad = tracker.counts(tag)
        elif (batch_idx + 1) % self.check_every_n_steps == 0:  # batch_idx: the same on every rank
            seen, bad = self._sum(trainer, pl_module, tracker.counts(tag))
        else:
            return
        total = self.epoch_samples(dataset, trainer.world_size)
        if bad > tracker.max_bad_fraction * total:
            self._stop(trainer, split, tracker, tag, seen, bad, total)

    def _epoch_end(self, trainer, pl_module, split: str) -> None:
        found = self._source(trainer, split)
        if found is None:
            return
        dataset, tracker = found
        tag = self._tags.pop(split, tracker.current_pass)
        seen, bad = self._sum(trainer, pl_module, tracker.counts(tag))
        total = self.epoch_samples(dataset, trainer.world_size)
        if bad > tracker.max_bad_fraction * total:
            self._stop(trainer, split, tracker, tag, seen, bad, total)
        if trainer.sanity_checking:  # a few batches, seen again in the first validation
            return
        # the same number on every rank; sync_dist only keeps Lightning from asking for it
        pl_module.log(
            METRICS[split],
            float(bad),
            on_step=False,
            on_epoch=True,
            sync_dist=True,
            reduce_fx="max",
        )
        rows = self._gather(trainer, tracker.names(tag)[: self.max_listed])
        self._written.add((id(tracker), tag))
        if trainer.is_global_zero and bad:
            self._write(trainer, split, rows)
            shown = ", ".join(f"{w} ({r})" for _, part in rows for w, _, r in part[:3])
            rank_zero_info(
                f"bad samples, {split} epoch {trainer.current_epoch}: {bad} of {total} "
                f"({bad / max(total, 1):.2%}; max_bad_fraction={tracker.max_bad_fraction:g} "
                f"allows {tracker.max_bad_fraction * total:.1f}): {shown} ... listed in "
                f"{self._path(trainer)}"
            )

    def _stop(
        self,
        trainer,
        split: str,
        tracker: BadSampleTracker,
        tag: int,
        seen: int,
        bad: int,
        total: int,
    ) -> None:
        mine = tracker.names(tag)[: self.max_listed]
        rows = self._gather(trainer, mine)
        self._written.add((id(tracker), tag))
        if trainer.is_global_zero:
            self._write(trainer, split, rows)
        last = (
            "; ".join(f"{w} ({r})" for _, part in rows or [(0, mine)] for w, _, r in part[-3:])
            or "none here"
        )
        fraction = tracker.max_bad_fraction
        raise TooManyBadSamples(
            f"{bad} samples of {split} epoch {trainer.current_epoch} could not be used (over all "
            f"ranks and loader workers, {seen} read so far): more than "
            f"max_bad_fraction={fraction:g} of the epoch's {total} samples allows "
            f"({fraction * total:.1f}). Last ones: {last}. All are listed in "
            f"{self._path(trainer)}. Fix or remove these files (scripts/make_shards.py reports "
            "and drops unreadable images; re-create broken shards with it), or raise "
            f"data.{split}.max_bad_fraction if this is expected."
        )

    # ---------------------------------------------------------------------------------------- ranks
    @staticmethod
    def _sum(trainer, pl_module, counts: tuple[int, int]) -> tuple[int, int]:
        if trainer.world_size == 1:
            return counts
        total = trainer.strategy.reduce(
            torch.tensor(counts, dtype=torch.int64, device=pl_module.device), reduce_op="sum"
        )
        seen, bad = total.tolist()
        return int(seen), int(bad)

    @staticmethod
    def _gather(trainer, rows: list) -> list[tuple[int, list]]:
        """`[(rank, rows of that rank)]` on rank 0 (every rank calls it at the same point); `[]`
        elsewhere."""
        mine = (trainer.global_rank, rows)
        if trainer.world_size == 1 or not torch.distributed.is_initialized():
            return [mine]
        out = [None] * trainer.world_size if trainer.is_global_zero else None
        torch.distributed.gather_object(mine, out, dst=0)
        return out or []

    def _path(self, trainer) -> Path:
        return Path(trainer.default_root_dir) / self.filename

    def _write(self, trainer, split: str, rows: list[tuple[int, list]]) -> None:
        lines = [
            f"{trainer.current_epoch}\t{split}\t{rank}\t{count}\t{where}\t{reason}\n"
            for rank, part in rows
            for where, count, reason in part
        ]
        if not lines:
            return
        path = self._path(trainer)
        path.parent.mkdir(parents=True, exist_ok=True)
        new = not path.exists()
        with open(path, "a", encoding="utf-8") as f:
            f.write((HEADER if new else "") + "".join(lines))
