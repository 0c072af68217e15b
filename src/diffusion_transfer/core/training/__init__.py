"""The shared training loop."""

from .loop import NonFiniteLossError, TrainConfig, TrainResult, checkpoint_paths, train

__all__ = ["NonFiniteLossError", "TrainConfig", "TrainResult", "checkpoint_paths", "train"]
