"""Per-channel pixel statistics of a data set, for `data.mean` / `data.std`:
`python -m simmim_swinv2.stats data=… channels=N [max_samples=10000]`.

Reads the training split (a fixed-seed subset of `max_samples`; shards: the first ones) at full
resolution, each sample scaled as training scales it (`data.arrays`: uint8 / 255, uint16 / 65535,
float as stored; images as RGB for 3 channels, grey for 1), and computes the mean and standard
deviation of every channel over all pixels. Writes them to `output` (YAML: `data: {mean: […], std:
[…]}`) and prints the overrides that use them."""

from __future__ import annotations

from pathlib import Path

import hydra
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, IterableDataset, Subset
from tqdm import tqdm

from .config import CONFIG_DIR, ConfigError
from .config.checks import check_values
from .data.arrays import pixels_to_float
from .data.decode import load_pixels
from .inference.probe import subset_indices, take


class ChannelSums:
    """Sample → float64 `(2C + 1,)`: per-channel sums of the scaled pixels, of their squares, and
    the pixel count (a fixed size, so the default collate stacks them)."""

    accepts_bytes = True

    def __init__(self, channels: int) -> None:
        self.channels = channels

    def __call__(self, data) -> torch.Tensor:
        x = (
            pixels_to_float(load_pixels(data, self.channels))
            .astype(np.float64)
            .reshape(-1, self.channels)
        )
        return torch.from_numpy(np.concatenate([x.sum(0), (x * x).sum(0), [x.shape[0]]]))


def channel_stats(
    dataset,
    channels: int,
    max_samples: int | None = 10000,
    num_workers: int = 0,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """`{"mean", "std", "samples"}` over a data set whose transform is `ChannelSums(channels)`."""
    if isinstance(dataset, IterableDataset):
        batches = take(DataLoader(dataset, batch_size=32, num_workers=num_workers), max_samples)
    else:
        indices = subset_indices(len(dataset), max_samples, seed)
        batches = DataLoader(Subset(dataset, indices), batch_size=32, num_workers=num_workers)
    total, samples = torch.zeros(2 * channels + 1, dtype=torch.float64), 0
    for batch in tqdm(batches, desc="stats", unit="batch", disable=not progress):
        total += batch[0].sum(0)
        samples += len(batch[0])
    if samples == 0:
        raise ConfigError("no samples read: check data.* (the training split is empty)")
    count = total[-1]
    mean = total[:channels] / count
    std = (total[channels : 2 * channels] / count - mean**2).clamp(min=0).sqrt()
    return {
        "mean": [round(float(m), 6) for m in mean],
        "std": [round(float(s), 6) for s in std],
        "samples": samples,
    }


def stats(cfg: DictConfig) -> dict:
    """Compute, write `cfg.output`, print the overrides; returns `{"mean", "std", "samples",
    "output"}`."""
    check_values(cfg)
    if cfg.channels < 1:
        raise ConfigError(f"channels={cfg.channels} must be >= 1 (the model's in_chans)")
    dataset = instantiate(cfg.data.train, transform=ChannelSums(cfg.channels))
    result = channel_stats(dataset, cfg.channels, cfg.max_samples, cfg.num_workers, cfg.seed)
    out = Path(cfg.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        f"# python -m simmim_swinv2.stats: {result['samples']} samples, {cfg.channels} channel(s)\n"
        + OmegaConf.to_yaml({"data": {"mean": result["mean"], "std": result["std"]}})
    )
    mean, std = (",".join(f"{v:g}" for v in result[k]) for k in ("mean", "std"))
    print(f"{result['samples']} samples, {cfg.channels} channel(s) -> {out}")
    print(f"data.mean=[{mean}] data.std=[{std}]")
    return {**result, "output": str(out)}


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="stats")
def main(cfg: DictConfig) -> None:
    stats(cfg)


if __name__ == "__main__":
    main()
