"""The world interface (docs/worlds.md): the toy and fashion worlds share one training, evaluation and grid code
path, and a third world built only through :class:`dct.worlds.World` trains, evaluates and draws its grid. (The
toy's shipped weights are pinned by their keys: tests/test_config.py.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dct.worlds import Split, TrainRecipe, World, get_world


class Stripes(World):
    """A third world, three classes of stripes (horizontal, vertical, diagonal) in two coarse groups; its
    captions name the group or the class. Nothing here is the toy's or the fashion world's."""

    name = "stripes"
    class_names = ("bar one", "bar two", "slant")
    groups = ((0, 1), (2,))
    recipe = TrainRecipe(
        num_images=48, vae_steps=2, guide_steps=2, evaluator_steps=2, diffusion_steps=2, guide_redrawn_steps=2,
        batch=8, classifier_batch=8, classifier_split="halves", test_images=12,
    )
    NOUNS = (("horizontal stripes",), ("vertical stripes",), ("diagonal stripes", "slanted stripes"))

    def __init__(self, weights_dir: Path) -> None:
        self.weights_dir = weights_dir

    def _make(self, n: int, seed: int) -> Split:
        g = torch.Generator().manual_seed(seed)
        labels = torch.arange(n) % 3
        u, v = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
        patterns = [(u // 4) % 2, (v // 4) % 2, ((u + v) // 5) % 2]
        images = torch.stack([patterns[c] for c in labels.tolist()]).unsqueeze(1).repeat(1, 3, 1, 1)
        images = (0.2 + 0.6 * images + 0.05 * torch.rand(images.shape, generator=g)).clamp(0, 1)
        return Split(images, labels, labels.tolist())

    def train_split(self, n=None):
        return self._make(n or 96, 1)

    def test_split(self, n=None):
        return self._make(n or 12, 2)

    def caption(self, attrs, rng, kind=None):
        kind = kind or str(rng.choice(["empty", "name", "descriptive"]))
        if kind == "empty":
            return ""
        if kind == "name":
            return f"a photo of a {self.class_names[int(rng.choice(self.groups[self.coarse_of(attrs)]))]}"
        return f"a photo of {rng.choice(self.NOUNS[attrs])}"

    def vocabulary(self):
        words = {"a", "photo", "of", "high", "resolution", "realistic", "image", "close", "up", "-"}
        words |= {w for n in self.class_names for w in n.split()}
        words |= {w for ns in self.NOUNS for n in ns for w in n.split()}
        return sorted(words)

    def descriptive_nouns(self, class_id):
        return self.NOUNS[class_id]

    def describe(self, class_id):
        return self.NOUNS[class_id][0]

    def reference_images(self, per_class, class_ids=None):
        split = self._make(3 * per_class, 3)
        ids = range(3) if class_ids is None else class_ids
        return torch.cat([split.images[split.labels == c] for c in ids])

    def load_classifier(self, config):
        return get_world("toy").load_classifier(config)  # kind "toy" with .safetensors paths

    def dataset(self, weights=None):
        from dct.toy.dataset import toy_dataset
        from dct.toy.world import with_weights

        spec = toy_dataset().model_copy(update={"name": self.name, "class_names": self.class_names})
        return with_weights(spec, weights or self.weights_dir, self.name)


def test_a_third_world_trains_evaluates_and_draws_through_the_interface(tmp_path):
    from dct.worlds.evaluate import evaluate, format_table
    from dct.worlds.grid import grid_image
    from dct.worlds.train import parser, train_world

    world = Stripes(tmp_path / "weights")
    args = parser(world).parse_args(["--out", str(world.weights_dir), "--threads", "1"])
    timings = train_world(world, args)
    assert {"data", "vae", "guide", "evaluator", "diffusion", "guide on redrawn images", "total"} <= set(timings)
    assert (world.weights_dir / "pipeline" / "model_index.json").is_file()
    # "halves": the guide and the evaluator train on disjoint halves of the train split
    full = world.train_split()
    guide_half, eval_half = world.classifier_split(full, "guide"), world.classifier_split(full, "evaluator")
    assert len(guide_half) == len(eval_half) == 48
    assert not torch.equal(guide_half.images, eval_half.images)

    summary = evaluate([2], 1, tmp_path / "eval", None, world)
    (cls,) = summary["classes"]
    assert cls["class_name"] == "slant" and cls["description"] == "diagonal stripes"
    assert cls["ceiling_prompt_noun"] in world.NOUNS[2]
    assert summary["world"] == "stripes" and "slant" in format_table(summary)
    token_file = tmp_path / "eval" / "tokens" / "r0-00002.safetensors"
    from dct.artifacts.token_file import load_token

    token, vector, meta = load_token(token_file)
    assert meta["dataset"] == "stripes" and vector.ndim == 1
    spec = world.dataset()
    from dct.worlds.evaluate import load_world

    pipe, _, _ = load_world(spec)
    grid = grid_image(pipe, spec.run_config(), spec.class_names, {2: (token, vector)}, 2, upscale=1)
    assert grid.shape[0] == 3 and grid.shape[2] > grid.shape[1]  # one row: 2 + gap + 2 images


def test_toy_and_fashion_are_worlds_of_the_shared_code():
    toy, fashion = get_world("toy"), get_world("fashion")
    assert isinstance(toy, World) and isinstance(fashion, World)
    assert toy.recipe.classifier_split == "shared" and fashion.recipe.classifier_split == "halves"
    assert toy.coarse_of(7) == 1 and fashion.coarse_of(9) == fashion.coarse_of(5) != fashion.coarse_of(1)
    assert [fashion.coarse_of(c) for c in range(10)].count(fashion.coarse_of(1)) == 1  # Trouser alone
    with pytest.raises(ValueError, match="unknown world 'mnist'; valid: fashion, toy"):
        get_world("mnist")
    # the toy's captions through the interface are the toy's own
    from dct.toy import captions, shapes

    _, _, attrs = shapes.sample(3, 5)
    a, b = np.random.default_rng(3), np.random.default_rng(3)
    assert [toy.caption(x, a, "name") for x in attrs] == [captions.caption(x, b, "species") for x in attrs]


def test_halves_give_the_guide_and_the_evaluator_disjoint_images():
    """docs/worlds.md: under "halves" the guide and the evaluator train on disjoint halves of the train split (the
    fashion world's recipe); under "shared" on the same images (the toy's)."""
    images = torch.arange(8.0).view(8, 1, 1, 1).repeat(1, 3, 2, 2)
    split = Split(images, torch.arange(8) % 2, list(range(8)))
    fashion, toy = get_world("fashion"), get_world("toy")
    guide, evaluator = fashion.classifier_split(split, "guide"), fashion.classifier_split(split, "evaluator")
    assert set(guide.attrs).isdisjoint(evaluator.attrs) and set(guide.attrs) | set(evaluator.attrs) == set(range(8))
    assert toy.classifier_split(split, "guide").attrs == toy.classifier_split(split, "evaluator").attrs == split.attrs


def test_a_world_brings_its_real_images_to_the_augmentation_experiment(tmp_path):
    """docs/worlds.md: by default `World.augment_real` draws each training seed's pool from the train split (a
    separate draw per seed, per_class of each selected class) and tests on the test split's images of those
    classes; a class with too few images is named."""
    world = Stripes(tmp_path)
    train, test = world.train_split(), world.test_split()
    pools, (test_images, test_labels) = world.augment_real([2, 0], seeds=2, per_class=5, test_per_class=150)
    assert len(pools) == 2
    for images, labels in pools:
        assert sorted(labels.tolist()) == [0] * 5 + [2] * 5
        for img, label in zip(images, labels.tolist(), strict=True):  # a train image of the class it is labelled
            assert any(torch.equal(img, t) for t in train.images[train.labels == label])
    assert not torch.equal(pools[0][0], pools[1][0])  # each training seed its own draw
    keep = (test.labels == 0) | (test.labels == 2)
    assert torch.equal(test_images, test.images[keep]) and torch.equal(test_labels, test.labels[keep])
    with pytest.raises(ValueError, match="class 2 has 32 real training images, fewer than the 40 asked for"):
        world.augment_real([2, 0], seeds=1, per_class=40, test_per_class=150)
