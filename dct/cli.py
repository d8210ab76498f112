"""The `dct` command line. Each subcommand lives in `dct/commands/<name>.py` and exposes `register()`.

Errors that the user can fix (bad input) end with one line on stderr and exit code 2; nothing heavy is
loaded before the arguments are validated.
"""

from __future__ import annotations

import argparse
import logging
import sys

from dct.artifacts.store import StoreUnavailableError
from dct.commands import augment_eval, datasets, generate, models, optimize, probe, run, synthesize
from dct.commands.common import UserError
from dct.commands.stopping import Stopped, signals_raise_stopped, stop_line

# Subcommand modules, in help order.
COMMANDS = (optimize, run, synthesize, augment_eval, probe, datasets, models, generate)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is ONE line (the usage block is one ``--help`` away), exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="dct", description="Discriminative Class Tokens at dataset scale.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    # Per-request logs of the HTTP clients (Prefect's API, the hub) drown the progress lines.
    for noisy in ("httpx", "httpcore", "urllib3", "botocore", "aiobotocore", "s3fs", "fsspec"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        with signals_raise_stopped():  # during the flow itself, dct.commands.stopping.run_until_stopped
            return int(args.func(args) or 0)
    except Stopped as stop:  # SIGTERM/SIGINT outside the flow: one line, no traceback, 128 + signal number
        print(stop_line(f"dct {args.command}", stop.signum), file=sys.stderr)
        return 128 + stop.signum
    except Exception as exc:
        if not _is_user_error(exc):
            raise
        # One line, whatever the exception text holds (a wrapped botocore/pydantic message may not).
        print(f"dct {args.command}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2


def _is_user_error(exc: BaseException) -> bool:
    """Bad input or environment the user can fix (the message says how); anything else is a bug: traceback."""
    return isinstance(exc, (UserError, ValueError, FileNotFoundError, PermissionError, StoreUnavailableError))


if __name__ == "__main__":
    sys.exit(main())
