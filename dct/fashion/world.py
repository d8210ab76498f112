"""The fashion world as a :class:`~dct.worlds.World`: Fashion-MNIST's images (:mod:`dct.fashion.data`) and their
captions (:mod:`dct.fashion.captions`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from dct.fashion import WEIGHTS_DIR, captions, data
from dct.worlds import Split, TrainRecipe, World, draw_per_class

# Every number measured on this 2-core CPU (docs/worlds.md, "Models and their training", "Measured numbers").
FASHION_RECIPE = TrainRecipe(
    num_images=30_000,  # the generator's images (the first half of the train split)
    vae_steps=400,
    guide_steps=1500,
    evaluator_steps=1500,
    diffusion_steps=3000,  # 1,000 were not enough: the descriptive prompts drew what the names drew
    guide_redrawn_steps=150,
    guide_recon_share=0.5,
    evaluator_recon_share=0.3,
    classifier_split="halves",  # the guide on train[:30000], the evaluator on train[30000:]
    test_images=10_000,
)


class FashionWorld(World):
    name = "fashion"
    class_names = captions.CLASS_NAMES
    groups = captions.GROUPS
    weights_dir = WEIGHTS_DIR
    recipe = FASHION_RECIPE
    ceiling_eligible = 0.8  # real garments overlap (Shirt vs T-shirt/Coat/Pullover): a ceiling of 0.8 is clear

    def _split(self, split: str, n: int | None) -> Split:
        images, labels = data.load(split)
        if n is not None:
            images, labels = images[:n], labels[:n]
        return Split(data.to_tensor(images), torch.from_numpy(labels.astype("int64")), data.attributes(images, labels))

    def train_split(self, n: int | None = None) -> Split:
        return self._split("train", n)

    def test_split(self, n: int | None = None) -> Split:
        return self._split("test", n)

    def caption(self, attrs, rng, kind=None) -> str:
        return captions.caption(attrs, rng, kind)

    def vocabulary(self) -> list[str]:
        from dct.toy.dataset import TEMPLATES

        return captions.vocabulary_words(TEMPLATES)

    def descriptive_nouns(self, class_id: int) -> tuple[str, ...]:
        return captions.SYNONYMS[class_id]

    def describe(self, class_id: int) -> str:
        return data.LABELS[class_id]

    def reference_images(self, per_class: int, class_ids: Sequence[int] | None = None) -> torch.Tensor:
        """The first ``per_class`` real test images of each class (class-major)."""
        images, labels = data.load("test")
        ids = range(self.num_classes) if class_ids is None else class_ids
        rows = [torch.from_numpy((labels == c).nonzero()[0][:per_class]) for c in ids]
        return data.to_tensor(images[torch.cat(rows).numpy()])

    def augment_real(self, class_ids: Sequence[int], seeds: int, per_class: int, test_per_class: int):
        """Per training seed, ``per_class`` train-split images of each class drawn with that seed; the test set is
        every real test image of those classes (1,000 per class; ``test_per_class`` does not apply)."""
        import numpy as np

        # The arrays, not train_split(): that also computes caption attributes of all 60,000 images.
        train_images, train_labels = data.load("train")
        test_images, test_labels = data.load("test")
        pools = []
        for s in range(seeds):
            rows = draw_per_class(train_labels, class_ids, per_class, seed=s)
            pools.append((data.to_tensor(train_images[rows]), torch.from_numpy(train_labels[rows].astype("int64"))))
        keep = np.flatnonzero(np.isin(test_labels, class_ids))
        return pools, (data.to_tensor(test_images[keep]), torch.from_numpy(test_labels[keep].astype("int64")))

    def check_real_images(self) -> None:
        data.data_dir()  # one line naming the package when it is not installed

    def load_classifier(self, config):
        return load_fashion_classifier(config)

    def dataset(self, weights: Path | None = None):
        from dct.fashion.dataset import fashion_dataset
        from dct.toy.world import with_weights

        return with_weights(fashion_dataset(), weights, "fashion")


FASHION = FashionWorld()


def load_fashion_classifier(config):
    """Load a fashion classifier: ``config.model_id`` is "guide", "evaluator" or a path to a ``.safetensors``.

    Raises:
        ValueError: the weights file does not exist (names the retrain command).
    """
    from dct.toy import models

    path = models.classifier_path(config.model_id, WEIGHTS_DIR, ("guide", "evaluator"))
    if not path.is_file():
        raise ValueError(
            f"fashion classifier {config.model_id!r} not found at {path}; use 'guide', 'evaluator' or a .safetensors "
            "path, or retrain the world with `python -m dct.fashion.train`"
        )
    return models.load_classifier_file(path, config)
