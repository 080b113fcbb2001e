"""Fine-tuning a classifier: cross-entropy with label smoothing, or soft targets when mixup/cutmix
mixes the batch; top-1/top-5 on validation. Batches are `(images, labels)`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy

from ..models import SwinV2Classifier
from .base import TrainTask
from .optim import OptimConfig, ScheduleConfig


class FinetuneTask(TrainTask):
    """`mixup`: a callable `(images, labels) -> (images, soft_targets)` such as timm's `Mixup`, or
    None."""

    def __init__(
        self,
        model: SwinV2Classifier,
        optimizer: OptimConfig,
        scheduler: ScheduleConfig,
        batch_size: int,
        mixup=None,
        compile: bool = False,
    ) -> None:
        super().__init__(model, optimizer, scheduler, batch_size, compile)
        self.mixup = mixup
        n = model.num_classes
        self.val_top1 = MulticlassAccuracy(num_classes=n, top_k=1, average="micro")
        self.val_top5 = MulticlassAccuracy(num_classes=n, top_k=min(5, n), average="micro")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images).logits

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, labels = batch[0], batch[-1]
        targets = labels
        if self.mixup is not None:
            images, targets = self.mixup(images, labels)
        loss = self.check_loss(self.model(images, targets).loss)
        self.log_loss(loss, images.shape[0])
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        images, labels = batch[0], batch[-1]
        logits = self.model(images).logits
        self.val_top1(logits, labels)
        self.val_top5(logits, labels)
        n = images.shape[0]
        self.log(
            "val/loss",
            F.cross_entropy(logits.float(), labels),
            on_epoch=True,
            sync_dist=True,
            batch_size=n,
        )
        self.log("val/top1", self.val_top1, on_epoch=True, prog_bar=True, batch_size=n)
        self.log("val/top5", self.val_top5, on_epoch=True, batch_size=n)
