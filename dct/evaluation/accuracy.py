"""Per-class accuracy: how often a classifier names the class on a batch of generated images."""

from __future__ import annotations

import torch

from dct.models.interface import ImageClassifier


@torch.no_grad()
def topk_accuracy(
    classifier: ImageClassifier, images: torch.Tensor, class_id: int, batch_size: int
) -> tuple[float, float]:
    """Top-1 and top-5 accuracy of ``classifier`` on images ``(B, 3, H, W)`` in [0, 1] for ``class_id``."""
    device = next(classifier.parameters()).device
    hits1 = hits5 = 0
    for start in range(0, images.shape[0], batch_size):
        logits = classifier(images[start : start + batch_size].to(device))
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices.cpu()
        hits1 += int((top[:, 0] == class_id).sum())
        hits5 += int((top == class_id).any(dim=1).sum())
    n = images.shape[0]
    return hits1 / n, hits5 / n
