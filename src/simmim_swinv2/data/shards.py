"""WebDataset tar shards with exact, balanced epochs across ranks × DataLoader workers.

Two modes:

* **exact epoch** (``samples_per_epoch=None``, the default): the shards, in an order reshuffled
  from ``(seed, epoch)``, form one global stream of ``N`` samples. Rank ``r`` takes the
  contiguous range ``[r·T, (r+1)·T)`` with ``T = ceil(N / world)`` (wrapping round to the start,
  i.e. padding by repeating at most ``world − 1`` samples, like ``DistributedSampler``), or
  ``T = N // world`` with ``drop_last=True``. Each rank's range is cut into one contiguous piece
  per worker, in whole batches when ``batch_size`` is given. So every sample is seen once per
  epoch, every rank yields exactly ``T`` samples and ``ceil(T / batch_size)`` batches, whatever
  the shard sizes and however few shards there are. Pieces may start/end inside a shard; the
  reader then reads (but does not decode) the skipped part of that shard.
  Per-shard sample counts come from ``sizes.json`` (written by ``scripts/make_shards.py``) or
  from reading the tar headers once.
* **streaming** (``samples_per_epoch=K``): each rank yields ``K // world`` samples per epoch,
  cycling through its shards (disjoint per rank/worker when there are enough shards, all shards
  otherwise), reshuffled per cycle.

The pieces (exact) or shards (streaming) are handed out with ``wds.split_by_node`` then
``wds.split_by_worker``, so rank and worker come from ``RANK``/``WORLD_SIZE`` (or the process
group) and the DataLoader worker info, as everywhere in webdataset.

Undecodable samples and samples without an image are skipped, counted and named (``shard:key``) in
the dataset's :class:`~.faults.BadSampleTracker`; to keep counts equal, each is replaced by a
re-augmented recent good sample. A shard that cannot be opened or read on (an ``OSError`` from a
cluster file system, a truncated tar, fewer samples than ``sizes.json`` says) is retried from the
sample it had reached (``read_attempts``, with a doubling back-off from ``retry_backoff`` seconds),
then skipped: its unread samples count as bad, named by the shard, and are replaced likewise.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import os
import random
import tarfile
import time
from collections.abc import Callable, Iterator, Sequence

import webdataset as wds
from torch.utils.data import IterableDataset
from webdataset.tariterators import base_plus_ext, tarfile_samples

from . import tar
from .decode import apply_transform
from .faults import BadSampleTracker, TooManyBadSamples
from .seeding import sample_seed, seeded

# arrays of any channel count: data/arrays.py
IMAGE_KEYS = ("jpg", "jpeg", "png", "webp", "npy", "tif", "tiff")
# "to the end of the shard" (streaming reads whole shards; their sizes are not needed)
_WHOLE = 1 << 62


class ShardError(RuntimeError):
    """A shard could not be opened or read."""


def expand_shards(urls: str | Sequence[str]) -> list[str]:
    """The shard list of a pattern.

    Args:
        urls: a brace pattern (``/d/{000000..000009}.tar``, ``::``-joined) or a list of them.

    Returns:
        The shards, in order; none raises ``ValueError``.
    """
    items = [urls] if isinstance(urls, str) else list(urls)
    shards = [s for item in items for s in wds.shardlists.expand_urls(str(item))]
    if not shards:
        raise ValueError(
            f"no shards in {urls!r}; give a brace pattern like 'dir/{{000000..000099}}.tar' or a "
            "list"
        )
    return shards


def count_samples(shard: str) -> int:
    """Number of samples (distinct keys) in a local tar shard, from its headers."""
    keys = set()
    try:
        with tarfile.open(shard, "r:*") as tar:
            for member in tar:
                if member.isreg():
                    key, _ = base_plus_ext(member.name)
                    if key is not None and not os.path.basename(key).startswith("__"):
                        keys.add(key)
    except (OSError, tarfile.TarError) as err:
        raise ShardError(
            f"cannot read shard {shard}: {err}; check the path or re-create it with make_shards.py"
        ) from err
    return len(keys)


def shard_sizes(shards: Sequence[str]) -> list[int]:
    """Sample count per shard: ``sizes.json`` next to the shards if present, else counted from the
    tar.

    Args:
        shards: shard paths.

    Returns:
        One count per shard, in order.
    """
    index: dict[str, dict] = {}
    sizes = []
    for shard in shards:
        folder = os.path.dirname(shard)
        if folder not in index:
            path = os.path.join(folder, "sizes.json")
            index[folder] = json.load(open(path)) if os.path.exists(path) else {}
        name = os.path.basename(shard)
        sizes.append(index[folder][name] if name in index[folder] else count_samples(shard))
    return sizes


def _worker_counts(total: int, workers: int, batch_size: int | None) -> list[int]:
    """Split ``total`` samples over workers; in whole batches (one partial at most) if
    ``batch_size``."""
    if batch_size is None:
        base, extra = divmod(total, workers)
        return [base + (k < extra) for k in range(workers)]
    full, rest = divmod(total, batch_size)
    counts = [(full // workers + (k < full % workers)) * batch_size for k in range(workers)]
    if rest:
        # the DataLoader visits workers round-robin: this one is next
        counts[full % workers] += rest
    return counts


def plan_epoch(
    sizes: Sequence[int],
    world: int,
    workers: int,
    order: Sequence[int],
    drop_last: bool,
    batch_size: int | None,
) -> list[list[tuple[int, int, int]]]:
    """Pieces ``[(shard, start, stop), ...]`` for every (rank, worker), listed at
    ``worker * world + rank``.

    That order is what ``split_by_node`` (``islice(rank, None, world)``) followed by
    ``split_by_worker`` (``islice(worker, None, workers)``) picks apart.

    Args:
        sizes: samples per shard.
        world, workers: ranks, and DataLoader workers per rank.
        order: the shards' order this epoch (indices into ``sizes``).
        drop_last: ``N // world`` samples per rank instead of ``ceil(N / world)`` (padded by
            wrapping round).
        batch_size: cut each rank's range into whole batches per worker; None: samples.

    Returns:
        ``world * workers`` lists of pieces ``(shard, start, stop)``.
    """
    total = sum(sizes)
    per_rank = total // world if drop_last else math.ceil(total / world)
    if per_rank == 0:
        raise ValueError(
            f"{total} samples cannot be split over {world} ranks; use fewer ranks or more data"
        )
    bounds, pos = [], 0  # global [begin, end) of each shard in epoch order
    for s in order:
        bounds.append((s, pos, pos + sizes[s]))
        pos += sizes[s]

    def slices(begin: int, count: int) -> list[tuple[int, int, int]]:
        out = []
        while count > 0:
            begin %= total
            for s, lo, hi in bounds:
                if lo <= begin < hi:
                    take = min(count, hi - begin)
                    out.append((s, begin - lo, begin - lo + take))
                    begin, count = begin + take, count - take
                    break
        return out

    counts = _worker_counts(per_rank, workers, batch_size)
    units: list[list[tuple[int, int, int]]] = [[] for _ in range(world * workers)]
    for r in range(world):
        start = r * per_rank
        for k, n in enumerate(counts):
            units[k * world + r] = slices(start, n)
            start += n
    return units


def _shuffled(items: Iterator, size: int, rng: random.Random) -> Iterator:
    buf: list = []
    for item in items:
        buf.append(item)
        if len(buf) >= size:
            i = rng.randrange(len(buf))
            buf[i], buf[-1] = buf[-1], buf[i]
            yield buf.pop()
    rng.shuffle(buf)
    yield from buf


class ShardDataset(IterableDataset):
    """Iterable dataset over WebDataset shards; item = transform outputs + label (``cls``, or -1).

    Args:
        urls: brace pattern or list of ``.tar`` shards (local paths or anything ``wds.gopen`` opens;
            non-local shards need a ``sizes.json`` beside them in exact mode).
        transform: applied to the encoded bytes (if it ``accepts_bytes``) or the RGB PIL image.
        shuffle: reshuffle shard order (and samples, through a buffer) every epoch from ``seed``.
        seed: shuffling seed, the same on every rank.
        samples_per_epoch: ``None`` for exact epochs, else streaming with this many samples per
            epoch over all ranks.
        drop_last: exact mode: drop the last ``< world`` samples instead of padding by repeats.
        batch_size: the DataLoader batch size; lets ``len(DataLoader)`` match the batches exactly.
        shuffle_buffer: samples held (encoded) for shuffling within a worker.
        max_bad_fraction: the run stops once the bad samples of an epoch (over all ranks) pass this
            fraction of it (:class:`~simmim_swinv2.training.bad_samples.BadSampleMonitor` judges).
        read_attempts: reads of a shard that fails before it is skipped; ``retry_backoff``: seconds
            before the second, doubling after.
        num_classes: for presets / heads; not checked against the data.
    """

    def __init__(
        self,
        urls: str | Sequence[str],
        transform: Callable | None = None,
        shuffle: bool = True,
        seed: int = 0,
        samples_per_epoch: int | None = None,
        drop_last: bool = False,
        batch_size: int | None = None,
        shuffle_buffer: int = 256,
        max_bad_fraction: float = 0.01,
        read_attempts: int = 3,
        retry_backoff: float = 1.0,
        num_classes: int | None = None,
    ) -> None:
        if read_attempts < 1:
            raise ValueError(
                f"read_attempts={read_attempts} must be >= 1 (1: skip a failing shard at once)"
            )
        self.shards = expand_shards(urls)
        self.transform = transform
        self.shuffle = shuffle
        self.seed = seed
        self.samples_per_epoch = samples_per_epoch
        self.drop_last = drop_last
        self.batch_size = batch_size
        self.shuffle_buffer = shuffle_buffer if shuffle else 0
        self.tracker = BadSampleTracker(max_bad_fraction)
        self.read_attempts = read_attempts
        self.retry_backoff = retry_backoff
        self.num_classes = num_classes
        self.epoch = 0
        self._iterations = 0
        self._skip_batches = 0
        self._sizes: list[int] | None = None

    @property
    def sizes(self) -> list[int]:
        """Samples per shard (:func:`shard_sizes`), read once."""
        if self._sizes is None:
            self._sizes = shard_sizes(self.shards)
        return self._sizes

    def select(self, shards: Sequence[str]) -> ShardDataset:
        """A copy that reads only ``shards`` (of these), e.g. the shards held out as a validation
        split."""
        part = copy.copy(self)
        part.shards, part._sizes = list(shards), None
        return part

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        """Set the epoch of the next iteration.

        Args:
            epoch: the next iteration's epoch (later iterations of this copy count up from it).
            skip_batches: the rank's first batches that iteration leaves out (a mid-epoch resume:
                already trained on).
        """
        self.epoch = epoch
        self._iterations = 0
        self._skip_batches = skip_batches

    def __len__(self) -> int:
        """Samples this rank yields per epoch."""
        world = wds.utils.pytorch_worker_info()[1]
        if self.samples_per_epoch is not None:
            return self.samples_per_epoch // world
        total = sum(self.sizes)
        return total // world if self.drop_last else math.ceil(total / world)

    def _read(self, pieces: Sequence[tuple[int, int, int]]) -> Iterator[dict]:
        """The samples of each piece ``(shard, start, stop)``. A read that fails is tried again from
        the sample it had reached; after ``read_attempts`` the rest of the piece is given up and a
        marker takes its place: ``{"__url__", "__bad__": reason, "__count__": samples not
        read}``."""
        for shard_index, start, stop in pieces:
            url, pos = self.shards[shard_index], start
            for attempt in range(self.read_attempts):
                try:
                    for sample in self._samples(url, pos, stop):
                        pos += 1
                        yield sample
                    if pos < stop < _WHOLE:
                        raise ShardError(
                            f"the shard ended after {pos} samples, {stop} expected (sizes.json or "
                            "its headers when the epoch was planned)"
                        )
                    break
                except (OSError, tarfile.TarError, ValueError, ShardError) as err:
                    if attempt + 1 < self.read_attempts:
                        time.sleep(self.retry_backoff * 2**attempt)
                        continue
                    unread = self._unread(shard_index, pos, stop)
                    yield {
                        "__url__": url,
                        "__count__": unread,
                        "__bad__": (
                            f"unreadable after {self.read_attempts} attempts "
                            f"({type(err).__name__}: {err}); {unread} samples from #{pos} "
                            "skipped; check the file or re-create it with make_shards.py"
                        ),
                    }

    def _unread(self, shard_index: int, pos: int, stop: int) -> int:
        if stop < _WHOLE:
            return stop - pos
        try:  # streaming: the shard's size, if sizes.json (or its headers) tells
            return max(shard_sizes([self.shards[shard_index]])[0] - pos, 1)
        except (OSError, ValueError, ShardError):
            return 1

    @staticmethod
    def _samples(url: str, start: int, stop: int) -> Iterator[dict]:
        """Samples start … stop - 1 of a shard: a local uncompressed tar through `tar.samples`
        (earlier samples passed over by seeking), anything else (compressed, pipe:, http…) through
        webdataset."""
        path = url.removeprefix("file:")
        if os.path.isfile(path):
            with open(path, "rb", buffering=1 << 16) as f:
                if tar.is_plain_tar(f.read(tar.BLOCK)):
                    f.seek(0)
                    yield from tar.samples(f, url, start, stop, seekable=True)
                    return
        for position, sample in enumerate(tarfile_samples(iter([{"url": url}]))):
            if position >= stop:
                break
            if position >= start:
                yield sample

    def _decode(self, sample: dict) -> tuple:
        image = next((sample[k] for k in IMAGE_KEYS if k in sample), None)
        if image is None:
            raise ValueError(f"no image (expected one of {IMAGE_KEYS}; has {sorted(sample)})")
        label = int(sample["cls"]) if "cls" in sample else -1
        return apply_transform(self.transform, image, label)

    def __iter__(self) -> Iterator[tuple]:
        epoch = self.epoch + self._iterations
        self._iterations += 1
        rank, world, worker, workers = wds.utils.pytorch_worker_info()
        # the pass the main process started (the loader, before our workers)
        tag = self.tracker.current_pass
        # A resumed pass leaves out the first `done` batches. The DataLoader takes batches from its
        # workers in turn, starting with worker 0, and an uninterrupted pass would go on with worker
        # `done % workers`: so worker w plays worker (w + done) % workers here, which has
        # ceil((done - that) / workers) batches done.
        done, self._skip_batches = self._skip_batches, 0
        worker = (worker + done) % workers
        skip = max(0, -(-(done - worker) // workers)) * (self.batch_size or 1)
        rng = random.Random(f"{self.seed}/{epoch}")  # same on every rank and worker
        order = list(range(len(self.shards)))
        if self.shuffle:
            rng.shuffle(order)
        if self.samples_per_epoch is None:
            units = plan_epoch(self.sizes, world, workers, order, self.drop_last, self.batch_size)
            mine = units[worker * world + rank]
            target = sum(stop - start for _, start, stop in mine)
            stream = self._read(mine)
        else:
            counts = _worker_counts(self.samples_per_epoch // world, workers, self.batch_size)
            target = counts[worker]
            rng_stream = random.Random(f"{self.seed}/{epoch}/{rank}/{worker}")
            stream = self._stream(order, (rank, world, worker, workers), rng_stream)
        local_rng = random.Random(f"{self.seed}/{epoch}/{rank}/{worker}/samples")
        if self.shuffle_buffer > 1:
            stream = _shuffled(stream, self.shuffle_buffer, local_rng)
        seeds = (
            sample_seed(self.seed, epoch, (n * world + rank) * workers + worker)
            for n in itertools.count()
        )
        yield from self._emit(stream, target, local_rng, seeds, skip, tag)

    def _stream(
        self, order: list[int], where: tuple[int, int, int, int], rng: random.Random
    ) -> Iterator[dict]:
        rank, world, worker, workers = where
        shards = [(s, 0, _WHOLE) for s in order]  # whole shards; sizes not needed
        if len(shards) >= world * workers:  # as webdataset's split_by_node, then split_by_worker
            shards = shards[rank::world][worker::workers]
        while True:
            read = False
            for sample in self._read(shards):
                read = read or "__bad__" not in sample
                yield sample
            # none of this reader's shards could be read: read from all of them, or give up
            if not read:
                if len(shards) == len(self.shards):
                    raise ShardError(
                        f"none of the {len(shards)} shards could be read (first: "
                        f"{self.shards[0]}); check the paths and the file system"
                    )
                shards = [(s, 0, _WHOLE) for s in order]
            rng.shuffle(shards)

    def _emit(
        self,
        stream: Iterator[dict],
        target: int,
        rng: random.Random,
        seeds: Iterator[int],
        skip: int = 0,
        tag: int = 0,
    ) -> Iterator[tuple]:
        """Yield exactly ``target`` decoded samples, replacing bad ones by re-augmented good ones.
        Each sample's augmentation draws from its own seed (``seeds``, by position), so the first
        ``skip`` are passed over undecoded and what follows is what an uninterrupted pass yields
        (exactly so if none of the skipped samples was corrupt). Bad samples are counted in pass
        ``tag`` of the tracker."""
        recent: list[dict] = []
        produced = 0
        for sample in stream:
            if produced >= target:
                break
            seed = next(seeds)
            unread = sample.get("__bad__")
            if produced < skip:
                # a shard given up on produced nothing, in the first pass too
                produced += unread is None
                continue
            if unread is not None:
                self.tracker.bad(sample["__url__"], unread, count=sample["__count__"], tag=tag)
                continue
            try:
                out = seeded(seed, self._decode, sample)
            except Exception as err:  # noqa: BLE001 - counted, logged, replaced below
                self.tracker.bad(f"{sample.get('__url__')}:{sample.get('__key__')}", err, tag=tag)
                continue
            self.tracker.good(tag=tag)
            recent = (recent + [sample])[-16:]
            produced += 1
            yield out
        while produced < target:
            if not recent:
                raise TooManyBadSamples(
                    f"no decodable sample in this worker's part of {len(self.shards)} shards "
                    f"(first: {self.shards[0]}); check the shards"
                )
            yield seeded(next(seeds), self._decode, rng.choice(recent))
            produced += 1


def build_webdataset(urls: str | Sequence[str], **kwargs) -> ShardDataset:
    """WebDataset shard source.

    Args:
        urls, **kwargs: :class:`ShardDataset`'s.

    Returns:
        The :class:`ShardDataset`; items ``(*transform outputs, label)``.
    """
    return ShardDataset(urls, **kwargs)
