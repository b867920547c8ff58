"""Names a package exports but loads on first use (PEP 562), so that importing the package imports no torch."""

from importlib import import_module
from typing import Callable, Dict, List, Tuple


def lazy_names(package: str, names: Dict[str, str], namespace: dict) -> Tuple[Callable, Callable]:
    """The ``__getattr__`` and ``__dir__`` of ``package`` whose ``names`` (name -> submodule) load on first use and
    are then kept in ``namespace`` (the package's globals)."""

    def __getattr__(name: str):
        if name in names:
            value = getattr(import_module(f".{names[name]}", package), name)
            namespace[name] = value
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> List[str]:
        return sorted(namespace.get("__all__", names))

    return __getattr__, __dir__
