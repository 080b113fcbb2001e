"""The datamodule across ranks (folders) and in real Lightning runs (digits, shards) with loader
workers."""

from __future__ import annotations

import zlib
from collections import Counter

import lightning as L
import pytest
import torch
from helpers.data import Fingerprint, write_class_folder
from PIL import Image
from torch.utils.data import DataLoader, DistributedSampler

from simmim_swinv2.data import (
    FolderDataset,
    ShardDataset,
    SimMIMDataModule,
    build_digits,
    build_pretrain_transform,
)
from simmim_swinv2.data.sharding import make_shards


class Tagged:
    """The SimMIM transform plus an id of the source image (crc32 of its bytes):
    ``(image, mask, id)``."""

    accepts_bytes = True

    def __init__(self, size: int = 32) -> None:
        self.t = build_pretrain_transform(size, mask_patch_size=16)

    def __call__(self, data: bytes | Image.Image) -> tuple[torch.Tensor, torch.Tensor, int]:
        raw = data.tobytes() if isinstance(data, Image.Image) else data
        return (*self.t(data), zlib.crc32(raw))


# --- folders across ranks -------------------------------------------------------------------------


def _rank_loader(loader: DataLoader, rank: int, world: int, epoch: int) -> DataLoader:
    """What Lightning does to a map-style train loader under DDP: same settings, a
    DistributedSampler."""
    sampler = DistributedSampler(
        loader.dataset, num_replicas=world, rank=rank, shuffle=True, seed=0
    )
    sampler.set_epoch(epoch)
    return DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        sampler=sampler,
        drop_last=loader.drop_last,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
    )


@pytest.mark.parametrize("world", [2, 3])
def test_folder_under_ranks_every_sample_once_plus_padding(tmp_path, world):
    write_class_folder(tmp_path, [7, 7, 7])  # 21 images
    dm = SimMIMDataModule(
        FolderDataset(tmp_path, Fingerprint()), batch_size=4, num_workers=0, drop_last=False
    )
    per_rank = -(
        -21 // world
    )  # DistributedSampler pads by repeating the first indices up to world * ceil(N / world)
    orders = []
    for epoch in range(2):
        ids, batches = Counter(), []
        for rank in range(world):
            loader = _rank_loader(dm.train_dataloader(), rank, world, epoch)
            got = [x for b in loader for x in b[0]]
            assert len(got) == per_rank and len(loader) == -(-per_rank // 4)
            batches.append(len(list(loader)))
            ids.update(got)
            orders.append(got)
        assert (
            len(ids) == 21 and sum(ids.values()) == world * per_rank
        )  # all 21, plus world*ceil - 21 repeats
        assert max(ids.values()) <= 2 and len(set(batches)) == 1  # equal batch counts on every rank
    assert orders[:world] != orders[world:]  # reshuffled by set_epoch


def test_folder_under_ranks_drop_last_equal_batches(tmp_path):
    write_class_folder(tmp_path, [7, 7, 7])
    dm = SimMIMDataModule(
        FolderDataset(tmp_path, Fingerprint()), batch_size=4, num_workers=0
    )  # drop_last=True
    counts = [len(list(_rank_loader(dm.train_dataloader(), rank, 2, 0))) for rank in range(2)]
    # 11 samples per rank -> 2 full batches each, the partial one dropped on both
    assert counts == [2, 2]


def test_folder_under_lightning_distributed_sampler(tmp_path):
    # Lightning's own re-instantiation (private helpers; skipped if they move in a later Lightning).
    try:
        from lightning.pytorch.trainer.connectors.data_connector import _get_distributed_sampler
        from lightning.pytorch.utilities.data import _update_dataloader
    except ImportError:
        pytest.skip("Lightning's sampler helpers moved")
    write_class_folder(tmp_path, [5, 6])
    dm = SimMIMDataModule(
        FolderDataset(tmp_path, Fingerprint()), batch_size=3, num_workers=0, drop_last=False
    )
    ids, counts = Counter(), []
    for rank in range(2):
        loader = dm.train_dataloader()
        sampler = _get_distributed_sampler(
            loader, shuffle=True, overfit_batches=0, num_replicas=2, rank=rank
        )
        loader = _update_dataloader(loader, sampler)
        assert loader.batch_size == 3 and loader.drop_last is False
        batches = list(loader)
        counts.append(len(batches))
        ids.update(x for b in batches for x in b[0])
    assert counts == [2, 2] and len(ids) == 11 and sum(ids.values()) == 12


# --- real Lightning runs --------------------------------------------------------------------------


class Recorder(L.LightningModule):
    """One linear layer on flattened pixels, a dummy loss; records the image ids of every training
    batch."""

    def __init__(self, pixels: int) -> None:
        super().__init__()
        self.head = torch.nn.Linear(pixels, 1)
        self.seen: dict[int, list[int]] = {}

    def training_step(self, batch, batch_idx):
        images, masks, ids, _ = batch
        self.seen.setdefault(self.current_epoch, []).extend(ids.tolist())
        assert masks.shape[1:] == (8, 8) and images.dtype == torch.float32
        return self.head(images.flatten(1)).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1e-3)


def _fit(dm: SimMIMDataModule, limit_train_batches=None) -> Recorder:
    model = Recorder(3 * 32 * 32)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=2,
        limit_train_batches=limit_train_batches,
        enable_checkpointing=False,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=dm)
    assert trainer.current_epoch == 2
    return model


@pytest.mark.filterwarnings("ignore:.*does not have many workers:UserWarning")
def test_lightning_fit_on_digits_with_workers():
    dm = SimMIMDataModule(
        build_digits("train", image_size=32, transform=Tagged()), batch_size=16, num_workers=2
    )
    model = _fit(dm, limit_train_batches=6)
    assert [len(model.seen[e]) for e in (0, 1)] == [96, 96]
    assert model.seen[0] != model.seen[1]  # RandomSampler reshuffles every epoch


class EpochLog(ShardDataset):
    """Records, in the main process, the epochs the datamodule passes to the dataset."""

    calls: list[int]

    def set_epoch(self, epoch: int) -> None:
        self.__dict__.setdefault("calls", []).append(epoch)
        super().set_epoch(epoch)


def _expected_order(
    shards: list[str], epoch: int, workers: int, batch_size: int, monkeypatch
) -> list[int]:
    """Ids in the order a DataLoader with ``workers`` workers yields them in ``epoch`` (batches
    alternate)."""
    per_worker = []
    for w in range(workers):
        monkeypatch.setenv("WORKER", str(w))
        monkeypatch.setenv("NUM_WORKERS", str(workers))
        ds = ShardDataset(shards, Tagged(), batch_size=batch_size)
        ds.set_epoch(epoch)
        ids = [i for _, _, i, _ in ds]
        per_worker.append([ids[k : k + batch_size] for k in range(0, len(ids), batch_size)])
    monkeypatch.delenv("WORKER")
    monkeypatch.delenv("NUM_WORKERS")
    order = []
    for k in range(max(map(len, per_worker))):
        for batches in per_worker:
            order += batches[k] if k < len(batches) else []
    return order


@pytest.mark.filterwarnings("ignore:.*does not have many workers:UserWarning")
def test_lightning_fit_on_shards_gets_the_epoch(tmp_path, monkeypatch):
    for name in ["RANK", "WORLD_SIZE", "WORKER", "NUM_WORKERS"]:
        monkeypatch.delenv(name, raising=False)
    write_class_folder(tmp_path / "src", [14, 13])  # 27 images -> shards of 8, 8, 8, 3
    make_shards(tmp_path / "src", tmp_path / "shards", samples_per_shard=8, progress=False)
    shards = sorted(str(p) for p in (tmp_path / "shards").glob("*.tar"))
    dataset = EpochLog(shards, Tagged())
    dm = SimMIMDataModule(dataset, batch_size=4, num_workers=2, drop_last=False)
    model = _fit(dm)
    assert dataset.calls == [0, 1]  # the trainer's epoch, set before each pass
    # a full exact epoch each time: 7 batches
    assert [len(model.seen[e]) for e in (0, 1)] == [27, 27]
    assert Counter(model.seen[0]) == Counter(model.seen[1]) and len(set(model.seen[0])) == 27
    assert model.seen[0] != model.seen[1]
    # The order each epoch is the one the dataset plans for that epoch: the epoch reached the
    # workers.
    for epoch in (0, 1):
        assert model.seen[epoch] == _expected_order(shards, epoch, 2, 4, monkeypatch)
