"""``python -m dct.fashion.grid``: the shared grid code (:mod:`dct.worlds.grid`) on the fashion world."""

from __future__ import annotations

from dct.worlds.grid import main as _main


def main(argv: list[str] | None = None) -> None:
    _main(argv, world="fashion")


if __name__ == "__main__":
    main()
