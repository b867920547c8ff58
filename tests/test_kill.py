"""SIGKILL at random moments, resume each time: the run ends bit-identical to one never interrupted
(the short version of scripts/kill_campaign.py, whose long campaign is reported in the README)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from kill_campaign import campaign  # noqa: E402


def test_killed_and_resumed_run_is_bit_identical(tmp_path):
    r = campaign(tmp_path, kills=3, steps=10, seed=1, log=lambda m: None)
    assert r["kills"] == 3
    assert r["killed_at"][0][1] == "none"  # the first kill came before any checkpoint: resumed from step 0
    assert r["identical"], f"tensors differ: {r['differing'][:5]}"
