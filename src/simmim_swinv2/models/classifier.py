"""Image classification on a SwinV2 encoder: average-pooled final features → linear head."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import SwinV2Config
from .swinv2 import SwinV2Encoder


@dataclass
class ClassifierOutput:
    """`logits`: `(B, num_classes)`; `loss` when labels were given."""

    logits: torch.Tensor
    loss: torch.Tensor | None = None


class SwinV2Classifier(nn.Module):
    """`forward(pixel_values (B, C, H, W), labels=None)`. Labels are class indices `(B,)`
    (cross-entropy, with optional label smoothing) or soft targets `(B, num_classes)` from
    mixup/cutmix (soft-target cross-entropy)."""

    def __init__(
        self,
        encoder: SwinV2Encoder,
        num_classes: int,
        id2label: dict[int, str] | None = None,
        head_drop: float = 0.0,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.num_classes = num_classes
        self.id2label = {
            int(k): str(v)
            for k, v in (id2label or {i: f"LABEL_{i}" for i in range(num_classes)}).items()
        }
        if len(self.id2label) != num_classes:
            raise ValueError(f"id2label has {len(self.id2label)} entries for {num_classes} classes")
        self.label_smoothing = label_smoothing
        self.head_drop = nn.Dropout(head_drop)
        self.head = (
            nn.Linear(encoder.num_features, num_classes) if num_classes > 0 else nn.Identity()
        )
        if isinstance(self.head, nn.Linear):
            nn.init.trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)

    @classmethod
    def from_config(cls, cfg: SwinV2Config, num_classes: int, **kwargs) -> SwinV2Classifier:
        return cls(SwinV2Encoder(cfg), num_classes, **kwargs)

    @property
    def label2id(self) -> dict[str, int]:
        return {v: k for k, v in self.id2label.items()}

    def forward(
        self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None
    ) -> ClassifierOutput:
        pooled = self.encoder(pixel_values).pooler_output
        logits = self.head(self.head_drop(pooled))
        loss = None
        if labels is not None:
            if labels.dtype.is_floating_point:  # soft targets
                loss = torch.sum(-labels * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
            else:
                loss = F.cross_entropy(logits.float(), labels, label_smoothing=self.label_smoothing)
        return ClassifierOutput(logits=logits, loss=loss)
