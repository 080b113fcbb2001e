"""`python -m simmim_swinv2.convert`: weights between our runs and checkpoints, transformers,
official and timm.

    python -m simmim_swinv2.convert to-transformers RUN_OR_CHECKPOINT OUT_DIR
    python -m simmim_swinv2.convert from-transformers HF_DIR OUT.safetensors

And the conversion API, as `from simmim_swinv2 import convert`:

    model = convert.from_transformers("path/to/hf_dir")
        # classifier / SimMIM / encoder, per the checkpoint
    convert.to_transformers(model, "path/to/out_dir")
        # config.json + model.safetensors + preprocessor
    model = convert.from_official("swinv2_base_window12to16.pth")
        # windows read from the position buffers
    model = convert.from_timm("swinv2_tiny.safetensors", window_size=8, img_size=256)

All of it lives in `simmim_swinv2.weights`; this module is its command and its short name.
"""

from __future__ import annotations

from .config.compose import stops_cleanly
from .weights.cli import main as convert_main
from .weights.interop import (
    config_from_transformers,
    config_to_transformers,
    encoder_from_transformers,
    encoder_to_transformers,
    from_official,
    from_timm,
    from_transformers,
    infer_config,
    official_to_ours,
    recorded_pretrained_windows,
    timm_to_ours,
    to_transformers,
)
from .weights.load import load_model
from .weights.meta import Model, ModelMeta
from .weights.ours import save_model


def main(argv: list[str] | None = None) -> None:
    """The command (`weights.cli.main`); a source that is not there ends it with one line."""
    with stops_cleanly("python -m simmim_swinv2.convert"):
        convert_main(argv)


__all__ = [
    "Model",
    "ModelMeta",
    "config_from_transformers",
    "config_to_transformers",
    "encoder_from_transformers",
    "encoder_to_transformers",
    "from_official",
    "from_timm",
    "from_transformers",
    "infer_config",
    "load_model",
    "main",
    "official_to_ours",
    "recorded_pretrained_windows",
    "save_model",
    "timm_to_ours",
    "to_transformers",
]

if __name__ == "__main__":
    main()
