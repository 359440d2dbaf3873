"""The thin KALE training loop: configs, the loop with atomic checkpoints and resume, evaluation."""
from kale_fast.train.checkpoints import load_run
from kale_fast.train.config import TrainConfig
from kale_fast.train.evaluate import evaluate
from kale_fast.train.loop import Trainer, train

__all__ = ["TrainConfig", "Trainer", "evaluate", "load_run", "train"]
