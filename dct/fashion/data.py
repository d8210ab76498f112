"""Fashion-MNIST from the Debian package ``dataset-fashion-mnist`` (never downloaded): the idx reader, its checks,
and the images as the fashion world uses them (padded to 32×32, repeated to 3 channels, floats in [0, 1]).

Fashion-MNIST: Xiao, Rasul and Vollgraf, Zalando SE 2017, MIT licence; 60,000 train / 10,000 test images,
28×28 grey, 10 classes.
"""

from __future__ import annotations

import gzip
import hashlib
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")  # where `apt-get install dataset-fashion-mnist` puts it
DIR_VARIABLE = "DCT_FASHION_MNIST"  # a directory holding the four idx .gz files instead

# sha256 of each file's DECOMPRESSED bytes: the same for the Debian package and for the authors' own download,
# whatever gzip wrote into the headers.
FILES: dict[str, tuple[str, str]] = {
    "train-images": ("train-images-idx3-ubyte.gz", "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
    "train-labels": ("train-labels-idx1-ubyte.gz", "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"),
    "test-images": ("t10k-images-idx3-ubyte.gz", "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
    "test-labels": ("t10k-labels-idx1-ubyte.gz", "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
}
IMAGE_SIZE = 32  # 28×28 padded by 2 on every side: the toy's architectures apply unchanged
PAD = (IMAGE_SIZE - 28) // 2
# The authors' class names, in label order.
LABELS: tuple[str, ...] = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)


class FashionMNISTMissing(FileNotFoundError):
    """The idx files are not where the fashion world looks for them."""


def data_dir(directory: str | Path | None = None) -> Path:
    """The directory of the idx files: ``directory``, else ``$DCT_FASHION_MNIST``, else the Debian package's.

    Raises:
        FashionMNISTMissing: a file is missing there (one line naming what to install or set).
    """
    root = Path(directory or os.environ.get(DIR_VARIABLE) or DEFAULT_DIR).expanduser()
    missing = [name for name, _ in FILES.values() if not (root / name).is_file()]
    if missing:
        raise FashionMNISTMissing(
            f"Fashion-MNIST not found in {root} (missing {', '.join(missing)}): run `apt-get install "
            f"dataset-fashion-mnist`, or set {DIR_VARIABLE} to a directory holding the four idx .gz files"
        )
    return root


def read_idx(path: Path, sha256: str | None = None) -> np.ndarray:
    """An idx file (gzip or plain) as a uint8 array of its declared shape; ``sha256`` checks the decompressed bytes.

    Raises:
        ValueError: not an idx file of unsigned bytes, a size that disagrees with its header, or another sha256.
    """
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if sha256 is not None and hashlib.sha256(raw).hexdigest() != sha256:
        raise ValueError(
            f"{path} is not the Fashion-MNIST file it is named after (sha256 of its contents "
            f"{hashlib.sha256(raw).hexdigest()[:16]}…, expected {sha256[:16]}…); reinstall dataset-fashion-mnist"
        )
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path} is not an idx file of unsigned bytes (magic {raw[:4].hex()!r})")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    body = raw[4 + 4 * ndim :]
    if len(body) != int(np.prod(shape)):
        raise ValueError(f"{path}: header says {shape} ({int(np.prod(shape))} bytes), file holds {len(body)}")
    return np.frombuffer(body, dtype=np.uint8).reshape(shape)


@lru_cache(maxsize=4)
def load(split: str, directory: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(images (N, 28, 28) uint8, labels (N,) uint8)`` of ``split`` ("train" or "test"), checked."""
    if split not in ("train", "test"):
        raise ValueError(f"split {split!r}: use 'train' or 'test'")
    root = data_dir(directory)
    images = read_idx(root / FILES[f"{split}-images"][0], FILES[f"{split}-images"][1])
    labels = read_idx(root / FILES[f"{split}-labels"][0], FILES[f"{split}-labels"][1])
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"Fashion-MNIST {split}: {images.shape[0]} images but {labels.shape[0]} labels")
    return images, labels


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 ``(N, 28, 28)`` -> float ``(N, 3, 32, 32)`` in [0, 1] (zero padding: the images' own background)."""
    x = torch.from_numpy(np.array(images, dtype=np.float32)).div_(255.0)
    x = torch.nn.functional.pad(x, (PAD, PAD, PAD, PAD))
    return x.unsqueeze(1).repeat(1, 3, 1, 1).contiguous()


@dataclass(frozen=True)
class GarmentAttributes:
    """What a caption may truthfully say of one image besides its class: tone, size (within its class), pattern."""

    class_id: int
    tone: str  # "dark", "mid", "light": mean brightness of the item's pixels
    size: str  # "small", "medium", "large": the item's area against its class's median
    pattern: str  # "plain", "textured", "patterned": spread of the item's pixel brightness


def attributes(images: np.ndarray, labels: np.ndarray) -> list[GarmentAttributes]:
    """:class:`GarmentAttributes` of every image (thresholds: docs/worlds.md, "Fashion captions")."""
    x = images.reshape(len(images), -1).astype(np.float32) / 255.0
    fg = x > 0.05
    area = fg.mean(axis=1)
    n = np.maximum(fg.sum(axis=1), 1)
    mean = (x * fg).sum(axis=1) / n
    spread = np.sqrt(np.maximum(((x - mean[:, None]) ** 2 * fg).sum(axis=1) / n, 0.0))
    median_area = {c: float(np.median(area[labels == c])) for c in np.unique(labels)}
    out = []
    for i in range(len(images)):
        c = int(labels[i])
        tone = "dark" if mean[i] < 0.45 else "light" if mean[i] > 0.7 else "mid"
        rel = area[i] / max(median_area[c], 1e-6)
        size = "small" if rel < 0.85 else "large" if rel > 1.15 else "medium"
        pattern = "plain" if spread[i] < 0.175 else "patterned" if spread[i] > 0.235 else "textured"
        out.append(GarmentAttributes(c, tone, size, pattern))
    return out
