"""Bad data judged on the data set: counts over loader workers, passes and ranks, unreadable shards
retried and skipped, and real pretraining runs that finish under the limit, log and name what was
bad, or stop past it."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
import tarfile
import threading
from collections import Counter
from pathlib import Path

import pytest
import torch
from helpers.config import FAST, compose_config
from helpers.data import Fingerprint, photo, write_class_folder, write_corrupt, write_tar

from simmim_swinv2.data import (
    FolderDataset,
    ShardDataset,
    ShardError,
    SimMIMDataModule,
    TooManyBadSamples,
    tar,
)
from simmim_swinv2.data.seeding import SeededSampler
from simmim_swinv2.data.sharding import make_shards
from simmim_swinv2.pretrain import pretrain

REPO = Path(__file__).resolve().parents[1]
LOADER = ["num_workers=2", "batch_size=16", "callbacks.reconstructions.every_n_steps=0"]


def write_garbage(path: Path, seed: int) -> None:
    """Random bytes under an image's name."""
    path.write_bytes(
        torch.randint(
            0, 256, (700,), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8
        )
        .numpy()
        .tobytes()
    )


def read_tsv(run: Path) -> list[dict]:
    with open(run / "bad_samples.tsv", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def epoch_metric(run: Path, name: str) -> list[int]:
    with open(run / "metrics.csv", newline="") as f:
        return [int(float(r[name])) for r in csv.DictReader(f) if r.get(name)]


def epoch_order(n: int, epoch: int) -> list[int]:
    """The training order of a map-style dataset of `n` samples (seed 0, one rank)."""
    sampler = SeededSampler(range(n), num_replicas=1, rank=0, seed=0)
    sampler.set_epoch(epoch)
    return [i for _, i, _ in sampler]


def shard_set(tmp_path: Path, shards: int = 8, per_shard: int = 24) -> Path:
    """`shards` shards of `per_shard` samples (make_shards, with sizes.json)."""
    write_class_folder(tmp_path / "src", [shards * per_shard // 2] * 2, size=(40, 32))
    out = tmp_path / "shards"
    make_shards(tmp_path / "src", out, samples_per_shard=per_shard, progress=False)
    return out


def corrupt_half(shard: Path) -> list[str]:
    """Rewrite `shard` with every other sample's image damaged (truncated, or its bytes reversed);
    returns their keys."""
    with tarfile.open(shard) as f:
        members = [(m.name, f.extractfile(m).read()) for m in f if m.isreg()]
    samples: dict[str, dict] = {}
    for name, data in members:
        key, ext = name.split(".", 1)
        samples.setdefault(key, {"__key__": key})[ext] = data
    bad = sorted(samples)[::2]
    for i, key in enumerate(bad):
        jpg = samples[key]["jpg"]
        samples[key]["jpg"] = jpg[: len(jpg) // 3] if i % 2 else bytes(reversed(jpg))
    write_tar(shard, list(samples.values()))
    return bad


def complete_samples(shard: Path) -> int:
    """Samples of a truncated shard that can still be read whole."""
    count = 0
    with open(shard, "rb") as f:
        try:
            for _ in tar.samples(f, str(shard)):
                count += 1
        except ValueError:  # cut inside a member
            pass
    return count


# --- the tracker ----------------------------------------------------------------------------------


def test_counts_are_per_pass_over_persistent_workers_and_name_every_file(tmp_path):
    rels = write_class_folder(tmp_path, [12, 12])
    write_corrupt(tmp_path / rels[3])
    write_garbage(tmp_path / rels[17], 0)
    ds = FolderDataset(tmp_path, Fingerprint())
    loader = SimMIMDataModule(ds, batch_size=4, num_workers=2, drop_last=False).train_dataloader()
    assert loader.persistent_workers
    for epoch in range(3):  # the same workers each time: counts must start again with each pass
        ids = [x for batch in loader for x in batch[0]]
        assert len(ids) == 24 and ds.tracker.current_pass == epoch + 1
        assert ds.tracker.counts() == (24, 2)
        assert sorted(Path(w).name for w, _, _ in ds.tracker.names()) == [
            "img003.jpg",
            "img017.jpg",
        ]
    assert ds.tracker.counts(tag=1) == (24, 2)  # an earlier pass keeps its own counts


def test_a_cut_short_pass_does_not_spill_into_the_next(tmp_path):
    """Workers keep reading ahead of a pass that stops early (limit_train_batches); what they read
    then is counted in that pass, not in the next one."""
    rels = write_class_folder(tmp_path, [20, 20])
    order = epoch_order(40, 0)
    for i in order[8:16]:  # read by workers after the 2 batches taken (prefetch), not in them
        write_corrupt(tmp_path / rels[i])
    ds = FolderDataset(tmp_path, Fingerprint())
    loader = SimMIMDataModule(ds, batch_size=4, num_workers=2).train_dataloader()
    it = iter(loader)
    next(it), next(it)
    first = ds.tracker.current_pass
    ids = [x for batch in loader for x in batch[0]]  # the next pass, on the same persistent workers
    assert len(ids) == 40
    # its own 8, whatever the workers still did for the first pass
    assert ds.tracker.counts() == (40, 8)
    # read ahead (prefetch) in the first pass, and counted there
    assert ds.tracker.counts(first)[1] == 8


def test_unreadable_shard_part_is_retried_skipped_counted_and_named(tmp_path):
    out = shard_set(tmp_path, shards=2, per_shard=8)
    shard = out / "000000.tar"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])  # truncated on the cluster file system
    readable = complete_samples(shard)
    ds = ShardDataset(
        str(out / "{000000..000001}.tar"), Fingerprint(), shuffle=False, retry_backoff=0.01
    )
    items = list(ds)
    assert len(items) == 16  # the planned count, unread ones replaced by re-augmented good samples
    assert ds.tracker.counts() == (16, 8 - readable)
    ((where, count, reason),) = ds.tracker.names()
    assert where == str(shard) and count == 8 - readable > 0
    assert (
        "after 3 attempts" in reason
        and f"from #{readable}" in reason
        and "make_shards.py" in reason
    )


def test_a_read_that_fails_mid_shard_resumes_at_the_sample_it_reached(tmp_path):
    """The shard is cut short under the reader (an I/O error mid-read), then comes back: the retry
    continues at the sample reached, so every sample is read exactly once and nothing counts as
    bad."""
    # large JPEGs: the reader's 64 KiB buffer holds only part of the shard
    shard = tmp_path / "a.tar"
    write_tar(shard, [{"__key__": f"k{i}", "jpg": _jpeg(i), "cls": b"0"} for i in range(8)])
    full = shard.read_bytes()
    assert len(full) > 4 * (1 << 16)
    ds = ShardDataset(str(shard), Fingerprint(), shuffle=False, retry_backoff=1.0)
    it = iter(ds)
    ids = [next(it)[0] for _ in range(3)]
    shard.write_bytes(full[:1024])  # what an open reader sees of a file that is being replaced
    # back well before the first retry (1 s)
    threading.Timer(0.1, shard.write_bytes, [full]).start()
    ids += [x for x, _ in it]
    assert len(ids) == 8 and len(set(ids)) == 8
    assert ds.tracker.counts() == (8, 0) and ds.tracker.names() == []


def test_streaming_skips_a_vanished_shard_and_counts_its_samples(tmp_path):
    out = shard_set(tmp_path, shards=2, per_shard=8)
    (out / "000001.tar").unlink()  # gone from the file system (sizes.json still lists it)
    urls = str(out / "{000000..000001}.tar")
    ds = ShardDataset(urls, Fingerprint(), samples_per_epoch=20, retry_backoff=0.01)
    items = list(ds)
    assert len(items) == 20 and len({x for x, _ in items}) == 8  # the readable shard, cycled
    names = ds.tracker.names()
    # its size, from sizes.json
    assert names and {(Path(w).name, n) for w, n, _ in names} == {("000001.tar", 8)}
    assert "FileNotFoundError" in names[0][2] and ds.tracker.counts()[1] == 8 * len(names)
    (out / "000000.tar").unlink()
    with pytest.raises(ShardError, match="none of the 2 shards could be read"):
        list(ShardDataset(urls, Fingerprint(), samples_per_epoch=20, retry_backoff=0.01))


def _jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    photo(seed, (400, 300)).save(buf, "JPEG", quality=98)
    return buf.getvalue()


# --- real runs: a folder --------------------------------------------------------------------------


def test_folder_run_under_the_limit_finishes_logs_and_names_its_bad_files(tmp_path):
    """0.74% corrupt (2 of 270), limit 1%, 2 loader workers. Both files are in worker 1's first
    batch of each epoch: judged by what that worker reads (4 bad of its 128 samples over the two
    epochs) the run stopped; judged on the epoch (2 <= 1% of 270) it goes on. Counted per epoch (the
    workers persist), and in each validation pass (another folder, 1 of 32 unreadable, limit 5%)
    too."""
    root = tmp_path / "images"
    rels = write_class_folder(root, [135, 135], size=(40, 32))
    trained = [epoch_order(270, epoch)[:64] for epoch in (0, 1)]  # 4 batches of 16
    first = [i for i in trained[0] if i in trained[1]][:2]  # trained on in both epochs
    # batch 1: worker 1's first
    assert all(16 <= order.index(i) < 32 for order in trained for i in first)
    write_corrupt(root / rels[first[0]])
    write_garbage(root / rels[first[1]], 1)
    bad = sorted(str(root / rels[i]) for i in first)
    val = tmp_path / "val"
    val_rels = write_class_folder(val, [16, 16], size=(40, 32))
    write_garbage(val / val_rels[5], 2)
    run = tmp_path / "run"
    cfg = compose_config(
        "pretrain",
        run,
        [
            *FAST,
            *LOADER,
            "trainer.limit_train_batches=4",
            "trainer.limit_val_batches=null",
            "data=folder",
            f"data.root={root}",
            f"data.val={{_target_:simmim_swinv2.data.build_folder,root:'{val}',"
            f"max_bad_fraction:0.05}}",
        ],
    )
    result = pretrain(cfg)
    assert result["data/bad_samples"] == 2 and result["data/val_bad_samples"] == 1
    assert epoch_metric(run, "data/bad_samples") == [2, 2]
    assert epoch_metric(run, "data/val_bad_samples") == [1, 1]
    rows = read_tsv(run)
    assert Counter((r["epoch"], r["split"]) for r in rows) == {
        ("0", "train"): 2,
        ("0", "val"): 1,
        ("1", "train"): 2,
        ("1", "val"): 1,
    }
    assert {r["where"] for r in rows} == {*bad, str(val / val_rels[5])} and {
        r["rank"] for r in rows
    } == {"0"}
    assert all(r["samples"] == "1" and r["reason"] for r in rows)


def test_folder_run_past_the_limit_stops_naming_the_problem_and_the_fix(tmp_path):
    root = tmp_path / "images"
    rels = write_class_folder(root, [100, 100], size=(40, 32))
    bad = {str(root / rels[i]) for i in range(0, 200, 20)}  # 5%
    for i, path in enumerate(sorted(bad)):
        write_corrupt(Path(path)) if i % 2 else write_garbage(Path(path), i)
    run = tmp_path / "run"
    cfg = compose_config(
        "pretrain",
        run,
        [*FAST, *LOADER, "trainer.limit_train_batches=null", "data=folder", f"data.root={root}"],
    )
    with pytest.raises(TooManyBadSamples) as err:
        pretrain(cfg)
    message = str(err.value)
    assert "samples of train epoch 0 could not be used" in message
    assert "max_bad_fraction=0.01 of the epoch's 200 samples allows (2.0)" in message
    assert "scripts/make_shards.py" in message and "raise data.train.max_bad_fraction" in message
    assert str(run / "bad_samples.tsv") in message and any(p in message for p in bad)
    rows = read_tsv(run)
    assert len(rows) >= 3 and {r["where"] for r in rows} <= bad
    assert not (run / "checkpoints" / "last.ckpt").exists()  # stopped inside epoch 0


# --- real runs: shards ----------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["half_corrupt", "truncated"])
def test_shard_run_with_one_damaged_shard_finishes_and_names_it(damage, tmp_path):
    """Eight shards, limit 10%. One has half its samples corrupt (6.25% of the data, clustered as a
    broken shard is: all in worker 0's first shard, read for its first batch), or is cut off
    half-way (its unread half is retried, skipped, counted as bad): the epoch stays under the limit
    and the run finishes. Two batches an epoch: the workers read ahead of the cut-short epoch, and
    the next one still counts only its own."""
    out = shard_set(tmp_path)
    shard = out / "000000.tar"
    if damage == "half_corrupt":
        keys = corrupt_half(shard)
        expected = {f"{shard}:{k}" for k in keys}
        count = len(keys)
    else:
        data = shard.read_bytes()
        shard.write_bytes(data[: len(data) // 2])
        expected, count = {str(shard)}, 24 - complete_samples(shard)
    run = tmp_path / "run"
    cfg = compose_config(
        "pretrain",
        run,
        [
            *FAST,
            *LOADER,
            "data=webdataset",
            f"data.urls='{out}/{{000000..000007}}.tar'",
            "data.train.shuffle=false",
            "data.train.max_bad_fraction=0.1",
            "data.train.retry_backoff=0.01",
            "trainer.limit_train_batches=2",
        ],
    )
    result = pretrain(cfg)
    assert 0 < count <= 19 and result["data/bad_samples"] == count
    assert epoch_metric(run, "data/bad_samples") == [count, count]
    rows = read_tsv(run)
    assert {r["where"] for r in rows} == expected
    assert sum(int(r["samples"]) for r in rows if r["epoch"] == "1") == count
    if damage == "truncated":
        assert all("after 3 attempts" in r["reason"] for r in rows)


# --- real runs: two ranks -------------------------------------------------------------------------


def ddp_run(out: Path, run: Path, *overrides: str) -> subprocess.CompletedProcess:
    args = [
        *FAST,
        "num_workers=1",
        "callbacks.reconstructions.every_n_steps=0",
        "trainer=ddp",
        "trainer.devices=2",
        "trainer.accelerator=cpu",
        "data=webdataset",
        f"data.urls='{out}/{{000000..000007}}.tar'",
        "data.train.shuffle=false",
        "callbacks.bad_samples.check_every_n_steps=1",
        f"hydra.run.dir={run}",
        *overrides,
    ]
    return subprocess.run(
        [sys.executable, "-m", "simmim_swinv2.pretrain", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ),
    )


@pytest.mark.slow
def test_two_ranks_report_the_sum_and_stop_together(tmp_path):
    """Shard 4 (12 of its 24 samples corrupt) is read by rank 1 alone (unshuffled: rank 0 takes
    shards 0-3). Rank 0 logs and names rank 1's bad samples; with a limit under them, both ranks
    stop at the same batch."""
    out = shard_set(tmp_path)
    keys = corrupt_half(out / "000004.tar")
    run = tmp_path / "ok"
    result = ddp_run(out, run, "data.train.max_bad_fraction=0.1")
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert epoch_metric(run, "data/bad_samples") == [12, 12]
    rows = read_tsv(run)
    assert {r["rank"] for r in rows} == {"1"} and len(rows) == 24
    assert {r["where"] for r in rows} == {f"{out / '000004.tar'}:{k}" for k in keys}

    stop = tmp_path / "stop"
    result = ddp_run(out, stop, "data.train.max_bad_fraction=0.04")  # 12 > 0.04 x 192
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "TooManyBadSamples" in output and "of the epoch's 192 samples allows (7.7)" in output, (
        output[-3000:]
    )
    assert {r["rank"] for r in read_tsv(stop)} == {"1"}
