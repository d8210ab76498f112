"""Attribute extractors: images ``(B, 3, H, W)`` float in [0, 1] → one value per image and attribute.

One registry, :data:`ATTRIBUTE_EXTRACTORS`: a name → an :class:`AttributeExtractor`. The built-in ones are
image statistics that need no model; every built-in value lies on a 0–1 scale (the border-vs-centre contrast
on −1..1), so absolute shifts are comparable across attributes (docs/probe.md lists units and scales).
:class:`ClassifierAttributes` turns any loaded classifier into an attribute source: its mean softmax
probability of each label, i.e. which labels the images trigger.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dct.models.interface import ImageClassifier

# Rec. 601 luma weights: brightness as perceived, the same weights PIL's "L" conversion uses.
LUMA = (0.299, 0.587, 0.114)
# Pixels this saturated and this bright count as "coloured" for the hue histogram; greys have no hue.
HUE_MIN_SATURATION = 0.2
HUE_MIN_VALUE = 0.2
HUE_BINS = ("red", "yellow", "green", "cyan", "blue", "magenta")  # 60° each, centred on the name
# The border band is this fraction of the shorter side; the centre box is the middle half in each direction.
BORDER_FRACTION = 0.125


def check_images(images: torch.Tensor) -> torch.Tensor:
    """Raises ValueError unless ``images`` is ``(B, 3, H, W)`` float with B ≥ 1 and H, W ≥ 4."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a (B, 3, H, W) tensor, got {shape!r}")
    if not images.is_floating_point():
        raise ValueError(f"images must be float in [0, 1], got dtype {images.dtype}; divide uint8 images by 255")
    if images.shape[0] < 1 or min(images.shape[2:]) < 4:
        raise ValueError(f"images {tuple(images.shape)!r} need B >= 1 and H, W >= 4 pixels")
    return images.float().clamp(0, 1)


def luma(images: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` → ``(B, H, W)`` Rec. 601 luma in [0, 1]."""
    w = images.new_tensor(LUMA).view(1, 3, 1, 1)
    return (images * w).sum(1)


def _hsv(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hue in [0, 1) (0 = red, 1/3 = green, 2/3 = blue), saturation and value in [0, 1], each ``(B, H, W)``."""
    r, g, b = images.unbind(1)
    value, argmax = images.max(1)
    delta = value - images.min(1).values
    sat = torch.where(value > 0, delta / value.clamp_min(1e-8), torch.zeros_like(value))
    safe = delta.clamp_min(1e-8)
    sector = torch.where(argmax == 1, (b - r) / safe + 2, (r - g) / safe + 4)
    hue = torch.where(argmax == 0, ((g - b) / safe) % 6, sector)
    return (hue / 6) % 1.0, sat, value


def _border_mask(h: int, w: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    band = max(1, round(BORDER_FRACTION * min(h, w)))
    border = torch.ones(h, w, dtype=torch.bool, device=device)
    border[band : h - band, band : w - band] = False
    centre = torch.zeros(h, w, dtype=torch.bool, device=device)
    centre[h // 4 : h - h // 4, w // 4 : w - w // 4] = True
    return border, centre


def brightness(images: torch.Tensor) -> torch.Tensor:
    return luma(images).mean((1, 2))


def saturation(images: torch.Tensor) -> torch.Tensor:
    return _hsv(images)[1].mean((1, 2))


def colourfulness(images: torch.Tensor) -> torch.Tensor:
    """Hasler & Süsstrunk (2003) colourfulness on [0, 1] RGB, divided by its maximum so it lies in [0, 1]."""
    r, g, b = images.unbind(1)
    rg, yb = r - g, 0.5 * (r + g) - b
    std = (rg.flatten(1).var(1, unbiased=False) + yb.flatten(1).var(1, unbiased=False)).sqrt()
    mean = (rg.flatten(1).mean(1) ** 2 + yb.flatten(1).mean(1) ** 2).sqrt()
    # rg and yb lie in [-1, 1], so each variance is <= 1 and each |mean| <= 1: the sum is <= 1.3 * sqrt(2).
    return (std + 0.3 * mean) / (1.3 * math.sqrt(2))


def border_brightness(images: torch.Tensor) -> torch.Tensor:
    border, _ = _border_mask(*images.shape[2:], images.device)
    return luma(images)[:, border].mean(1)


def border_contrast(images: torch.Tensor) -> torch.Tensor:
    """Mean luma of the border band minus that of the centre box, in [-1, 1] (> 0: background brighter)."""
    border, centre = _border_mask(*images.shape[2:], images.device)
    y = luma(images)
    return y[:, border].mean(1) - y[:, centre].mean(1)


def _gradient_energy(images: torch.Tensor) -> torch.Tensor:
    """Squared Sobel magnitude of the luma ``(B, H, W)``: where the image has edges (its salient structure)."""
    kx = images.new_tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8
    k = torch.stack([kx, kx.T]).unsqueeze(1)
    g = F.conv2d(F.pad(luma(images).unsqueeze(1), (1, 1, 1, 1), mode="replicate"), k)
    return (g**2).sum(1)


def _salient_moments(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Centroid (x, y) in [0, 1] (0 = left/top) and RMS spread around it, in units of the image side."""
    e = _gradient_energy(images)
    b, h, w = e.shape
    ys = (torch.arange(h, device=e.device, dtype=e.dtype) + 0.5) / h
    xs = (torch.arange(w, device=e.device, dtype=e.dtype) + 0.5) / w
    total = e.sum((1, 2))
    # A flat image has no salient region: uniform weights put it in the centre with the spread of the frame.
    flat = total <= 1e-12
    e = torch.where(flat.view(b, 1, 1), torch.ones_like(e), e)
    p = e / e.sum((1, 2), keepdim=True)
    cx, cy = (p.sum(1) * xs).sum(1), (p.sum(2) * ys).sum(1)
    var = (p * ((xs.view(1, 1, w) - cx.view(b, 1, 1)) ** 2 + (ys.view(1, h, 1) - cy.view(b, 1, 1)) ** 2)).sum((1, 2))
    return cx, cy, var.sqrt()


def salient_x(images: torch.Tensor) -> torch.Tensor:
    return _salient_moments(images)[0]


def salient_y(images: torch.Tensor) -> torch.Tensor:
    return _salient_moments(images)[1]


def salient_spread(images: torch.Tensor) -> torch.Tensor:
    return _salient_moments(images)[2]


def hue_share(images: torch.Tensor, bin_index: int) -> torch.Tensor:
    """Share of ALL pixels that are coloured (S, V ≥ 0.2) with a hue in bin ``bin_index`` (60° wide)."""
    hue, sat, val = _hsv(images)
    coloured = (sat >= HUE_MIN_SATURATION) & (val >= HUE_MIN_VALUE)
    bins = ((hue * len(HUE_BINS) + 0.5).floor().long()) % len(HUE_BINS)  # red straddles 0°
    return (coloured & (bins == bin_index)).float().mean((1, 2))


@dataclass(frozen=True)
class AttributeExtractor:
    """Images ``(B, 3, H, W)`` float in [0, 1] → values ``(B, K)`` float, one column per name in ``names``.

    Attributes:
        name: registry key (the ``--attributes`` value).
        names: the attribute names of the K columns (a built-in statistic has one: its own name).
        unit: what the value measures and on which scale (written into the ``probe`` table).
        fn: the computation.
        labels_are_classes: column ``k`` is the probed dataset's class ``k`` (the run's guide or evaluator):
            a class's own label is then left out of its rows, since the token was optimised to raise it —
            the probe asks which OTHER labels the images trigger (accuracy is in the ``classes`` table).
    """

    name: str
    names: tuple[str, ...]
    unit: str
    fn: Callable[[torch.Tensor], torch.Tensor]
    labels_are_classes: bool = False

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        out = self.fn(check_images(images))
        return (out.unsqueeze(1) if out.ndim == 1 else out).float()


def _builtin(name: str, unit: str, fn: Callable[[torch.Tensor], torch.Tensor]) -> AttributeExtractor:
    return AttributeExtractor(name, (name,), unit, fn)


# The built-in statistics, one row each; plugins add a row: ATTRIBUTE_EXTRACTORS["x"] = AttributeExtractor(...).
ATTRIBUTE_EXTRACTORS: dict[str, AttributeExtractor] = {
    "brightness": _builtin("brightness", "mean Rec. 601 luma, 0-1", brightness),
    "saturation": _builtin("saturation", "mean HSV saturation, 0-1", saturation),
    "colourfulness": _builtin("colourfulness", "Hasler-Suesstrunk colourfulness / its maximum, 0-1", colourfulness),
    "border_brightness": _builtin(
        "border_brightness", "mean luma of the outer 1/8 band (background proxy), 0-1", border_brightness
    ),
    "border_contrast": _builtin("border_contrast", "border luma - centre luma, -1..1", border_contrast),
    "salient_x": _builtin("salient_x", "x of the gradient-energy centroid, 0 = left, 1 = right", salient_x),
    "salient_y": _builtin("salient_y", "y of the gradient-energy centroid, 0 = top, 1 = bottom", salient_y),
    "salient_spread": _builtin(
        "salient_spread", "RMS distance of gradient energy from its centroid, in image sides (0-0.71)", salient_spread
    ),
    **{
        f"hue_{h}": _builtin(
            f"hue_{h}", f"share of pixels coloured {h} (60 deg bin, S and V >= 0.2), 0-1",
            lambda x, i=i: hue_share(x, i),
        )
        for i, h in enumerate(HUE_BINS)
    },
}


def softmax_probabilities(classifier: ImageClassifier, batch_size: int = 64) -> Callable[[torch.Tensor], torch.Tensor]:
    """Images ``(B, 3, H, W)`` in [0, 1] → ``(B, C)`` float softmax probabilities of ``classifier``, on the CPU,
    ``batch_size`` images per forward pass (the probe's classifier sources and its intervention test)."""

    @torch.no_grad()
    def probs(images: torch.Tensor) -> torch.Tensor:
        device = next(classifier.parameters()).device
        return torch.cat([classifier(x.to(device)).softmax(-1).float().cpu() for x in images.split(batch_size)])

    return probs


def classifier_attributes(
    classifier: ImageClassifier, source: str, batch_size: int = 64, *, labels_are_classes: bool = False
) -> AttributeExtractor:
    """An attribute source from any classifier: its softmax probability of every label, one column each.

    Args:
        classifier: a loaded classifier (``dct.models.classifiers.load_classifier`` loads any registered kind).
        source: the source's name in the table, e.g. ``"guide"`` or ``"evaluator"``; attribute names are
            ``"{source}:{label}"``.
        batch_size: images per forward pass.
        labels_are_classes: the classifier's label ids are the probed dataset's class ids (see
            :class:`AttributeExtractor`); True for the run's own guide and evaluator.

    Returns:
        An extractor of ``(B, C)`` probabilities in [0, 1] (C = ``classifier.num_classes``).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size {batch_size!r} must be a positive integer")

    probs = softmax_probabilities(classifier, batch_size)
    names = tuple(f"{source}:{label}" for label in classifier.labels)
    unit = f"mean softmax probability of the label under {source}, 0-1"
    return AttributeExtractor(source, names, unit, probs, labels_are_classes=labels_are_classes)


def resolve_attributes(names: Sequence[str] | None) -> list[AttributeExtractor]:
    """The built-in extractors named in ``names`` (None or ``["all"]``: every one), in registry order.

    Raises:
        ValueError: an unknown name (the message lists the valid ones).
    """
    if names is None or list(names) == ["all"]:
        return list(ATTRIBUTE_EXTRACTORS.values())
    unknown = [n for n in names if n not in ATTRIBUTE_EXTRACTORS]
    if unknown:
        raise ValueError(f"unknown attribute(s) {unknown!r}; choose from {sorted(ATTRIBUTE_EXTRACTORS)} or 'all'")
    if not names:
        raise ValueError("no attributes given; name at least one or use 'all'")
    return [ATTRIBUTE_EXTRACTORS[n] for n in dict.fromkeys(names)]
