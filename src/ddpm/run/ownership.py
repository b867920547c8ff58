"""What ddpm wrote, so that it replaces or removes only that and never a file of the user's.

A single file (PNG, GIF, ``.npz``) carries a mark in its own metadata: the PNG text ``Software: ddpm ...``, a GIF
comment, a zip comment. A folder ddpm fills (a folder of samples, an eval report folder) lists what it wrote in
``.ddpm-files.json`` with each file's size and modification time; a file edited since, or one added by someone
else, makes the folder the user's. ``check_replaceable`` says, before any work, whether ``--overwrite`` may
replace a path, and why not; ``remove_written`` removes only the files a folder's list names.
"""

from __future__ import annotations

import json
import os
import re
import zipfile
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Union

from ..errors import DDPMError

__all__ = ["MARK", "MANIFEST", "png_info", "marked_json", "is_marked", "record_written", "written_files",
           "foreign_entries",
           "remove_written", "check_replaceable", "protected_reason"]

PathLike = Union[str, os.PathLike]
MANIFEST = ".ddpm-files.json"


def _mark() -> str:
    from .. import __version__

    return f"ddpm {__version__}"


MARK = _mark()


def png_info() -> Any:
    """PNG text chunks that mark a PNG as ddpm's (for Pillow's ``save(pnginfo=...)``)."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("Software", MARK)
    return info


def marked_json(doc: Dict[str, Any]) -> str:
    """The text of a JSON report ddpm writes: ``doc`` with ``written_by`` (what ``is_marked`` reads back)."""
    return json.dumps({**doc, "written_by": MARK}, indent=2) + "\n"


def is_marked(path: PathLike) -> bool:
    """Whether the file at ``path`` carries ddpm's mark (a PNG, GIF, ``.npz`` or report ``.json`` that ddpm wrote)."""
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix in (".png", ".gif"):
            from PIL import Image

            with Image.open(path) as im:
                text = (getattr(im, "text", {}).get("Software", "") if suffix == ".png"
                        else im.info.get("comment", b"").decode("latin-1"))
            return text.startswith("ddpm")
        if suffix == ".npz":
            with zipfile.ZipFile(path) as z:
                return z.comment.startswith(b"ddpm")
        if suffix == ".json" and path.stat().st_size < 1 << 20:
            return str(json.loads(path.read_text()).get("written_by", "")).startswith("ddpm")
    except Exception:  # unreadable, or not what its name says: not ours
        return False
    return False


def _stamp(path: Path) -> List[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def written_files(folder: PathLike) -> Dict[str, List[int]]:
    """The files ``folder``'s list says ddpm wrote there (name -> [size, mtime_ns]); {} without a list."""
    try:
        found = json.loads((Path(folder) / MANIFEST).read_text())
        return {str(k): list(v) for k, v in found["files"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def record_written(folder: PathLike, names: Iterable[str]) -> None:
    """Add ``names`` (files just written into ``folder``) to its list of what ddpm wrote."""
    from ..atomic import atomic_write_text

    folder = Path(folder)
    files = written_files(folder)
    files.update({n: _stamp(folder / n) for n in names})
    atomic_write_text(folder / MANIFEST, json.dumps({"written_by": MARK, "files": files}, indent=0) + "\n")


_LEFTOVER = re.compile(r"\.ddpm-write-test-\w{8}|\.tmp-.+-\w{8}|\..+\.\w{8}\.tmp(\.\w+)?")


def _is_leftover(name: str) -> bool:
    """A temporary that a killed ddpm write left behind (the names ddpm.atomic and check_writable_folder use)."""
    return _LEFTOVER.fullmatch(name) is not None


def foreign_entries(folder: PathLike) -> List[str]:
    """The entries of ``folder`` that ddpm did not write there (or that changed since), sorted."""
    folder = Path(folder)
    listed = written_files(folder)
    foreign = []
    for entry in folder.iterdir():
        name = entry.name
        if name == MANIFEST or (_is_leftover(name) and not entry.is_symlink()):
            continue
        if entry.is_symlink() or not entry.is_file() or listed.get(name) != _stamp(entry):
            foreign.append(name + ("/" if entry.is_dir() and not entry.is_symlink() else ""))
    return sorted(foreign)


def remove_written(folder: PathLike) -> None:
    """Remove the files ``folder``'s list names, the list, ddpm's leftovers, and the folder once empty; nothing
    else (a folder holding anything more stays)."""
    import shutil

    folder = Path(folder)
    for name in written_files(folder):
        if "/" not in name and os.sep not in name:
            (folder / name).unlink(missing_ok=True)
    for entry in folder.iterdir():
        if _is_leftover(entry.name) and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
    (folder / MANIFEST).unlink(missing_ok=True)
    try:
        folder.rmdir()
    except OSError:
        pass


def _within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def protected_reason(path: PathLike, runs: Sequence[PathLike] = ()) -> Optional[str]:
    """Why no command may replace the folder ``path`` whatever it holds (it is, or holds, the current folder, the
    home folder, the root, a training run, or one of ``runs``), else None."""
    from .directory import holds_run_config, is_run

    p = Path(path).resolve()
    if _within(Path.cwd().resolve(), p):
        return "it is the current folder" if p == Path.cwd().resolve() else "it holds the current folder"
    if p == Path(p.anchor) or p == Path.home().resolve():
        return "it is the root folder" if p == Path(p.anchor) else "it is your home folder"
    for r in runs:
        if _within(Path(r).resolve(), p):
            return "it is the run being read" if Path(r).resolve() == p else "it holds the run being read"
    if holds_run_config(p):
        return "it is a training run"
    if is_run(p) or (p / "model_index.json").is_file():
        return "it holds a model (config.json)"
    return None


def check_replaceable(path: PathLike, *, overwrite: bool, runs: Sequence[PathLike] = (), flag: str = "--out") -> None:
    """DDPMError unless the output ``path`` may be written: nothing there, an empty folder, or, with ``overwrite``,
    a file that ddpm marked or a folder holding only what ddpm wrote there. Checked before any work."""
    p = Path(path)
    if p.is_dir() and not p.is_symlink():
        why = protected_reason(p, runs)
        if why:
            raise DDPMError(f"{flag} {path}: will not write into {p} ({why}); choose a new folder")
        foreign = foreign_entries(p)
        if foreign:
            shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            raise DDPMError(f"{flag} {path}: the folder holds files ddpm did not write ({shown}); nothing was "
                            "changed. Choose a new folder")
        if written_files(p) and not overwrite:
            raise DDPMError(f"{p} holds earlier output; choose another {flag} or pass --overwrite to replace it")
    elif p.exists() or p.is_symlink():
        if not p.is_file() or p.is_symlink():
            raise DDPMError(f"{flag} {path}: something other than a file is in the way")
        if not is_marked(p):
            raise DDPMError(f"{flag} {path}: the file exists and ddpm did not write it; nothing was changed. "
                            "Choose another name")
        if not overwrite:
            raise DDPMError(f"{p} already exists; choose another {flag} or pass --overwrite to replace it")
