"""The `dct-shard` flow: load the models ONCE, then optimise + evaluate each class of the shard in turn."""

from __future__ import annotations

import datetime as dt

from prefect import flow, get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.runtime import flow_run

from dct.config import RunOverrides
from dct.models.datasets import dataset_label
from dct.results import class_line
from tasks.classes import load_shard_models, optimize_and_evaluate_class, record_failed_class


def shard_run_name(prefix: str):
    """A shard flow's run name: ``{prefix}-{dataset}-{first id}-{last id}`` (the dct and synthesis shards).

    A run the deployment fan-out created keeps the name it was given there (the same, plus ``-a{attempt}``),
    so a resubmitted shard is told apart from its first attempt in the Prefect UI.
    """

    def name() -> str:
        given = flow_run.name or ""
        if given.startswith(f"{prefix}-"):  # named by flows/fanout.py, attempt included
            return given
        p = flow_run.parameters
        ids = p.get("class_ids") or []
        span = f"{ids[0]:05d}-{ids[-1]:05d}" if ids else "empty"
        return f"{prefix}-{dataset_label(str(p.get('dataset')))}-{span}"

    return name


@flow(name="dct-shard", flow_run_name=shard_run_name("dct-shard"))
def dct_shard(
    dataset: str,
    class_ids: list[int],
    run_id: str,
    store: str | None = None,
    force: bool = False,
    overrides: RunOverrides | None = None,
    device: str = "auto",
) -> list[dict]:
    """Optimise and evaluate a shard of classes with the models loaded once; a failed class is recorded."""
    from dct.models.loading import resolve_device
    from dct.run.plan import build_config

    logger = get_run_logger()
    spec, config = build_config(dataset, overrides, store)
    models = load_shard_models(config, str(resolve_device(device)))
    progress = create_progress_artifact(0.0, description=f"{spec.name} shard {class_ids[:1]}…: classes finished")
    summaries = []
    for i, class_id in enumerate(class_ids):
        name = spec.class_names[class_id]
        started = dt.datetime.now(dt.UTC)
        try:
            summary = optimize_and_evaluate_class.with_options(task_run_name=f"class-{spec.name}-{class_id:05d}")(
                config, models, class_id, name, run_id, force
            )
        except Exception as exc:  # noqa: BLE001 - one class failing must not stop the shard; it is recorded
            logger.error("class %d (%s) failed: %s: %s", class_id, name, type(exc).__name__, exc)
            summary = record_failed_class.with_options(task_run_name=f"failed-{spec.name}-{class_id:05d}")(
                config, models, class_id, name, run_id, f"{type(exc).__name__}: {exc}", started
            )
        summaries.append(summary)
        seconds = (dt.datetime.now(dt.UTC) - started).total_seconds()
        logger.info(class_line(summary, seconds, position=f"[{i + 1}/{len(class_ids)}] "))
        update_progress_artifact(progress, 100.0 * (i + 1) / len(class_ids))
    return summaries
