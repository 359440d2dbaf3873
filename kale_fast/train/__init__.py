"""The thin KALE training loop: configs, the public KALE steps, the loop with atomic checkpoints and resume,
evaluation."""
from kale_fast.train.checkpoints import load_run
from kale_fast.train.config import TrainConfig
from kale_fast.train.evaluate import evaluate
from kale_fast.train.loop import Trainer, train
from kale_fast.train.steps import KALETrainer, kale_base_step, kale_energy_step

__all__ = ["KALETrainer", "TrainConfig", "Trainer", "evaluate", "kale_base_step", "kale_energy_step", "load_run",
           "train"]
