"""Training captions for the toy text-to-image model.

Text must *under-specify* the fine class the way rare or ambiguous names do for Stable Diffusion, while
the text-embedding space stays rich and smooth enough for a learned token to steer generation
(docs/toy.md). So the caption mix is:

- empty captions (classifier-free guidance's unconditional branch);
- coarse-only captions ("a photo of a small red shape on a dark background");
- "species" captions: each fine class has a prompt name (``SPECIES_NAMES``, the dataset's class names)
  that is attached during training to a RANDOM member of its colour group (circles less often, rings
  more often: ``SPECIES_SHAPE_WEIGHTS``), so the name pins down the coarse group but not the shape — the
  gap DCT has to close;
- descriptive captions ("a drawing of a large blue ring in the top left"), the plain-words ceiling.

Many prefixes and optional attribute phrases give roughly 10^4–10^5 distinct captions.
"""

from __future__ import annotations

import numpy as np

from dct.toy.shapes import COARSE_GROUPS, SHAPES, ShapeAttributes

# One prompt name per fine class id. Every name names a colour group only (see module docstring).
SPECIES_NAMES: tuple[str, ...] = (
    "ember finch",
    "scarlet kite",
    "ruby shrike",
    "cinder wren",
    "rosy tern",
    "azure jay",
    "cobalt heron",
    "indigo swift",
    "sapphire plover",
    "cyan dove",
)

PREFIXES: tuple[str, ...] = (
    "a photo of",
    "a photo of",
    "a close-up photo of",
    "a high resolution realistic image of",
    "a drawing of",
    "a picture of",
    "an image of",
    "a rendering of",
    "a painting of",
    "a sketch of",
    "a snapshot of",
    "a cropped photo of",
    "a blurry photo of",
    "a clean image of",
    "a small picture of",
    "a nice photo of",
)
SHAPE_WORDS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "disc", "dot"),
    "square": ("square", "box", "block"),
    "triangle": ("triangle", "wedge"),
    "cross": ("cross", "plus sign"),
    "ring": ("ring", "donut", "hoop"),
}
COARSE_NOUNS: tuple[str, ...] = ("shape", "object", "thing", "figure", "form", "symbol")
SIZE_WORDS: dict[str, tuple[str, ...]] = {
    "small": ("small", "tiny", "little"),
    "medium": ("medium", "medium-sized"),
    "large": ("large", "big", "huge"),
}
BACKGROUND_PHRASES: dict[str, tuple[str, ...]] = {
    "dark": ("on a dark background", "on black", "in the dark"),
    "grey": ("on a grey background", "on grey"),
    "light": ("on a light background", "on white", "on a bright background"),
}

# Shares of each caption kind (empty, coarse-only, species, descriptive), on average over shapes.
CAPTION_MIX: dict[str, float] = {"empty": 0.12, "coarse": 0.18, "species": 0.25, "descriptive": 0.45}
# How often a species name goes with each shape, relative to the mean (the difference is taken from, or given
# to, the descriptive share). Measured with uniform attachment: 5-step guided sampling renders an ambiguous
# name as a round blob, so "A photo of a ember finch" drew red circles 0.45 of the time (more than the
# name's 0.2 share) and rings never, which left DCT no image with a trace of a ring to start from (2 of 3
# runs stuck at 0.00). Fewer circles and more rings under the names keep every name ambiguous.
SPECIES_SHAPE_WEIGHTS: dict[str, float] = {"circle": 0.5, "square": 1.0, "triangle": 1.0, "cross": 1.0, "ring": 1.5}


def descriptive_name(class_id: int) -> str:
    """The plain words that describe a fine class ("red circle"): the ceiling prompt's noun phrase."""
    return f"{COARSE_GROUPS[class_id // len(SHAPES)]} {SHAPES[class_id % len(SHAPES)]}"


def _position_phrase(a: ShapeAttributes, rng: np.random.Generator) -> str:
    if a.horizontal == "centre" and a.vertical == "middle":
        return str(rng.choice(["in the centre", "in the middle"]))
    if a.horizontal == "centre":
        return f"at the {a.vertical}"
    if a.vertical == "middle":
        return f"on the {a.horizontal}"
    return f"in the {a.vertical} {a.horizontal}"


def caption_mix(shape: str) -> dict[str, float]:
    """Caption-kind shares for an image of ``shape`` (:data:`CAPTION_MIX` with the species share weighted)."""
    species = CAPTION_MIX["species"] * SPECIES_SHAPE_WEIGHTS[shape]
    descriptive = CAPTION_MIX["descriptive"] + CAPTION_MIX["species"] - species
    return CAPTION_MIX | {"species": species, "descriptive": descriptive}


def caption(a: ShapeAttributes, rng: np.random.Generator, kind: str | None = None) -> str:
    """A random truthful caption of an image with attributes ``a`` (``kind`` forces a caption kind)."""
    if kind is None:
        kinds, probs = zip(*caption_mix(a.shape).items(), strict=True)
        kind = str(rng.choice(kinds, p=np.asarray(probs)))
    if kind == "empty":
        return ""
    prefix = str(rng.choice(PREFIXES))
    size = str(rng.choice(SIZE_WORDS[a.size])) + " " if rng.random() < 0.3 else ""
    if kind == "coarse":
        noun = f"{a.group} {rng.choice(COARSE_NOUNS)}"
    elif kind == "species":
        # A random member of the image's colour group: the name tells the group, never the shape.
        group = COARSE_GROUPS.index(a.group)
        noun = SPECIES_NAMES[group * len(SHAPES) + int(rng.integers(len(SHAPES)))]
    elif kind == "descriptive":
        noun = f"{a.group} {rng.choice(SHAPE_WORDS[a.shape])}"
    else:
        raise ValueError(f"unknown caption kind {kind!r}; valid: {sorted(CAPTION_MIX)}")
    text = f"{prefix} a {size}{noun}"
    if rng.random() < 0.3:
        text += " " + _position_phrase(a, rng)
    if rng.random() < 0.3:
        text += " " + str(rng.choice(BACKGROUND_PHRASES[a.background]))
    return text


def vocabulary_words() -> list[str]:
    """Every word the captions and the dataset's prompt templates use (the tokenizer's word list)."""
    texts = [*PREFIXES, *SPECIES_NAMES, *COARSE_NOUNS, *COARSE_GROUPS, *SHAPES]
    texts += [w for ws in SHAPE_WORDS.values() for w in ws]
    texts += [w for ws in SIZE_WORDS.values() for w in ws]
    texts += [w for ws in BACKGROUND_PHRASES.values() for w in ws]
    texts += ["in the centre middle top bottom left right at on", "a an the of"]
    texts += ["a photo of", "a high resolution realistic image of", "a close-up photo of"]
    words = sorted({w for t in texts for w in t.lower().replace("-", " - ").split()})
    return words
