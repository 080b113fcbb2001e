"""The list of images under a folder, made once by one process, kept in a file, shared by every rank
and worker.

Listing ImageNet-22K (14M files in 21,841 class folders) in every rank, on a shared file system, and
holding it as Python ``(str, int)`` tuples costs minutes of metadata traffic per rank and a copy of
the list in every loader worker (touching a Python object writes its reference count, so forked
workers copy the pages, PyTorch issue #13246). Here:

- :func:`build_listing` walks the tree with ``os.scandir`` (class folders in parallel threads: on a
  network file system each folder read waits on the server) and keeps the result compact: every path
  relative to the root in one ``uint8`` buffer, ``int64`` offsets ``(N + 1,)``, ``int32`` labels
  ``(N,)``, the class names as a list. A sample's path is decoded when it is asked for.
- :func:`~.listing_shared.load_listing` keeps it in ``<listing_dir>/<name>.listing`` (one file,
  arrays memory-mapped read-only, so the ranks of a node and their workers share the page cache).
  The first process (:func:`~.listing_shared.is_first_process`) makes it, written atomically
  (temporary file, fsync, rename); the others wait for it. No process group exists yet when datasets
  are built, so they coordinate through the file system alone.

A listing is current while no folder of the tree changed: it records the modification time
(``st_mtime_ns``) of the root and of every folder it walked, and every process checks them (one
``stat`` per folder, no listing of files) before using it. A folder's mtime changes whenever an
entry is added, removed or renamed in it, which is what changes a listing (file contents do not). It
misses a change only where the file system's timestamps are coarser than the time between two
changes (1-2 s on some file systems; Linux stamps a jiffy's resolution) with the walk in between. So
a listing of a folder that changed within ``RACY_S`` before the walk is used by the launch that made
it but made again at the next start (git's "racily clean" entries, the same problem). Where mtimes
are set back by hand (``touch -d``, ``rsync -t``), ``listing=rebuild`` (or deleting the file) makes
it again.
"""

from __future__ import annotations

import json
import logging
import operator
import os
import socket
import struct
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

# images, then arrays of any channel count (.npy, multi-band TIFF: data/arrays.py)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".npy", ".tif", ".tiff")
MAGIC = b"SIMMIMLS"
FORMAT_VERSION = 1
# folder reads in flight while walking or checking a tree (they wait on the file system, not the
# CPU)
THREADS = 8
# a folder changed this close before the walk may change again within its mtime's resolution
RACY_S = 5.0


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()  # follows symlinks, as os.walk(followlinks=True) did
    except OSError:
        return False


def _mtime(path: str | os.DirEntry) -> int:
    try:
        return (
            path.stat().st_mtime_ns if isinstance(path, os.DirEntry) else os.stat(path).st_mtime_ns
        )
    except OSError:
        return -1


def _links_above(link: str, parent: str) -> bool:
    target, here = os.path.realpath(link), os.path.realpath(parent)
    if here == target or here.startswith(target.rstrip(os.sep) + os.sep):
        log.warning("not following %s: it links back to %s, a folder above it", link, target)
        return True
    return False


def _walk(top: str, prefix: str) -> tuple[list[bytes], list[list]]:
    """Images below ``top`` as encoded paths ``prefix + relpath``, in the order of
    ``os.walk(top, followlinks=True)`` with sorted names (a folder's images, then each subfolder's
    tree); and ``[relpath, mtime_ns]`` of each subfolder walked. Hidden files and folders are
    skipped; an unreadable folder is skipped as os.walk skips it; a symlink back to a folder above
    is not followed (os.walk would loop)."""
    names: list[bytes] = []
    dirs: list[list] = []
    stack = [(top, prefix)]
    while stack:
        path, pre = stack.pop()
        try:
            with os.scandir(path) as it:
                entries = list(it)
        except OSError:
            continue
        files, subdirs = [], []
        for e in entries:
            if _is_dir(e):
                if not e.name.startswith("."):
                    subdirs.append(e)
            elif _is_image(e.name):
                files.append(e.name)
        files.sort()
        names.extend(os.fsencode(pre + f) for f in files)
        subdirs.sort(key=operator.attrgetter("name"))
        walked = []
        for e in subdirs:
            if e.is_symlink() and _links_above(e.path, path):
                continue
            # before its contents are read: a later change shows
            dirs.append([pre + e.name, _mtime(e)])
            walked.append((e.path, pre + e.name + "/"))
        stack.extend(reversed(walked))  # popped in sorted order: depth first, as os.walk goes
    return names, dirs


class Listing(Sequence):
    """``(path, label)`` pairs held as arrays: ``paths`` (uint8, every path relative to ``root``
    back to back), ``offsets`` (int64 ``(N + 1,)``: sample ``i`` is
    ``paths[offsets[i]:offsets[i + 1]]``), ``labels`` (int32 ``(N,)``, -1 when unlabelled) and
    ``classes`` (names, index = label). ``listing[i]`` decodes one path."""

    def __init__(
        self,
        root: str | Path,
        paths: np.ndarray,
        offsets: np.ndarray,
        labels: np.ndarray,
        classes: list[str],
        info: dict,
        file: str | None = None,
        made_here: bool = False,
    ) -> None:
        self.root = str(Path(root).expanduser())
        self.paths, self.offsets, self.labels = paths, offsets, labels
        self.classes = classes
        self.info = info  # labelled, built_at, build_id, seconds, ... (what the file's header says)
        self.file = file  # where it is kept (arrays memory-mapped from it); None: in memory only
        # True when this process walked the tree, False when it read the file
        self.made_here = made_here
        self._n = len(labels)

    def __len__(self) -> int:
        return self._n

    def relpath(self, i: int) -> str:
        return os.fsdecode(self.paths[self.offsets[i] : self.offsets[i + 1]].tobytes())

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self._n))]
        i = operator.index(i)
        if i < 0:
            i += self._n
        if not 0 <= i < self._n:
            raise IndexError(f"sample {i} of {self._n}")
        return os.path.join(self.root, self.relpath(i)), int(self.labels[i])

    def __iter__(self) -> Iterator[tuple[str, int]]:
        return iter(self.tolist())

    def tolist(self) -> list[tuple[str, int]]:
        """All pairs as Python objects (what ``scan_folder`` returns; avoid in loader workers)."""
        buf, offs, root = self.paths.tobytes(), self.offsets.tolist(), self.root
        return [
            (os.path.join(root, os.fsdecode(buf[offs[i] : offs[i + 1]])), label)
            for i, label in enumerate(self.labels.tolist())
        ]

    # spawned workers reopen the file rather than receive a copy of the arrays
    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        if self.file is not None:
            state.update(paths=None, offsets=None, labels=None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if self.paths is None:
            _, arrays = _read(self.file)
            self.paths, self.offsets, self.labels = arrays


def build_listing(
    root: str | Path, labelled: bool | None = None, threads: int = THREADS
) -> Listing:
    """Walk ``root`` (see :func:`~.folder.scan_folder` for the layouts) into an in-memory
    :class:`Listing`."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(
            f"image folder {root} does not exist or is not a directory; check the path"
        )
    start, started_at = time.perf_counter(), time.time()
    dirs = [["", _mtime(str(root))]]  # before the root is read
    with os.scandir(root) as it:
        entries = list(it)
    subdirs = sorted(
        (e for e in entries if _is_dir(e) and not e.name.startswith(".")),
        key=operator.attrgetter("name"),
    )
    if labelled is None:
        labelled = bool(subdirs) and not any(_is_image(e.name) and e.is_file() for e in entries)
    tops = [(e.path, e.name, _mtime(e)) for e in subdirs]
    with ThreadPoolExecutor(max(1, min(threads, len(tops)))) as pool:
        trees = list(pool.map(lambda t: _walk(t[0], t[1] + "/"), tops))
    groups, classes = [], []
    if not labelled:
        groups.append(
            [
                os.fsencode(n)
                for n in sorted(e.name for e in entries if not _is_dir(e) and _is_image(e.name))
            ]
        )
    for (_, name, mtime), (names, subtree) in zip(tops, trees):
        dirs.append([name, mtime])
        dirs.extend(subtree)
        if not labelled:
            groups.append(names)
        elif names:  # a class folder without images gets no label
            groups.append(names)
            classes.append(name)
    counts = np.array([len(g) for g in groups], dtype=np.int64)
    n = int(counts.sum())
    if n == 0:
        raise FileNotFoundError(
            f"no images ({', '.join(IMAGE_EXTENSIONS)}, any case) found under {root}"
            + (" in class subfolders" if labelled else "")
            + "; point the data root at a folder of images"
        )
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(
        np.fromiter((len(p) for g in groups for p in g), dtype=np.int64, count=n), out=offsets[1:]
    )
    paths = np.frombuffer(b"".join(p for g in groups for p in g), dtype=np.uint8)
    if labelled:
        labels = np.repeat(np.arange(len(classes), dtype=np.int32), counts)
    else:
        labels = np.full(n, -1, dtype=np.int32)
    racy = max(m for _, m in dirs) >= (started_at - RACY_S) * 1e9
    info = {
        "labelled": labelled,
        "dirs": dirs,
        "racy": racy,
        "built_at": time.time(),
        "build_id": uuid.uuid4().hex,
        "seconds": round(time.perf_counter() - start, 3),
        "host": socket.gethostname(),
    }
    return Listing(root, paths, offsets, labels, classes, info, made_here=True)


# --- the file -------------------------------------------------------------------------------------
# MAGIC, uint64 header length, JSON header (padded to 64 bytes), then the arrays at the offsets the
# header names.


def _align(n: int, to: int = 64) -> int:
    return -(-n // to) * to


def write_listing(listing: Listing, file: str | Path, key: dict) -> None:
    """Write ``listing`` to ``file`` atomically: a temporary file beside it, fsync, rename, fsync
    the folder."""
    file = Path(file)
    arrays, sections, at = [listing.paths, listing.offsets, listing.labels], {}, 0
    for name, arr in zip(("paths", "offsets", "labels"), arrays):
        sections[name] = [at, arr.dtype.str, len(arr)]
        at = _align(at + arr.nbytes)
    header = {
        "version": FORMAT_VERSION,
        **key,
        "classes": listing.classes,
        "sections": sections,
        **listing.info,
    }
    blob = json.dumps(header).encode()
    blob += b" " * (_align(len(MAGIC) + 8 + len(blob)) - len(MAGIC) - 8 - len(blob))
    tmp = file.with_name(f".{file.name}.tmp-{socket.gethostname()}-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(MAGIC + struct.pack("<Q", len(blob)) + blob)
            for arr, (start, _, _) in zip(arrays, sections.values()):
                f.write(b"\0" * (len(MAGIC) + 8 + len(blob) + start - f.tell()))
                f.write(np.ascontiguousarray(arr).data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, file)
    finally:
        tmp.unlink(missing_ok=True)
    fd = os.open(file.parent, os.O_RDONLY)
    try:  # the rename itself survives a crash only once the folder is synced
        os.fsync(fd)
    except OSError:  # not every file system syncs folders
        pass
    finally:
        os.close(fd)


def _read(file: str | Path) -> tuple[dict, tuple[np.ndarray, ...]]:
    with open(file, "rb") as f:
        if f.read(len(MAGIC)) != MAGIC:
            raise ValueError(f"{file} is not a listing")
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    if header.get("version") != FORMAT_VERSION:
        raise ValueError(f"{file} has listing format {header.get('version')}, not {FORMAT_VERSION}")
    base = len(MAGIC) + 8 + size
    arrays = tuple(
        np.memmap(file, dtype=np.dtype(dt), mode="r", offset=base + at, shape=(count,))
        for at, dt, count in (header["sections"][k] for k in ("paths", "offsets", "labels"))
    )
    return header, arrays


def _unchanged(root: str | Path, dirs: list[list], threads: int) -> bool:
    """Every recorded folder still has its recorded mtime (one stat each, ``threads`` in flight)."""
    root = str(root)

    def same(item) -> bool:
        return _mtime(os.path.join(root, item[0]) if item[0] else root) == item[1]

    if len(dirs) <= 64:
        return all(map(same, dirs))
    with ThreadPoolExecutor(threads) as pool:
        return all(pool.map(same, dirs, chunksize=256))
