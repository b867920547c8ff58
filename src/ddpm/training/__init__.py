"""Training: the Trainer (Algorithm 1 with EMA, warm-up, clipping, mixed precision, DDP), ``train_run`` with
its run directory, fine-tuning from another run or a diffusers UNet, and the training reporter."""

from .train import TrainResult, plan_run, train_run
from .trainer import Trainer, learning_rate

__all__ = ["Trainer", "learning_rate", "train_run", "plan_run", "TrainResult"]
