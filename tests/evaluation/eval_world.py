"""Helpers of the evaluation tests: a labelled reference folder and the tiny world with an evaluator."""

from __future__ import annotations

from pathlib import Path

import torch

RUN_CLASSES = [0, 1, 3]  # "green triangle" (2) is longer than the tiny tokenizer's 16 tokens
NUM_SAMPLES = 12  # 3 classes × 12 = 36 images per variant > 32 feature dims: FID is computable
REFERENCE_PER_CLASS = 40


def write_reference_folder(folder: Path, class_ids: list[int], per_class: int) -> Path:
    """Real-image stand-ins: the toy generator's shapes, in one sub-folder per class id (labelled)."""
    from PIL import Image

    from dct.toy import shapes

    for cid in class_ids:
        images = shapes.reference_images(per_class, [cid])
        sub = folder / f"{cid:05d}"
        sub.mkdir(parents=True, exist_ok=True)
        for i, img in enumerate(images):
            array = (img.permute(1, 2, 0).numpy() * 255).round().astype("uint8")
            Image.fromarray(array).save(sub / f"{i:04d}.png")
    return folder


def evaluated_tiny_world(directory: Path, reference: Path) -> Path:
    """The tiny world with a held-out evaluator, evaluator features for FID and a reference folder."""
    from tiny import save_tiny_world

    path = save_tiny_world(directory, max_epochs=1, num_samples=NUM_SAMPLES)
    text = path.read_text()
    text = text.replace('fid_features = "none"', 'fid_features = "evaluator"')
    text = text.replace(
        "[classifier]", f'reference_images = "{reference}"\nlicence = "test images (CC0)"\n[classifier]', 1
    )
    text += """[evaluator]
kind = "pixel-stats-test"
model_id = "pixel-stats"
licence = "test-only evaluator"
[evaluator.preprocess]
resize = 16
crop = 16
mean = [0.5, 0.5, 0.5]
std = [0.5, 0.5, 0.5]
"""
    path.write_text(text)
    return path


# ---- a held-out evaluator whose answer depends on the image (the tiny random guide names one class for every
# image, so its accuracy columns are 0 or 1 whatever the images): a plugin kind, registered as a user would.

FEATURE_DIM = 32  # the tiny guide's width too: the FID tests count on 32-d features


class PixelStats(torch.nn.Module):
    """Features: the mean of each 4x4 cell of the first two channels (32 values); logits: a fixed random linear
    map of their deviations from the image's mean (steep, so neighbouring images get different classes)."""

    def __init__(self, num_classes: int, seed: int = 7) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.weight = torch.nn.Parameter(40 * torch.randn(num_classes, FEATURE_DIM, generator=g), requires_grad=False)

    def forward_features_pooled(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.adaptive_avg_pool2d(x[:, :2], 4).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.forward_features_pooled(x)
        return (f - f.mean(dim=1, keepdim=True)) @ self.weight.T


def _load_pixel_stats(config):
    from tiny import TINY_CLASSES

    from dct.config import PreprocessConfig
    from dct.models.interface import ImageClassifier, LoadedClassifier
    from dct.models.preprocess import DifferentiablePreprocess

    pre = DifferentiablePreprocess(
        config.preprocess or PreprocessConfig(resize=16, crop=16, mean=(0.5,) * 3, std=(0.5,) * 3)
    )
    return LoadedClassifier(ImageClassifier(PixelStats(len(TINY_CLASSES)), pre, list(TINY_CLASSES)), "pixel-stats-v1")


def register_pixel_stats() -> None:
    from dct.models.classifiers import CLASSIFIER_LOADERS

    CLASSIFIER_LOADERS["pixel-stats-test"] = _load_pixel_stats


register_pixel_stats()
