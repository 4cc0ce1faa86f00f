"""The training command's parts: recipes, the loop, evaluation, checkpoints and metrics."""

from minires.training.checkpoint import load_checkpoint, save_checkpoint
from minires.training.evaluate import EvalResult, evaluate
from minires.training.trainer import NonFiniteLossError, TrainConfig, Trainer

__all__ = ["EvalResult", "NonFiniteLossError", "TrainConfig", "Trainer", "evaluate", "load_checkpoint", "save_checkpoint"]
