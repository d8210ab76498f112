"""Argument helpers shared by the subcommands."""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def resolve_device(name: str):
    """:func:`dct.models.loading.resolve_device`, imported on use: `dct --help` and a signal during start-up
    should not wait for torch to import."""
    from dct.models.loading import resolve_device as resolve

    return resolve(name)


class UserError(Exception):
    """A problem with the user's input: printed as one line, exit code 2."""


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device", default="auto", help="torch device: auto (cuda if available, else cpu), cpu, cuda:0, ..."
    )


def add_one_class_arguments(parser: argparse.ArgumentParser) -> None:
    """``--dataset`` (default toy), ``--class`` (one class), ``--pipeline``/``--revision`` (diffusion override)."""
    parser.add_argument("--dataset", help="registered dataset name or dataset file (.toml/.yaml); default toy")
    parser.add_argument(
        "--class", dest="class_", metavar="CLASS", required=True, help="class id (0-based) or exact class name"
    )
    parser.add_argument(
        "--pipeline", help="diffusion model: hub id or local pipeline directory (overrides the dataset's)"
    )
    parser.add_argument("--revision", help="hub revision of --pipeline")


def select_one_class(spec, class_arg: str, command: str) -> int:
    """The single class id that ``--class`` names. Raises ValueError if it selects none or several."""
    from dct.models.datasets import select_classes

    ids = select_classes(spec, class_arg)
    if len(ids) != 1:
        raise ValueError(f"--class {class_arg!r} selects {len(ids)} classes; `dct {command}` takes one (use `dct run`)")
    return ids[0]


# The override flags of every command that learns or uses class tokens (`dct run`, `optimize`, `synthesize`,
# `augment-eval`): one flag, one RunOverrides field, one meaning everywhere. `token` flags change token_key,
# so a command that reads tokens needs them to find the tokens a run learned (or `--run RUN_ID` instead).
OVERRIDE_FLAGS: tuple[tuple[str, str, str, str], ...] = (
    # (flag, RunOverrides field, parser name, group)
    ("--max-epochs", "max_epochs", "positive", "token"),
    ("--seed", "seed", "nonnegative", "token"),
    ("--seed-schedule", "seed_schedule", "choice", "token"),
    ("--num-vectors", "num_vectors", "positive", "token"),
    ("--initializer-token", "initializer_token", "str", "token"),
    ("--images-per-epoch", "images_per_epoch", "positive", "token"),
    ("--grad-steps", "grad_steps", "positive", "token"),
    ("--lr", "lr", "float", "token"),
    ("--num-samples", "num_samples", "positive", "evaluation"),
    ("--micro-batch-size", "micro_batch_size", "positive", "memory"),
)


def add_override_arguments(parser: argparse.ArgumentParser, groups: tuple[str, ...] = ("token",)) -> None:
    """The override flags of ``groups`` ("token", "evaluation", "memory"), help text from RunOverrides."""
    from dct.config import RunOverrides

    parsers = {"positive": positive_int, "nonnegative": nonnegative_int, "float": float, "str": str}
    for flag, field, kind, group in OVERRIDE_FLAGS:
        if group in groups:
            text = RunOverrides.model_fields[field].description
            if kind == "choice":  # the values of the field's Literal
                parser.add_argument(flag, dest=field, choices=_literal_values(field), help=f"override: {text}")
            else:
                parser.add_argument(flag, dest=field, type=parsers[kind], help=f"override: {text}")


def _literal_values(field: str) -> list[str]:
    """The values a ``Literal[...] | None`` field of RunOverrides takes."""
    from typing import Literal, get_args, get_origin

    from dct.config import RunOverrides

    annotation = RunOverrides.model_fields[field].annotation
    literal = next(a for a in get_args(annotation) if get_origin(a) is Literal)
    return list(get_args(literal))


def overrides_from_args(args: argparse.Namespace):
    """The :class:`dct.config.RunOverrides` of the override flags given (None when none was)."""
    from dct.config import RunOverrides

    given = {field: getattr(args, field) for _, field, _, _ in OVERRIDE_FLAGS if getattr(args, field, None) is not None}
    return RunOverrides(**given) if given else None


def override_flags(overrides) -> str:
    """The flags that give ``overrides`` back (``--max-epochs 2 --seed 7``), for hints."""
    if overrides is None:
        return ""
    by_field = {field: flag for flag, field, _, _ in OVERRIDE_FLAGS}
    given = overrides.model_dump(exclude_none=True)
    return " ".join(f"{by_field.get(k, k)} {v}" for k, v in given.items())


def add_run_arguments(parser: argparse.ArgumentParser, *, mixture: bool = False) -> None:
    """``--dataset`` and ``--run``: where a command's settings come from (``resolve_command_settings``).

    ``mixture``: ``--run`` may be repeated, and the images are drawn evenly from the runs' tokens (commands that
    render sets of images: `synthesize`, `augment-eval`).
    """
    parser.add_argument(
        "--dataset", help="registered dataset name or dataset file (.toml/.yaml); default toy, or the run's with --run"
    )
    text = (
        "take the exact settings, keys and tokens of a finished `dct run` (the id it printed last) from its "
        "run record in --store, instead of --dataset and override flags"
    )
    if mixture:
        text += (
            "; repeat it (--run A --run B --run C) to draw each class's images evenly from the runs' tokens (runs "
            "that differ only in --seed)"
        )
    parser.add_argument("--run", metavar="RUN_ID", action="append" if mixture else "store", help=text)


def resolve_command_settings(args: argparse.Namespace, overrides):
    """The command's :class:`dct.run.handle.RunSettings` and class selection, from ``--run`` or ``--dataset`` +
    override flags (one rule for every command). ``--classes`` defaults to the run's classes with ``--run``.

    Raises:
        ValueError: as :func:`dct.run.handle.resolve_settings`, or a selection the dataset does not have.
    """
    from dct.models.datasets import select_classes
    from dct.run.handle import resolve_settings

    settings = resolve_settings(
        dataset=args.dataset, overrides=overrides, store=args.store, run=args.run,
        overrides_given=override_flags(overrides),
    )
    classes = getattr(args, "classes", None)
    if classes is None and settings.members:  # a mixture: the classes every one of its runs has
        common = [set(m.run.class_ids) if m.run.class_ids else None for m in settings.members]
        if all(c is not None for c in common):
            classes = sorted(set.intersection(*common))
    if classes is None:
        classes = settings.run.class_ids if settings.run is not None and settings.run.class_ids else "all"
    select_classes(settings.spec, classes)
    return settings, classes


def missing_tokens_hint(store, settings, token_key: str, dataset_arg: str | None) -> str:
    """What to give when no token is stored under ``token_key``: the run that learned them with other settings
    (``--run RUN_ID``, or its override flags), else `dct run`."""
    from dct.run.handle import latest_other_run

    if settings.members:
        return (
            f"a mixture of {len(settings.members)} runs needs each run's finished token of every selected class: give "
            "--classes that every run finished"
        )
    found = latest_other_run(store, settings.config, token_key) if settings.run is None else None
    if found is None:
        return f"run `dct run --dataset {dataset_arg or settings.source}` first, or give --bundle"
    run_id, overrides = found
    flags = override_flags(overrides) if overrides is not None else ""
    if flags:
        return f"run {run_id} learned its tokens with {flags}: pass --run {run_id} (or the same flags)"
    return f"run {run_id} learned its tokens with other settings: pass --run {run_id}"


def with_overrides(config, **sections):
    """``config`` with whole sections replaced (e.g. ``diffusion=...``), every validator run again."""
    if not sections:
        return config
    return type(config).model_validate({**config.model_dump(), **{k: v.model_dump() for k, v in sections.items()}})


def with_pipeline(config, pipeline: str | None, revision: str | None):
    """``config`` with ``--pipeline``/``--revision`` applied (unchanged when no pipeline is given)."""
    if not pipeline:
        return config
    return with_overrides(
        config, diffusion=config.diffusion.model_copy(update={"model_id": pipeline, "revision": revision})
    )


def check_out_parent(out: Path) -> None:
    """Raises ValueError if a parent of ``out`` that exists is a file (the write would fail late)."""
    parent = next((p for p in out.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise ValueError(f"--out {str(out)!r}: {str(parent)!r} is a file, not a directory")


def out_folder(out: str) -> str:
    """An output folder (``--out``) as a store root: an ``s3://`` URI as given (its bucket must exist), a local
    folder made absolute and checked; the command writes through ``open_store`` (atomic writes) either way.

    Raises:
        ValueError: a local path that is a file (or under one); an unsupported URI scheme.
        FileNotFoundError: the S3 bucket does not exist.
    """
    if "://" in out:
        from dct.artifacts.store import open_store

        store = open_store(out)  # an unsupported scheme is refused here, naming the supported ones
        bucket = store.to_path(store.root).split("/", 1)[0]
        if store.protocol == "s3" and not store.fs.exists(bucket):
            raise FileNotFoundError(f"--out {out!r}: bucket {bucket!r} does not exist; create it first")
        return out
    path = Path(out).expanduser().absolute()
    if path.exists() and not path.is_dir():
        raise ValueError(f"--out {str(path)!r} is a file; give a folder")
    check_out_parent(path)
    return str(path)


def _int_at_least(minimum: int, what: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} must be a {what} integer")
        return value

    return parse


positive_int = _int_at_least(1, "positive")
nonnegative_int = _int_at_least(0, "non-negative")


def quiet_loader_progress() -> None:
    """No model-loading progress bars (diffusers' "Loading pipeline components", transformers' "Loading
    weights"): they interleave with the command's own log lines. Hub downloads keep theirs."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()


def quiet_local_prefect() -> None:
    """Settings for a flow run a command starts in process (each only if the user has not set it).

    With no PREFECT_API_URL, Prefect starts a temporary local API. Its 20 s default start-up budget is too
    short on a busy 2-core laptop (a timeout would look like a failed run), and its telemetry service phones
    home: offline that logs an ERROR, and its heartbeat's SQLite writes race the run's ("database is locked"
    tracebacks). The run needs neither. The library's own log lines (per-class progress) go to the console
    and to the Prefect run logs; the loaders' progress bars do not (:func:`quiet_loader_progress`).
    """
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "dct")
    quiet_loader_progress()
