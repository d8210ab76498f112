"""Shipped class-name lists, and the rules that turn a classifier's label into a prompt name.

Files (one line per class id, 0-based, in the classifier's label order):

- ``imagenet1k.txt``: ``synset<TAB>label`` — the standard ImageNet-1k order, the same as
  ``google/vit-large-patch16-224``'s ``id2label`` (from timm's ImageNetInfo, WordNet lemmas);
- ``cub200.txt``: CUB-200-2011 ``classes.txt`` names (``001.Black_footed_Albatross``).

iNaturalist 2021 (10,000 classes) is not shipped: its names are read from the classifier's
``config.json`` (``id2label``) in the Hugging Face cache, which ``dct models pull --dataset inat`` fills.

Names must be usable as prompt text AND as path components, and unique per dataset (class ids are the
key everywhere; names are for people and prompts).
"""

from __future__ import annotations

import gzip
import re
from collections import defaultdict
from collections.abc import Sequence
from importlib import resources

# ImageNet first names that collide (case-insensitively), disambiguated by a WordNet-derived hint per
# synset. The reference used the bare first name for both ("crane"), which also collided its folders.
IMAGENET_HINTS: dict[str, str] = {
    "n02012849": "bird",  # crane: large long-necked wading bird
    "n03126707": "machine",  # crane: lifts and moves heavy objects
    "n02113186": "Welsh corgi",  # Cardigan, Cardigan Welsh corgi
    "n02963159": "sweater",  # cardigan: knitted jacket
    "n03710637": "leotard",  # maillot: tights for dancers or gymnasts
    "n03710721": "swimsuit",  # maillot, tank suit
}

_INAT_TAXON = re.compile(
    r"^(?:\d+_)?(Animalia|Plantae|Fungi|Protozoa|Chromista|Bacteria|Archaea)_[^_]+_[^_]+_[^_]+_[^_]+_([^_]+)_([^_]+)$"
)


def read_lines(filename: str) -> list[str]:
    """Lines of a shipped label file (``.txt`` or ``.txt.gz``) under dct/models/labels/."""
    ref = resources.files(__name__).joinpath(filename)
    data = ref.read_bytes()
    if filename.endswith(".gz"):
        data = gzip.decompress(data)
    return [line for line in data.decode("utf-8").splitlines() if line.strip()]


def disambiguate(names: Sequence[str], hints: Sequence[str | None]) -> list[str]:
    """Make names unique (case-insensitively): every member of a colliding group gets `` (hint)``,
    where the hint is ``hints[i]`` or, failing that, ``class <id>``."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, n in enumerate(names):
        groups[n.lower()].append(i)
    out = list(names)
    for ids in groups.values():
        if len(ids) > 1:
            for i in ids:
                out[i] = f"{names[i]} ({hints[i] or f'class {i}'})"
    return out


def imagenet_labels() -> list[tuple[str, str]]:
    """``(synset, label)`` per ImageNet-1k class id; label = all comma-separated WordNet names."""
    return [tuple(line.split("\t", 1)) for line in read_lines("imagenet1k.txt")]  # type: ignore[misc]


def imagenet_class_names() -> list[str]:
    """Prompt names: the first comma-separated name (reference), colliding ones disambiguated."""
    labels = imagenet_labels()
    first = [label.split(",")[0].strip() for _, label in labels]
    return disambiguate(first, [IMAGENET_HINTS.get(s) for s, _ in labels])


def cub_prompt_name(label: str) -> str:
    """``001.Black_footed_Albatross`` -> ``Black footed Albatross`` (reference: underscores as spaces)."""
    return re.sub(r"^\d+\.", "", label).replace("_", " ").strip()


def cub_class_names() -> list[str]:
    return [cub_prompt_name(line) for line in read_lines("cub200.txt")]


def inat_prompt_name(label: str) -> str:
    """An iNat21 label to a prompt name.

    iNat21 category names are ``00000_Animalia_Annelida_Clitellata_Haplotaxida_Lumbricidae_Lumbricus_terrestris``;
    we prompt with the binomial ("Lumbricus terrestris") rather than the whole taxonomy. Any other label
    follows the reference rule: underscores as spaces.
    """
    m = _INAT_TAXON.match(label)
    if m:
        return f"{m.group(2)} {m.group(3)}"
    return label.replace("_", " ").strip()


def names_from_id2label(id2label: dict, rule: str) -> list[str]:
    """Prompt names from a transformers ``id2label`` map, by rule ``inat`` / ``cub`` / ``plain``."""
    ids = sorted(int(k) for k in id2label)
    if ids != list(range(len(ids))):
        raise ValueError(f"id2label ids are not 0..{len(ids) - 1} without gaps")
    labels = {int(k): v for k, v in id2label.items()}
    convert = {"inat": inat_prompt_name, "cub": cub_prompt_name, "plain": lambda s: s.replace("_", " ").strip()}[rule]
    raw = [labels[i] for i in ids]
    return disambiguate([convert(s) for s in raw], [s.replace("_", " ") for s in raw])
