"""Transforms: SimMIM pretraining (image + mask), fine-tuning (timm RandAugment recipe), eval,
mixup.

A transform with ``accepts_bytes = True`` takes the stored sample (encoded file bytes, a PIL image
or an array) and decodes it itself (the fast path in :mod:`.decode`); the datasets in this package
check that attribute and pass bytes, otherwise an RGB PIL image. Every transform here takes ``mean``
/ ``std``, one value per channel: their length is the number of channels it makes (RGB images for 3,
grey for 1, ``.npy`` / TIFF arrays for any, :mod:`.arrays`). Fine-tuning's RandAugment and colour
jitter are RGB operations: 8-bit RGB samples get the timm recipe, other samples its crop, flip and
random erasing only.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from timm.data import Mixup, auto_augment, create_transform
from timm.data.random_erasing import RandomErasing
from torchvision import transforms as T

from .arrays import as_float
from .decode import decode_resized_crop, load_pixels
from .mask import MaskGenerator, _pair

# ImageNet's per-channel RGB statistics, on [0, 1] pixels (timm's IMAGENET_DEFAULT_MEAN / _STD)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def check_normalization(
    mean, std, channels: int | None = None
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` as tuples of one value per channel (``channels``: how many the model takes;
    one value is broadcast to all of them, as timm's ``resolve_data_config`` does); refuses lengths
    that disagree or std <= 0."""
    mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
    channels = channels or max(len(mean), len(std))
    mean, std = (v * channels if len(v) == 1 else v for v in (mean, std))
    if len(mean) != channels or len(std) != channels:
        raise ValueError(
            f"data.mean has {len(mean)} and data.std {len(std)} values for {channels} channels "
            "(model.in_chans): give one per channel (python -m simmim_swinv2.stats computes them)"
        )
    if min(std) <= 0:
        raise ValueError(f"data.std={list(std)} must be > 0 for every channel")
    return mean, std


class SimMIMTransform:
    """RGB → RandomResizedCrop(size, scale, ratio) → RandomHorizontalFlip(hflip) → ToTensor →
    Normalize, + mask.

    The defaults are the official ones (microsoft/SimMIM data/data_simmim.py `SimMIMTransform`:
    scale (0.67, 1), ratio (3/4, 4/3), flip probability 0.5, ImageNet mean/std); pretraining sets
    them from `augment.*` (conf/pretrain.yaml).

    ``__call__(img)`` takes a PIL image, encoded bytes or an array and returns
    ``(image, mask)``: float ``(C, H, W)`` normalised with ``mean``/``std`` (``C = len(mean)``: RGB
    images for 3, grey for 1, arrays for any; :mod:`.arrays`), and the bool mask ``(H/p, W/p)``
    (True = masked) drawn by ``mask_generator``.

    Statistically the same as the torchvision composition in the SimMIM reference (same crop,
    flip and mask draws from torch's generator); only decoding and resizing are faster (see
    :func:`~.decode.decode_resized_crop`).

    Args:
        input_size: ``S`` or ``(H, W)`` of the crops.
        mask_generator: draws the masks; None: ``MaskGenerator(input_size)`` (SimMIM's defaults).
            Its ``input_size`` must be the transform's.
        scale: range of the crop's share of the image area.
        ratio: range of the crop's aspect ratio.
        hflip: probability of a horizontal flip.
        mean, std: per-channel normalisation; their length sets the channels.
        fast_decode: plain JPEG chroma upsampling; False: "fancy" like PIL (pixels then within 1
            level of PIL's), slightly slower (docs/benchmarks.md).
    """

    accepts_bytes = True

    def __init__(
        self,
        input_size: int | tuple[int, int] = 192,
        mask_generator: MaskGenerator | None = None,
        scale: tuple[float, float] = (0.67, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        hflip: float = 0.5,
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
        fast_decode: bool = True,
    ) -> None:
        self.size = _pair(input_size)
        self.mask_generator = (
            mask_generator if mask_generator is not None else MaskGenerator(self.size)
        )
        if self.mask_generator.input_size != self.size:
            raise ValueError(
                f"mask generator is built for input_size={self.mask_generator.input_size} but the "
                f"transform crops to {self.size}; give both the same input size"
            )
        self.scale = tuple(scale)
        self.ratio = tuple(ratio)
        self.hflip = hflip
        self.fast_decode = fast_decode
        mean, std = check_normalization(mean, std)
        self.channels = len(mean)
        # ToTensor (÷255) and Normalize folded into x · mult + bias, computed from the uint8 crop
        # (float crops come scaled already: x · inv_std + bias).
        std_t = torch.tensor(std, dtype=torch.float64).view(-1, 1, 1)
        self._mult = (1.0 / (255.0 * std_t)).float()
        self._inv_std = (1.0 / std_t).float()
        self._bias = (-torch.tensor(mean, dtype=torch.float64).view(-1, 1, 1) / std_t).float()

    def __call__(self, img: Image.Image | bytes | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Crop, flip and normalise one sample and draw its mask.

        Args:
            img: a PIL image, encoded bytes or an array.

        Returns:
            ``(image, mask)``: float32 ``(C, H, W)`` and bool ``(H/p, W/p)``, True = masked.
        """
        x = decode_resized_crop(
            img, self.size, self.scale, self.ratio, fast=self.fast_decode, channels=self.channels
        )
        if self.hflip > 0 and torch.rand(1).item() < self.hflip:
            x = x.flip(-1)
        # One pass reads the channels-last crop and writes contiguous (C, H, W) float32.
        mult = self._mult if x.dtype == torch.uint8 else self._inv_std
        image = torch.mul(x, mult, out=torch.empty(x.shape)).add_(self._bias)
        return image, self.mask_generator()

    def __repr__(self) -> str:
        return (
            f"SimMIMTransform(size={self.size}, scale={self.scale}, ratio={self.ratio}, "
            f"{self.mask_generator})"
        )


def build_pretrain_transform(
    input_size: int = 192,
    mask_patch_size: int = 32,
    model_patch_size: int = 4,
    mask_ratio: float = 0.6,
) -> SimMIMTransform:
    """SimMIM pretrain transform with its mask generator (ImageNet normalisation, the official
    crop and flip).

    Args:
        input_size: side of the crops, in pixels.
        mask_patch_size, model_patch_size, mask_ratio: :class:`~.mask.MaskGenerator`'s.

    Returns:
        The :class:`SimMIMTransform`; ``(image, mask)`` per sample.
    """
    mask = MaskGenerator(input_size, mask_patch_size, model_patch_size, mask_ratio)
    return SimMIMTransform(input_size, mask)


def build_reference_pretrain_transform(
    input_size: int = 192, mask_generator: MaskGenerator | None = None
) -> T.Compose:
    """The plain torchvision composition from the SimMIM reference (RGB PIL input), without the
    mask.

    Kept as the baseline for ``scripts/benchmark_data.py`` and for distribution checks in tests.

    Args:
        input_size: side of the crops, in pixels.
        mask_generator: unused (the signature of the fast path's builder).

    Returns:
        A ``T.Compose``: RGB PIL image → float ``(3, S, S)``, ImageNet-normalised.
    """
    return T.Compose(
        [
            T.RandomResizedCrop(input_size, scale=(0.67, 1.0), ratio=(3 / 4, 4 / 3)),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


class ChannelTransform:
    """A torchvision / timm pipeline for 8-bit RGB PIL images (``rgb``), and its tensor counterpart
    (``tensor``, on ``(H, W, C)`` pixels) for every other sample: grey images, ``.npy`` / TIFF
    arrays of any type and channel count. Takes what the data sets store (``accepts_bytes``);
    ``transforms`` are the RGB pipeline's."""

    accepts_bytes = True

    def __init__(self, rgb, tensor, channels: int = 3) -> None:
        self.rgb, self.tensor, self.channels = rgb, tensor, channels
        self.transforms = getattr(rgb, "transforms", [])

    def __call__(self, data) -> torch.Tensor:
        pixels = load_pixels(data, self.channels)
        if self.channels == 3 and isinstance(pixels, np.ndarray) and pixels.dtype == np.uint8:
            pixels = Image.fromarray(pixels)  # 8-bit RGB arrays get the RGB recipe too
        if isinstance(pixels, Image.Image) and self.channels == 3:
            return self.rgb(pixels)
        return self.tensor(pixels)

    def __repr__(self) -> str:
        return f"ChannelTransform(channels={self.channels}, rgb={self.rgb!r})"


def _normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    """Float ``(C, H, W)`` pixels, scaled (:func:`~.arrays.as_float`), normalised per channel."""
    return (x - torch.tensor(mean).view(-1, 1, 1)) / torch.tensor(std).view(-1, 1, 1)


class _TensorFinetune:
    """Fine-tuning's crop (area ``scale``, bicubic), flip and random erasing on ``(H, W, C)``
    pixels."""

    def __init__(self, size, scale, hflip, re_prob, mean, std) -> None:
        self.size, self.scale, self.hflip, self.mean, self.std = (
            _pair(size),
            tuple(scale),
            hflip,
            mean,
            std,
        )
        self.erase = (
            RandomErasing(re_prob, mode="pixel", max_count=1, device="cpu") if re_prob > 0 else None
        )

    def __call__(self, pixels) -> torch.Tensor:
        x = decode_resized_crop(
            np.asarray(pixels),
            self.size,
            self.scale,
            (3 / 4, 4 / 3),
            channels=len(self.mean),
            mode="bicubic",
        )
        if self.hflip > 0 and torch.rand(1).item() < self.hflip:
            x = x.flip(-1)
        x = _normalize(x.float().contiguous(), self.mean, self.std)
        return self.erase(x) if self.erase is not None else x


class _TensorEval:
    """The eval transform on ``(H, W, C)`` pixels: shorter side to ``resize`` (bicubic,
    antialiased), centre crop."""

    def __init__(self, size: tuple[int, int], resize: int, mean, std) -> None:
        self.size, self.resize, self.mean, self.std = size, resize, mean, std

    def __call__(self, pixels) -> torch.Tensor:
        arr = as_float(
            np.asarray(pixels)[:, :, None] if np.asarray(pixels).ndim == 2 else np.asarray(pixels)
        )
        h, w = arr.shape[:2]
        s = self.resize / min(h, w)
        new = (max(1, round(h * s)), max(1, round(w * s)))
        x = torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0)
        x = F.interpolate(x, size=new, mode="bicubic", antialias=True, align_corners=False)[0]
        top, left = (new[0] - self.size[0]) // 2, (new[1] - self.size[1]) // 2
        x = x[
            :, max(top, 0) : max(top, 0) + self.size[0], max(left, 0) : max(left, 0) + self.size[1]
        ]
        return _normalize(x.contiguous(), self.mean, self.std)


def build_finetune_transform(
    input_size: int = 224,
    auto_augment: str | None = "rand-m9-mstd0.5-inc1",  # None: no RandAugment
    color_jitter: float = 0.4,
    re_prob: float = 0.25,
    interpolation: str = "bicubic",
    scale: tuple[float, float] = (0.08, 1.0),
    hflip: float = 0.5,
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
) -> ChannelTransform:
    """Fine-tune train transform (timm): RandomResizedCrop (area fraction ``scale``), horizontal
    flip (with probability ``hflip``), RandAugment, jitter, random erasing.

    Input: what a data set stores (:class:`ChannelTransform`). Output: float ``(C, S, S)``
    normalised with ``mean``/``std`` (``C = len(mean)``); samples other than 8-bit RGB skip
    RandAugment and the colour jitter.

    Args:
        input_size: side ``S`` of the crops, in pixels.
        auto_augment: timm's RandAugment spec; None: none.
        color_jitter: timm's colour-jitter strength.
        re_prob: probability of random erasing (per-pixel noise, one box).
        interpolation: resize interpolation of the RGB path.
        scale: range of the crop's share of the image area.
        hflip: probability of a horizontal flip.
        mean, std: per-channel normalisation; their length sets the channels.

    Returns:
        A :class:`ChannelTransform`.
    """
    mean, std = check_normalization(mean, std)
    rgb = None
    if len(mean) == 3:
        rgb = create_transform(
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
            mean=mean,
            std=std,
        )
        _patch_posterize(rgb)
    return ChannelTransform(
        rgb, _TensorFinetune(input_size, scale, hflip, re_prob, mean, std), len(mean)
    )


def _posterize(img: Image.Image, bits_to_keep: int, **_) -> Image.Image:
    """timm's posterize, with 0 bits kept giving a black image (Pillow 13's ``posterize`` raises
    there)."""
    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)
    return ImageOps.posterize(img, bits_to_keep)


def _patch_posterize(transform) -> None:
    """Swap in :func:`_posterize` for timm's in every augmentation op below ``transform``.

    ``rand-m9-mstd0.5-inc1`` draws magnitude 10 now and then (9 + N(0, 0.5), clipped), which
    ``PosterizeIncreasing`` maps to 0 bits; timm's posterize with Pillow 13 then raises a
    ``ValueError`` (how often: docs/benchmarks.md).
    """
    for t in getattr(transform, "transforms", []):
        _patch_posterize(t)
    for op in getattr(transform, "ops", []):
        if getattr(op, "aug_fn", None) is auto_augment.posterize:
            op.aug_fn = _posterize


def build_eval_transform(
    input_size: int | tuple[int, int] = 224,
    crop_pct: float = 224 / 256,
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
) -> ChannelTransform:
    """Eval transform: resize shorter side to ``int(size / crop_pct)`` (256/224·size), bicubic,
    centre crop.

    Input: what a data set stores (:class:`ChannelTransform`).

    Args:
        input_size: ``S`` or ``(H, W)`` (the longer side sets the resize).
        crop_pct: the centre crop's share of the resized shorter side.
        mean, std: per-channel normalisation; their length sets the channels.

    Returns:
        A :class:`ChannelTransform` giving float ``(C, H, W)`` normalised with ``mean``/``std``.
    """
    mean, std = check_normalization(mean, std)
    h, w = _pair(input_size)
    resize = int(max(h, w) / crop_pct)
    rgb = (
        T.Compose(
            [
                T.Resize(resize, interpolation=T.InterpolationMode.BICUBIC),
                T.CenterCrop((h, w) if h != w else h),
                T.ToTensor(),
                T.Normalize(mean, std),
            ]
        )
        if len(mean) == 3
        else None
    )
    return ChannelTransform(rgb, _TensorEval((h, w), resize, mean, std), len(mean))


def build_mixup(
    num_classes: int,
    mixup_alpha: float = 0.8,
    cutmix_alpha: float = 1.0,
    label_smoothing: float = 0.1,
    prob: float = 1.0,
    switch_prob: float = 0.5,
) -> Mixup | None:
    """timm ``Mixup`` for batches: ``images, soft_targets = mixup(images, labels)``.

    Needs an even batch size.

    Args:
        num_classes: classes of the soft targets.
        mixup_alpha, cutmix_alpha: Beta-distribution parameters; 0 turns each off.
        label_smoothing: smoothing of the soft targets.
        prob: probability of mixing a batch at all.
        switch_prob: probability of cutmix instead of mixup when both are on.

    Returns:
        timm's ``Mixup`` (``mode="batch"``), or ``None`` when both alphas are 0 (use plain CE with
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
