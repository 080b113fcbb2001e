"""Folder listings: the same samples as before, made once by the first process, reused, remade when
the tree changes, waited for by the other ranks (real processes), seen by loader workers, under a
real pretraining run."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.config import FAST, compose_config
from helpers.data import write_class_folder
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder

from simmim_swinv2.data import FolderDataset, build_imagenet1k, scan_folder
from simmim_swinv2.data import listing_shared as L
from simmim_swinv2.data.listing import build_listing
from simmim_swinv2.data.listing_shared import is_first_process, listing_file, load_listing
from simmim_swinv2.pretrain import pretrain

REPO = Path(__file__).resolve().parents[1]
RANK_VARS = ("RANK", "SLURM_PROCID", "NODE_RANK", "LOCAL_RANK")


# The listing code before the compact listing (commit 2243eba, data/folder.py), kept as the
# reference: the new code must give exactly its samples, in its order.
def _old_is_image(name: str) -> bool:
    return name.lower().endswith(
        (".jpg", ".jpeg", ".png", ".webp", ".bmp")
    ) and not name.startswith(".")


def _old_walk_images(root: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(Path(dirpath) / f for f in sorted(filenames) if _old_is_image(f))
    return found


def old_scan_folder(root, labelled=None):
    root = Path(root).expanduser()
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if labelled is None:
        labelled = bool(subdirs) and not any(
            _old_is_image(p.name) for p in root.iterdir() if p.is_file()
        )
    if labelled:
        classes, samples = [], []
        for d in subdirs:
            files = _old_walk_images(d)
            if files:
                samples.extend((str(f), len(classes)) for f in files)
                classes.append(d.name)
    else:
        classes, samples = [], [(str(f), -1) for f in _old_walk_images(root)]
    return samples, classes


def settle(root: Path, age: float = 30.0) -> Path:
    """Date every folder of the tree ``age`` s back: a listing of a tree changed just before the
    walk is made again at the next start (listing.RACY_S), and a change made next must not fall in
    the same mtime tick."""
    t = time.time() - age
    for dirpath, _, _ in os.walk(root):
        os.utime(dirpath, (t, t))
    return root


def touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


def tree(root: Path, kind: str) -> Path:
    """Empty files are enough for a listing. Names sort differently by case, digits and punctuation
    on purpose."""
    names = [
        "b.jpg",
        "B.JPG",
        "a.Jpeg",
        "10.png",
        "9.PNG",
        "x.webp",
        "y.bmp",
        "z b.jpg",
        "é.jpg",
        "notes.txt",
        ".hidden.jpg",
        "jpg",
    ]
    classes = ["n02", "n01", "N03", "a_b", "a-b", "émoji 🙂"]
    for c in classes:
        for n in names:
            touch(root / c / n)
    if kind in ("nested", "symlinks", "unlabelled"):
        for c in classes[:3]:
            touch(root / c / "sub" / "deep" / "d.jpg")
            touch(root / c / "sub" / "s.JPEG")
            touch(root / c / "Sub2" / "t.png")
            touch(root / c / ".hidden_dir" / "h.jpg")
    touch(root / ".hidden_class" / "a.jpg")
    (root / "no_images").mkdir()
    touch(root / "no_images" / "readme.txt")
    (root / "bytes").mkdir()
    # not UTF-8: os.fsdecode round trip
    open(os.fsencode(root / "bytes") + b"/\xff\xfe.jpg", "wb").close()
    if kind == "symlinks":
        os.symlink(root / "n01", root / "n00_link")  # a symlinked class folder
        # a symlinked folder inside a class
        os.symlink(root / "n02" / "sub", root / "a_b" / "linked_sub")
        # a broken link named like an image
        os.symlink(root / "missing.jpg", root / "n01" / "broken.jpg")
    if kind == "unlabelled":
        touch(root / "top.jpg")  # images of its own: detected as unlabelled
    return settle(root)


@pytest.fixture
def ranks(monkeypatch):
    """No rank variables, no listings made by a parent, no listing folder from the environment."""
    for name in (*RANK_VARS, L.FRESH_ENV, "SIMMIM_LISTING_DIR"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def file_version(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_ino, st.st_mtime_ns


# --- the same samples as before -------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["flat", "nested", "symlinks", "unlabelled"])
def test_listing_equals_the_old_scan_folder(tmp_path, kind):
    root = tree(tmp_path / "data", kind)
    for labelled in (None, True, False):
        expected = old_scan_folder(root, labelled)
        listing = build_listing(root, labelled, threads=3)
        assert (list(listing), listing.classes) == expected, (kind, labelled)
        assert scan_folder(root, labelled) == expected
        assert [listing[i] for i in range(-3, 0)] == expected[0][-3:] and listing[1:4] == expected[
            0
        ][1:4]
    assert len(expected[0]) > 50  # the tree has something in every corner


def test_labelled_listing_equals_torchvision_imagefolder(tmp_path):
    root = tmp_path / "data"
    for c, n in [("n1", 3), ("N0", 2), ("n10", 4)]:
        for i in range(n):
            touch(root / c / f"{i}_{c}.JPEG")
    reference = ImageFolder(str(root), loader=lambda p: p)
    ours = build_listing(root)
    assert ours.classes == reference.classes and list(ours) == reference.samples


def test_listing_is_compact_and_pickles_as_its_file(tmp_path, ranks):
    root = tree(tmp_path / "data", "nested")
    ours = load_listing(root, listing_dir=tmp_path / "cache")
    assert (
        ours.paths.dtype == np.uint8
        and ours.offsets.dtype == np.int64
        and ours.labels.dtype == np.int32
    )
    # shared, never copied on write
    assert isinstance(ours.paths, np.memmap) and not ours.paths.flags.writeable
    rels = [os.fsencode(os.path.relpath(p, root)) for p, _ in ours]
    assert ours.paths.nbytes == sum(map(len, rels)) and len(ours.offsets) == len(ours) + 1
    blob = pickle.dumps(ours)
    assert len(blob) < 2000  # a spawned worker gets the file's name, not the arrays
    again = pickle.loads(blob)
    assert list(again) == list(ours) and again.classes == ours.classes
    with pytest.raises(IndexError):
        ours[len(ours)]


def test_a_link_back_up_the_tree_is_not_followed(tmp_path, caplog):
    root = tmp_path / "data"
    touch(root / "a" / "1.jpg")
    os.symlink(root, root / "a" / "loop")
    assert list(build_listing(root)) == [(str(root / "a" / "1.jpg"), 0)]
    assert "links back" in caplog.text


# --- made once, reused, made again when the tree changes ------------------------------------------


def test_made_once_then_read_without_walking(tmp_path, ranks):
    root, cache = tree(tmp_path / "data", "nested"), tmp_path / "run" / "listing"
    first = FolderDataset(root, listing_dir=cache)
    file = listing_file(cache, root, None)
    assert first.samples.made_here and first.samples.file == str(file) and file.is_file()
    before = file_version(file)

    def no_walk(*args, **kwargs):
        raise AssertionError("walked the tree although its listing is kept")

    ranks.setattr(L, "build_listing", no_walk)
    second = FolderDataset(root, listing_dir=cache)
    assert not second.samples.made_here and file_version(file) == before
    assert list(second.samples) == list(first.samples) == old_scan_folder(root)[0]
    assert second.classes == first.classes and second.num_classes == 7


def test_another_mode_has_its_own_file(tmp_path, ranks):
    root, cache = tree(tmp_path / "data", "flat"), tmp_path / "cache"
    load_listing(root, None, cache)
    flat = load_listing(root, False, cache)
    assert flat.made_here and sorted(p.name for p in cache.iterdir()) == sorted(
        [listing_file(cache, root, None).name, listing_file(cache, root, False).name]
    )
    assert list(flat) == old_scan_folder(root, False)[0]


@pytest.mark.parametrize(
    "change",
    [
        "new class folder",
        "new file in a class",
        "new file deep down",
        "removed file",
        "renamed class",
        "new image at the root of an unlabelled tree",
    ],
)
def test_a_changed_tree_is_listed_again(tmp_path, ranks, change):
    root, cache = (
        tree(tmp_path / "data", "unlabelled" if "unlabelled" in change else "nested"),
        tmp_path / "cache",
    )
    load_listing(root, None, cache)
    assert not load_listing(root, None, cache).made_here  # unchanged: reused
    {
        "new class folder": lambda: touch(root / "n04" / "1.jpg"),
        "new file in a class": lambda: touch(root / "n01" / "zz.jpg"),
        "new file deep down": lambda: touch(root / "n02" / "sub" / "deep" / "e.jpg"),
        "removed file": lambda: (root / "n01" / "b.jpg").unlink(),
        "renamed class": lambda: (root / "a_b").rename(root / "a_c"),
        "new image at the root of an unlabelled tree": lambda: touch(root / "top2.png"),
    }[change]()
    again = load_listing(root, None, cache)
    assert again.made_here and (list(again), again.classes) == old_scan_folder(root)
    # the tree changed a moment before this walk: the next start lists it again
    assert again.info["racy"]
    assert load_listing(root, None, cache).made_here
    settle(root)
    assert (
        load_listing(root, None, cache).made_here and not load_listing(root, None, cache).made_here
    )


def test_rebuild_lists_again_what_mtimes_cannot_show(tmp_path, ranks):
    """A change whose folder mtime was set back (as `rsync -t` or a coarse clock may) is missed by
    `auto`, by design; `listing=rebuild` lists the tree again. A file that is not a listing is
    replaced."""
    root, cache = tree(tmp_path / "data", "flat"), tmp_path / "cache"
    load_listing(root, None, cache)
    folder = root / "n01"
    st = os.stat(folder)
    touch(folder / "new.jpg")
    os.utime(folder, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert str(folder / "new.jpg") not in [p for p, _ in load_listing(root, None, cache)]
    rebuilt = load_listing(root, None, cache, listing="rebuild")
    assert rebuilt.made_here and list(rebuilt) == old_scan_folder(root)[0]
    listing_file(cache, root, None).write_bytes(b"not a listing")
    assert load_listing(root, None, cache).made_here
    with pytest.raises(ValueError, match="auto .* or rebuild"):
        load_listing(root, None, cache, listing="sometimes")


# --- ranks ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "env, first",
    [
        ({}, True),
        ({"RANK": "0"}, True),
        ({"RANK": "3"}, False),
        ({"RANK": "0", "SLURM_PROCID": "2"}, True),
        ({"SLURM_PROCID": "0"}, True),
        ({"SLURM_PROCID": "1"}, False),
        ({"NODE_RANK": "0", "LOCAL_RANK": "1"}, False),
        ({"NODE_RANK": "1"}, False),
        ({"NODE_RANK": "0"}, True),
        # Lightning's launcher inside an sbatch script
        ({"SLURM_PROCID": "0", "LOCAL_RANK": "1"}, False),
    ],
)
def test_which_process_makes_the_listing(env, first):
    assert is_first_process(env) is first


def test_other_ranks_wait_then_fail_clearly(tmp_path, ranks):
    root, cache = tree(tmp_path / "data", "flat"), tmp_path / "cache"
    ranks.setenv("RANK", "1")
    with pytest.raises(TimeoutError, match=r"RANK=1.*first process.*listing_timeout"):
        load_listing(root, None, cache, timeout=0.3)
    assert not cache.exists()  # only the first process writes


def test_rebuild_other_ranks_take_only_a_listing_made_in_this_launch(tmp_path, ranks):
    root, cache = tree(tmp_path / "data", "flat"), tmp_path / "cache"
    load_listing(root, None, cache)  # made by an earlier launch ...
    ranks.delenv(L.FRESH_ENV)  # (which this process did not inherit from)
    # ... long before this one started
    ranks.setattr(L, "_STARTED", time.time() + 2 * L.FRESH_SLACK_S)
    ranks.setenv("RANK", "1")
    assert not load_listing(root, None, cache).made_here  # auto: unchanged, so reused
    with pytest.raises(TimeoutError, match="afresh"):
        load_listing(root, None, cache, listing="rebuild", timeout=0.3)
    ranks.setenv("RANK", "0")
    # exports its build id, as to Lightning's children
    made = load_listing(root, None, cache, listing="rebuild")
    ranks.setenv("RANK", "1")
    assert (
        load_listing(root, None, cache, listing="rebuild", timeout=5).info["build_id"]
        == made.info["build_id"]
    )
    ranks.delenv(L.FRESH_ENV)
    ranks.setattr(L, "_STARTED", time.time())  # an srun / torchrun rank started with the first one
    assert (
        load_listing(root, None, cache, listing="rebuild", timeout=5).info["build_id"]
        == made.info["build_id"]
    )


RANK_SCRIPT = """
import hashlib, json, sys
from simmim_swinv2.data import FolderDataset
print("started", flush=True)
ds = FolderDataset(sys.argv[1], listing_dir=sys.argv[2], listing_timeout=120)
print(json.dumps({"made_here": ds.samples.made_here, "n": len(ds), "classes": ds.classes,
                  "sha": hashlib.sha256(repr(list(ds.samples)).encode()).hexdigest()}), flush=True)
"""


@pytest.mark.slow
def test_two_processes_rank1_waits_for_rank0_and_both_get_the_same_samples(tmp_path):
    root, cache = tree(tmp_path / "data", "symlinks"), tmp_path / "cache"
    env = {k: v for k, v in os.environ.items() if k not in (*RANK_VARS, L.FRESH_ENV)}

    def start(rank: int) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-c", RANK_SCRIPT, str(root), str(cache)],
            env={**env, "RANK": str(rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    second = start(1)
    assert second.stdout.readline().strip() == "started"
    time.sleep(1.0)
    # waiting: nothing to read, and it writes nothing
    assert second.poll() is None and not cache.exists()
    first = start(0)
    outs = [p.communicate(timeout=120) for p in (first, second)]
    for p, (_, err) in zip((first, second), outs):
        assert p.returncode == 0, err[-2000:]
    got = [json.loads(out.splitlines()[-1]) for out, _ in outs]
    assert [g["made_here"] for g in got] == [True, False]
    expected, classes = old_scan_folder(root)
    assert (
        got[0]["sha"] == got[1]["sha"]
        and got[0]["n"] == len(expected)
        and got[1]["classes"] == classes
    )
    assert len(list(cache.glob("*.listing"))) == 1 and not list(cache.glob(".*tmp*"))


# --- loader workers, presets, a real run ----------------------------------------------------------


class PathBytes:
    """Item = (the file's bytes as a tensor, label): no decoding needed, the path and label must be
    right."""

    accepts_bytes = True

    def __call__(self, data: bytes) -> torch.Tensor:
        return torch.tensor(list(data), dtype=torch.uint8)


def test_loader_workers_see_the_listing(tmp_path, ranks):
    root = tmp_path / "data"
    for c in range(3):
        for i in range(7):
            (root / f"c{c}").mkdir(parents=True, exist_ok=True)
            (root / f"c{c}" / f"{i}.jpg").write_bytes(f"{c}/{i}".encode().ljust(4, b"."))
    settle(root)
    ds = FolderDataset(root, PathBytes(), listing_dir=tmp_path / "cache")
    batches = list(DataLoader(ds, batch_size=4, num_workers=2))
    got = [
        (bytes(x.tolist()).decode().rstrip("."), int(y))
        for b, labels in batches
        for x, y in zip(b, labels)
    ]
    assert got == [(f"{c}/{i}", c) for c in range(3) for i in range(7)]


def test_imagenet_preset_keeps_its_listing(tmp_path, ranks):
    for c in range(1000):
        touch(tmp_path / "in1k" / "train" / f"n{c:08d}" / f"n{c:08d}_1.JPEG")
    settle(tmp_path / "in1k")
    ds = build_imagenet1k(root=tmp_path / "in1k", listing_dir=tmp_path / "cache")
    assert len(ds) == 1000 and ds.num_classes == 1000 and ds.samples.made_here
    assert not build_imagenet1k(
        root=tmp_path / "in1k", listing_dir=tmp_path / "cache"
    ).samples.made_here


@pytest.mark.slow
def test_pretrain_on_a_folder_under_lightning_ddp_then_restart_reuses_the_listing(tmp_path, ranks):
    """`trainer=ddp trainer.devices=2` from one process: it lists the folder, and the child
    Lightning starts (the entry point again, LOCAL_RANK=1) reads the listing. Then the same run dir
    again, in-process: no walk."""
    root, run = tmp_path / "imgs", tmp_path / "run"
    write_class_folder(root, [12, 12])
    settle(root)
    args = [
        *FAST,
        "data=folder",
        f"data.root={root}",
        "trainer=ddp",
        "trainer.devices=2",
        "trainer.accelerator=cpu",
        "callbacks.reconstructions.every_n_steps=0",
    ]
    result = subprocess.run(
        [sys.executable, "-m", "simmim_swinv2.pretrain", *args, f"hydra.run.dir={run}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={k: v for k, v in os.environ.items() if k not in (*RANK_VARS, L.FRESH_ENV)},
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    # rank 0 lists the folder, rank 1 (the second process) reads its listing
    assert (
        out.count("listed 24 images in 2 classes") == 1
        and out.count("made by the first process") == 1
    )
    files = list((run / "listing").glob("*.listing"))
    assert len(files) == 1
    # the start recorded once (training/provenance.py), not by the child Lightning started too
    assert len((run / "starts.jsonl").read_text().splitlines()) == 1
    before = file_version(files[0])
    assert (run / "checkpoints" / "last.ckpt").is_file()

    def no_walk(*args, **kwargs):
        raise AssertionError("walked the tree although its listing is kept")

    ranks.setattr(L, "build_listing", no_walk)
    cfg = compose_config(
        "pretrain",
        run,
        [
            *FAST,
            "data=folder",
            f"data.root={root}",
            "trainer.max_epochs=3",
            "callbacks.reconstructions.every_n_steps=0",
        ],
    )
    assert "train/loss_step" in pretrain(cfg)
    assert file_version(files[0]) == before
