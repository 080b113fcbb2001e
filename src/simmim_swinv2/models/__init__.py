"""The network only: SwinV2 encoder, SimMIM model, classifier. Imports torch and timm, never
lightning/hydra/wandb."""

from .classifier import ClassifierOutput, SwinV2Classifier
from .config import PAPER_PARAMS, VARIANTS, SwinV2Config, swinv2_config
from .simmim import SimMIM, SimMIMOutput, masked_l1_loss, normalize_target
from .swinv2 import SwinV2Block, SwinV2Encoder, SwinV2EncoderOutput

__all__ = [
    "PAPER_PARAMS", "VARIANTS", "ClassifierOutput", "SimMIM", "SimMIMOutput", "SwinV2Block", "SwinV2Classifier",
    "SwinV2Config", "SwinV2Encoder", "SwinV2EncoderOutput", "masked_l1_loss", "normalize_target", "swinv2_config",
]
