"""Attribute editors: move ONE attribute of images by a requested amount, as little else as possible.

The probe's intervention test (docs/probe.md) asks whether the guide's probability of a class follows an
attribute when only that attribute changes. Each editor is a small deterministic image operation with one
parameter ``t`` along which its attribute rises monotonically; :meth:`AttributeEditor.__call__` finds, per
image, the ``t`` that moves the attribute (as its extractor in :data:`dct.probe.attributes.
ATTRIBUTE_EXTRACTORS` measures it) by the requested amount, by bisection. Where an image cannot move that
far (a background already white cannot brighten), the edit stops at the end of the range and the amount
reached is reported, not hidden.

One registry, :data:`ATTRIBUTE_EDITORS`, keyed like the extractors; a plugin adds a row. An attribute without
an editor (a classifier label) is "not testable by intervention".
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dct.probe.attributes import (
    ATTRIBUTE_EXTRACTORS,
    BORDER_FRACTION,
    HUE_BINS,
    HUE_MIN_SATURATION,
    HUE_MIN_VALUE,
    _hsv,
    _salient_moments,
    check_images,
    luma,
)

# The background mask: pixels within BACKGROUND_NEAR (RGB distance) of the border band's median colour are
# background (weight 1), beyond BACKGROUND_FAR they are the object (weight 0), linear in between.
BACKGROUND_NEAR = 0.2
BACKGROUND_FAR = 0.4
BISECTION_STEPS = 30
# An edit moves every built-in attribute outside its ``coupled`` set by less than this fraction of the
# requested amount (mean absolute change over images; measured on toy renders, docs/probe.md).
OTHERS_BOUND = 0.5


def _lighten(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """t in [-1, 1]: t > 0 blends toward white by t, t < 0 toward black by -t (hue kept; 0 = no change)."""
    t = t.view(-1, 1, 1, 1)
    return torch.where(t >= 0, x + t * (1 - x), x * (1 + t))


def background_weight(images: torch.Tensor) -> torch.Tensor:
    """``(B, 1, H, W)`` weight in [0, 1]: 1 where a pixel has the border band's (median) colour, 0 on the object."""
    h, w = images.shape[2:]
    band = max(1, round(BORDER_FRACTION * min(h, w)))
    border = torch.ones(h, w, dtype=torch.bool, device=images.device)
    border[band : h - band, band : w - band] = False
    median = images[:, :, border].median(dim=2).values.view(-1, 3, 1, 1)
    dist = (images - median).norm(dim=1, keepdim=True)
    return ((BACKGROUND_FAR - dist) / (BACKGROUND_FAR - BACKGROUND_NEAR)).clamp(0, 1)


def lighten_all(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return _lighten(x, t)


def lighten_background(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    w = background_weight(x)
    return x + w * (_lighten(x, t) - x)


def darken_object(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Raises border − centre contrast with t by darkening (t > 0) or lightening (t < 0) the object only."""
    w = 1 - background_weight(x)
    return x + w * (_lighten(x, -t) - x)


def saturate(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Scale every pixel's distance from its own grey (luma) by e^t: t < 0 toward grey, t > 0 more vivid."""
    y = luma(x).unsqueeze(1)
    return (y + (x - y) * t.exp().view(-1, 1, 1, 1)).clamp(0, 1)


def _resample(x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _base_grid(x: torch.Tensor) -> torch.Tensor:
    b, _, h, w = x.shape
    theta = torch.eye(2, 3, dtype=x.dtype, device=x.device).expand(b, 2, 3)
    return F.affine_grid(theta, [b, 3, h, w], align_corners=False)  # (B, H, W, 2), x then y, in [-1, 1]


def translate(axis: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Move the content by t image sides along ``axis`` (0 = x to the right, 1 = y down), edges padded."""

    def op(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        grid = _base_grid(x).clone()
        grid[..., axis] -= 2 * t.view(-1, 1, 1)
        return _resample(x, grid)

    return op


def rescale(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Zoom by e^t about the salient centroid (t > 0: larger, t < 0: smaller), edges padded."""
    cx, cy, _ = _salient_moments(x)
    centre = torch.stack([cx, cy], dim=1).view(-1, 1, 1, 2) * 2 - 1
    grid = centre + (_base_grid(x) - centre) * (-t).exp().view(-1, 1, 1, 1)
    return _resample(x, grid)


def _hsv_to_rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Inverse of the extractors' HSV: hue in [0, 1), saturation and value in [0, 1] → ``(B, 3, H, W)``."""
    k = torch.stack([(n + h * 6) % 6 for n in (5.0, 3.0, 1.0)], dim=1)
    return v.unsqueeze(1) - (v * s).unsqueeze(1) * torch.clamp(torch.minimum(k, 4 - k), 0, 1)


def hue_toward(bin_index: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """t in [0, 1]: rotate every coloured pixel's hue toward the bin's centre by the fraction t of the way;
    t in [-1, 0): rotate the bin's own pixels away from its centre by |t| · 60°, so they leave the bin.
    Each moved pixel keeps its luma."""
    centre = bin_index / len(HUE_BINS)
    half = 0.5 / len(HUE_BINS)

    def op(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        hue, sat, val = _hsv(x)
        coloured = (sat >= HUE_MIN_SATURATION) & (val >= HUE_MIN_VALUE)
        offset = (hue - centre + 0.5) % 1.0 - 0.5  # signed shortest distance to the centre, in turns
        tt = t.view(-1, 1, 1)
        inside = coloured & (offset.abs() < half)
        away = offset + torch.where(offset >= 0, 1.0, -1.0) * (-tt).clamp_min(0) * 2 * half
        toward = offset * (1 - tt.clamp_min(0))
        new_offset = torch.where(tt >= 0, toward, torch.where(inside, away, offset))
        moved = coloured & (new_offset != offset)
        rgb = _hsv_to_rgb((centre + new_offset) % 1.0, sat, val)
        # Keep each pixel's luma (hues differ in luma: red 0.30, yellow 0.89), so brightness and edges stay.
        rgb = (rgb * (luma(x) / luma(rgb).clamp_min(1e-6)).unsqueeze(1)).clamp(0, 1)
        return torch.where(moved.unsqueeze(1), rgb, x)

    return op


@dataclass(frozen=True)
class AttributeEditor:
    """Moves ``attribute`` by a requested amount: ``op(images, t)`` with the attribute rising in ``t``.

    Attributes:
        attribute: the extractor it moves (a key of :data:`dct.probe.attributes.ATTRIBUTE_EXTRACTORS`).
        description: what the edit does (docs/probe.md lists them).
        op: ``(images (B, 3, H, W) in [0, 1], t (B,)) → images``; ``t = 0`` leaves the images unchanged.
        t_range: the parameter's range ``(low, high)``, with ``low ≤ 0 ≤ high``.
        coupled: the other built-in attributes the edit moves by construction (a size edit changes the share
            of coloured pixels); every other built-in moves by less than half the requested amount
            (:data:`OTHERS_BOUND`, tests/probe/test_probe_editors.py).
    """

    attribute: str
    description: str
    op: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    t_range: tuple[float, float]
    coupled: tuple[str, ...] = ()

    def measure(self, images: torch.Tensor) -> torch.Tensor:
        return ATTRIBUTE_EXTRACTORS[self.attribute](images)[:, 0]

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, amount: float) -> tuple[torch.Tensor, torch.Tensor]:
        """``images`` with the attribute moved by ``amount`` (its own units), per image.

        Returns:
            ``(edited images, reached)``: ``reached`` ``(B,)`` is the change the edit achieved per image (equal
            to ``amount`` within the bisection's tolerance unless the image hit the end of the range).

        Raises:
            ValueError: images not ``(B, 3, H, W)`` float, or an amount that is not finite.
        """
        x = check_images(images)
        if not math.isfinite(amount):
            raise ValueError(f"amount {amount!r} must be a finite number in the attribute's units")
        start = self.measure(x)
        if amount == 0:
            return x, torch.zeros_like(start)
        target = start + amount
        b = x.shape[0]
        low, high = self.t_range
        lo = torch.full((b,), 0.0 if amount > 0 else low, dtype=x.dtype)
        hi = torch.full((b,), high if amount > 0 else 0.0, dtype=x.dtype)
        for _ in range(BISECTION_STEPS):
            mid = (lo + hi) / 2
            below = self.measure(self.op(x, mid)) < target
            lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
        # The end nearer the target (an attribute that moves in steps, e.g. a hue share, may jump past it).
        edited_lo, edited_hi = self.op(x, lo), self.op(x, hi)
        v_lo, v_hi = self.measure(edited_lo), self.measure(edited_hi)
        pick_hi = (v_hi - target).abs() <= (v_lo - target).abs()
        edited = torch.where(pick_hi.view(-1, 1, 1, 1), edited_hi, edited_lo)
        return edited, torch.where(pick_hi, v_hi, v_lo) - start


_HUES = tuple(f"hue_{h}" for h in HUE_BINS)
_LUMA_FAMILY = ("brightness", "border_brightness", "border_contrast")
# HSV saturation of near-black pixels is large and falls as they brighten: luma edits move the colour measures.
_COLOUR_FAMILY = ("saturation", "colourfulness")
# The salient moments weigh edges by their luma contrast, which an edit of the background's or the object's
# luma changes (the object's edges gain or lose weight against the background's gradient and noise).
_SALIENT = ("salient_x", "salient_y", "salient_spread")

# One row per built-in statistic; a plugin adds one: ATTRIBUTE_EDITORS["x"] = AttributeEditor("x", ...).
ATTRIBUTE_EDITORS: dict[str, AttributeEditor] = {
    "brightness": AttributeEditor(
        "brightness",
        "blend the whole image toward white (up) or black (down)",
        lighten_all,
        (-1.0, 1.0),
        ("border_brightness", "border_contrast", *_COLOUR_FAMILY),
    ),
    "border_brightness": AttributeEditor(
        "border_brightness",
        "blend the background (pixels of the border band's colour) toward white or black; the object is kept",
        lighten_background,
        (-1.0, 1.0),
        ("brightness", "border_contrast", *_COLOUR_FAMILY, *_SALIENT),
    ),
    "border_contrast": AttributeEditor(
        "border_contrast",
        "darken (up) or lighten (down) the object only; the background is kept",
        darken_object,
        (-1.0, 1.0),
        ("brightness", *_COLOUR_FAMILY, *_SALIENT),
    ),
    "saturation": AttributeEditor(
        "saturation",
        "scale each pixel's distance from its grey (luma) by e^t",
        saturate,
        (-8.0, 4.0),
        ("colourfulness", *_HUES),
    ),
    "colourfulness": AttributeEditor(
        "colourfulness",
        "scale each pixel's distance from its grey (luma) by e^t",
        saturate,
        (-8.0, 4.0),
        ("saturation", *_HUES),
    ),
    "salient_x": AttributeEditor(
        "salient_x",
        "translate the content horizontally, edges padded",
        translate(0),
        (-0.5, 0.5),
        ("border_contrast",),
    ),
    "salient_y": AttributeEditor(
        "salient_y",
        "translate the content vertically, edges padded",
        translate(1),
        (-0.5, 0.5),
        ("border_contrast",),
    ),
    "salient_spread": AttributeEditor(
        "salient_spread",
        "zoom about the salient centroid by e^t, edges padded",
        rescale,
        (-1.5, 1.5),
        # The object's area is what changes: every share-of-pixels measure, and the energy centroid.
        (*_LUMA_FAMILY, *_COLOUR_FAMILY, *_HUES, "salient_x", "salient_y"),
    ),
    **{
        f"hue_{h}": AttributeEditor(
            f"hue_{h}",
            f"rotate coloured pixels' hue toward {h} (up), or the {h} pixels' hue out of its bin (down), luma kept",
            hue_toward(i),
            (-1.0, 1.0),
            (*(x for x in _HUES if x != f"hue_{h}"), "colourfulness"),
        )
        for i, h in enumerate(HUE_BINS)
    },
}
