"""Shards: make_shards round trip and resume, exact epochs across ranks × workers, faults."""

from __future__ import annotations

import importlib.util
import json
import logging
import tarfile
from collections import Counter
from pathlib import Path

import pytest
from helpers.data import (
    Fingerprint,
    jpeg_bytes,
    oriented_jpeg,
    photo,
    write_class_folder,
    write_corrupt,
    write_mixed_folder,
    write_tar,
)
from torch.utils.data import DataLoader

from simmim_swinv2.data import (
    ShardDataset,
    ShardError,
    TooManyBadSamples,
    build_imagenet1k,
    plan_epoch,
)
from simmim_swinv2.data.sharding import make_shards

ROOT = Path(__file__).resolve().parents[1]


def _tar_paths(out: Path) -> list[tuple[str, int]]:
    rows = []
    for shard in sorted(out.glob("*.tar")):
        with tarfile.open(shard) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar if m.isreg()}
        for name in members:
            if name.endswith(".path"):
                key = name[: -len(".path")]
                assert f"{key}.jpg" in members
                rows.append((members[name].decode(), int(members[f"{key}.cls"])))
    return rows


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory) -> tuple[Path, list[str]]:
    """33 images in 3 classes → 7 shards of 5,5,5,5,5,5,3 samples."""
    src = tmp_path_factory.mktemp("src")
    rels = write_class_folder(src, [11, 11, 11])
    out = tmp_path_factory.mktemp("shards")
    make_shards(src, out, samples_per_shard=5, progress=False)
    return out, rels


def test_make_shards_round_trip_every_image_once(tmp_path):
    kinds = write_mixed_folder(tmp_path / "src")
    write_corrupt(tmp_path / "src" / "a_dog" / "broken.jpg")
    (tmp_path / "src" / "b_cat" / "empty.png").write_bytes(b"")
    summary = make_shards(
        tmp_path / "src", tmp_path / "out", samples_per_shard=4, workers=2, progress=False
    )
    rows = _tar_paths(tmp_path / "out")
    assert Counter(p for p, _ in rows) == Counter(list(kinds))  # every valid image exactly once
    classes = json.loads((tmp_path / "out" / "classes.json").read_text())
    assert classes == ["a_dog", "b_cat"]
    assert all(classes[c] == p.split("/")[0] for p, c in rows)
    bad = {Path(p).name for p, _ in summary["bad"]}
    assert bad == {"broken.jpg", "empty.png"} and summary["samples"] == len(kinds)
    assert "broken.jpg" in (tmp_path / "out" / "bad_files.tsv").read_text()
    sizes = json.loads((tmp_path / "out" / "sizes.json").read_text())
    assert sorted(sizes) == [f"{i:06d}.tar" for i in range(5)] and sum(sizes.values()) == len(kinds)
    # shards are readable by the dataset and decode to RGB
    ds = ShardDataset(str(tmp_path / "out" / "{000000..000004}.tar"), shuffle=False)
    images = [img for img, _ in ds]
    assert len(images) == len(kinds) and {im.mode for im in images} == {"RGB"}


def test_make_shards_resume_cli_and_settings_guard(tmp_path, capsys):
    write_class_folder(tmp_path / "src", [4, 3])
    out = tmp_path / "out"
    spec = importlib.util.spec_from_file_location(
        "make_shards_cli", ROOT / "scripts" / "make_shards.py"
    )
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    assert (
        cli.main([str(tmp_path / "src"), str(out), "--samples-per-shard", "3", "--no-progress"])
        == 0
    )
    assert "7 samples in 3 shards (0 already done)" in capsys.readouterr().out
    before = (out / "000001.tar").stat().st_mtime_ns
    (out / "000002.json").unlink()  # as if interrupted before shard 2 was recorded
    summary = make_shards(tmp_path / "src", out, samples_per_shard=3, progress=False)
    assert summary["skipped_shards"] == 2 and summary["samples"] == 7
    assert (out / "000001.tar").stat().st_mtime_ns == before
    assert not list(out.glob(".*tmp*"))
    with pytest.raises(ValueError, match="other settings"):
        make_shards(tmp_path / "src", out, samples_per_shard=2, progress=False)


def test_make_shards_byte_cap_and_resize(tmp_path):
    write_class_folder(tmp_path / "src", [6], size=(300, 200))
    summary = make_shards(
        tmp_path / "src",
        tmp_path / "out",
        samples_per_shard=100,
        max_shard_bytes=20_000,
        resize_shorter=64,
        progress=False,
    )
    assert summary["shards"] > 1 and summary["samples"] == 6
    img, _ = next(
        iter(ShardDataset(sorted(map(str, (tmp_path / "out").glob("*.tar"))), shuffle=False))
    )
    assert min(img.size) == 64


def test_make_shards_keeps_exif_orientation(tmp_path):
    # Kept bytes keep their EXIF tag; re-encoded (resized) images are stored upright. Either way,
    # upright when read.
    (tmp_path / "src" / "c").mkdir(parents=True)
    (tmp_path / "src" / "c" / "rotated.jpg").write_bytes(oriented_jpeg(photo(4, (150, 100)), 6))
    for resize in (None, 50):
        out = tmp_path / f"out{resize}"
        make_shards(tmp_path / "src", out, resize_shorter=resize, progress=False)
        img, _ = next(iter(ShardDataset(str(out / "000000.tar"), shuffle=False)))
        assert img.size == ((150, 100) if resize is None else (75, 50))


def _epoch_ids(
    shards: str, world: int, workers: int, epoch: int = 0, **kwargs
) -> dict[int, list[list[str]]]:
    """Simulate every (rank, worker) through the env vars webdataset reads: ids per rank per
    worker."""
    import os

    out = {}
    for rank in range(world):
        out[rank] = []
        for worker in range(workers):
            os.environ.update(
                RANK=str(rank), WORLD_SIZE=str(world), WORKER=str(worker), NUM_WORKERS=str(workers)
            )
            ds = ShardDataset(shards, Fingerprint(), **kwargs)
            ds.set_epoch(epoch)
            out[rank].append([x for x, _ in ds])
    return out


@pytest.mark.parametrize("world, workers", [(2, 2), (3, 2), (2, 4), (4, 3)])
def test_exact_epoch_coverage_and_equal_counts(shard_dir, clean_env, world, workers):
    out, rels = shard_dir
    shards = str(out / "{000000..000006}.tar")
    ids = _epoch_ids(shards, world, workers, batch_size=4)
    per_rank = [sum(len(w) for w in ids[r]) for r in ids]
    assert per_rank == [-(-33 // world)] * world  # ceil(N / world) each
    assert [[len(w) for w in ids[r]] for r in ids] == [[len(w) for w in ids[0]]] * world
    seen = Counter(x for r in ids for w in ids[r] for x in w)
    assert len(seen) == 33  # every sample, once, plus at most world-1 repeats
    assert sum(seen.values()) - 33 == world * per_rank[0] - 33 < world
    dropped = _epoch_ids(shards, world, workers, drop_last=True)
    seen = Counter(x for r in dropped for w in dropped[r] for x in w)
    assert max(seen.values()) == 1 and len(seen) == 33 // world * world


def test_fewer_shards_than_workers_and_reshuffle(shard_dir, clean_env):
    out, _ = shard_dir
    # 5 + 3 samples, 2 ranks x 2 workers
    shards = [str(out / "000000.tar"), str(out / "000006.tar")]
    ids0 = _epoch_ids(shards, 2, 2, epoch=0)
    ids1 = _epoch_ids(shards, 2, 2, epoch=1)
    flat0 = [x for r in ids0 for w in ids0[r] for x in w]
    flat1 = [x for r in ids1 for w in ids1[r] for x in w]
    assert sorted(flat0) == sorted(flat1) and len(set(flat0)) == 8 == len(flat0)
    assert flat0 != flat1  # a new order every epoch, from the seed
    assert flat0 == [x for r in _epoch_ids(shards, 2, 2, epoch=0).values() for w in r for x in w]


def test_plan_epoch_batches_whole():
    units = plan_epoch([10, 3], world=2, workers=3, order=[0, 1], drop_last=False, batch_size=2)
    counts = [sum(b - a for _, a, b in u) for u in units]  # listed at worker * world + rank
    # 7 per rank, batch 2, 3 workers: 3 full batches round-robin, then the partial one goes to
    # worker 0
    assert counts == [3, 3, 2, 2, 2, 2]


def test_dataloader_two_ranks_two_workers_equal_batches(shard_dir, clean_env):
    out, _ = shard_dir
    shards = str(out / "{000000..000006}.tar")
    all_ids, batch_counts = Counter(), []
    for rank in range(2):
        clean_env.setenv("RANK", str(rank))
        clean_env.setenv("WORLD_SIZE", "2")
        ds = ShardDataset(shards, Fingerprint(), batch_size=4, seed=3)
        loader = DataLoader(ds, batch_size=4, num_workers=2)
        batches = list(loader)
        batch_counts.append((len(batches), len(loader)))
        all_ids.update(x for b in batches for x in b[0])
    assert batch_counts == [(5, 5), (5, 5)]  # 17 samples per rank → ceil(17/4)
    assert len(all_ids) == 33 and sum(all_ids.values()) == 34


def test_streaming_mode_counts(shard_dir, clean_env):
    out, _ = shard_dir
    ids = _epoch_ids(str(out / "000006.tar"), 2, 2, samples_per_epoch=21)  # 1 shard, 4 readers
    assert [[len(w) for w in ids[r]] for r in ids] == [[5, 5], [5, 5]]


def test_corrupt_and_imageless_samples_skipped_counted(tmp_path, clean_env, caplog):
    samples = [{"__key__": f"k{i}", "jpg": jpeg_bytes(i), "cls": b"1"} for i in range(8)]
    samples[2]["jpg"] = samples[2]["jpg"][:100]  # truncated
    samples[5] = {"__key__": "k5", "cls": b"1"}  # no image
    write_tar(tmp_path / "a.tar", samples)
    ds = ShardDataset(str(tmp_path / "a.tar"), Fingerprint(), shuffle=False, max_bad_fraction=0.1)
    with caplog.at_level(logging.WARNING):
        # 25% bad, over a limit of 10%: judging the epoch is BadSampleMonitor's, not the reader's
        out = list(ds)
    # bad ones replaced: counts stay exact
    assert len(out) == 8 and {label for _, label in out} == {1}
    assert ds.tracker.counts() == (8, 2) and len({x for x, _ in out}) == 6
    assert [w for w, _, _ in ds.tracker.names()] == [
        f"{tmp_path / 'a.tar'}:k2",
        f"{tmp_path / 'a.tar'}:k5",
    ]
    assert "a.tar:k2" in caplog.text and "a.tar:k5" in caplog.text and "no image" in caplog.text


def test_unreadable_shard_is_named(tmp_path, clean_env):
    (tmp_path / "bad.tar").write_bytes(b"this is not a tar file" * 100)
    # no sizes.json: counting its samples fails at the start
    with pytest.raises(ShardError, match="bad.tar"):
        list(ShardDataset(str(tmp_path / "bad.tar")))
    (tmp_path / "sizes.json").write_text(json.dumps({"missing.tar": 3}))
    missing = ShardDataset(str(tmp_path / "missing.tar"), retry_backoff=0.01)
    # tried, skipped, and nothing else left
    with pytest.raises(TooManyBadSamples, match="no decodable sample"):
        list(missing)
    ((where, count, reason),) = missing.tracker.names()
    assert where.endswith("missing.tar") and count == 3 and "after 3 attempts" in reason


def test_imagenet_preset_reads_shards(shard_dir, clean_env):
    out, _ = shard_dir
    root = out.parent / "inet"
    (root / "train").mkdir(parents=True, exist_ok=True)
    for shard in out.glob("*.tar"):
        (root / "train" / shard.name).write_bytes(shard.read_bytes())
    clean_env.setenv("SIMMIM_IMAGENET1K_ROOT", str(root))
    ds = build_imagenet1k(transform=Fingerprint())
    assert isinstance(ds, ShardDataset) and ds.num_classes == 1000 and len(ds) == 33
    assert len({x for x, _ in ds}) == 33


def test_datamodule_sets_epoch_on_shards(shard_dir, clean_env):
    from simmim_swinv2.data import SimMIMDataModule

    out, _ = shard_dir
    ds = ShardDataset(str(out / "{000000..000006}.tar"), Fingerprint())
    dm = SimMIMDataModule(ds, batch_size=8, num_workers=0, drop_last=False)
    loader = dm.train_dataloader()
    assert ds.batch_size == 8 and len(loader) == 5
    first, second = ([x for b in loader for x in b[0]] for _ in range(2))
    assert sorted(first) == sorted(second) and first != second and len(set(first)) == 33
