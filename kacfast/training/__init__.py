"""Training: one loop (kacfast.training.loop.train) for the Kac teacher and the EDM / DDPM baselines."""
from kacfast.training.checkpoint import (CheckpointError, export_weights, read_checkpoint, restore,
                                         save_checkpoint)
from kacfast.training.loop import ExecutionConfig, TrainConfig, close_distributed, train
from kacfast.training.objectives import DDPMObjective, EDMObjective, KacObjective

__all__ = ["TrainConfig", "ExecutionConfig", "train", "close_distributed", "KacObjective",
           "EDMObjective", "DDPMObjective", "save_checkpoint", "restore", "read_checkpoint",
           "CheckpointError", "export_weights"]
