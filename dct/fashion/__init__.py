"""The embedded ``fashion`` world: Fashion-MNIST's real photographs (from the Debian package, never downloaded), a
tiny Stable-Diffusion-style pipeline trained on their captions and two classifiers trained on disjoint halves of
the train split, all trained here by the toy's code (:mod:`dct.worlds`) and shipped in ``weights/`` (retrain:
``python -m dct.fashion.train``). Its FID reference is the real test split, per class (docs/worlds.md).

Importing this package is light; the submodules register the ``fashion`` dataset, classifier loader and reference.
"""

from __future__ import annotations

from pathlib import Path

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"  # the layout of `python -m dct.fashion.train --out DIR`
