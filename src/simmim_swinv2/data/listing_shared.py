"""A folder's listing made once by the first process, kept in a file, and read by every other rank,
Lightning's DDP children and restarts (see `listing` for the listing itself and why).

No process group exists yet when datasets are built, so the processes coordinate through the file
system alone: the first process (:func:`is_first_process`) makes the listing and writes it
atomically; the others wait for it, and take one made in this launch as it is, or an older one that
is still current.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from pathlib import Path

from .listing import (
    IMAGE_EXTENSIONS,
    RACY_S,
    THREADS,
    Listing,
    _read,
    _unchanged,
    build_listing,
    write_listing,
)

log = logging.getLogger(__name__)

# build ids this process made, inherited by processes it launches (Lightning DDP)
FRESH_ENV = "SIMMIM_LISTINGS_MADE"
# a listing made up to this long before this process started counts as made in this launch
FRESH_SLACK_S = 30.0


def _process_start() -> float:
    """When this process started (wall clock, from /proc on Linux); elsewhere, when this module was
    imported."""
    try:
        with open("/proc/self/stat") as f:
            # field 22, starttime: clock ticks after boot
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return time.time()


_STARTED = _process_start()


def is_first_process(env=os.environ) -> bool:
    """Whether this process makes the listing: global rank 0 by ``RANK`` (torchrun, DeepSpeed), else
    by ``SLURM_PROCID`` (srun), ``NODE_RANK`` and ``LOCAL_RANK`` (Lightning's launcher sets the last
    two for the processes it starts; the one it starts from has neither) all 0 where set."""
    if env.get("RANK", "") != "":
        return int(env["RANK"]) == 0
    return all(int(env.get(v) or 0) == 0 for v in ("SLURM_PROCID", "NODE_RANK", "LOCAL_RANK"))


def listing_file(listing_dir: str | Path, root: str | Path, labelled: bool | None) -> Path:
    """``<listing_dir>/<last two parts of the root>-<mode>-<hash of its real path>.listing``."""
    real = os.path.realpath(Path(root).expanduser())
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", "-".join(Path(real).parts[-2:])).strip("_") or "root"
    mode = {None: "auto", True: "labelled", False: "unlabelled"}[labelled]
    return (
        Path(listing_dir).expanduser()
        / f"{slug}-{mode}-{hashlib.sha256(real.encode()).hexdigest()[:12]}.listing"
    )


def _key(root: Path, labelled: bool | None) -> dict:
    return {
        "root": os.path.realpath(root),
        "requested": labelled,
        "extensions": list(IMAGE_EXTENSIONS),
    }


def read_listing(
    file: str | Path,
    root: str | Path,
    labelled: bool | None = None,
    threads: int = THREADS,
    *,
    check: bool = True,
    why: list | None = None,
) -> Listing | None:
    """The listing kept in ``file`` if it is of ``root`` in this mode and (``check``) no folder of
    the tree changed since it was made; else None, with the reason appended to ``why``."""
    opened = _open(file, root, labelled, why)
    if opened is None:
        return None
    found, dirs = opened
    if check and found.info["racy"]:
        if why is not None:
            why.append(f"it was made within {RACY_S:.0f} s of a change to the tree")
        return None
    if check and not _unchanged(found.root, dirs, threads):
        if why is not None:
            why.append("a folder of the tree changed since it was made")
        return None
    return found


def _open(file, root, labelled, why=None) -> tuple[Listing, list] | None:
    root = Path(root).expanduser()
    try:
        header, arrays = _read(file)
    except (OSError, ValueError) as err:
        if why is not None:
            why.append(f"{type(err).__name__}: {err}")
        return None
    if {k: header.get(k) for k in ("root", "requested", "extensions")} != _key(root, labelled):
        if why is not None:
            why.append(f"it lists {header.get('root')} (labelled={header.get('requested')})")
        return None
    info = {k: header[k] for k in ("labelled", "racy", "built_at", "build_id", "seconds", "host")}
    return Listing(root, *arrays, header["classes"], info, file=str(file)), header["dirs"]


def _fresh(listing: Listing) -> bool:
    """Made in this launch: by the process that started this one (Lightning's launcher), or at most
    FRESH_SLACK_S before this process started (the processes of an srun / torchrun launch start
    within seconds, and the first one makes its listing after it started). The other processes take
    such a listing as it is, even if a folder changed since: all ranks must use the same. (A listing
    of another launch made within FRESH_SLACK_S before this one, of a tree changed since, would pass
    too: a relaunch within seconds of a change.)"""
    made_by_parent = listing.info["build_id"] in os.environ.get(FRESH_ENV, "").split(",")
    return made_by_parent or listing.info["built_at"] >= _STARTED - FRESH_SLACK_S


def load_listing(
    root: str | Path,
    labelled: bool | None = None,
    listing_dir: str | Path | None = None,
    listing: str = "auto",
    timeout: float = 3600.0,
    threads: int = THREADS,
) -> Listing:
    """The :class:`Listing` of ``root``: walked here when ``listing_dir`` is None; else made by the
    first process (:func:`is_first_process`) into :func:`listing_file` and read from there by every
    process.

    ``listing="auto"`` reuses a kept listing while no folder of the tree changed; ``"rebuild"``
    makes it again (the other processes then wait for one made in this launch). The other processes
    wait up to ``timeout`` seconds, then raise ``TimeoutError`` naming the file and what to check.
    """
    if listing not in ("auto", "rebuild"):
        raise ValueError(
            f"listing={listing!r}: use auto (reuse while the tree is unchanged) or rebuild"
        )
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(
            f"image folder {root} does not exist or is not a directory; check the path"
        )
    if listing_dir is None:
        return build_listing(root, labelled, threads)
    file = listing_file(listing_dir, root, labelled)
    if is_first_process():
        why: list[str] = []
        if (
            listing == "auto"
            and (found := read_listing(file, root, labelled, threads, why=why)) is not None
        ):
            log.info("reusing the listing of %s (%d images) from %s", root, len(found), file)
            return found
        # before the walk: a listing folder inside the root must not change the mtime the walk
        # records
        try:
            file.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OSError(
                f"cannot make the listing folder {file.parent} ({err}): set data.listing_dir to a "
                "writable folder, or to null to list the tree in every process"
            ) from err
        reason = (
            "listing=rebuild"
            if listing == "rebuild"
            else (why[-1] if file.exists() else "none kept yet")
        )
        made = build_listing(root, labelled, threads)
        try:
            write_listing(made, file, _key(root, labelled))
        except OSError as err:
            raise OSError(
                f"cannot write the listing {file} ({err}): set data.listing_dir to a writable "
                "folder, or to null to list the tree in every process"
            ) from err
        os.environ[FRESH_ENV] = ",".join(
            filter(None, [os.environ.get(FRESH_ENV), made.info["build_id"]])
        )
        log.info(
            "listed %d images in %d classes under %s in %.1f s (%s); kept in %s",
            len(made),
            len(made.classes),
            root,
            made.info["seconds"],
            reason,
            file,
        )
        # Read back unchecked: if a folder changed during the walk, this launch still uses what was
        # walked (as the other processes will: they take a listing made in this launch as it is);
        # the next start lists again.
        kept = read_listing(file, root, labelled, threads, check=False) or made
        kept.made_here = True
        return kept
    return _wait(file, root, labelled, listing == "rebuild", timeout, threads)


def _wait(
    file: Path, root: Path, labelled: bool | None, rebuild: bool, timeout: float, threads: int
) -> Listing:
    start = told = checked = time.monotonic()
    delay, seen = 0.05, None
    while True:
        try:
            st = os.stat(file)
            version = (st.st_ino, st.st_mtime_ns, st.st_size)
        except OSError:
            version = None
        now = time.monotonic()
        # Read a new file at once; re-check an unchanged one now and then (a network file system may
        # have shown stale folder mtimes).
        if version is not None and (version != seen or now - checked > 30):
            seen, checked = version, now
            found, dirs = _open(file, root, labelled) or (None, None)
            if found is not None and (
                _fresh(found)
                or (not rebuild and not found.info["racy"] and _unchanged(root, dirs, threads))
            ):
                log.info(
                    "using the listing of %s (%d images) made by the first process, from %s",
                    root,
                    len(found),
                    file,
                )
                return found
        if now - start > timeout:
            ranks = ", ".join(
                f"{v}={os.environ[v]}"
                for v in ("RANK", "SLURM_PROCID", "NODE_RANK", "LOCAL_RANK")
                if os.environ.get(v, "") != ""
            )
            raise TimeoutError(
                f"waited {timeout:.0f} s ({ranks or 'no rank variables'}) for the first process "
                f"(RANK / SLURM_PROCID / NODE_RANK and LOCAL_RANK all 0) to list {root} into "
                f"{file}"
                + (" afresh (listing=rebuild)" if rebuild else "")
                + ". Check that process's log for an error; if listing the tree takes longer, "
                "raise listing_timeout (+data.train.listing_timeout=SECONDS); or set "
                "data.listing_dir=null to list the tree in every process"
            )
        if now - told >= 60:
            log.info("waiting %.0f s so far for the listing of %s (%s)", now - start, root, file)
            told = now
        time.sleep(delay)
        delay = min(delay * 1.5, 2.0)
