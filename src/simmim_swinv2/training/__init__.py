"""Training: the LightningModules for pretraining and fine-tuning (`base`, `pretrain`, `finetune`),
their callbacks (`callbacks`, `preemption`, `bad_samples`, `stability`, `numerics`, `throughput`),
optimisation (`optim`), loggers, and what builds them all from a composed config (`build`). The
tasks receive built objects and typed values, never the Hydra config."""

from .base import TrainTask
from .finetune import FinetuneTask
from .optim import OptimConfig, ScheduleConfig
from .pretrain import PretrainTask

__all__ = ["FinetuneTask", "OptimConfig", "PretrainTask", "ScheduleConfig", "TrainTask"]
