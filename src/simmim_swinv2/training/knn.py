"""The kNN monitor: what the encoder has learnt, measured while pretraining runs.

Every `every_n_epochs` training epochs (and after the last), `KNNMonitor` computes the encoder's
pooled features of a bounded labelled subset of the training data and of the validation data — both
through the eval transform (resize
+ centre crop: no augmentation, no mask), in eval mode — and logs the top-1 of DINO's weighted
  cosine kNN classifier
(k = 20, T = 0.07; `inference.probe.knn_top1`) as `val/knn_top1`. The masked-pixel loss can fall
while the representation stalls; this number says whether the features separate the classes better
than before.

Distributed: every rank runs the forward on its share of the samples (under ZeRO-3 the parameters
are sharded, so all ranks must take part in every forward), the features are gathered in sample
order, and every rank computes the same value (the one rank 0 computed is broadcast). Cost:
`train_samples + val samples` forwards per evaluation, split over the ranks; printed each time. Off
(`every_n_epochs=0`), without a validation split or on a source that says it is unlabelled (a folder
without class subfolders), it builds no loader and runs no forward; a source that does not say
(shards without `num_classes`) is found unlabelled after one pass, and the monitor then turns itself
off.
"""

from __future__ import annotations

import math
import time

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset

from ..data import IMAGENET_MEAN, IMAGENET_STD, build_eval_transform
from ..data.views import ADD_VAL_SPLIT, eval_view, has_labels
from ..inference.probe import knn_top1, labelled, pooled_features, subset_indices, take
from ..models import encoder_of
from ..weights.meta import normalization


def eval_transform(
    img_size: tuple[int, int], crop_pct: float = 0.875, mean=IMAGENET_MEAN, std=IMAGENET_STD
):
    """Resize the shorter side to `size / crop_pct` (bicubic), centre-crop to `img_size` `(H, W)`,
    normalise with `mean` / `std` (one per channel): `data.build_eval_transform`, for square and
    non-square model sizes."""
    return build_eval_transform(tuple(img_size), crop_pct, mean, std)


def gather_rows(strategy, *tensors: torch.Tensor) -> list[torch.Tensor]:
    """Each tensor's rows from every rank, concatenated in rank order — the same on every rank.
    Ranks may hold different numbers of rows (an iterable source's last shard): counts are gathered
    first, rows padded to the largest count for the collective and cut again."""
    if strategy.world_size == 1:
        return list(tensors)
    count = torch.tensor([tensors[0].shape[0]], device=tensors[0].device)
    counts = strategy.all_gather(count).view(-1).tolist()
    longest = max(counts)
    out = []
    for t in tensors:
        padded = t.new_zeros((longest, *t.shape[1:]))
        padded[: t.shape[0]] = t
        gathered = strategy.all_gather(padded)  # (world, longest, ...)
        out.append(torch.cat([gathered[r, :n] for r, n in enumerate(counts)]))
    return out


class KNNMonitor(L.Callback):
    """Logs `val/knn_top1` every `every_n_epochs` training epochs (and at the end of the last one).

    Args:
        every_n_epochs: 0 = off (no loader, no forward, nothing logged).
        train_samples: the labelled training subset the classifier's memory holds (fixed-seed draw;
            the same samples every time). Bounds the cost together with `val_samples`.
        val_samples: validation samples classified (fixed-seed draw); None = the whole validation
            split.
        batch_size, num_workers: of the monitor's own loaders (None = the datamodule's workers).
        k, temperature: DINO's 20 and 0.07.
        crop_pct: eval transform (resize to `size / crop_pct`, centre crop to the model's size).
        seed: of the subset draws.
        train, val: the datasets to read; default: the trainer's datamodule's (`train_dataset`,
            `val_dataset`), seen through `data.views.eval_view` with the eval transform.

    `history` keeps one dict per evaluation: epoch, step, knn_top1, train_samples, val_samples,
    seconds.
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        train_samples: int = 2000,
        val_samples: int | None = None,
        batch_size: int = 128,
        num_workers: int | None = None,
        k: int = 20,
        temperature: float = 0.07,
        crop_pct: float = 0.875,
        seed: int = 0,
        train: Dataset | None = None,
        val: Dataset | None = None,
    ) -> None:
        if (
            every_n_epochs < 0
            or train_samples < 1
            or batch_size < 1
            or (val_samples is not None and val_samples < 1)
        ):
            raise ValueError(
                f"KNNMonitor: every_n_epochs={every_n_epochs} must be >= 0 (0 = off), "
                f"train_samples={train_samples}, val_samples={val_samples} (None = all) and "
                f"batch_size={batch_size} >= 1"
            )
        self.every_n_epochs = every_n_epochs
        self.train_samples, self.val_samples = train_samples, val_samples
        self.batch_size, self.num_workers = batch_size, num_workers
        self.k, self.temperature, self.crop_pct, self.seed = k, temperature, crop_pct, seed
        self._sources = (train, val)
        self._views: tuple[Dataset, Dataset] | None = None
        self.disabled: str | None = None if every_n_epochs > 0 else "every_n_epochs=0"
        self.history: list[dict] = []

    # ----------------------------------------------------------------------------------------- when
    def _due(self, trainer: L.Trainer) -> bool:
        epoch = trainer.current_epoch + 1
        # -1: no last epoch (max_steps)
        last = trainer.max_epochs is not None and 0 < trainer.max_epochs <= epoch
        return epoch % self.every_n_epochs == 0 or last

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.disabled or not self._due(trainer):
            return
        views = self._prepare(trainer, pl_module)
        if views is None:
            return
        self.evaluate(trainer, pl_module, *views)

    # ----------------------------------------------------------------------------------------- data
    def _prepare(
        self, trainer: L.Trainer, pl_module: L.LightningModule
    ) -> tuple[Dataset, Dataset] | None:
        """The eval views of the train and val sets, made once; None (and disabled, with one line)
        when the data cannot give a kNN number. The decision reads only the datasets' attributes:
        the same on every rank."""
        if self._views is not None:
            return self._views
        train, val = self._sources
        datamodule = getattr(trainer, "datamodule", None)
        if train is None and datamodule is not None:
            train = getattr(datamodule, "train_dataset", None)
        if val is None and datamodule is not None:
            val = getattr(datamodule, "val_dataset", None)
        if train is None or val is None:
            return self._disable(
                f"no validation split to classify: {ADD_VAL_SPLIT}"
                if train is not None
                else "no training set found (give train= / val=, or fit with a datamodule)"
            )
        if has_labels(train) is False or has_labels(val) is False:
            return self._disable(
                "the data is unlabelled (label -1): it needs a labelled source (digits, class "
                "folders, ImageNet)"
            )
        encoder = encoder_of(pl_module.model)
        transform = eval_transform(
            tuple(encoder.cfg.img_size), self.crop_pct, *normalization(pl_module.model)
        )
        self._views = (eval_view(train, transform), eval_view(val, transform))
        return self._views

    def _disable(self, reason: str) -> None:
        self.disabled = reason
        rank_zero_info(f"kNN monitor off: {reason}")
        return None

    def _loader(
        self, dataset: Dataset, trainer: L.Trainer, max_samples: int | None
    ) -> tuple[object, torch.Tensor]:
        """(batches of this rank's share, the share's sample indices, -1 for padding). Map-style: a
        fixed-seed subset, dealt out rank by rank, every share padded to the same length; iterable
        sources split themselves over ranks into equal parts (exact epochs): the first
        `max_samples / world` of this rank's, indices None."""
        datamodule = getattr(trainer, "datamodule", None)
        workers = (
            self.num_workers
            if self.num_workers is not None
            else getattr(datamodule, "num_workers", 0)
        )
        kw = dict(
            batch_size=self.batch_size,
            num_workers=workers,
            shuffle=False,
            pin_memory=torch.cuda.is_available(),
        )
        rank, world = trainer.global_rank, trainer.world_size
        if isinstance(dataset, IterableDataset):
            if hasattr(dataset, "batch_size"):
                dataset.batch_size = self.batch_size
            per_rank = math.ceil(max_samples / world) if max_samples is not None else None
            loader = DataLoader(dataset, **{k: v for k, v in kw.items() if k != "shuffle"})
            batches = take(loader, per_rank)
            return batches, None
        chosen = subset_indices(len(dataset), max_samples, self.seed)
        mine = chosen[rank::world]
        # Every rank runs the same number of forwards (under ZeRO-3 each one is a collective): the
        # shorter shares are padded with a repeat, marked -1 and dropped after the gather.
        pad = math.ceil(len(chosen) / world) - len(mine)
        index = torch.tensor(mine + [-1] * pad, dtype=torch.int64)
        return DataLoader(Subset(dataset, mine + chosen[:1] * pad), **kw), index

    # ------------------------------------------------------------------------------------- the pass
    @torch.no_grad()
    def evaluate(
        self, trainer: L.Trainer, pl_module: L.LightningModule, train: Dataset, val: Dataset
    ) -> float | None:
        """One evaluation on every rank; returns (and logs) the kNN top-1, or None when it turned
        out unlabelled."""
        start = time.perf_counter()
        encoder = encoder_of(pl_module.model)
        precision = trainer.precision_plugin
        parts = []
        for dataset, limit in ((train, self.train_samples), (val, self.val_samples)):
            batches, index = self._loader(dataset, trainer, limit)
            with precision.forward_context():
                feats, labels = pooled_features(
                    encoder, batches, device=pl_module.device, prepare=precision.convert_input
                )
            # iterable: rank-major order, made explicit so the gather below can sort by it
            if index is None:
                index = torch.arange(len(labels)) * trainer.world_size + trainer.global_rank
            feats, labels, index = gather_rows(
                trainer.strategy, feats, labels, index.to(feats.device)
            )
            # the sample order, whatever the number of ranks; no padding
            order = index.argsort()[int((index < 0).sum()) :]
            parts.append(labelled(feats[order], labels[order]))
        (x_train, y_train), (x_val, y_val) = parts
        if len(y_train) == 0 or len(y_val) == 0:
            self._disable("no labelled samples (label -1 everywhere): it needs a labelled source")
            return None
        top1 = knn_top1(x_train, y_train, x_val, y_val, self.k, self.temperature)
        # equal on every rank, whatever the arithmetic
        top1 = float(trainer.strategy.broadcast(top1, src=0))
        seconds = time.perf_counter() - start
        # every rank logs the same value; "max" keeps it exact (a mean of equal floats can move by
        # an ulp)
        pl_module.log(
            "val/knn_top1", top1, on_step=False, on_epoch=True, sync_dist=True, reduce_fx="max"
        )
        self.history.append(
            {
                "epoch": trainer.current_epoch,
                "step": trainer.global_step,
                "knn_top1": top1,
                "train_samples": len(y_train),
                "val_samples": len(y_val),
                "seconds": seconds,
            }
        )
        rank_zero_info(
            f"kNN monitor, epoch {trainer.current_epoch}: val/knn_top1 {top1:.4f} (k={self.k}, "
            f"T={self.temperature}; {len(y_train)} train / {len(y_val)} val samples over "
            f"{trainer.world_size} rank(s), {seconds:.1f} s)"
        )
        return top1


__all__ = ["KNNMonitor", "eval_transform", "gather_rows"]
