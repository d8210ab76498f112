"""Evaluation: per-class accuracy, FID/KID features and metrics, the run report."""
