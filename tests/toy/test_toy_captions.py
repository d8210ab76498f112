from __future__ import annotations

import numpy as np
import pytest

from dct.toy import captions, shapes


def _captions(kind: str | None, n: int = 400) -> list[tuple[shapes.ShapeAttributes, str]]:
    rng = np.random.default_rng(0)
    _, _, attrs = shapes.sample(n, seed=2)
    return [(a, captions.caption(a, rng, kind)) for a in attrs]


def test_species_names_only_name_the_coarse_group():
    """A species name is attached to random members of its colour group, never tied to one shape."""
    shape_words = {w for ws in captions.SHAPE_WORDS.values() for w in ws}
    seen: dict[str, set[int]] = {}
    for a, text in _captions("species", 2000):
        name = next(n for n in captions.SPECIES_NAMES if n in text)
        assert not any(f" {w}" in text.replace(name, "") for w in shape_words if w not in ("dot",))
        seen.setdefault(name, set()).add(a.class_id)
    for i, name in enumerate(captions.SPECIES_NAMES):
        group = i // len(shapes.SHAPES)
        assert {shapes.coarse_of(c) for c in seen[name]} == {group}
        assert len(seen[name]) == len(shapes.SHAPES)  # every member of the group, not the named class


def test_captions_are_rich_and_include_empty_ones():
    texts = [t for _, t in _captions(None, 4000)]
    assert "" in texts
    assert len(set(texts)) > 2000
    assert len(captions.SPECIES_NAMES) == shapes.NUM_CLASSES == len(set(captions.SPECIES_NAMES))


def test_descriptive_captions_name_the_fine_class():
    for a, text in _captions("descriptive", 200):
        assert a.group in text and any(w in text for w in captions.SHAPE_WORDS[a.shape])


def test_species_names_go_with_circles_less_and_rings_more_often():
    """The sampler draws an ambiguous name as a round blob; the names' shape weights counter that (docs/toy.md)."""
    counts = dict.fromkeys(shapes.SHAPES, 0)
    for a, text in _captions(None, 6000):
        if any(n in text for n in captions.SPECIES_NAMES):
            counts[a.shape] += 1
    total = sum(counts.values())
    assert 0.2 * 6000 < total < 0.3 * 6000  # the species share stays ~25 % overall
    assert counts["circle"] < 0.7 * counts["square"] and counts["ring"] > 1.3 * counts["square"]
    for shape in shapes.SHAPES:
        assert sum(captions.caption_mix(shape).values()) == pytest.approx(1.0)
