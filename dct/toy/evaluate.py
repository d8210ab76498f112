"""Acceptance numbers of the toy world: ``python -m dct.toy.evaluate [--runs 3] [--classes 0-9] --out DIR``.

The shared evaluation code (:mod:`dct.worlds.evaluate`) on the toy world; its names are re-exported here.
"""

from __future__ import annotations

from dct.worlds.evaluate import (  # noqa: F401  (the toy's evaluation API)
    CEILING_ELIGIBLE,
    ClassScores,
    fid,
    format_table,
    load_world,
    parse_classes,
    run_config_for,
    score,
    world_spec,
)
from dct.worlds.evaluate import main as _main


def main(argv: list[str] | None = None) -> None:
    _main(argv, world="toy")


if __name__ == "__main__":
    main()
