"""Training: optimizer and schedule, the step loop, checkpoints and resume, metrics and progress."""

from zoo.training.loop import TrainConfig, train

__all__ = ["TrainConfig", "train"]
