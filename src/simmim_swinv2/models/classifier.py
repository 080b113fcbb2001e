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
    """What `SwinV2Classifier.forward` returns.

    Attributes:
        logits: `(B, num_classes)`.
        loss: scalar cross-entropy when labels were given, else None.
    """

    logits: torch.Tensor
    loss: torch.Tensor | None = None


class SwinV2Classifier(nn.Module):
    """Image classification: the encoder's average-pooled final features → dropout → linear head.

    Args:
        encoder: the `SwinV2Encoder` (its mask token, if any, is unused).
        num_classes: outputs of the head; 0: no head (`nn.Identity`, the pooled features).
        id2label: class names by index; default `LABEL_<i>`, as transformers names them.
        head_drop: dropout rate before the head.
        label_smoothing: for the cross-entropy with class-index labels.
    """

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
        """A freshly initialised classifier on `cfg`; `kwargs`: `__init__`'s."""
        return cls(SwinV2Encoder(cfg), num_classes, **kwargs)

    @property
    def label2id(self) -> dict[str, int]:
        """The inverse of `id2label`."""
        return {v: k for k, v in self.id2label.items()}

    def forward(
        self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None
    ) -> ClassifierOutput:
        """Classify images, and score them when labels are given.

        Args:
            pixel_values: `(B, C, H, W)` normalised pixels, H and W multiples of the stride.
            labels: class indices `(B,)` (cross-entropy with `label_smoothing`) or soft targets
                `(B, num_classes)` from mixup/cutmix (soft-target cross-entropy); None: no loss.

        Returns:
            `ClassifierOutput`: `logits` `(B, num_classes)`, `loss` (scalar, float32) or None.
        """
        pooled = self.encoder(pixel_values).pooler_output
        logits = self.head(self.head_drop(pooled))
        loss = None
        if labels is not None:
            if labels.dtype.is_floating_point:  # soft targets
                loss = torch.sum(-labels * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
            else:
                loss = F.cross_entropy(logits.float(), labels, label_smoothing=self.label_smoothing)
        return ClassifierOutput(logits=logits, loss=loss)
