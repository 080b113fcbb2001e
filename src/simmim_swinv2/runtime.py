"""What the entry points share: config checks before any work, datasets first (a bad data root fails before a
model is built), loggers (wandb offline without credentials), the Trainer with atomic checkpoints, resume."""

from __future__ import annotations

import netrc
import os
from pathlib import Path

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities import rank_zero_info
from omegaconf import DictConfig, OmegaConf

from .checkpoint import AtomicCheckpointIO, find_resume_checkpoint, is_universal_checkpoint
from .data import SimMIMDataModule
from .tasks.bad_samples import BadSampleMonitor
from .tasks.callbacks import RNGState

CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "conf")


class ConfigError(ValueError):
    """A configuration that cannot work, found before any work starts."""


def model_config(cfg: DictConfig):
    """The model's `SwinV2Config`; it validates itself (sizes against the encoder stride, heads, windows), and
    its complaint comes back as a ConfigError before any work starts."""
    try:
        return instantiate(cfg.model)
    except Exception as err:  # hydra wraps the ValueError; its message names the problem and the fix
        raise ConfigError(f"{err.__cause__ or err}") from err


def check_pretrain_config(cfg: DictConfig) -> None:
    """Fail fast, naming the fix, on what would only break later (after data loading or model building)."""
    model = model_config(cfg)
    try:  # MaskGenerator validates itself (divisibility, ratio)
        instantiate(cfg.mask)
    except Exception as err:
        raise ConfigError(f"{err.__cause__ or err}") from err
    if cfg.mask.input_size != cfg.img_size:
        raise ConfigError(f"mask.input_size={cfg.mask.input_size} differs from img_size={cfg.img_size}: "
                          "leave mask.input_size as ${img_size}")
    if cfg.mask.model_patch_size != model.patch_size:
        raise ConfigError(f"mask.model_patch_size={cfg.mask.model_patch_size} must equal the model's patch size "
                          f"({model.patch_size})")
    if cfg.batch_size < 1:
        raise ConfigError(f"batch_size={cfg.batch_size} must be >= 1 (it is per device)")
    if cfg.resume not in ("auto", "never") and not Path(cfg.resume).exists():
        raise ConfigError(f"resume={cfg.resume}: no such checkpoint; use auto, never or an existing path")


def build_datasets(data_cfg: DictConfig, train_transform, val_transform):
    """Build train (and val, when configured) now, so a missing root or empty folder fails before a model is
    built."""
    train = instantiate(data_cfg.train, transform=train_transform)
    val = instantiate(data_cfg.val, transform=val_transform) if data_cfg.get("val") else None
    if len(train) == 0:
        raise ConfigError("the training set is empty: check data.root / data.urls")
    return train, val


def build_datamodule(cfg: DictConfig, train, val) -> SimMIMDataModule:
    return SimMIMDataModule(train=train, val=val, batch_size=cfg.batch_size, num_workers=cfg.num_workers,
                            seed=cfg.seed)


def _wandb_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def build_loggers(cfg: DictConfig) -> list:
    loggers = []
    for name, node in (cfg.get("logger") or {}).items():
        if node is None or "_target_" not in node:
            continue
        kwargs = {}
        if name == "wandb" and node.get("offline") is None:
            kwargs["offline"] = not _wandb_credentials()
            if kwargs["offline"]:
                rank_zero_info("wandb: no credentials found, logging offline (sync later with `wandb sync`)")
        loggers.append(instantiate(node, **kwargs))
    return loggers


def build_trainer(cfg: DictConfig, callbacks: list | None = None, resume: str | None = None) -> L.Trainer:
    """The Trainer of `cfg.trainer`, with our callbacks and plugins. `resume`: the checkpoint `fit` will resume
    from; a universal one (`simmim_swinv2.reshard`) turns on DeepSpeed's `load_universal`."""
    trainer_cfg = cfg.trainer
    deepspeed = "deepspeed" in str(trainer_cfg.get("strategy", "")).lower()
    if resume is not None and is_universal_checkpoint(resume):
        if not deepspeed:
            raise ConfigError(f"{resume} is a DeepSpeed universal checkpoint: resume it with a DeepSpeed trainer "
                              "(trainer=deepspeed_zero1/2/3)")
        trainer_cfg = OmegaConf.to_container(trainer_cfg, resolve=True)
        ds_config = trainer_cfg["strategy"].setdefault("config", {})
        if ds_config.get("zero_optimization", {}).get("stage") == 3:
            from .reshard import STAGE3_PROBLEM

            raise ConfigError(f"resuming the universal checkpoint {resume} under ZeRO-3 is refused: {STAGE3_PROBLEM}. "
                              "Resume it with trainer=deepspeed_zero2 (or deepspeed_zero1)")
        ds_config.setdefault("checkpoint", {})["load_universal"] = True
        trainer_cfg = OmegaConf.create(trainer_cfg)
    loggers = build_loggers(cfg)
    nodes = (cfg.get("callbacks") or {}).values()
    callbacks = [instantiate(c) for c in nodes if c is not None and "_target_" in c] + (callbacks or [])
    if not loggers:  # nothing to monitor into
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    callbacks.append(RNGState())
    if not any(isinstance(c, BadSampleMonitor) for c in callbacks):  # judging the data is never optional
        callbacks.append(BadSampleMonitor())
    plugins = []
    if not deepspeed:
        plugins.append(AtomicCheckpointIO())
    else:  # DeepSpeed writes its own sharded checkpoints (no CheckpointIO); check the world size on resume
        from .strategies import ZeroResumeGuard

        callbacks.append(ZeroResumeGuard())
    if SLURMEnvironment.detect():  # under srun; SIGUSR1 (sbatch --signal) is the Preemption callback's, whose
        plugins.append(SLURMEnvironment(auto_requeue=False))  # save is collective-safe (Lightning's is not)
    return instantiate(trainer_cfg, callbacks=callbacks, logger=loggers or False, plugins=plugins)


def resume_path(cfg: DictConfig, run_dir: str | Path) -> str | None:
    """`resume=auto`: the newest checkpoint in the run directory, if any; `never`; or an explicit path."""
    if cfg.resume == "never":
        return None
    if cfg.resume != "auto":
        return str(cfg.resume)
    ckpt = find_resume_checkpoint(run_dir)  # including a SLURM requeue's hpc_ckpt_<n>.ckpt
    if ckpt is not None:
        rank_zero_info(f"resuming from {ckpt} (resume=auto; pass resume=never to start afresh)")
    return str(ckpt) if ckpt else None


def save_resolved_config(cfg: DictConfig, run_dir: str | Path) -> None:
    if int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", 0))) == 0:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        (Path(run_dir) / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))


def specs(cfg: DictConfig):
    from .tasks import OptimizerSpec, ScheduleSpec

    optim = OmegaConf.to_container(cfg.optim, resolve=True)
    optim["betas"] = tuple(optim["betas"])
    return OptimizerSpec(**optim), ScheduleSpec(**OmegaConf.to_container(cfg.scheduler, resolve=True))


__all__ = ["CONFIG_DIR", "ConfigError", "build_datamodule", "build_datasets", "build_trainer", "model_config",
           "resume_path", "save_resolved_config", "specs"]
