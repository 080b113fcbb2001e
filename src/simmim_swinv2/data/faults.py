"""Bad-sample accounting shared by a dataset's copies: the main process and every DataLoader worker.

A data set is judged as a whole, never by what one loader worker happens to see first: each process
adds its counts to a shared-memory table and names its bad samples in a file of its own; the main
process sums them for a pass over the data (an epoch), and
:class:`~simmim_swinv2.training.bad_samples.BadSampleMonitor` sums those over ranks, logs them and
stops the run once they pass ``max_bad_fraction`` of an epoch.

Passes are told apart by a tag that the main process draws when a pass starts (:meth:`start_pass`:
the sampler does it for map-style data sets, the loader for iterable ones) and that reaches the
workers with the work: in the sampler's keys (map-style) or read when the worker's iterator starts
(iterable). So the counts of a pass are exactly those of its samples, with persistent workers too,
and samples a worker still reads for an earlier, cut-short pass (``limit_train_batches``) never land
in the next one.

Why a shared table rather than a count carried with each batch and summed by the training step: a
worker's last failures in a pass (a shard that breaks after its last good sample, a worker whose
samples are all bad) have no later batch to carry them, and validation's and the kNN monitor's
loaders have no training step; the table has every count when the pass ends.
"""

from __future__ import annotations

import logging
import os
import random
import re
import shutil
import tempfile
import weakref

import torch
from torch.utils.data import Dataset, get_worker_info

log = logging.getLogger(__name__)

# the main process + 256 loader workers (more share slots: the counts stay close, not exact)
SLOTS = 257
# passes kept per slot: a worker finishing a cut-short pass writes a cell the next pass does not
# read
RING = 4
# bad samples each process logs one by one in a pass; the rest go to the epoch summary
WARN_PER_PASS = 20


class TooManyBadSamples(RuntimeError):
    """Raised when the undecodable samples of an epoch pass ``max_bad_fraction`` of it."""


def _remove(path: str, owner: int) -> None:
    if os.getpid() == owner:  # not from a forked worker that inherited the finalizer
        shutil.rmtree(path, ignore_errors=True)


def _clean(text: str) -> str:
    """One line, no tabs (a TSV field), without object addresses (PIL names its BytesIO)."""
    return " ".join(re.sub(r" ?<[^<>]* at 0x[0-9a-fA-F]+>", "", str(text)).split())


class BadSampleTracker:
    """Counts the good and bad samples of each pass over a data set, in all of its processes.

    Created in the main process (with the data set, before any loader worker starts); its copies in
    the workers, forked or spawned, write to the same shared ``(SLOTS, RING, 3)`` int64 table, one
    row of cells per process (slot 0: the main process, slot ``1 + w``: worker ``w``), one cell per
    pass tag (``tag % RING``) holding ``(tag, seen, bad)``. A cell has a single writer, so no locks.
    Bad samples are also appended, ``tag  count  where  reason``, to ``<tmp dir>/<slot>.tsv``; the
    main process reads them back (:meth:`names`).

    ``where`` is a file path, ``shard.tar:key``, or a shard whose unread part counts ``count``
    samples. Nothing is raised here: the limit is ``max_bad_fraction`` of an epoch over all ranks,
    which only :class:`~simmim_swinv2.training.bad_samples.BadSampleMonitor` (in the main process of
    every rank) can see.

    Args:
        max_bad_fraction: the share of an epoch's samples that may be bad, in [0, 1] (1: never
            stop); kept here for the monitor to read.
    """

    def __init__(self, max_bad_fraction: float = 0.01) -> None:
        if not 0.0 <= max_bad_fraction <= 1.0:
            raise ValueError(
                f"max_bad_fraction={max_bad_fraction} must be within [0, 1] (1.0: never stop)"
            )
        self.max_bad_fraction = max_bad_fraction
        self._cells = torch.zeros(SLOTS, RING, 3, dtype=torch.int64).share_memory_()
        self._cells[..., 0] = -1
        self._current = torch.zeros(1, dtype=torch.int64).share_memory_()
        self.dir = tempfile.mkdtemp(prefix="simmim-bad-samples-")
        weakref.finalize(self, _remove, self.dir, os.getpid())
        # the pass this process's next samples belong to (PerSampleSeed sets it per sample)
        self.tag = 0
        self._local_state()

    def _local_state(self) -> None:
        self._view = None  # numpy view of the shared table, made in each process
        self._warned: dict[int, int] = {}
        self._offsets: dict[str, int] = {}
        self._names: dict[int, list[tuple[str, int, str]]] = {}

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        for key in ("_view", "_warned", "_offsets", "_names"):
            state.pop(key)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._local_state()

    @property
    def table(self):
        if self._view is None:
            self._view = self._cells.numpy()  # shares the memory: writes are seen by every process
        return self._view

    # -- the main process ------------------------------------------------------------------------
    def start_pass(self) -> int:
        """Begin a pass over the data (main process, before its workers get work); returns its
        tag."""
        self.tag = int(self._current[0]) + 1
        self._current[0] = self.tag
        return self.tag

    @property
    def current_pass(self) -> int:
        """The tag of the pass started last (0 before any)."""
        return int(self._current[0])

    def counts(self, tag: int | None = None) -> tuple[int, int]:
        """The counts of a pass over this process and its workers.

        Args:
            tag: the pass; None: the current one.

        Returns:
            ``(seen, bad)``.
        """
        tag = self.current_pass if tag is None else tag
        cells = self.table[:, tag % RING]
        mine = cells[:, 0] == tag
        return int(cells[mine, 1].sum()), int(cells[mine, 2].sum())

    def names(self, tag: int | None = None) -> list[tuple[str, int, str]]:
        """The bad samples of a pass so far, from every process.

        Args:
            tag: the pass; None: the current one.

        Returns:
            ``[(where, count, reason), ...]``.
        """
        tag = self.current_pass if tag is None else tag
        for entry in sorted(os.listdir(self.dir)) if os.path.isdir(self.dir) else []:
            path = os.path.join(self.dir, entry)
            with open(path, "rb") as f:
                f.seek(self._offsets.get(path, 0))
                data = f.read()
            end = data.rfind(b"\n") + 1  # a line still being written is read next time
            self._offsets[path] = self._offsets.get(path, 0) + end
            for line in data[:end].decode("utf-8", "replace").splitlines():
                t, count, where, reason = line.split("\t", 3)
                self._names.setdefault(int(t), []).append((where, int(count), reason))
        for old in [t for t in self._names if t < tag - RING]:
            del self._names[old]
        return list(self._names.get(tag, []))

    # -- any process -----------------------------------------------------------------------------
    def good(self, tag: int | None = None) -> None:
        """Count one good sample in pass ``tag`` (None: this process's current one)."""
        self._add(self.tag if tag is None else tag, 1, 0)

    def bad(
        self, where: str, err: BaseException | str, count: int = 1, tag: int | None = None
    ) -> None:
        """Count bad samples and name them (logged, up to ``WARN_PER_PASS`` a pass and process).

        Args:
            where: what names them: a path, ``shard:key``, or a shard.
            err: the exception, or a reason.
            count: how many samples (a shard's unread part counts its samples).
            tag: the pass; None: this process's current one.
        """
        tag = self.tag if tag is None else tag
        reason = _clean(err if isinstance(err, str) else f"{type(err).__name__}: {err}")
        self._add(tag, count, count)
        with open(os.path.join(self.dir, f"{self._slot()}.tsv"), "a", encoding="utf-8") as f:
            # one write: lines never interleave
            f.write(f"{tag}\t{count}\t{_clean(where)}\t{reason}\n")
        warned = self._warned[tag] = self._warned.get(tag, 0) + 1
        if warned <= WARN_PER_PASS:
            more = (
                " (further ones of this pass: in the epoch summary)"
                if warned == WARN_PER_PASS
                else ""
            )
            log.warning(
                "skipping bad sample %s (%s)%s%s",
                where,
                reason,
                f" [{count} samples]" if count > 1 else "",
                more,
            )

    @staticmethod
    def _slot() -> int:
        info = get_worker_info()
        return 0 if info is None else 1 + info.id % (SLOTS - 1)

    def _add(self, tag: int, seen: int, bad: int) -> None:
        cell = self.table[self._slot(), tag % RING]
        if cell[0] != tag:  # this process's first sample of the pass: the cell held an older one
            cell[1] = cell[2] = 0
            cell[0] = tag
        cell[1] += seen
        cell[2] += bad


_REPLACEMENT_TRIES = 64  # candidates tried in place of an unreadable sample before giving up


class ReplacingDataset(Dataset):
    """A map-style data set whose unreadable samples are counted, named and replaced: subclasses
    give `_load(index)` (the sample, raising when it cannot be read), `where(index)` (what names it:
    a path, `hf:PATH:split#row`), `self.tracker` and `unreadable_hint` (what to check when most of
    the data fails).

    A failure is counted and named in `tracker` and the sample replaced by the next readable one, so
    batch shapes and per-rank counts stay fixed; the run stops once the bad samples of an epoch,
    over all loader workers and ranks, pass `max_bad_fraction` of it
    (`training.bad_samples.BadSampleMonitor`)."""

    tracker: BadSampleTracker
    unreadable_hint = "check the data"

    def _load(self, index: int) -> tuple:
        raise NotImplementedError

    def where(self, index: int) -> str:
        return f"#{index}"

    def __getitem__(self, index: int) -> tuple:
        # the end of the data, not a bad sample (iteration stops here)
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        try:
            out = self._load(index)
        except Exception as err:  # noqa: BLE001 - any read/decode/transform failure is a bad sample
            self.tracker.bad(self.where(index), err)
        else:
            self.tracker.good()
            return out
        # The replacement: the next readable sample (a broken run is passed over by jumping ahead;
        # random jumps under PerSampleSeed are the same in every run). Failed candidates are not
        # counted here: each is counted once, when its own index comes.
        n = len(self)
        for attempt in range(1, _REPLACEMENT_TRIES + 1):
            candidate = (index + attempt) % n if attempt <= 8 else random.randrange(n)
            try:
                return self._load(candidate)
            except Exception:  # noqa: BLE001, S112 - try the next candidate
                continue
        raise TooManyBadSamples(
            f"{_REPLACEMENT_TRIES} samples tried in place of the unreadable {self.where(index)} "
            f"could not be read either: most of the data seems unreadable; {self.unreadable_hint}"
        )
