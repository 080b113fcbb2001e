"""Transforms: SimMIM pretraining (image + mask), fine-tuning (timm RandAugment recipe), eval, mixup.

A transform with ``accepts_bytes = True`` takes the encoded file bytes and decodes them itself
(the fast path in :mod:`.decode`); the datasets in this package check that attribute and pass
bytes, otherwise an RGB PIL image.
"""

from __future__ import annotations

import torch
from PIL import Image, ImageOps
from timm.data import Mixup, auto_augment, create_transform
from torchvision import transforms as T

from .decode import decode_resized_crop
from .mask import MaskGenerator, _pair

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class SimMIMTransform:
    """RGB → RandomResizedCrop(size, scale, ratio) → RandomHorizontalFlip(hflip) → ToTensor → Normalize, + mask.

    The defaults are the official ones (microsoft/SimMIM data/data_simmim.py `SimMIMTransform`: scale (0.67, 1),
    ratio (3/4, 4/3), flip probability 0.5, ImageNet mean/std); pretraining sets them from `augment.*`
    (conf/pretrain.yaml).

    ``__call__(img)`` takes a PIL image or encoded bytes and returns
    ``(image, mask)``: float ``(3, H, W)`` normalised with ``mean``/``std``, and the bool mask
    ``(H/p, W/p)`` (True = masked) drawn by ``mask_generator``.

    Statistically the same as the torchvision composition in the SimMIM reference (same crop,
    flip and mask draws from torch's generator); only decoding and resizing are faster (see
    :func:`~.decode.decode_resized_crop`). ``fast_decode=False`` upsamples JPEG chroma like PIL
    ("fancy" upsampling; pixels then within 1 level of PIL's), 1–3% slower end to end.
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
        fast_decode: bool = True,
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
        self.fast_decode = fast_decode
        # ToTensor (÷255) and Normalize folded into x · mult + bias, computed from the uint8 crop.
        std_t = torch.tensor(std, dtype=torch.float64).view(3, 1, 1)
        self._mult = (1.0 / (255.0 * std_t)).float()
        self._bias = (-torch.tensor(mean, dtype=torch.float64).view(3, 1, 1) / std_t).float()

    def __call__(self, img: Image.Image | bytes) -> tuple[torch.Tensor, torch.Tensor]:
        x = decode_resized_crop(img, self.size, self.scale, self.ratio, fast=self.fast_decode)
        if self.hflip > 0 and torch.rand(1).item() < self.hflip:
            x = x.flip(-1)
        # One pass reads the channels-last uint8 crop and writes contiguous (3, H, W) float32.
        image = torch.mul(x, self._mult, out=torch.empty(x.shape)).add_(self._bias)
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
    auto_augment: str | None = "rand-m9-mstd0.5-inc1",  # None: no RandAugment
    color_jitter: float = 0.4,
    re_prob: float = 0.25,
    interpolation: str = "bicubic",
    scale: tuple[float, float] = (0.08, 1.0),
    hflip: float = 0.5,
) -> T.Compose:
    """Fine-tune train transform (timm): RandomResizedCrop (area fraction ``scale``), horizontal flip (with
    probability ``hflip``), RandAugment, jitter, random erasing.

    Input: RGB PIL image. Output: float ``(3, S, S)`` normalised with ImageNet mean/std.
    """
    transform = create_transform(
        input_size=input_size,
        is_training=True,
        scale=tuple(scale),
        hflip=hflip,
        auto_augment=auto_augment,
        color_jitter=color_jitter,
        re_prob=re_prob,
        re_mode="pixel",
        re_count=1,
        interpolation=interpolation,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    )
    _patch_posterize(transform)
    return transform


def _posterize(img: Image.Image, bits_to_keep: int, **_) -> Image.Image:
    """timm's posterize, with 0 bits kept giving a black image as before Pillow 13 (which raises there)."""
    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)
    return ImageOps.posterize(img, bits_to_keep)


def _patch_posterize(transform) -> None:
    """Swap in :func:`_posterize` for timm's in every augmentation op below ``transform``.

    ``rand-m9-mstd0.5-inc1`` draws magnitude 10 now and then (9 + N(0, 0.5), clipped), which
    ``PosterizeIncreasing`` maps to 0 bits; with timm 1.0.31 and Pillow 13 that raised a
    ``ValueError`` in about one sample in 500.
    """
    for t in getattr(transform, "transforms", []):
        _patch_posterize(t)
    for op in getattr(transform, "ops", []):
        if getattr(op, "aug_fn", None) is auto_augment.posterize:
            op.aug_fn = _posterize


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
