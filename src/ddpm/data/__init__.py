"""Training images: the sources (the shipped digits, folders, CIFAR-10), decoding and the paper's conversion,
the decoded cache, and the batches a trainer draws."""

from .batches import Batches, HeldOut, Prefetcher, held_out_split
from .sources import MNIST_CLASSES, ImageData, Source, find_source, load_data, load_image, to_float, to_uint8

__all__ = ["ImageData", "Source", "find_source", "load_data", "load_image", "to_float", "to_uint8", "MNIST_CLASSES",
           "Batches", "HeldOut", "Prefetcher", "held_out_split"]
