"""Frozen image classifiers behind one interface, and the registry of loaders.

Every loader returns an :class:`ImageClassifier`: images ``(B, 3, H, W)`` float in [0, 1] in, logits
``(B, num_classes)`` out, differentiable end to end. Class ids are 0-based and equal the model's label ids.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from dct.config import ClassifierConfig
from dct.preprocess import DifferentiablePreprocess


class ImageClassifier(nn.Module):
    """A frozen classifier with its differentiable preprocessing.

    Args:
        model: maps preprocessed images ``(B, 3, crop, crop)`` to logits ``(B, C)`` (a tensor, or an
            object with a ``.logits`` attribute as Hugging Face models return).
        preprocess: the model's preprocessing, as tensor ops.
        labels: class names by class id (``len(labels) == C``).
    """

    def __init__(self, model: nn.Module, preprocess: DifferentiablePreprocess, labels: list[str]) -> None:
        super().__init__()
        self.model = model
        self.preprocess = preprocess
        self.labels = list(labels)
        self.requires_grad_(False)
        self.eval()

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.model(self.preprocess(images))
        logits = out.logits if hasattr(out, "logits") else out
        return logits.float()

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate features ``(B, D)`` for FID/KID; models expose ``forward_features_pooled`` or timm's API."""
        x = self.preprocess(images)
        m = self.model
        if hasattr(m, "forward_features_pooled"):
            return m.forward_features_pooled(x).float()
        if hasattr(m, "forward_features") and hasattr(m, "forward_head"):  # timm
            return m.forward_head(m.forward_features(x), pre_logits=True).float()
        raise TypeError(f"{type(m).__name__} exposes no pooled features; use the Inception extractor for FID")


@dataclass(frozen=True)
class LoadedClassifier:
    classifier: ImageClassifier
    resolved_revision: str  # hub commit SHA, or content hash of local weights


ClassifierLoader = Callable[[ClassifierConfig], LoadedClassifier]
CLASSIFIER_LOADERS: dict[str, ClassifierLoader] = {}


def register_classifier_loader(kind: str) -> Callable[[ClassifierLoader], ClassifierLoader]:
    def deco(fn: ClassifierLoader) -> ClassifierLoader:
        CLASSIFIER_LOADERS[kind] = fn
        return fn

    return deco


def load_classifier(config: ClassifierConfig, device: torch.device | str = "cpu") -> LoadedClassifier:
    """Load a classifier by ``config.kind`` and move it to ``device``.

    Raises:
        ValueError: unknown kind (the message lists the valid ones).
    """
    _register_builtin_loaders()
    try:
        loader = CLASSIFIER_LOADERS[config.kind]
    except KeyError:
        raise ValueError(
            f"unknown classifier kind {config.kind!r}; valid kinds: {', '.join(sorted(CLASSIFIER_LOADERS))}"
        ) from None
    loaded = loader(config)
    loaded.classifier.to(device)
    return loaded


def _register_builtin_loaders() -> None:
    # Importing the modules registers their loaders; kept lazy so `import dct` stays light.
    import dct.toy.models  # noqa: F401
