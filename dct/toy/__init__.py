"""The embedded ``toy`` world: procedural shapes, a tiny Stable-Diffusion-style pipeline and two
small classifiers, all trained here and shipped in ``weights/`` (retrain: ``python -m dct.toy.train``).

Importing this package is light; the submodules register the ``toy`` dataset and classifier loader.
"""

from __future__ import annotations
