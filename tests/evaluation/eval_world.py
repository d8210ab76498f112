"""Helpers of the evaluation tests: a labelled reference folder and the tiny world with an evaluator."""

from __future__ import annotations

from pathlib import Path

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
kind = "local"
model_id = "./guide"
licence = "test-only evaluator"
[evaluator.preprocess]
resize = 16
crop = 16
mean = [0.5, 0.5, 0.5]
std = [0.5, 0.5, 0.5]
"""
    path.write_text(text)
    return path
