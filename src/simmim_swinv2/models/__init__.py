"""The network only: SwinV2 encoder, SimMIM model, classifier. Imports torch and timm, never
lightning/hydra/wandb."""

from .classifier import ClassifierOutput, SwinV2Classifier
from .config import PAPER_PARAMS, VARIANTS, SwinV2Config, swinv2_config
from .simmim import SimMIM, SimMIMOutput, masked_l1_loss, normalize_target
from .swinv2 import SwinV2Block, SwinV2Encoder, SwinV2EncoderOutput


def encoder_of(model: SwinV2Encoder | SimMIM | SwinV2Classifier) -> SwinV2Encoder:
    """The SwinV2 encoder of any of our models.

    Args:
        model: a bare encoder, a SimMIM model or a classifier (the latter two hold it as
            `encoder`).

    Returns:
        The `SwinV2Encoder` itself (not a copy).

    Raises:
        TypeError: `model` neither is nor holds a `SwinV2Encoder`.
    """
    encoder = model if isinstance(model, SwinV2Encoder) else getattr(model, "encoder", None)
    if not isinstance(encoder, SwinV2Encoder):
        raise TypeError(
            f"{type(model).__name__} is neither a SwinV2Encoder nor a model holding one as "
            "`encoder`"
        )
    return encoder


__all__ = [
    "PAPER_PARAMS",
    "VARIANTS",
    "ClassifierOutput",
    "SimMIM",
    "SimMIMOutput",
    "SwinV2Block",
    "SwinV2Classifier",
    "SwinV2Config",
    "SwinV2Encoder",
    "SwinV2EncoderOutput",
    "encoder_of",
    "masked_l1_loss",
    "normalize_target",
    "swinv2_config",
]
