"""The `dct-shard` flow: load the models ONCE, then optimise + evaluate each class of the shard in turn."""

from __future__ import annotations

import datetime as dt

from prefect import flow, get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.runtime import flow_run

from dct.models.datasets import dataset_label
from dct.results import class_line
from dct.run.plan import ShardPlan
from tasks.classes import check_plan_keys, load_shard_models, optimize_and_evaluate_class, record_failed_class


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
        return f"{prefix}-{_dataset_of(p)}-{span}"

    return name


def _dataset_of(parameters: dict) -> str:
    """The dataset's name from a shard's parameters: its plan's config (a model in process, a dict from the API)."""

    def get(obj, key):
        return obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)

    plan = parameters.get("plan")
    dataset = get(get(plan, "config"), "dataset") or get(plan, "dataset") or parameters.get("dataset")
    return dataset_label(str(dataset))


@flow(name="dct-shard", flow_run_name=shard_run_name("dct-shard"))
def dct_shard(
    plan: ShardPlan,
    class_ids: list[int],
    class_names: list[str],
    run_id: str,
    force: bool = False,
    device: str = "auto",
) -> list[dict]:
    """Optimise and evaluate a shard of classes with the models loaded once; a failed class is recorded."""
    from dct.models.loading import resolve_device

    logger = get_run_logger()
    if len(class_names) != len(class_ids):
        raise ValueError(f"class_names has {len(class_names)} names for {len(class_ids)} class_ids; pass one each")
    config, dataset = plan.config, plan.config.dataset
    models = load_shard_models(config, str(resolve_device(device)))
    # Models that give other keys than the plan's must not write: every class is recorded failed, by the plan's keys.
    mismatch = check_plan_keys(plan, models)
    progress = create_progress_artifact(0.0, description=f"{dataset} shard {class_ids[:1]}…: classes finished")
    summaries = []
    for i, (class_id, name) in enumerate(zip(class_ids, class_names, strict=True)):
        started = dt.datetime.now(dt.UTC)
        try:
            if mismatch:
                raise RuntimeError(mismatch)
            summary = optimize_and_evaluate_class.with_options(task_run_name=f"class-{dataset}-{class_id:05d}")(
                config, models, class_id, name, run_id, force
            )
        except Exception as exc:  # noqa: BLE001 - one class failing must not stop the shard; it is recorded
            logger.error("class %d (%s) failed: %s: %s", class_id, name, type(exc).__name__, exc)
            summary = record_failed_class.with_options(task_run_name=f"failed-{dataset}-{class_id:05d}")(
                config, models, class_id, name, run_id, f"{type(exc).__name__}: {exc}", started,
                (plan.token_key, plan.eval_key),
            )
        summaries.append(summary)
        seconds = (dt.datetime.now(dt.UTC) - started).total_seconds()
        logger.info(class_line(summary, seconds, position=f"[{i + 1}/{len(class_ids)}] "))
        update_progress_artifact(progress, 100.0 * (i + 1) / len(class_ids))
    return summaries
