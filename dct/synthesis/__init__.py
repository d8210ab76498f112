"""Synthetic training sets from learned class tokens (docs/synthesis.md)."""
