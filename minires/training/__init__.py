"""The training command's parts, a file each: settings (config), recipes, data (loaders), optimizer and schedule
(optimization), Ctrl-C handling (interrupt), the loop (trainer), evaluation, checkpoints and metrics."""

from minires.training.checkpoint import load_checkpoint, save_checkpoint
from minires.training.config import TrainConfig
from minires.training.evaluate import EvalResult, evaluate
from minires.training.trainer import NonFiniteLossError, Trainer

__all__ = ["EvalResult", "NonFiniteLossError", "TrainConfig", "Trainer", "evaluate", "load_checkpoint", "save_checkpoint"]
