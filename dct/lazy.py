"""Registry rows that name their implementation as ``"module:attribute"``, imported on first use.

A registry (classifier loaders, datasets) lists its built-ins in one table; a row that lives in an optional
part of the package (the toy world) is a string, so the registry never imports it at module import and
the implementation never imports the registry back (docs/design.md, "Layers").
"""

from __future__ import annotations

import importlib
from typing import Any


def resolve(row: Any) -> Any:
    """The object a registry row stands for: the row itself, or the attribute a ``"module:attr"`` string names."""
    if not isinstance(row, str):
        return row
    module, sep, attr = row.partition(":")
    if not sep or not module or not attr:
        raise ValueError(f"lazy registry row {row!r} is not 'module:attribute'")
    return getattr(importlib.import_module(module), attr)
