"""The run directory (config.json, checkpoints, the lock, metrics.csv) and which files ddpm owns and may
replace."""

from .directory import (
                        IMPORTED_DATA,
                        Checkpoint,
                        MetricsLog,
                        checkpoint_step,
                        is_run,
                        list_checkpoints,
                        load_checkpoint,
                        read_config,
                        read_metrics,
                        run_lock,
                        save_checkpoint,
                        write_config,
)

__all__ = ["Checkpoint", "save_checkpoint", "load_checkpoint", "list_checkpoints", "checkpoint_step", "read_config",
           "write_config", "is_run", "run_lock", "MetricsLog", "read_metrics", "IMPORTED_DATA"]
