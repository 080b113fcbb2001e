"""Probe a frozen encoder: `python -m simmim_swinv2.probe checkpoint=PATH [data=…]`.

PATH: anything `weights.load_model` reads — a run directory, `.ckpt` or ZeRO directory of ours
(pretraining or fine-tuning), our `.safetensors`, a transformers directory, an official SwinV2 /
SimMIM or a timm checkpoint (for those two, `model_overrides` gives what the file does not record,
e.g. `+model_overrides.window_size=8`). Prints `kNN top-1 <x>` (DINO's weighted cosine kNN, k=20,
T=0.07) and `linear probe top-1 <y>` (logistic regression on standardised features) of the encoder's
pooled features, fit on the data's train split and scored on its val split, both through the eval
transform at the model's size.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf, open_dict

from .config import ConfigError
from .config.checks import check_values, model_normalization
from .config.compose import command
from .data import build_eval_transform
from .data.views import ADD_VAL_SPLIT, eval_view, has_labels
from .inference import resolve_device
from .inference.probe import probe as probe_features
from .models import SwinV2Encoder, encoder_of
from .training.build import build_datasets
from .weights import load_model
from .weights.meta import set_normalization


def load_encoder(source, **overrides) -> SwinV2Encoder:
    """The encoder of whatever `source` holds (an encoder, SimMIM or a classifier), with the model's
    recorded input normalisation (`weights.meta.set_normalization`)."""
    model = load_model(source, **overrides)
    encoder = encoder_of(model)
    if getattr(model, "pixel_mean", None) is not None:
        set_normalization(encoder, model.pixel_mean, model.pixel_std)
    return encoder


def probe(cfg: DictConfig) -> dict[str, float]:
    """Load the encoder, build the train and val splits with the eval transform, run both probes;
    returns `{"knn_top1", "linear_top1", "train_samples", "val_samples", "seconds"}`."""
    check_values(cfg)
    overrides = (
        OmegaConf.to_container(cfg.model_overrides, resolve=True)
        if cfg.get("model_overrides")
        else {}
    )
    encoder = load_encoder(cfg.checkpoint, **overrides)
    size = cfg.img_size or encoder.cfg.img_size[0]
    with open_dict(cfg):
        cfg.img_size = size  # the data config renders images at ${img_size}
    if not (cfg.data.get("val") or cfg.data.get("val_root") or cfg.data.get("val_split")):
        raise ConfigError(
            f"the probes score on a validation split and this data source has none: {ADD_VAL_SPLIT}"
        )
    transform = build_eval_transform(size, cfg.crop_pct, *model_normalization(encoder, cfg.data))
    train, val = build_datasets(cfg.data, transform, transform)
    if val is None:  # a val node that builds nothing (data=hf without data.val_split)
        raise ConfigError(
            f"the probes score on a validation split and this data source has none: {ADD_VAL_SPLIT}"
        )
    train, val = eval_view(train, transform), eval_view(val, transform)
    if has_labels(train) is False or has_labels(val) is False:
        raise ConfigError(
            "the data is unlabelled (label -1): the probes need a labelled source (data=digits, a "
            "folder of class subfolders, ImageNet)"
        )
    device = resolve_device(cfg.device)
    result = probe_features(
        encoder,
        train,
        val,
        batch_size=cfg.batch_size,
        num_workers=cfg.num_workers,
        k=cfg.k,
        temperature=cfg.temperature,
        train_samples=cfg.train_samples,
        seed=cfg.seed,
        device=device,
        linear=cfg.linear,
    )
    print(
        f"{cfg.checkpoint}: {result['train_samples']} train / {result['val_samples']} val images "
        f"at {size} px, {result['seconds']:.1f} s"
    )
    print(f"kNN top-1 {result['knn_top1']:.4f}  (k={cfg.k}, T={cfg.temperature})")
    if "linear_top1" in result:
        print(f"linear probe top-1 {result['linear_top1']:.4f}")
    return result


@command("probe")
def main(cfg: DictConfig) -> None:
    probe(cfg)


if __name__ == "__main__":
    main()
