"""Rate and distortion along the reverse process (Sec. 4.3, Table 4, Fig. 5 of Ho et al. 2020).

At reverse step k = 1..T the receiver of Algorithm 3 holds x_t (t = T - k + 1). The *rate* is what it has been
sent so far, in bits/dim: the prior term L_T and the KL terms L_{T-1} .. L_t of the bound. The *distortion* is the
root mean squared error, on the 0-255 scale, between the image x0 and x0_hat = (x_t - sqrt(1 - abar_t) eps_theta) /
sqrt(abar_t) predicted from x_t. After the last step, the decoder term L_0 is the distortion in bits/dim: the rate
at step T plus L_0 is the bound (bits/dim). ``rd_summary`` turns a ``bpd_report(..., rate_distortion=True)`` into
the figures, ``rd_table`` into the paper's ten rows, ``write_rd_report`` into rd.json and rd.png.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from ..viz import plot_rate_distortion

__all__ = ["PAPER_TABLE4", "rd_summary", "rd_table", "write_rd_report", "table_steps"]

# Table 4 of the paper (CIFAR-10 test set, its Fig. 5): rate in bits/dim and RMSE (0-255) at every 100th reverse
# step; the bound there is 3.75 bits/dim = rate 1.78 + distortion 1.97.
PAPER_TABLE4: Dict[str, List[float]] = {
    "reverse_steps": [100, 200, 300, 400, 500, 600, 700, 800, 900, 1000],
    "rate": [0.00000, 0.00013, 0.00081, 0.00282, 0.00716, 0.01507, 0.02866, 0.05415, 0.11994, 1.77581],
    "rmse": [67.60, 60.97, 54.19, 46.13, 38.03, 30.81, 24.44, 18.47, 12.02, 0.95],
}
PAPER_DISTORTION_BPD = 1.97


def table_steps(T: int) -> List[int]:
    """The reverse steps of the ten-row table: every tenth of the chain (100, 200, ..., 1000 for T = 1000)."""
    return sorted({max(1, round(T * j / 10)) for j in range(1, 11)})


def rd_summary(r: Dict[str, Any], *, paper: bool = False) -> Dict[str, Any]:
    """rd.json's content from a ``bpd_report`` made with ``rate_distortion``: the mean rate (bits/dim) and the RMSE
    over all images' pixels (0-255) at every reverse step 1..T, the distortion L_0 in bits/dim, the bound, where
    the rate is spent, every setting of the report; ``paper``: Table 4 beside (a CIFAR-10 run)."""
    rates, rmses = r["rates"], r["rmses"]
    T = rates.shape[1]
    rate, rmse = rates.mean(0), np.sqrt((rmses ** 2).mean(0))
    steps = table_steps(T)
    last_tenth = rate[-1] - rate[T - max(1, T // 10) - 1] if T >= 10 else float("nan")
    settings = {k: v for k, v in r.items() if k not in ("terms", "priors", "totals", "rates", "rmses")}
    return {**settings, "reverse_steps": list(range(1, T + 1)), "rate_bpd": rate.tolist(), "rmse": rmse.tolist(),
            "distortion_bpd": float(r["terms"][:, 0].mean()), "total_bpd": float(r["totals"].mean()),
            "rate_final_bpd": float(rate[-1]), "rmse_final": float(rmse[-1]),
            "rate_share_last_tenth": float(last_tenth / rate[-1]) if rate[-1] > 0 else float("nan"),
            "rmse_definition": "root of the mean squared error over every pixel of the n images, 0-255 scale",
            "table": [{"reverse_step": k, "rate_bpd": float(rate[k - 1]), "rmse": float(rmse[k - 1])} for k in steps],
            "paper": ({**PAPER_TABLE4, "distortion_bpd": PAPER_DISTORTION_BPD,
                       "source": "Ho et al. 2020, Table 4 (CIFAR-10 test set)"} if paper else None)}


def rd_table(s: Dict[str, Any]) -> List[str]:
    """The printed report: the ten rows (the paper's Table 4 beside for a CIFAR-10 run of T = 1000) and where the
    bits go."""
    paper = s.get("paper") if len(s["rate_bpd"]) == 1000 else None
    head = f"{'reverse step':>12} {'rate (bits/dim)':>16} {'RMSE (0-255)':>13}"
    lines = [f"rate and distortion along the reverse process, {s['n']} images of {s['data']} (step {s['step']}):",
             head + (f" {'paper rate':>11} {'paper RMSE':>11}" if paper else "")]
    for i, row in enumerate(s["table"]):
        beside = f" {paper['rate'][i]:>11.5f} {paper['rmse'][i]:>11.2f}" if paper else ""
        lines.append(f"{row['reverse_step']:>12} {row['rate_bpd']:>16.5f} {row['rmse']:>13.2f}{beside}")
    lines.append(f"rate {s['rate_final_bpd']:.4f} + distortion {s['distortion_bpd']:.4f} (decoder L_0) = "
                 f"{s['total_bpd']:.4f} bits/dim (the bound)"
                 + (f"; the paper: 1.78 + {PAPER_DISTORTION_BPD} = 3.75" if paper else ""))
    if np.isfinite(s["rate_share_last_tenth"]):
        lines.append(f"the last tenth of the reverse steps carries {100 * s['rate_share_last_tenth']:.1f}% of the rate")
    return lines


def write_rd_report(s: Dict[str, Any], out: Path, title: str = "") -> None:
    """``rd.json`` (the summary) and ``rd.png`` (Fig. 5), atomically, listed as ddpm's."""
    from .reports import _write_reports

    paper: Optional[Dict[str, Any]] = s.get("paper") if len(s["rate_bpd"]) == 1000 else None
    plot = lambda p: plot_rate_distortion(  # noqa: E731
        np.asarray(s["rate_bpd"]), np.asarray(s["rmse"]), p, paper=paper,
        title=f"{title} (step {s['step']}): rate and distortion on {s['n']} images of {s['data']}")
    _write_reports(out, {"rd.json": json.dumps(s, indent=1) + "\n", "rd.png": plot})
