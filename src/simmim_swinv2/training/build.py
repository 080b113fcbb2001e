"""What the entry points build from a composed config: datasets first (a bad data root fails before
a model is built), the datamodule, loggers (wandb offline without credentials), the Trainer with
atomic checkpoints, resume."""

from __future__ import annotations

import json
import logging
import netrc
import os
import warnings
from pathlib import Path

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from omegaconf import DictConfig, OmegaConf

from .. import ConfigError
from ..data import SimMIMDataModule
from ..data.listing_shared import is_first_process
from ..data.views import ADD_VAL_SPLIT, hold_out
from ..distributed import planning
from ..distributed.disk import short_of_disk
from ..distributed.grad_norm import GradNorm
from ..distributed.strategy import check_resume
from ..weights import AtomicCheckpointIO, find_resume_checkpoint
from . import provenance
from .bad_samples import BadSampleMonitor
from .callbacks import RNGState


def build_datasets(data, train_transform, val_transform):
    """The train and validation splits (val None when the source has none), built now, so a missing
    root or empty folder fails before a model is built. `data`: a data source's typed config
    (`config.schema.DataConfig` and its kin), whose `train` / `val` are its builder's typed
    `_target_` nodes.

    The validation split is the source's `val` node, else, for image folders, `val_root` built with
    the train node's settings (`data=folder data.root=/data/train data.val_root=/data/val`), else,
    with `data.val_split`, a fixed fraction of the training samples (`data.views.hold_out`, seeded
    by `data.val_split_seed`), which training then never sees. A builder that takes `val_split`
    itself (`data.build_hf`: a split's name, or a fraction through `datasets`' `train_test_split`)
    makes both parts in its `train` and `val` nodes."""
    train = instantiate(data.train, transform=train_transform)
    val = _build_val(data, val_transform)
    if len(train) == 0:
        raise ConfigError("the training set is empty: check data.root / data.urls")
    fraction = _get(data, "val_split")
    # data=hf's builder splits its own data
    if fraction is not None and _get(data.train, "val_split") is None:
        if val is not None:
            raise ConfigError(
                f"data.val_split={fraction} holds training images out only when the source has no "
                "validation split, and this one has (data.val / data.val_root): drop one of them"
            )
        try:
            train, val = hold_out(train, fraction, _get(data, "val_split_seed") or 0, val_transform)
        except ValueError as err:
            raise ConfigError(f"data.val_split={fraction}: {err}") from err
    return train, val


def _get(data, key: str):
    return data.get(key) if isinstance(data, dict) else getattr(data, key, None)


def _build_val(data, transform):
    if data.val is not None:
        return instantiate(data.val, transform=transform)
    if val_root := _get(data, "val_root"):
        return instantiate(data.train, root=val_root, transform=transform)
    return None


def build_datamodule(
    train, val, *, batch_size: int, num_workers: int, seed: int, validate_only: bool = False
) -> SimMIMDataModule:
    """The loaders' module. For training, refuses a training set smaller than one batch (the partial
    batch is dropped, so the run would train on nothing)."""
    if not validate_only and len(train) < batch_size:
        raise ConfigError(
            f"the training set has {len(train)} images, fewer than one batch (batch_size="
            f"{batch_size}, the last partial batch is dropped): set batch_size={len(train)} or less"
        )
    return SimMIMDataModule(
        train=train, val=val, batch_size=batch_size, num_workers=num_workers, seed=seed
    )


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
                rank_zero_info(
                    "wandb: no credentials found, logging offline (sync later with `wandb sync`)"
                )
        loggers.append(instantiate(node, **kwargs))
    return loggers


def _not_an_advert(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("💡 Tip:")  # Lightning's offers of its cloud products


def quiet_library_notices() -> None:
    """Drop what a run's log cannot act on: Lightning's tips for its cloud products, and torch's
    deprecation of a pytree class that Lightning 2.6 itself still uses (`LeafSpec`)."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if _not_an_advert not in logger.filters:
            logger.addFilter(_not_an_advert)
    warnings.filterwarnings(
        "ignore",
        message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        category=FutureWarning,
    )


def build_trainer(
    cfg: DictConfig, callbacks: list | None = None, resume: str | None = None
) -> L.Trainer:
    """The Trainer of `cfg.trainer`, with our callbacks and plugins. `resume`: the checkpoint `fit`
    will resume from, checked against the strategy first (`distributed.strategy.check_resume`)."""
    quiet_library_notices()
    strategy = cfg.trainer.get("strategy")
    if OmegaConf.is_dict(strategy):  # built here to be checked, then handed to the Trainer
        strategy = instantiate(strategy)
    check_resume(strategy, resume)
    loggers = build_loggers(cfg)
    nodes = (cfg.get("callbacks") or {}).values()
    callbacks = [instantiate(c) for c in nodes if c is not None and "_target_" in c] + (
        callbacks or []
    )
    if not loggers:  # nothing to monitor into
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    callbacks.append(RNGState())
    # judging the data, the gradient norm: never optional
    for always in (BadSampleMonitor, GradNorm):
        if not any(isinstance(c, always) for c in callbacks):
            callbacks.append(always())
    # those that report on the others' work last (Lightning calls them in order; checkpoints follow)
    callbacks.sort(key=lambda c: getattr(c, "report_last", False))
    # Checkpoint files written whole (unused by a strategy that writes its own sharded directories)
    plugins = [AtomicCheckpointIO()]
    # under srun; SIGUSR1 (sbatch --signal) is the Preemption callback's, whose
    if SLURMEnvironment.detect():
        # save is collective-safe (Lightning's is not)
        plugins.append(SLURMEnvironment(auto_requeue=False))
    return instantiate(
        cfg.trainer,
        strategy=strategy,
        callbacks=callbacks,
        logger=loggers or False,
        plugins=plugins,
    )


def check_disk(cfg: DictConfig, model) -> None:
    """Warn (rank 0) when the checkpoints the run's callbacks keep may outgrow the free space of
    the run directory's file system (`distributed.disk.short_of_disk`); `model`: what is saved."""
    plan = planning.checkpoints_of(cfg, sum(p.numel() for p in model.parameters()))
    message = short_of_disk(plan, cfg.paths.run_dir)
    if message:
        rank_zero_warn(message)


def resume_path(resume: str, run_dir: str | Path) -> str | None:
    """`resume=auto`: the newest checkpoint in the run directory, if any; `never`; or an explicit
    path."""
    if resume == "never":
        return None
    if resume != "auto":
        return str(resume)
    ckpt = find_resume_checkpoint(run_dir)  # including a SLURM requeue's hpc_ckpt_<n>.ckpt
    if ckpt is not None:
        rank_zero_info(f"resuming from {ckpt} (resume=auto; pass resume=never to start afresh)")
    return str(ckpt) if ckpt else None


def record_start(run_dir: str | Path) -> None:
    """Append this start (`provenance.start_record`: code, libraries, devices, the command line's
    overrides) to `<run_dir>/starts.jsonl` and print its short form; on the first process only."""
    if not is_first_process():  # before Lightning's ranks: torchrun, srun, its own launcher
        return
    try:
        overrides = list(HydraConfig.get().overrides.task)
    except ValueError:  # composed outside a command
        overrides = None
    record = provenance.start_record(overrides)
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    with open(Path(run_dir) / "starts.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
    rank_zero_info(provenance.summary(record))


def save_resolved_config(cfg: DictConfig, run_dir: str | Path) -> None:
    if is_first_process():
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        (Path(run_dir) / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))


__all__ = [
    "ADD_VAL_SPLIT",
    "build_datamodule",
    "build_datasets",
    "build_loggers",
    "build_trainer",
    "check_disk",
    "resume_path",
    "record_start",
    "save_resolved_config",
]
