"""Training images: the sources (the shipped digits, folders, CIFAR-10), decoding and the paper's conversion,
the decoded cache, and the batches a trainer draws.

The names load on first use, so that the processes that decode images into the cache (``data.images``,
``data.formats``: numpy and Pillow only) start without importing torch.
"""

from importlib import import_module

_NAMES = {"Batches": "batches", "HeldOut": "batches", "Prefetcher": "batches", "held_out_split": "batches",
          "MNIST_CLASSES": "sources", "ImageData": "sources", "Source": "sources", "find_source": "sources",
          "load_data": "sources", "load_image": "sources", "to_float": "sources", "to_uint8": "sources"}

__all__ = list(_NAMES)


def __getattr__(name: str):
    if name in _NAMES:
        value = getattr(import_module(f".{_NAMES[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ddpm.data' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
