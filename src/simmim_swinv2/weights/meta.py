"""What rebuilds one of our models without Hydra: its kind, its encoder config, its labels. Written
into every checkpoint of ours (`checkpoint["simmim_swinv2"]`, by the training task) and beside our
safetensors (`<name>.json`, by `save_model`), read back by `load_model`; the importers of foreign
formats build through it too.

    meta = ModelMeta.of(model)              # from a model
    d = meta.to_dict()                      # plain types: JSON, and torch.load(weights_only=True)
    model = ModelMeta.from_dict(d).load(state_dict, "what it came from")
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..models import SimMIM, SwinV2Classifier, SwinV2Config, SwinV2Encoder, encoder_of

Model = SwinV2Encoder | SimMIM | SwinV2Classifier  # any of our models
KINDS: dict[str, type[Model]] = {
    cls.__name__: cls for cls in (SwinV2Encoder, SimMIM, SwinV2Classifier)
}
# Buffers every model rebuilds from its config (position tables, masks, the zero k bias): never
# required in a state dict, and left out of our exports.
BUFFERS = ("relative_position_index", "relative_coords_table", "attn_mask", "k_bias")
# where our tasks put `ModelMeta.to_dict()` in a Lightning checkpoint
CHECKPOINT_KEY = "simmim_swinv2"
_SIMMIM_DEFAULTS = {"norm_target": False, "norm_target_window": 47}
# data.transforms' (no data import here)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def set_normalization(model: torch.nn.Module, mean, std) -> None:
    """Record on `model` the per-channel `mean` / `std` its inputs were normalised with (`data.mean`
    / `data.std`): `ModelMeta` carries them into checkpoints and exports, `predict`, `visualize` and
    the kNN monitor read them.

    Args:
        model: any of our models; set in place as `pixel_mean` / `pixel_std`.
        mean, std: one value per input channel.
    """
    model.pixel_mean = tuple(float(m) for m in mean)
    model.pixel_std = tuple(float(s) for s in std)


def normalization(model: torch.nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The normalisation a model was trained with: recorded (`set_normalization`), else ImageNet's
    for 3 channels.

    Args:
        model: any of our models.

    Returns:
        `(mean, std)`, one float per channel. A model of another channel count without a record
        is refused (`ValueError`): its inputs' statistics are unknown.
    """
    mean, std = getattr(model, "pixel_mean", None), getattr(model, "pixel_std", None)
    if mean is not None and std is not None:
        return tuple(mean), tuple(std)
    channels = encoder_of(model).cfg.in_chans
    if channels != 3:
        raise ValueError(
            f"the model takes {channels} channels but records no normalisation (data.mean / "
            "data.std): load it from a checkpoint of ours, or set them with "
            "weights.meta.set_normalization"
        )
    return IMAGENET_MEAN, IMAGENET_STD


@dataclass(frozen=True)
class ModelMeta:
    """What rebuilds one of our models: written into our checkpoints and beside our safetensors.

    Args:
        kind: one of `KINDS` (`SwinV2Encoder`, `SimMIM`, `SwinV2Classifier`).
        config: the encoder's `SwinV2Config`.
        num_classes, id2label: a classifier's (labels None: transformers' `LABEL_<i>`;
            `num_classes` None: `len(id2label)`).
        norm_target, norm_target_window: SimMIM's (its loss's target normalisation).
        mean, std: the input normalisation (`set_normalization`); None: not recorded.
    """

    kind: str
    config: SwinV2Config
    num_classes: int | None = None
    id2label: dict[int, str] | None = None
    norm_target: bool = False
    norm_target_window: int = 47
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"model kind {self.kind!r} is not one of {sorted(KINDS)}")
        if self.kind == "SwinV2Classifier" and self.num_classes is None:
            if self.id2label is None:
                raise ValueError("a SwinV2Classifier's description needs num_classes or id2label")
            object.__setattr__(self, "num_classes", len(self.id2label))

    @classmethod
    def of(cls, model: Model) -> ModelMeta:
        """The description of a model.

        Args:
            model: a bare `SwinV2Encoder`, `SimMIM` or `SwinV2Classifier`.

        Returns:
            Its `ModelMeta` (normalisation included when recorded on it).
        """
        kind = type(model).__name__
        if kind not in KINDS:
            raise TypeError(f"{kind} is not one of our models ({sorted(KINDS)})")
        extra: dict = {}
        if isinstance(model, SwinV2Classifier):
            extra = {"num_classes": model.num_classes, "id2label": dict(model.id2label)}
        elif isinstance(model, SimMIM):
            extra = {
                "norm_target": bool(model.norm_target),
                "norm_target_window": int(model.norm_target_window),
            }
        if getattr(model, "pixel_mean", None) is not None:
            extra.update(mean=tuple(model.pixel_mean), std=tuple(model.pixel_std))
        return cls(kind, encoder_of(model).cfg, **extra)

    def to_dict(self) -> dict:
        """The description in plain types only (str, int, float, bool, tuples, dicts):
        `torch.load(weights_only=True)` and JSON read it.

        Returns:
            `{"kind", "config", ...}` with `id2label` (int keys; JSON turns them into strings,
            which `from_dict` reads back) for a classifier, `norm_target*` for SimMIM, `mean` /
            `std` when recorded.
        """
        out: dict = {"kind": self.kind, "config": self.config.to_dict()}
        if self.kind == "SwinV2Classifier":
            out["id2label"] = dict(
                self.id2label or {i: f"LABEL_{i}" for i in range(self.num_classes)}
            )
        elif self.kind == "SimMIM":
            out.update(norm_target=self.norm_target, norm_target_window=self.norm_target_window)
        if self.mean is not None:
            out.update(mean=tuple(self.mean), std=tuple(self.std))
        return out

    @classmethod
    def from_dict(cls, d: dict, source: object = "model description") -> ModelMeta:
        """Inverse of `to_dict`, for both of its forms: checkpoints' (tuples, int label keys) and
        JSON's (lists, string label keys).

        Args:
            d: the description. Without SimMIM's `norm_target*` the target is off (the default);
                config fields it lacks (e.g. `attn_backend`) take their defaults.
            source: what names it in errors.

        Returns:
            The `ModelMeta`; anything that is not a description of ours raises `ValueError`.
        """
        if not isinstance(d, dict) or "kind" not in d or "config" not in d:
            raise ValueError(
                f"{source}: not a model description of ours (a dict with `kind` and `config`), got "
                f"{type(d).__name__}{' with keys ' + str(sorted(d)) if isinstance(d, dict) else ''}"
            )
        unknown = set(d) - {"kind", "config", "id2label", "mean", "std", *_SIMMIM_DEFAULTS}
        if unknown:
            raise ValueError(f"{source}: unknown model description keys {sorted(unknown)}")
        kind = d["kind"]
        if kind == "SwinV2Classifier" and not d.get("id2label"):
            raise ValueError(f"{source}: a SwinV2Classifier's description without id2label")
        id2label = (
            {int(k): str(v) for k, v in d["id2label"].items()}
            if kind == "SwinV2Classifier"
            else None
        )
        simmim = {k: d.get(k, v) for k, v in _SIMMIM_DEFAULTS.items()} if kind == "SimMIM" else {}
        if d.get("mean") is not None:
            simmim.update(
                mean=tuple(float(m) for m in d["mean"]), std=tuple(float(s) for s in d["std"])
            )
        try:
            return cls(kind, SwinV2Config.from_dict(dict(d["config"])), id2label=id2label, **simmim)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{source}: bad model description: {err}") from err

    def build(self) -> Model:
        """The model this describes, freshly initialised.

        Returns:
            A `SwinV2Encoder`, `SimMIM` or `SwinV2Classifier`, its normalisation recorded on it
            (`set_normalization`) when this has one.
        """
        encoder = SwinV2Encoder(self.config)
        if self.kind == "SwinV2Classifier":
            model = SwinV2Classifier(encoder, self.num_classes, id2label=self.id2label)
        elif self.kind == "SimMIM":
            model = SimMIM(
                encoder, norm_target=self.norm_target, norm_target_window=self.norm_target_window
            )
        else:
            model = encoder
        if self.mean is not None:
            set_normalization(model, self.mean, self.std)
        return model

    def load(self, state_dict: dict[str, torch.Tensor], source: object) -> Model:
        """`build()` with weights loaded strictly.

        Args:
            state_dict: every parameter of the model (rebuilt `BUFFERS` may be missing) and
                nothing else.
            source: what names the weights in errors (`ValueError`).

        Returns:
            The model.
        """
        try:
            model = self.build()
        except ValueError as err:  # a description no model fits (e.g. SimMIM without a mask token)
            raise ValueError(f"{source}: cannot build the {self.kind} it describes: {err}") from err
        load_strict(model, state_dict, source)
        return model


def load_strict(
    module: torch.nn.Module, state_dict: dict[str, torch.Tensor], source: object
) -> None:
    """`module.load_state_dict` that tolerates missing rebuilt `BUFFERS` only, and says what did not
    fit."""
    result = module.load_state_dict(state_dict, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith(BUFFERS)]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"{source}: the weights do not match the model ({type(module).__name__}): missing keys "
            f"{missing[:8]}, unexpected keys {list(result.unexpected_keys)[:8]}"
        )
