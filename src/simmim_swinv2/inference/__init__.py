"""Inference the way transformers users expect: the SwinV2 image processor (`ImageProcessor`, equal
to transformers' `AutoImageProcessor`), used by `python -m simmim_swinv2.predict` and written beside
exports."""

from .processor import ImageProcessor, to_rgb_white


def resolve_device(name: str = "auto"):
    """The device an inference command runs on: `auto` is CUDA when there is one, else the CPU; any
    other name is torch's (`cpu`, `cuda:1`)."""
    import torch

    return torch.device(
        "cuda"
        if name == "auto" and torch.cuda.is_available()
        else ("cpu" if name == "auto" else name)
    )


__all__ = ["ImageProcessor", "resolve_device", "to_rgb_white"]
