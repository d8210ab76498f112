"""Discriminative Class Tokens (DCT, ICCV 2023) at dataset scale.

The library is usable without the orchestrator: nothing under ``dct`` imports Prefect.
"""

from __future__ import annotations

__version__ = "0.1.0"
