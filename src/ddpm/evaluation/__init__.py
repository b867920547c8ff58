"""Measuring a model: bits/dim on held-out data; FID, the Inception Score, KID and precision/recall of samples
against real images or shared statistics (``read_set``, ``score``); the feature extractors (the FID Inception,
the shipped digit classifier) and the reports."""

from .compare import ImageSet, read_set, score
from .features import FEATURES, extract_features, get_features
from .inception import find_inception, load_inception
from .metrics import frechet_distance, gaussian_stats, inception_score, kernel_inception_distance, precision_recall
from .reports import bpd_report, evaluate_bpd, fd_report

__all__ = ["evaluate_bpd", "bpd_report", "fd_report", "ImageSet", "read_set", "score", "frechet_distance",
           "gaussian_stats", "inception_score", "kernel_inception_distance", "precision_recall", "FEATURES",
           "get_features", "extract_features", "find_inception", "load_inception"]
