"""What the probe works on: a class's samples paired by seed, and a probe's result (rows + samples)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import torch

from dct.results import ClassRecord


@dataclass(frozen=True)
class PairedSamples:
    """One class's samples of one run, paired by seed: ``baseline`` and ``dct`` ``(S, 3, H, W)`` in [0, 1]."""

    record: ClassRecord
    seeds: tuple[int, ...]
    baseline: torch.Tensor
    dct: torch.Tensor
    uris: dict[str, tuple[str, ...]] = field(default_factory=dict)  # variant → sample URI per seed


@dataclass(frozen=True)
class ProbeResult:
    """The ``probe`` rows (:data:`dct.results.PROBE_SCHEMA`) and, per class, the runs' paired samples."""

    table: pa.Table
    samples: dict[int, list[PairedSamples]]
    values: dict[int, dict[str, np.ndarray]]  # class → attribute → (R, S) paired differences DCT − baseline
