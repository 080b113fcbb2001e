"""Data layer: mask generator, transforms, sources (digits, folder, shards, Hugging Face `datasets`,
ImageNet, synthetic), datamodule; images of any number of channels (`arrays`: .npy, multi-band
TIFF).

Every source yields ``(*transform_outputs, label)``: ``(image, mask, label)`` with the SimMIM
transform, ``(image, label)`` otherwise; ``label = -1`` when unlabelled. Masks: 1 = masked.

Bad samples (undecodable images, unreadable shards) never stop a loader worker: folders and shards
replace them (so every rank keeps its planned number of samples) and count and name them in their
:class:`BadSampleTracker`, shared by all loader workers; ``training.bad_samples.BadSampleMonitor``
sums the counts over ranks per epoch, logs them and stops the run once they pass
``max_bad_fraction`` of an epoch.
"""

from .datamodule import SimMIMDataModule
from .decode import decode_resized_crop, decode_rgb, to_rgb
from .digits import DigitsDataset, build_digits
from .faults import BadSampleTracker, TooManyBadSamples
from .folder import IMAGE_EXTENSIONS, FolderDataset, build_folder, scan_folder
from .hf import HFDataset, HFStreamDataset, build_hf
from .mask import MaskGenerator
from .presets import (
    SyntheticDataset,
    build_imagenet,
    build_imagenet1k,
    build_imagenet22k,
    build_synthetic,
)
from .shards import (
    ShardDataset,
    ShardError,
    build_webdataset,
    expand_shards,
    plan_epoch,
    shard_sizes,
)
from .transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    SimMIMTransform,
    build_eval_transform,
    build_finetune_transform,
    build_mixup,
    build_pretrain_transform,
    build_reference_pretrain_transform,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_EXTENSIONS",
    "BadSampleTracker",
    "DigitsDataset",
    "FolderDataset",
    "HFDataset",
    "HFStreamDataset",
    "MaskGenerator",
    "ShardDataset",
    "ShardError",
    "SimMIMDataModule",
    "SimMIMTransform",
    "SyntheticDataset",
    "TooManyBadSamples",
    "build_digits",
    "build_eval_transform",
    "build_finetune_transform",
    "build_folder",
    "build_hf",
    "build_imagenet",
    "build_imagenet1k",
    "build_imagenet22k",
    "build_mixup",
    "build_pretrain_transform",
    "build_reference_pretrain_transform",
    "build_synthetic",
    "build_webdataset",
    "decode_resized_crop",
    "decode_rgb",
    "expand_shards",
    "plan_epoch",
    "scan_folder",
    "shard_sizes",
    "to_rgb",
]
