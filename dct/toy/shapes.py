"""Procedural shapes: the toy world's "real images" (training data and FID reference set).

Ten fine classes = five shapes × two colour groups (the coarse classes). Every image is a pure function
of its seed, so the reference set and every training set can be regenerated bit-for-bit anywhere.
Within a class the position, size, rotation, hue, background (brightness, tint, gradient) and pixel
noise vary, so that sample quality and FID measure something.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

IMAGE_SIZE = 32
COARSE_GROUPS: tuple[str, ...] = ("red", "blue")
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "ring")
# Class id = group index * len(SHAPES) + shape index (0-based, equal to the classifiers' label ids).
FINE_CLASSES: tuple[str, ...] = tuple(f"{g} {s}" for g in COARSE_GROUPS for s in SHAPES)
NUM_CLASSES = len(FINE_CLASSES)

# Rendering at 2x and averaging 2x2 blocks anti-aliases the edges.
_SUPERSAMPLE = 2


@dataclass(frozen=True)
class ShapeAttributes:
    """What a caption may truthfully say about one image."""

    class_id: int
    size: str  # "small" | "medium" | "large"
    horizontal: str  # "left" | "centre" | "right"
    vertical: str  # "top" | "middle" | "bottom"
    background: str  # "dark" | "grey" | "light"

    @property
    def group(self) -> str:
        return COARSE_GROUPS[self.class_id // len(SHAPES)]

    @property
    def shape(self) -> str:
        return SHAPES[self.class_id % len(SHAPES)]


def coarse_of(class_id: int | torch.Tensor) -> int | torch.Tensor:
    """Coarse group index of a fine class id (works elementwise on tensors)."""
    return class_id // len(SHAPES)


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray, radius: float) -> np.ndarray:
    r = np.hypot(u, v)
    if shape == "circle":
        return r < radius
    if shape == "ring":
        return (r < radius) & (r > 0.55 * radius)
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) < 0.8 * radius
    if shape == "cross":
        arm, half = 0.32 * radius, radius
        return ((np.abs(u) < arm) & (np.abs(v) < half)) | ((np.abs(v) < arm) & (np.abs(u) < half))
    if shape == "triangle":
        # Equilateral triangle with circumradius `radius`: inside all three edge half-planes (inradius r/2).
        inside = np.ones_like(u, dtype=bool)
        for k in range(3):
            a = np.pi / 2 + k * 2 * np.pi / 3 + np.pi
            inside &= u * np.cos(a) + v * np.sin(a) < 0.5 * radius
        return inside
    raise ValueError(f"unknown shape {shape!r}; valid: {SHAPES}")


def _colour(group: str, rng: np.random.Generator) -> np.ndarray:
    if group == "red":
        return np.array([rng.uniform(0.75, 1.0), rng.uniform(0.0, 0.25), rng.uniform(0.0, 0.2)])
    if group == "blue":
        return np.array([rng.uniform(0.0, 0.2), rng.uniform(0.1, 0.4), rng.uniform(0.75, 1.0)])
    raise ValueError(f"unknown group {group!r}; valid: {COARSE_GROUPS}")


# Range of the background level (brightness before tint, gradient and noise); "dark" below 0.35, "light" above 0.65.
BACKGROUND_LEVELS = (0.08, 0.92)
# Range of the shape's radius in pixels; "small" below 8.3, "large" above 10.2.
RADII = (6.5, 12.0)


def _narrow(value: float, full: tuple[float, float], narrow: tuple[float, float] | None, what: str) -> float:
    """Remap a draw ``value`` uniform on ``full`` onto ``narrow`` (monotone), so the draw itself stays the same."""
    if narrow is None:
        return value
    lo, hi = full
    n_lo, n_hi = narrow
    if not lo <= n_lo < n_hi <= hi:
        raise ValueError(f"{what}={narrow!r} must be (low, high) with {lo} <= low < high <= {hi}")
    return n_lo + (value - lo) / (hi - lo) * (n_hi - n_lo)


def render(
    class_id: int, seed: int, background: tuple[float, float] | None = None, size: tuple[float, float] | None = None
) -> tuple[np.ndarray, ShapeAttributes]:
    """One image ``(32, 32, 3)`` float32 in [0, 1] of class ``class_id``, a pure function of ``seed``.

    ``background`` narrows the background level to ``(low, high)`` within :data:`BACKGROUND_LEVELS` by
    remapping the same random draw, so every other property of the image (shape, size, position, colour,
    noise) is the one the seed gives without it: the planted bias of ``dct.toy.bias`` changes nothing else.
    ``size`` narrows the radius within :data:`RADII` the same way (the position's draw adapts to the radius,
    as it always does, to keep the shape inside the frame).
    """
    if not 0 <= class_id < NUM_CLASSES:
        raise ValueError(f"class_id={class_id!r} out of range 0..{NUM_CLASSES - 1}")
    rng = np.random.default_rng([seed, class_id])
    group, shape = COARSE_GROUPS[class_id // len(SHAPES)], SHAPES[class_id % len(SHAPES)]
    n = IMAGE_SIZE * _SUPERSAMPLE
    radius = _narrow(rng.uniform(*RADII), RADII, size, "size")
    margin = radius + 1.0
    cx, cy = rng.uniform(margin, IMAGE_SIZE - margin, size=2)
    angle = rng.uniform(0, 2 * np.pi)

    # Background: a low-saturation tint at a random brightness, a linear gradient, pixel noise.
    level = _narrow(rng.uniform(*BACKGROUND_LEVELS), BACKGROUND_LEVELS, background, "background")
    tint = rng.uniform(-0.05, 0.05, size=3)
    coords = (np.arange(n) + 0.5) / _SUPERSAMPLE
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    grad_dir = rng.uniform(0, 2 * np.pi)
    gradient = rng.uniform(0.0, 0.15) * ((xx * np.cos(grad_dir) + yy * np.sin(grad_dir)) / IMAGE_SIZE - 0.5)
    img = np.clip(level + tint[None, None, :] + gradient[..., None], 0, 1)

    u0, v0 = xx - cx, yy - cy
    u = u0 * np.cos(angle) + v0 * np.sin(angle)
    v = -u0 * np.sin(angle) + v0 * np.cos(angle)
    mask = _shape_mask(shape, u, v, radius)[..., None]
    colour = _colour(group, rng)
    # Mild shading across the shape so it is not a flat stencil.
    shade = 1.0 + 0.12 * (u / radius)[..., None]
    img = np.where(mask, np.clip(colour[None, None, :] * shade, 0, 1), img)

    img = img.reshape(IMAGE_SIZE, _SUPERSAMPLE, IMAGE_SIZE, _SUPERSAMPLE, 3).mean(axis=(1, 3))
    img = img + rng.normal(0.0, rng.uniform(0.0, 0.05), size=img.shape)
    img = np.clip(img, 0, 1).astype(np.float32)

    attrs = ShapeAttributes(
        class_id=class_id,
        size="small" if radius < 8.3 else ("large" if radius > 10.2 else "medium"),
        horizontal="left" if cx < 12.5 else ("right" if cx > 19.5 else "centre"),
        vertical="top" if cy < 12.5 else ("bottom" if cy > 19.5 else "middle"),
        background="dark" if level < 0.35 else ("light" if level > 0.65 else "grey"),
    )
    return img, attrs


def sample(
    n: int,
    seed: int,
    class_ids: list[int] | None = None,
    backgrounds: dict[int, tuple[float, float]] | None = None,
    sizes: dict[int, tuple[float, float]] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, list[ShapeAttributes]]:
    """``n`` images, classes cycling through ``class_ids`` (default: all), deterministic by ``seed``;
    ``backgrounds`` / ``sizes`` narrow the background level / radius of some classes (class id → range, see
    :func:`render`).

    Returns:
        images ``(n, 3, 32, 32)`` float in [0, 1], labels ``(n,)`` int64, attributes per image.
    """
    ids = list(range(NUM_CLASSES)) if class_ids is None else list(class_ids)
    if not ids:
        raise ValueError("class_ids is empty; pass at least one class id")
    images, labels, attrs = [], [], []
    for i in range(n):
        cid = ids[i % len(ids)]
        img, a = render(cid, seed * 1_000_003 + i, (backgrounds or {}).get(cid), (sizes or {}).get(cid))
        images.append(img)
        labels.append(cid)
        attrs.append(a)
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return x, torch.tensor(labels, dtype=torch.long), attrs


# The FID reference set: fixed seed, balanced over classes, never used for training.
REFERENCE_SEED = 777
TRAIN_SEED = 1


def reference_images(n_per_class: int = 64, class_ids: list[int] | None = None) -> torch.Tensor:
    """The "real images" reference set ``(n_per_class * len(class_ids), 3, 32, 32)`` float in [0, 1]."""
    ids = list(range(NUM_CLASSES)) if class_ids is None else list(class_ids)
    images, _, _ = sample(n_per_class * len(ids), REFERENCE_SEED, ids)
    return images
