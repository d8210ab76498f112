"""``python -m dct.fashion.evaluate``: the shared evaluate code (:mod:`dct.worlds.evaluate`) on the fashion world."""

from __future__ import annotations

from dct.worlds.evaluate import main as _main


def main(argv: list[str] | None = None) -> None:
    _main(argv, world="fashion")


if __name__ == "__main__":
    main()
