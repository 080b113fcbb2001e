"""Inference the way transformers users expect: the SwinV2 image processor (`ImageProcessor`, equal to
transformers' `AutoImageProcessor`), used by `python -m simmim_swinv2.predict` and written beside exports."""

from .processor import ImageProcessor, to_rgb_white

__all__ = ["ImageProcessor", "to_rgb_white"]
