"""Retrain the whole toy world from scratch: ``python -m dct.toy.train [--out DIR]``.

The shared training code (:mod:`dct.worlds.train`) with the toy world's recipe (:data:`dct.toy.world.TOY_RECIPE`).
"""

from __future__ import annotations

from dct.worlds.train import main as _main


def main(argv: list[str] | None = None) -> None:
    _main(argv, world="toy")


if __name__ == "__main__":
    main()
