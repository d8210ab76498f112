"""PNG grid, baseline prompt vs DCT prompt: ``python -m dct.toy.grid --tokens DIR/tokens --out grid.png``.

The shared grid code (:mod:`dct.worlds.grid`) on the toy world.
"""

from __future__ import annotations

from dct.worlds.grid import grid_image  # noqa: F401  (the toy's grid API)
from dct.worlds.grid import main as _main


def main(argv: list[str] | None = None) -> None:
    _main(argv, world="toy")


if __name__ == "__main__":
    main()
