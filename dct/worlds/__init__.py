"""Built-in worlds: a small labelled image set, a tiny text-to-image pipeline trained on its captions, and two
classifiers (a guide and a held-out evaluator), all trained here and shipped as weights.

A world is what :class:`World` declares: its images (a train and a test split), how a training image is captioned,
its class names and coarse groups, and its reference images. The project's training, evaluation and grid code
(:mod:`dct.worlds.train`, :mod:`dct.worlds.evaluate`, :mod:`dct.worlds.grid`) take a world and nothing else, so
the ``toy`` world (procedural shapes, :mod:`dct.toy`) and the ``fashion`` world (Fashion-MNIST,
:mod:`dct.fashion`) share one code path (docs/worlds.md).

Importing this package is light (no torch).
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import numpy as np
    import torch

    from dct.config import DatasetSpec


@dataclass(frozen=True)
class Split:
    """Images ``(N, 3, H, W)`` float in [0, 1], class ids ``(N,)`` and one caption-attribute object per image."""

    images: torch.Tensor
    labels: torch.Tensor
    attrs: Sequence[Any]

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, index) -> Split:
        """The rows ``index`` (a slice or an index tensor)."""
        if isinstance(index, slice):
            return Split(self.images[index], self.labels[index], list(self.attrs[index]))
        rows = [int(i) for i in index]
        return Split(self.images[index], self.labels[index], [self.attrs[i] for i in rows])


@dataclass(frozen=True)
class TrainRecipe:
    """How :mod:`dct.worlds.train` trains a world: sizes and step counts (docs/worlds.md has each world's)."""

    num_images: int = 12_000  # training images of the VAE and the diffusion model
    vae_steps: int = 300
    guide_steps: int = 400
    evaluator_steps: int = 300
    diffusion_steps: int = 4000
    guide_redrawn_steps: int = 150  # 0 skips the last stage
    batch: int = 64
    classifier_batch: int = 128
    # Share of VAE reconstructions (vs clean images) in each classifier's batches.
    guide_recon_share: float = 0.8
    evaluator_recon_share: float = 0.5
    # "shared": both classifiers train on the diffusion model's images; "halves": the guide on the first half of
    # the train split, the evaluator on the second (all images of each), so they never see the same image.
    classifier_split: Literal["shared", "halves"] = "shared"
    test_images: int = 2000  # held-out images that the printed accuracies are measured on


class World(ABC):
    """A world: what the shared training, evaluation and grid code needs to know about one image set.

    Subclasses set the class attributes and implement the abstract methods; everything else follows.
    """

    name: str  # the dataset name that `dct --dataset` takes
    class_names: tuple[str, ...]  # the prompt names (the dataset's class names, ids 0..N-1)
    groups: tuple[tuple[int, ...], ...]  # coarse groups of class ids; every class in exactly one
    weights_dir: Path  # where the shipped weights live (the layout of `python -m dct.<world>.train --out DIR`)
    recipe: TrainRecipe = TrainRecipe()
    # Classes whose descriptive ceiling (evaluator top-1) reaches this are the ones DCT is judged on.
    ceiling_eligible: float = 0.9

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def coarse_of(self, class_id: int | torch.Tensor) -> int | torch.Tensor:
        """The coarse group index of a class id (or of each id of a tensor)."""
        table = [0] * self.num_classes
        for g, members in enumerate(self.groups):
            for c in members:
                table[c] = g
        if isinstance(class_id, int):
            return table[class_id]
        import torch

        return torch.tensor(table, device=class_id.device)[class_id]

    @abstractmethod
    def train_split(self, n: int | None = None) -> Split:
        """The training images (the first ``n``; None: all)."""

    @abstractmethod
    def test_split(self, n: int | None = None) -> Split:
        """Held-out images of known class, never trained on (the first ``n``; None: all)."""

    @abstractmethod
    def caption(self, attrs: Any, rng: np.random.Generator, kind: str | None = None) -> str:
        """A random truthful training caption of an image (``kind``: "empty", "coarse", "name", "descriptive")."""

    @abstractmethod
    def vocabulary(self) -> list[str]:
        """Every word the captions and the dataset's prompt templates use (the tokenizer's word list)."""

    @abstractmethod
    def descriptive_nouns(self, class_id: int) -> tuple[str, ...]:
        """Plain-words noun phrases that name the class exactly (the ceiling prompt's candidates)."""

    @abstractmethod
    def describe(self, class_id: int) -> str:
        """What the class is, in words a reader knows ("red circle", "Pullover")."""

    @abstractmethod
    def reference_images(self, per_class: int, class_ids: Sequence[int] | None = None) -> torch.Tensor:
        """The FID reference set: ``per_class`` images of each class (class-major order), never trained on."""

    def augment_real(
        self, class_ids: Sequence[int], seeds: int, per_class: int, test_per_class: int
    ) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], tuple[torch.Tensor, torch.Tensor]]:
        """The real images of the augmentation experiment (``dct augment-eval``, docs/synthesis.md), as
        ``(images (N, 3, H, W) in [0, 1], class ids (N,))``: one training pool per seed (``per_class`` images of each
        of ``class_ids``, a separate draw per seed) and one held-out test set (``test_per_class`` images per class
        where the world makes any number; its whole test split of those classes otherwise).

        This default draws the pools from :meth:`train_split` (:func:`draw_per_class`, seed = the training seed)
        and tests on every :meth:`test_split` image of the classes; a world overrides it where it has better
        (the toy renders fresh images).

        Raises:
            ValueError: a class has fewer than ``per_class`` training images (names it and the count).
        """
        import torch

        train, test = self.train_split(), self.test_split()
        labels = train.labels.numpy()
        pools = []
        for s in range(seeds):
            rows = torch.from_numpy(draw_per_class(labels, class_ids, per_class, seed=s))
            pools.append((train.images[rows], train.labels[rows]))
        keep = torch.isin(test.labels, torch.tensor(list(class_ids)))
        return pools, (test.images[keep], test.labels[keep])

    def check_real_images(self) -> None:
        """Raise the world's one-line error if its real images cannot be read (before any expensive work); a world
        that renders them has nothing to check."""
        return None

    @abstractmethod
    def dataset(self, weights: Path | None = None) -> DatasetSpec:
        """The world's dataset, its models read from ``weights`` (a ``train --out`` directory) or the shipped ones."""

    @abstractmethod
    def load_classifier(self, config: Any) -> Any:
        """The world's classifier loader (its ``ClassifierConfig.kind``): a ``LoadedClassifier``."""

    def classifier_split(self, train: Split, name: str) -> Split:
        """The training images of classifier ``name`` ("guide" or "evaluator") under the recipe's split."""
        if self.recipe.classifier_split == "shared":
            return train
        half = len(train) // 2
        return train.take(slice(0, half) if name == "guide" else slice(half, len(train)))


def draw_per_class(labels: np.ndarray, class_ids: Sequence[int], per_class: int, *, seed: int) -> np.ndarray:
    """Row indices of ``per_class`` images of each of ``class_ids`` (class by class, without replacement), drawn
    with ``numpy.random.default_rng(seed)``.

    Raises:
        ValueError: a class has fewer than ``per_class`` rows (names the class and the counts).
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    rows = []
    for c in class_ids:
        members = np.flatnonzero(labels == c)
        if len(members) < per_class:
            raise ValueError(f"class {c} has {len(members)} real training images, fewer than the {per_class} asked for")
        rows.append(rng.choice(members, per_class, replace=False))
    return np.concatenate(rows)


# name -> "module:attribute" of a World instance, imported on first use (a world package imports torch).
WORLDS: dict[str, str] = {
    "toy": "dct.toy.world:TOY",
    "fashion": "dct.fashion.world:FASHION",
}


def get_world(name: str) -> World:
    """The built-in world ``name``.

    Raises:
        ValueError: no such world (names the valid ones).
    """
    if name not in WORLDS:
        raise ValueError(f"unknown world {name!r}; valid: {', '.join(sorted(WORLDS))}")
    module, _, attr = WORLDS[name].partition(":")
    return getattr(importlib.import_module(module), attr)
