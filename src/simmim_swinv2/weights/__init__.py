"""Every weights format in and out, through one model description (`meta.ModelMeta`, written into
our checkpoints and beside our safetensors) and one `load_model`: our checkpoints and run
directories (`runs`: written atomically, found again; `ours`: read back, our safetensors export),
the one place that tells formats apart (`load.identify`), transformers / official / timm (`interop`,
`keys`), the command line (`cli`, `python -m simmim_swinv2.convert`). ZeRO directories are read
through `distributed.zero`."""

from .interop import from_official, from_timm, from_transformers, to_transformers
from .load import (
    EXPECTED,
    FORMATS,
    decoder_state_dict,
    encoder_state_dict,
    identify,
    load_model,
    load_pretrained_encoder,
    weights_format,
)
from .meta import CHECKPOINT_KEY, Model, ModelMeta
from .ours import save_model
from .runs import AtomicCheckpointIO, find_resume_checkpoint, zero_checkpoint

__all__ = [
    "CHECKPOINT_KEY",
    "EXPECTED",
    "FORMATS",
    "AtomicCheckpointIO",
    "Model",
    "ModelMeta",
    "decoder_state_dict",
    "encoder_state_dict",
    "find_resume_checkpoint",
    "from_official",
    "from_timm",
    "from_transformers",
    "identify",
    "load_model",
    "load_pretrained_encoder",
    "save_model",
    "to_transformers",
    "weights_format",
    "zero_checkpoint",
]
