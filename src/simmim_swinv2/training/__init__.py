"""Training: the LightningModules for pretraining and fine-tuning (`base`, `pretrain`, `finetune`), their callbacks
(`callbacks`, `preemption`, `bad_samples`), optimisation (`optim`), loggers, and what builds them all from a
composed config (`build`). The tasks receive built objects and typed values, never the Hydra config."""

from .base import OptimizerSpec, ScheduleSpec, TrainTask
from .finetune import FinetuneTask
from .pretrain import PretrainTask

__all__ = ["FinetuneTask", "OptimizerSpec", "PretrainTask", "ScheduleSpec", "TrainTask"]
