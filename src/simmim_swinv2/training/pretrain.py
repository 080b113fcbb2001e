"""SimMIM pretraining: the masked L1 loss on masked pixels; batches are `(images, masks, labels)`
from the data pipeline (`masks`: `(B, H/4, W/4)`, 1 = masked; labels ignored)."""

from __future__ import annotations

import torch

from ..models import SimMIM
from .base import TrainTask
from .optim import OptimConfig, ScheduleConfig


class PretrainTask(TrainTask):
    def __init__(
        self,
        model: SimMIM,
        optimizer: OptimConfig,
        scheduler: ScheduleConfig,
        batch_size: int,
        compile: bool = False,
    ) -> None:
        super().__init__(model, optimizer, scheduler, batch_size, compile)

    def forward(self, images: torch.Tensor, masks: torch.Tensor):
        return self.model(images, masks)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, masks = batch[0], batch[1]
        loss = self.check_loss(self.model(images, masks).loss)
        self.log_loss(loss, images.shape[0])
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        images, masks = batch[0], batch[1]
        loss = self.model(images, masks).loss
        self.log(
            "val/loss",
            loss,
            on_epoch=True,
            prog_bar=True,
            sync_dist=True,
            batch_size=images.shape[0],
        )
