"""The linters the project is kept clean by, configured in pyproject.toml: ruff (pycodestyle, pyflakes and import
order, lines of at most 120) and mypy (strict on diffusion/, nn/ and sampling/; every module checked). A change
that breaks either fails here, as in CI."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(*args):
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=ROOT)


def test_ruff_finds_nothing():
    res = _run("ruff", "check", "--no-cache", str(ROOT))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-1000:]


def test_mypy_finds_nothing(tmp_path):
    res = _run("mypy", "--cache-dir", str(tmp_path / "mypy"))  # files and settings: pyproject.toml
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-1000:]
