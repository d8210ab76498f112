"""The `dct` command line. Each subcommand lives in `dct/commands/<name>.py` and exposes `register()`.

Errors that the user can fix (bad input) end with one line on stderr and exit code 2; nothing heavy is
loaded before the arguments are validated.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# Subcommand modules, in help order. A module missing here is simply not offered.
COMMANDS = ("optimize", "run", "generate", "datasets", "models")


class UserError(Exception):
    """A problem with the user's input: printed as one line, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dct", description="Discriminative Class Tokens at dataset scale.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"dct.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"dct.commands.{name}":
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return int(args.func(args) or 0)
    except (UserError, ValueError, FileNotFoundError) as exc:
        print(f"dct {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
