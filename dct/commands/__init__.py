"""`dct` subcommands; each module exposes ``register(subparsers)``."""
