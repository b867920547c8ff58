"""``ddpm train --config FILE``: a run's settings from a TOML or JSON file with the keys of ``RUN/config.json``,
each key and type checked against the typed configs."""

from __future__ import annotations

import difflib
import json
from dataclasses import fields
from typing import Any, Dict

from ..config import PRESETS, DiffusionConfig, TrainConfig, UNetConfig
from ..errors import DDPMError

__all__ = ["read_config_file"]

_SECTIONS = {"model": UNetConfig, "diffusion": DiffusionConfig, "train": TrainConfig}


def read_config_file(path) -> Dict[str, Any]:
    """A training config file: TOML (``.toml``) or JSON (``.json``, e.g. another run's config.json), with the keys
    of ``RUN/config.json``: ``preset`` and the sections ``model``, ``diffusion``, ``train`` (``classes`` and
    ``model.num_classes`` are accepted and ignored: they come from the data). Returns ``{"preset": str | None,
    "model": {...}, "diffusion": {...}, "train": {...}}``; an unknown key or a value of the wrong type is a
    DDPMError naming it."""
    from pathlib import Path

    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DDPMError(f"cannot read config file {path}: {e.strerror or e}") from None
    try:
        if path.suffix.lower() == ".json":
            doc = json.loads(raw)
        else:
            doc = _toml().loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:  # tomllib.TOMLDecodeError and JSONDecodeError are ValueErrors
        raise DDPMError(f"{path} is not valid {'JSON' if path.suffix.lower() == '.json' else 'TOML'}: {e}") from None
    if not isinstance(doc, dict):
        raise DDPMError(f"{path} must hold a table of settings")
    out: Dict[str, Any] = {"preset": None, "model": {}, "diffusion": {}, "train": {}}
    for key, value in doc.items():
        if key == "preset":
            if value not in PRESETS:
                raise DDPMError(f"{path}: unknown preset {value!r}; choose from {', '.join(PRESETS)}")
            out["preset"] = value
        elif key in _SECTIONS:
            if not isinstance(value, dict):
                raise DDPMError(f"{path}: {key} must be a table ([{key}]), got {value!r}")
            out[key] = _section(path, key, value)
        elif key != "classes":
            raise DDPMError(f"{path}: unknown key {key!r} (expected preset, model, diffusion, train)")
    out["model"].pop("num_classes", None)
    return out


def _toml():
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        import tomli as tomllib  # type: ignore[no-redef]
    return tomllib


_TYPES = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,), "Optional[bool]": (bool,),
          "Optional[int]": (int,), "Tuple[int, ...]": (list, tuple)}


def _section(path, name: str, values: Dict[str, Any]) -> Dict[str, Any]:
    known = {f.name: str(f.type) for f in fields(_SECTIONS[name])}
    for key, value in values.items():
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"did you mean {name}.{close[0]}?" if close else f"known: {', '.join(sorted(known))}"
            raise DDPMError(f"{path}: unknown key {name}.{key} ({hint})")
        ok = _TYPES.get(known[key], (object,))
        if value is None and known[key].startswith("Optional"):  # JSON's null (TOML has none): unset
            continue
        if (isinstance(value, bool) and bool not in ok) or not isinstance(value, ok):
            raise DDPMError(f"{path}: {name}.{key} must be of type {known[key]}, got {value!r}")
    return {k: v for k, v in values.items() if v is not None}
