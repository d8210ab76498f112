"""Artifacts: the store (every URI), token files, the run bundle, sample images."""
