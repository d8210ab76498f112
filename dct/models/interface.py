"""The classifier interface every loader returns (the toy and plugins implement it without the registry)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from dct.models.preprocess import DifferentiablePreprocess


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
