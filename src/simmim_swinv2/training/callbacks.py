"""Callbacks: SimMIM reconstruction pictures, wall-clock checkpoints inside long epochs, RNG state
carried in checkpoints. (Preemption: `preemption`; bad samples: `bad_samples`.)"""

from __future__ import annotations

import random
from datetime import timedelta
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torchvision.utils import make_grid, save_image

from ..data import IMAGENET_MEAN, IMAGENET_STD
from ..weights.meta import normalization


class ReconstructionImages(L.Callback):
    """Every `every_n_steps` optimizer steps, and when training ends, a picture of a fixed set of
    training images (the first batch's first `num_images`), one row each: original | masked input |
    reconstruction | reconstruction pasted into the visible pixels. Saved as
    `<run_dir>/<dirname>/step_XXXXXXX.png` and sent to the loggers that take images (wandb,
    TensorBoard). With SimMIM's normalised target the reconstruction is of the locally standardised
    image, shown min-max scaled. Images of other than 3 channels show `channels` (three indices as
    RGB, or one as grey; default: the first three, or the first alone), see `grid`."""

    def __init__(
        self,
        every_n_steps: int = 100,
        num_images: int = 8,
        dirname: str = "reconstructions",
        channels: list[int] | None = None,
    ) -> None:
        self.every_n_steps = every_n_steps
        self.num_images = num_images
        self.dirname = dirname
        self.channels = channels
        self.fixed: tuple[torch.Tensor, torch.Tensor] | None = None
        self._last_step = -1
        self.saved: list[Path] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.fixed is None:
            self.fixed = (
                batch[0][: self.num_images].detach().clone(),
                batch[1][: self.num_images].detach().clone(),
            )
        step = trainer.global_step
        if self.every_n_steps > 0 and step % self.every_n_steps == 0 and step != self._last_step:
            self.render(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.fixed is not None and trainer.global_step != self._last_step:
            self.render(trainer, pl_module)

    @torch.no_grad()
    def render(self, trainer: L.Trainer, pl_module: L.LightningModule) -> Path | None:
        """Runs on every rank (sharded models need all of them for a forward); rank 0 writes."""
        self._last_step = step = trainer.global_step
        images, masks = self.fixed
        model = pl_module.model
        was_training = model.training
        model.eval()
        out = model(images, masks)
        model.train(was_training)
        if not trainer.is_global_zero:
            return None
        mean, std = normalization(model)
        grid = self.grid(
            images.float().cpu(),
            masks.cpu(),
            out.reconstruction.float().cpu(),
            model.encoder.cfg.patch_size,
            getattr(model, "norm_target", False),
            mean,
            std,
            self.channels,
        )
        path = Path(trainer.default_root_dir) / self.dirname / f"step_{step:07d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_image(grid, path)
        self.saved.append(path)
        for logger in trainer.loggers:
            if hasattr(logger, "log_image"):  # wandb
                logger.log_image(key="train/reconstructions", images=[str(path)], step=step)
            elif hasattr(getattr(logger, "experiment", None), "add_image"):  # tensorboard
                logger.experiment.add_image("train/reconstructions", grid, step)
        return path

    @staticmethod
    def grid(
        images: torch.Tensor,
        masks: torch.Tensor,
        reconstruction: torch.Tensor,
        patch_size: int,
        norm_target: bool = False,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        channels: list[int] | None = None,
    ) -> torch.Tensor:
        """`(N, C, H, W)` images normalised with `mean` / `std`, `(N, h, w)` masks → `(3, H', W')`
        picture in [0, 1].

        Shown: `channels` (three indices → RGB, one → grey; default: the first three, or the first
        when there are fewer). 1- and 3-channel images are shown as they are (clamped to [0, 1]);
        others, whose values have no display range, min-max stretched per image and channel by the
        original's range (the reconstruction the same)."""
        C = images.shape[1]
        channels = list(channels) if channels else list(range(3) if C >= 3 else range(1))
        if len(channels) not in (1, 3) or not all(0 <= c < C for c in channels):
            raise ValueError(
                f"channels={channels}: give 1 or 3 indices of the model's {C} channels"
            )
        mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        original = (images * std_t + mean_t)[:, channels]
        if C in (1, 3):
            lo, hi = torch.zeros(()), torch.ones(())
        else:
            lo, hi = (
                original.amin(dim=(2, 3), keepdim=True),
                original.amax(dim=(2, 3), keepdim=True),
            )
        span = (hi - lo).clamp(min=1e-6)
        shown = ((original - lo) / span).clamp(0, 1)
        if norm_target:
            r = reconstruction[:, channels]
            r_lo, r_hi = r.amin(dim=(1, 2, 3), keepdim=True), r.amax(dim=(1, 2, 3), keepdim=True)
            recon = (r - r_lo) / (r_hi - r_lo).clamp(min=1e-6)
        else:
            recon = (((reconstruction * std_t + mean_t)[:, channels] - lo) / span).clamp(0, 1)
        if len(channels) == 1:  # grey: the same plane in R, G and B
            shown, recon = shown.expand(-1, 3, -1, -1), recon.expand(-1, 3, -1, -1)
        pixel_mask = (
            masks.float()
            .repeat_interleave(patch_size, 1)
            .repeat_interleave(patch_size, 2)
            .unsqueeze(1)
        )
        masked = shown * (1 - pixel_mask) + 0.5 * pixel_mask
        pasted = shown * (1 - pixel_mask) + recon * pixel_mask
        tiles = torch.stack([shown, masked, recon, pasted], dim=1).flatten(0, 1)
        return make_grid(tiles, nrow=4, padding=2, pad_value=1.0)


class WallClockCheckpoint(ModelCheckpoint):
    """`ModelCheckpoint` that rewrites `last.ckpt` every `train_time_interval` of training, inside
    epochs (an ImageNet-22K epoch is hours), and nothing else: Lightning's also saves `last.ckpt`
    when training ends, which the epoch checkpoint already links to its newest file — a second full
    copy (40 GB at SwinV2-G) for nothing. A mid-epoch save resumes at the next batch, as a
    preemption save does (`SimMIMDataModule`)."""

    def __init__(self, dirpath: str, train_time_interval: timedelta | None, **kwargs) -> None:
        kwargs = {"save_top_k": 0, "save_last": True, "enable_version_counter": False, **kwargs}
        super().__init__(dirpath=dirpath, train_time_interval=train_time_interval, **kwargs)

    def on_train_end(self, trainer, pl_module) -> None:
        pass


class RNGState(L.Callback):
    """Saves the Python, NumPy, torch and CUDA random states in each checkpoint and restores them on
    resume, so a resumed run draws the same numbers (dropout, drop path) as an uninterrupted one.
    Stored as tensors and plain Python values, so checkpoints still load with
    `torch.load(weights_only=True)`."""

    def state_dict(self) -> dict:
        kind, keys, pos, has_gauss, cached = np.random.get_state()
        state = {
            "python": random.getstate(),
            "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict) -> None:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
        kind, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
