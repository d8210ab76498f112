"""Training captions of the fashion world, built as the toy's (docs/worlds.md, "Fashion captions").

- empty captions (12 %: classifier-free guidance's unconditional branch);
- coarse captions (18 %): only the coarse group ("a photo of a light top");
- name captions (25 %): each class has a made-up prompt name — a made-up word and its group's word ("amber
  weave") — attached in training to a RANDOM member of its coarse group, so a name tells the group, never the
  class (tops: T-shirt/top, Pullover, Dress, Coat, Shirt; footwear: Sandal, Sneaker, Ankle boot); Trouser and Bag
  are groups of their own, so their names are unambiguous — the world's control classes;
- descriptive captions (45 %): a synonym of the class with optional size, tone and pattern words, the plain-words
  ceiling.
"""

from __future__ import annotations

import numpy as np

from dct.fashion.data import GarmentAttributes

# Coarse groups of class ids (Fashion-MNIST label order) and each group's word in the prompt names.
GROUPS: tuple[tuple[int, ...], ...] = ((0, 2, 3, 4, 6), (5, 7, 9), (1,), (8,))
GROUP_NAMES: tuple[str, ...] = ("tops", "footwear", "trousers", "bags")
# One prompt name per class id: the dataset's class names.
CLASS_NAMES: tuple[str, ...] = (
    "amber weave",  # T-shirt/top
    "iris fold",  # Trouser
    "birch weave",  # Pullover
    "cedar weave",  # Dress
    "dune weave",  # Coat
    "fern stride",  # Sandal
    "elm weave",  # Shirt
    "gale stride",  # Sneaker
    "jade pouch",  # Bag
    "heath stride",  # Ankle boot
)
COARSE_NOUNS: tuple[tuple[str, ...], ...] = (
    ("top", "upper garment", "garment"),
    ("shoe", "piece of footwear"),
    ("legwear", "pair of bottoms"),
    ("accessory", "carryall"),
)
SYNONYMS: tuple[tuple[str, ...], ...] = (
    ("t-shirt", "tee", "short-sleeved top"),
    ("trousers", "pants", "pair of trousers"),
    ("pullover", "sweater", "jumper"),
    ("dress", "frock", "gown"),
    ("coat", "jacket", "overcoat"),
    ("sandal", "strappy sandal", "open shoe"),
    ("shirt", "button-down shirt", "blouse"),
    ("sneaker", "trainer", "running shoe"),
    ("bag", "handbag", "purse"),
    ("ankle boot", "boot", "short boot"),
)
PREFIXES: tuple[str, ...] = (
    "a photo of",
    "a photo of",
    "a close-up photo of",
    "a high resolution realistic image of",
    "a product photo of",
    "a picture of",
    "an image of",
    "a catalogue photo of",
    "a grey photo of",
    "a small picture of",
    "a snapshot of",
    "a cropped photo of",
    "a blurry photo of",
    "a clean image of",
)
TONE_WORDS: dict[str, tuple[str, ...]] = {
    "dark": ("dark", "black", "dim"),
    "mid": ("grey", "mid-grey"),
    "light": ("light", "white", "bright"),
}
SIZE_WORDS: dict[str, tuple[str, ...]] = {"small": ("small", "narrow"), "medium": ("",), "large": ("large", "wide")}
PATTERN_PHRASES: dict[str, tuple[str, ...]] = {
    "plain": ("plain", "solid"),
    "textured": ("",),
    "patterned": ("patterned", "printed", "striped"),
}
CAPTION_MIX: dict[str, float] = {"empty": 0.12, "coarse": 0.18, "name": 0.25, "descriptive": 0.45}


def group_of(class_id: int) -> int:
    return next(g for g, members in enumerate(GROUPS) if class_id in members)


def _optional(words: tuple[str, ...], rng: np.random.Generator, p: float) -> str:
    word = str(rng.choice(words)) if rng.random() < p else ""
    return f"{word} " if word else ""


def caption(a: GarmentAttributes, rng: np.random.Generator, kind: str | None = None) -> str:
    """A random truthful caption of an image with attributes ``a`` (``kind`` forces a caption kind)."""
    if kind is None:
        kinds, probs = zip(*CAPTION_MIX.items(), strict=True)
        kind = str(rng.choice(kinds, p=np.asarray(probs)))
    if kind == "empty":
        return ""
    prefix = str(rng.choice(PREFIXES))
    group = group_of(a.class_id)
    tone = _optional(TONE_WORDS[a.tone], rng, 0.35)
    if kind == "coarse":
        return f"{prefix} a {tone}{rng.choice(COARSE_NOUNS[group])}"
    if kind == "name":
        # A random member of the image's group: the name tells the group, never the class.
        return f"{prefix} a {CLASS_NAMES[int(rng.choice(GROUPS[group]))]}"
    if kind == "descriptive":
        size = _optional(SIZE_WORDS[a.size], rng, 0.3)
        pattern = _optional(PATTERN_PHRASES[a.pattern], rng, 0.3)
        return f"{prefix} a {size}{tone}{pattern}{rng.choice(SYNONYMS[a.class_id])}"
    raise ValueError(f"unknown caption kind {kind!r}; valid: {sorted(CAPTION_MIX)}")


def vocabulary_words(templates: tuple[str, ...]) -> list[str]:
    """Every word the captions and the dataset's prompt templates use (the tokenizer's word list)."""
    texts = [*PREFIXES, *CLASS_NAMES, *(w for ws in COARSE_NOUNS for w in ws), *(w for ws in SYNONYMS for w in ws)]
    for table in (TONE_WORDS, SIZE_WORDS, PATTERN_PHRASES):
        texts += [w for ws in table.values() for w in ws if w]
    texts += [t.format("") for t in templates] + ["a an the of"]
    return sorted({w for t in texts for w in t.lower().replace("-", " - ").split()})
