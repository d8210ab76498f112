"""Fashion-MNIST comes from the Debian package, checked, never downloaded (docs/worlds.md, "The fashion world")."""

from __future__ import annotations

import gzip
import subprocess
import sys

import numpy as np
import pytest
from needs import need

from dct.fashion import data


def _have_package() -> bool:
    try:
        data.data_dir()
    except data.FashionMNISTMissing:
        return False
    return True


def _idx(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    return header + array.astype(np.uint8).tobytes()


def test_idx_reader_reads_its_shape_and_checks_contents(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    f = tmp_path / "x-idx3-ubyte.gz"
    f.write_bytes(gzip.compress(_idx(array)))
    assert np.array_equal(data.read_idx(f), array)
    import hashlib

    digest = hashlib.sha256(_idx(array)).hexdigest()
    assert np.array_equal(data.read_idx(f, digest), array)
    with pytest.raises(ValueError, match=r"is not the Fashion-MNIST file it is named after .* reinstall"):
        data.read_idx(f, "0" * 64)
    bad = tmp_path / "bad.gz"
    bad.write_bytes(gzip.compress(b"\x00\x00\x0d\x01" + (3).to_bytes(4, "big") + b"abc"))
    with pytest.raises(ValueError, match="not an idx file of unsigned bytes"):
        data.read_idx(bad)
    short = tmp_path / "short.gz"
    short.write_bytes(gzip.compress(_idx(array)[:-5]))
    with pytest.raises(ValueError, match=r"header says \(2, 3, 4\) \(24 bytes\), file holds 19"):
        data.read_idx(short)


def test_a_missing_package_is_one_line_naming_the_install(tmp_path, monkeypatch):
    monkeypatch.setenv(data.DIR_VARIABLE, str(tmp_path))
    with pytest.raises(data.FashionMNISTMissing) as info:
        data.data_dir()
    message = str(info.value)
    assert "\n" not in message and "apt-get install dataset-fashion-mnist" in message
    assert data.DIR_VARIABLE in message and str(tmp_path) in message


def test_the_cli_says_so_before_any_work_when_the_data_is_missing(tmp_path):
    """`dct run --dataset fashion` with no Fashion-MNIST: exit 2, one line, nothing written to the store."""
    store = tmp_path / "store"
    env = {"DCT_FASHION_MNIST": str(tmp_path / "nowhere"), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "dct.cli", "run", "--dataset", "fashion", "--classes", "0", "--store", str(store)],
        capture_output=True, text=True, env=env, check=False, timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln]
    assert len(lines) == 1 and "apt-get install dataset-fashion-mnist" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and not store.exists()


def test_the_package_files_are_the_authors_and_become_32px_rgb():
    need(_have_package(), "Fashion-MNIST (apt-get install dataset-fashion-mnist)")
    images, labels = data.load("test")
    assert images.shape == (10_000, 28, 28) and np.bincount(labels).tolist() == [1000] * 10
    x = data.to_tensor(images[:4])
    assert tuple(x.shape) == (4, 3, 32, 32) and float(x.max()) <= 1.0
    assert float(x[:, :, :2].abs().sum()) == 0.0  # the padding is the images' own black background
    assert np.array_equal((x[:, 0, 2:30, 2:30] * 255).round().byte().numpy(), images[:4])


def test_augment_eval_takes_its_real_images_from_the_fashion_splits():
    """docs/worlds.md: `dct augment-eval --dataset fashion` trains on k real train images per class (a draw per
    training seed) and tests on every real test image of the selected classes."""
    need(_have_package(), "Fashion-MNIST (apt-get install dataset-fashion-mnist)")
    import torch

    from dct.fashion.world import FASHION

    pools, (test_images, test_labels) = FASHION.augment_real([6, 0], seeds=2, per_class=4, test_per_class=150)
    assert len(pools) == 2 and len(test_labels) == 2000 and set(test_labels.tolist()) == {0, 6}
    for images, labels in pools:
        assert tuple(images.shape) == (8, 3, 32, 32) and sorted(labels.tolist()) == [0] * 4 + [6] * 4
    assert not torch.equal(pools[0][0], pools[1][0])  # each training seed its own draw
    train_images, train_labels = data.load("train")
    for images, labels in pools:  # every pool image is a train-split image of the class it is labelled with
        pixels = (images[:, 0, 2:30, 2:30] * 255).round().byte().numpy()
        for img, label in zip(pixels, labels.tolist(), strict=True):
            same_class = train_images[train_labels == label]
            assert (same_class == img).all(axis=(1, 2)).any(), label
    images, labels = data.load("test")
    first = np.flatnonzero(np.isin(labels, [0, 6]))[:1]
    assert torch.equal(test_images[:1], data.to_tensor(images[first]))
