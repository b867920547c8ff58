"""The run directory (config.json, checkpoints, the lock, metrics.csv, the best checkpoint and named weights) and
which files ddpm owns and may replace."""

from .directory import (
                        IMPORTED_DATA,
                        Checkpoint,
                        checkpoint_step,
                        is_run,
                        list_checkpoints,
                        load_checkpoint,
                        read_config,
                        run_lock,
                        save_checkpoint,
                        write_config,
)
from .metrics import MetricsLog, read_metrics
from .weights import load_run, read_best

__all__ = ["Checkpoint", "save_checkpoint", "load_checkpoint", "list_checkpoints", "checkpoint_step", "read_config",
           "write_config", "is_run", "run_lock", "MetricsLog", "read_metrics", "IMPORTED_DATA", "load_run",
           "read_best"]
