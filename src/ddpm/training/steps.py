"""One training step's numbers: ``StepStats``, the statistics a step packs into one vector (one all_reduce, no
host sync), ``StepResult``, what ``Trainer.train_step`` returns, and the sums that make a row of metrics.csv."""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional, Union

import torch

from ..runtime import accumulator_dtype

__all__ = ["StepStats", "StepResult", "empty_log", "accumulate"]


def empty_log() -> Dict[str, Any]:
    """The accumulator of the rows of metrics.csv: sums since the last row (saved in checkpoints)."""
    return {"loss": 0.0, "grad_norm": 0.0, "n": 0, "quarters": [0.0] * 8}


class StepStats:
    """One step's statistics, packed in one vector (float64 where the device has it) so that processes sum them
    with one all_reduce and nothing waits for the device: the batch's mean loss, the sums and counts of the
    per-example loss in the four quarters of t (the log's loss by t), whether a process asks to stop, and (for the
    importance sampler) each example's loss by its position in the global batch."""

    LOSS, SUMS, COUNTS, STOP, LOSSES = 0, slice(1, 5), slice(5, 9), 9, 10  # where each lives in ``vector``

    def __init__(self, per_example: int, device: torch.device):
        self.dtype = accumulator_dtype(device)
        self.vector = torch.zeros(self.LOSSES + per_example, dtype=self.dtype, device=device)

    def add_quarters(self, t: torch.Tensor, per_example: torch.Tensor, T: int) -> None:
        quarter = (t * 4 // T).clamp(max=3)
        self.vector[self.SUMS].index_add_(0, quarter, per_example.detach().to(self.dtype))
        self.vector[self.COUNTS].index_add_(0, quarter, torch.ones_like(per_example, dtype=self.dtype))

    def set_losses(self, positions: range, per_example: torch.Tensor) -> None:
        self.vector[self.LOSSES + positions.start:self.LOSSES + positions.stop] = per_example.detach().to(self.dtype)

    def add_loss(self, loss: torch.Tensor, weight: float) -> None:
        self.vector[self.LOSS] += loss.detach().to(self.dtype) * weight

    @property
    def loss(self) -> torch.Tensor:
        return self.vector[self.LOSS]

    @property
    def quarters(self) -> torch.Tensor:
        """The per-quarter sums, then the counts ([8])."""
        return self.vector[self.SUMS.start:self.COUNTS.stop]

    @property
    def stop(self) -> torch.Tensor:
        return self.vector[self.STOP]

    @property
    def losses(self) -> torch.Tensor:
        return self.vector[self.LOSSES:]


@dataclasses.dataclass
class StepResult:
    """What ``train_step`` returns. ``loss`` and ``grad_norm`` are tensors on the training device (NaN floats for a
    skipped step) and ``quarters`` the per-quarter sums and counts (``StepStats.quarters``), so that only reading
    them waits for the device: ``numbers()`` reads them all at once."""

    loss: Union[torch.Tensor, float]
    grad_norm: Union[torch.Tensor, float]
    lr: float
    quarters: Optional[torch.Tensor]
    skipped: bool = False

    def numbers(self) -> Dict[str, Any]:
        """loss, grad_norm, lr, quarters (a list of 8, or None) and skipped, as Python numbers."""
        def read(v: Any) -> Any:
            return (v.tolist() if v.ndim else v.item()) if isinstance(v, torch.Tensor) else v

        return {f.name: read(getattr(self, f.name)) for f in dataclasses.fields(self)}


def accumulate(acc: Dict[str, Any], out: StepResult) -> Dict[str, Any]:
    """``acc`` plus a step's numbers, on the device (float64, the sums a row is made of)."""
    loss, grad, quarters = out.loss, out.grad_norm, out.quarters
    assert isinstance(grad, torch.Tensor) and quarters is not None  # a step that was not skipped
    grad = torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)  # an fp16 overflow: the scaler skipped it
    q = acc["quarters"]
    return {"loss": acc["loss"] + loss, "grad_norm": acc["grad_norm"] + grad, "n": acc["n"] + 1,
            "quarters": quarters + (q if isinstance(q, torch.Tensor) else quarters.new_tensor(q))}
