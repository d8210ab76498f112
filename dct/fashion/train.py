"""``python -m dct.fashion.train``: the shared train code (:mod:`dct.worlds.train`) on the fashion world."""

from __future__ import annotations

from dct.worlds.train import main as _main


def main(argv: list[str] | None = None) -> None:
    _main(argv, world="fashion")


if __name__ == "__main__":
    main()
