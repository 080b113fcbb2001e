"""Transforms: SimMIM pretraining (image + mask), fine-tuning (timm RandAugment recipe), eval, mixup.

A transform with ``accepts_bytes = True`` takes the encoded file bytes and decodes them itself
(the fast path in :mod:`.decode`); the datasets in this package check that attribute and pass
bytes, otherwise an RGB PIL image.
"""

from __future__ import annotations

import torch
from PIL import Image
from timm.data import Mixup, create_transform
from torchvision import transforms as T

from .decode import decode_resized_crop
from .mask import MaskGenerator, _pair

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class SimMIMTransform:
    """RGB → RandomResizedCrop(size, scale, ratio) → RandomHorizontalFlip → ToTensor → Normalize, + mask.

    ``__call__(img)`` takes a PIL image or encoded bytes and returns
    ``(image, mask)``: float ``(3, H, W)`` normalised with ``mean``/``std``, and the bool mask
    ``(H/p, W/p)`` (True = masked) drawn by ``mask_generator``.

    Statistically the same as the torchvision composition in the SimMIM reference; only the
    decoding is faster (see :func:`~.decode.decode_resized_crop`).
    """

    accepts_bytes = True

    def __init__(
        self,
        input_size: int | tuple[int, int] = 192,
        mask_generator: MaskGenerator | None = None,
        scale: tuple[float, float] = (0.67, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        hflip: float = 0.5,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
    ) -> None:
        self.size = _pair(input_size)
        self.mask_generator = mask_generator if mask_generator is not None else MaskGenerator(self.size)
        if self.mask_generator.input_size != self.size:
            raise ValueError(
                f"mask generator is built for input_size={self.mask_generator.input_size} but the transform "
                f"crops to {self.size}; give both the same input size"
            )
        self.scale = tuple(scale)
        self.ratio = tuple(ratio)
        self.hflip = hflip
        # ToTensor (÷255) and Normalize folded into one subtract and one multiply on uint8 input.
        self._shift = torch.tensor(mean).view(3, 1, 1) * 255.0
        self._mult = 1.0 / (torch.tensor(std).view(3, 1, 1) * 255.0)

    def __call__(self, img: Image.Image | bytes) -> tuple[torch.Tensor, torch.Tensor]:
        x = decode_resized_crop(img, self.size, self.scale, self.ratio)
        if self.hflip > 0 and torch.rand(1).item() < self.hflip:
            x = x.flip(-1)
        image = x.float().sub_(self._shift).mul_(self._mult)
        return image, self.mask_generator()

    def __repr__(self) -> str:
        return f"SimMIMTransform(size={self.size}, scale={self.scale}, ratio={self.ratio}, {self.mask_generator})"


def build_pretrain_transform(
    input_size: int = 192,
    mask_patch_size: int = 32,
    model_patch_size: int = 4,
    mask_ratio: float = 0.6,
) -> SimMIMTransform:
    """SimMIM pretrain transform with its mask generator; returns ``(image, mask)`` per sample."""
    mask = MaskGenerator(input_size, mask_patch_size, model_patch_size, mask_ratio)
    return SimMIMTransform(input_size, mask)


def build_reference_pretrain_transform(
    input_size: int = 192, mask_generator: MaskGenerator | None = None
) -> T.Compose:
    """The plain torchvision composition from the SimMIM reference (RGB PIL input), without the mask.

    Kept as the baseline for ``scripts/benchmark_data.py`` and for distribution checks in tests.
    """
    return T.Compose(
        [
            T.RandomResizedCrop(input_size, scale=(0.67, 1.0), ratio=(3 / 4, 4 / 3)),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def build_finetune_transform(
    input_size: int = 224,
    auto_augment: str = "rand-m9-mstd0.5-inc1",
    color_jitter: float = 0.4,
    re_prob: float = 0.25,
    interpolation: str = "bicubic",
) -> T.Compose:
    """Fine-tune train transform (timm): RandomResizedCrop, flip, RandAugment, jitter, random erasing.

    Input: RGB PIL image. Output: float ``(3, S, S)`` normalised with ImageNet mean/std.
    """
    return create_transform(
        input_size=input_size,
        is_training=True,
        auto_augment=auto_augment,
        color_jitter=color_jitter,
        re_prob=re_prob,
        re_mode="pixel",
        re_count=1,
        interpolation=interpolation,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    )


def build_eval_transform(input_size: int = 224, crop_pct: float = 224 / 256) -> T.Compose:
    """Eval transform: resize shorter side to ``int(size / crop_pct)`` (256/224·size), bicubic, centre crop.

    Input: RGB PIL image. Output: float ``(3, S, S)``.
    """
    return T.Compose(
        [
            T.Resize(int(input_size / crop_pct), interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(input_size),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def build_mixup(
    num_classes: int,
    mixup_alpha: float = 0.8,
    cutmix_alpha: float = 1.0,
    label_smoothing: float = 0.1,
    prob: float = 1.0,
    switch_prob: float = 0.5,
) -> Mixup | None:
    """timm ``Mixup`` for batches: ``images, soft_targets = mixup(images, labels)``.

    Needs an even batch size. Returns ``None`` when both alphas are 0 (use plain CE with
    label smoothing then).
    """
    if mixup_alpha <= 0 and cutmix_alpha <= 0:
        return None
    return Mixup(
        mixup_alpha=mixup_alpha,
        cutmix_alpha=cutmix_alpha,
        prob=prob,
        switch_prob=switch_prob,
        mode="batch",
        label_smoothing=label_smoothing,
        num_classes=num_classes,
    )
