"""Training: one loop (kacfast.training.loop.train) for the Kac teacher and the EDM / DDPM baselines.
Reading, loading and exporting trained models is inference I/O: kacfast.checkpoints."""
from kacfast.training.checkpoint import restore, save_checkpoint
from kacfast.training.loop import ExecutionConfig, RunConfig, TrainConfig, close_distributed, train
from kacfast.training.objectives import DDPMObjective, EDMObjective, KacObjective, Objective

__all__ = ["TrainConfig", "RunConfig", "ExecutionConfig", "train", "close_distributed", "Objective", "KacObjective",
           "EDMObjective", "DDPMObjective", "save_checkpoint", "restore"]
