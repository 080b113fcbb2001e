"""LightningModules for pretraining and fine-tuning. They receive built objects and typed values, never the
Hydra config."""

from .base import OptimizerSpec, ScheduleSpec, TrainTask
from .finetune import FinetuneTask
from .pretrain import PretrainTask

__all__ = ["FinetuneTask", "OptimizerSpec", "PretrainTask", "ScheduleSpec", "TrainTask"]
