"""The toy world as a :class:`~dct.worlds.World`: procedural shapes (:mod:`dct.toy.shapes`) and their captions
(:mod:`dct.toy.captions`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from dct.toy import captions, models, shapes
from dct.worlds import Split, TrainRecipe, World

# The shipped world's recipe (docs/toy.md, "Measured numbers"): classifiers and generator on the same renders.
TOY_RECIPE = TrainRecipe(
    num_images=12_000,
    vae_steps=300,
    # The guide gets more than the evaluator: it is the one DCT follows, and with 300 it lagged the evaluator on
    # generated triangles (0.83 vs 0.95 on the descriptive prompt).
    guide_steps=400,
    evaluator_steps=300,
    diffusion_steps=4000,
    # The guide called only 0.83 of the generator's own "a red triangle" images triangles (the evaluator 0.97) —
    # the generator draws small triangles as rounded blobs; 150 steps on redrawn images: 0.98.
    guide_redrawn_steps=150,
    guide_recon_share=0.8,
    evaluator_recon_share=0.5,
    classifier_split="shared",
    test_images=2000,
)


# Seed blocks of the real images of the augmentation experiment (shapes.render is a pure function of (class, seed));
# far from the seeds the classifiers were trained on (shapes.TRAIN_SEED) and from the FID reference set's.
AUGMENT_TRAIN_SEED = 50_000_000
AUGMENT_TEST_SEED = 60_000_000


class ToyWorld(World):
    name = "toy"
    class_names = captions.SPECIES_NAMES
    groups = tuple(
        tuple(range(g * len(shapes.SHAPES), (g + 1) * len(shapes.SHAPES))) for g in range(len(shapes.COARSE_GROUPS))
    )
    weights_dir = models.WEIGHTS_DIR
    recipe = TOY_RECIPE

    def train_split(self, n: int | None = None) -> Split:
        return Split(*shapes.sample(n or self.recipe.num_images, shapes.TRAIN_SEED))

    def test_split(self, n: int | None = None) -> Split:
        return Split(*shapes.sample(n or self.recipe.test_images, shapes.TRAIN_SEED + 1))

    def caption(self, attrs, rng, kind=None) -> str:
        return captions.caption(attrs, rng, kind="species" if kind == "name" else kind)

    def vocabulary(self) -> list[str]:
        return captions.vocabulary_words()

    def descriptive_nouns(self, class_id: int) -> tuple[str, ...]:
        group = shapes.COARSE_GROUPS[class_id // len(shapes.SHAPES)]
        return tuple(f"{group} {w}" for w in captions.SHAPE_WORDS[shapes.SHAPES[class_id % len(shapes.SHAPES)]])

    def describe(self, class_id: int) -> str:
        return captions.descriptive_name(class_id)

    def reference_images(self, per_class: int, class_ids: Sequence[int] | None = None):
        return shapes.reference_images(per_class, None if class_ids is None else list(class_ids))

    def augment_real(self, class_ids: Sequence[int], seeds: int, per_class: int, test_per_class: int):
        """Renders: per seed a disjoint seed block of ``per_class`` per class; the test set another block."""
        import torch

        def block(start: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
            imgs, labels = [], []
            for c in class_ids:
                for i in range(n):
                    imgs.append(torch.from_numpy(shapes.render(c, start + i)[0]).permute(2, 0, 1))
                    labels.append(c)
            return torch.stack(imgs), torch.tensor(labels)

        pools = [block(AUGMENT_TRAIN_SEED + s * 100_000, per_class) for s in range(seeds)]
        return pools, block(AUGMENT_TEST_SEED, test_per_class)

    def load_classifier(self, config):
        return models.load_toy_classifier(config)

    def dataset(self, weights: Path | None = None):
        from dct.toy.dataset import toy_dataset

        return with_weights(toy_dataset(), weights)


def with_weights(spec, weights: Path | None, world: str = "toy"):
    """``spec`` with its pipeline and classifiers read from ``weights`` (a ``train --out`` directory), if given.

    Lets a freshly retrained world be evaluated before it replaces the shipped weights.

    Raises:
        FileNotFoundError: ``weights`` lacks the pipeline or a classifier file.
    """
    if weights is None:
        return spec
    weights = Path(weights).resolve()
    pipeline = models.pipeline_dir(weights)
    guide, evaluator = (models.classifier_file(weights, name) for name in ("guide", "evaluator"))
    needed = [pipeline / "model_index.json", guide, evaluator]
    missing = [str(f) for f in needed if not f.is_file()]
    if missing:
        raise FileNotFoundError(
            f"--weights {weights} is not a world's weights directory (missing {', '.join(missing)}); "
            f"pass a directory written by `python -m dct.{world}.train --out DIR`"
        )
    return spec.model_copy(
        update={
            "diffusion": spec.diffusion.model_copy(update={"model_id": str(pipeline)}),
            "classifier": spec.classifier.model_copy(update={"model_id": str(guide)}),
            "evaluator": spec.evaluator.model_copy(update={"model_id": str(evaluator)}),
        }
    )


TOY = ToyWorld()
