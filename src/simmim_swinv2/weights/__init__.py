"""Every weights format in and out: our checkpoints and run directories (`runs`), one format detector and one
`load_model` for all of them (`load`), transformers / official / timm / our safetensors (`interop`, `keys`), the
command line (`cli`, `python -m simmim_swinv2.convert`). ZeRO directories are read through `distributed.zero`."""

from .interop import (
    Model,
    from_official,
    from_timm,
    from_transformers,
    save_model,
    to_transformers,
)
from .load import EXPECTED, FORMATS, encoder_state_dict, load_model, load_pretrained_encoder, weights_format
from .runs import AtomicCheckpointIO, find_resume_checkpoint, zero_checkpoint

__all__ = ["EXPECTED", "FORMATS", "AtomicCheckpointIO", "Model", "encoder_state_dict", "find_resume_checkpoint",
           "from_official", "from_timm", "from_transformers", "load_model", "load_pretrained_encoder", "save_model",
           "to_transformers", "weights_format", "zero_checkpoint"]
