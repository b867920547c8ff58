"""Measuring a model: bits/dim on held-out data, the Frechet distance of samples, the feature extractors
(the FID Inception, the shipped digit classifier) and the reports."""

from .metrics import FEATURES, extract_features, frechet_distance, gaussian_stats, get_features
from .reports import bpd_report, evaluate_bpd, fd_report

__all__ = ["evaluate_bpd", "bpd_report", "fd_report", "frechet_distance", "gaussian_stats", "FEATURES",
           "get_features", "extract_features"]
