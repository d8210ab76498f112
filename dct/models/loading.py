"""Load everything a shard needs ONCE: the pipeline, the guide and the optional held-out evaluator."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from dct.config import RunConfig, eval_key, token_key
from dct.models.classifiers import load_classifier
from dct.models.interface import ImageClassifier


@dataclass
class Models:
    """Everything a shard loads once: the pipeline, the guide and the optional held-out evaluator."""

    pipe: object
    pipe_revision: str
    classifier: ImageClassifier
    classifier_revision: str
    evaluator: ImageClassifier | None
    evaluator_revision: str | None
    device: torch.device
    dtype: torch.dtype
    # The FID/KID feature extractor (a ``dct.evaluation.features.FeatureExtractor``), loaded once per
    # shard too, so each class's features are extracted where its images are (None: not computed).
    feature_extractor: Any = None

    def keys(self, config: RunConfig) -> tuple[str, str]:
        """``(token_key, eval_key)`` for this config and these resolved model revisions."""
        tkey = token_key(config, self.pipe_revision, self.classifier_revision)
        return tkey, eval_key(config, tkey, self.evaluator_revision)

    @property
    def device_description(self) -> str:
        """``cpu``, or ``cuda:0 (NVIDIA H100 80GB HBM3)``: what the provenance records."""
        if self.device.type == "cuda":
            return f"{self.device} ({torch.cuda.get_device_name(self.device)})"
        return str(self.device)


def describe_device(name: str) -> str:
    """Where ``name`` ('auto', 'cpu', 'cuda:1') resolves to, in words: ``cpu`` or ``cuda:0 (NVIDIA H100 …)``.

    Raises:
        ValueError: as :func:`resolve_device`.
    """
    device = resolve_device(name)
    return f"{device} ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else str(device)


def resolve_device(name: str) -> torch.device:
    """'auto' → cuda if available, else cpu; explicit names are checked.

    Raises:
        ValueError: an unknown device name, or CUDA requested where there is none.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available here; use --device cpu")
    return device


def load_models(config: RunConfig, device: torch.device | str) -> Models:
    """Load the pipeline, the guide and the evaluator (if configured) once, frozen, on ``device``."""
    from dct.models.hub import ModelNotAvailableError
    from dct.models.pipelines import load_pipeline

    device = torch.device(device)
    try:
        loaded = load_pipeline(config.diffusion, device)
        guide = load_classifier(config.classifier, device)
        ev = load_classifier(config.evaluation.evaluator, device) if config.evaluation.evaluator else None
    except ModelNotAvailableError as exc:
        raise exc.for_dataset(config.dataset) from None  # the error then names `dct models pull --dataset X`
    return Models(
        pipe=loaded.pipe,
        pipe_revision=loaded.resolved_revision,
        classifier=guide.classifier,
        classifier_revision=guide.resolved_revision,
        evaluator=ev.classifier if ev else None,
        evaluator_revision=ev.resolved_revision if ev else None,
        device=device,
        dtype=loaded.dtype,
    )
