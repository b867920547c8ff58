"""Training images: the sources (the shipped digits, folders, CIFAR-10), decoding and the paper's conversion,
the decoded cache, and the batches a trainer draws.

The names load on first use, so that the processes that decode images into the cache (``data.images``,
``data.formats``: numpy and Pillow only) start without importing torch.
"""

from ..lazy import lazy_names

_NAMES = {"Batches": "batches", "HeldOut": "batches", "Prefetcher": "batches", "held_out_split": "batches",
          "MNIST_CLASSES": "sources", "ImageData": "sources", "Source": "sources", "find_source": "sources",
          "load_data": "sources", "load_image": "pictures", "load_images": "pictures", "to_float": "images",
          "to_uint8": "images", "READERS": "readers", "Reader": "readers"}

__all__ = list(_NAMES)

__getattr__, __dir__ = lazy_names(__name__, _NAMES, globals())
