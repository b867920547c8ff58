"""Typed run configuration, the one table of presets, and the rules for changing a run's config.

A run is ``RunConfig(preset, model=UNetConfig, diffusion=DiffusionConfig, train=TrainConfig)``, saved as
``RUN/config.json``. The fields' metadata (help text, choices) is what the CLI turns into flags, so every
option is spelled once. Each preset brings a network, a training recipe and diffusion defaults: the
paper's for ``cifar10`` / ``celebahq256`` (Appendix B), a CPU-tuned one for the ``mnist`` demo, a
smoke-test one for ``tiny``.
"""

from .fields import (
    DATA_OPTIONS,
    EVAL_SAMPLERS,
    PRECISIONS,
    RESIZES,
    TRAIN_GROUPS,
    DiffusionConfig,
    TrainConfig,
    UNetConfig,
    flag,
    profiles,
)
from .presets import PRESETS, Preset, RunConfig, check_outputs, make_run_config, overlay, with_classes

__all__ = ["UNetConfig", "DiffusionConfig", "TrainConfig", "RunConfig", "Preset", "PRESETS", "make_run_config",
           "with_classes", "overlay", "DATA_OPTIONS", "RESIZES", "PRECISIONS",
           "flag", "check_outputs", "TRAIN_GROUPS", "EVAL_SAMPLERS", "profiles"]
