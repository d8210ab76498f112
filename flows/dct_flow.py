"""The `dct` flow: preflight → plan → shards → publish. Deployed as `dct/optimize-all`."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.runtime import flow_run

from dct.config import RunOverrides
from dct.models.datasets import dataset_label
from dct.results import class_summary
from dct.run.plan import RunPlan
from flows.shard import dct_shard
from tasks.evaluate import compute_pooled_metrics, write_report
from tasks.plan import preflight_and_plan
from tasks.probe import probe_samples
from tasks.publish import read_outcomes, write_results


class RunFailedError(RuntimeError):
    """More classes failed than ``max_failed_fraction`` allows; the summary lists them."""


def _run_name() -> str:
    p = flow_run.parameters
    classes = p.get("classes", "all")
    text = ",".join(map(str, classes)) if isinstance(classes, list) else str(classes)
    return f"dct-{dataset_label(str(p.get('dataset')))}-{text}"[:100]


@flow(name="dct", flow_run_name=_run_name)
def dct(
    dataset: str,
    classes: str | int | list[str | int] = "all",
    force: bool = False,
    store: str | None = None,
    shard_size: int = 16,
    max_classes: int | None = None,
    max_failed_fraction: float = 0.0,
    overrides: RunOverrides | None = None,
    dry_run: bool = False,
    device: str = "auto",
    mode: Literal["local", "deployment"] = "local",
    shard_timeout_minutes: float | None = None,
    run_id: str | None = None,
    max_in_flight: int | None = None,
    probe: bool = False,
    plan: RunPlan | None = None,
) -> dict:
    """Learn and evaluate the class tokens of a dataset; resumable, sharded, published as Parquet."""
    from dct.models.datasets import get_dataset
    from dct.models.loading import describe_device
    from dct.results import new_run_id
    from dct.run.plan import failed_fraction

    logger = get_run_logger()
    if not 0.0 <= max_failed_fraction <= 1.0:
        raise ValueError(f"max_failed_fraction={max_failed_fraction!r} must be within [0, 1]")
    if shard_timeout_minutes is not None and shard_timeout_minutes <= 0:
        raise ValueError(f"shard_timeout_minutes={shard_timeout_minutes!r} must be positive (or None = estimated)")
    if max_in_flight is not None and max_in_flight < 1:
        raise ValueError(f"max_in_flight={max_in_flight!r} must be a positive int (None: twice the gpu pool's limit)")
    started_at = dt.datetime.now(dt.UTC)
    if plan is None:  # a deployment run: plan here; `dct run` plans before Prefect starts and passes its plan
        run_id = run_id or new_run_id(started_at)
        where = "cuda (the gpu pool's workers)" if mode == "deployment" else describe_device(device)
        plan = preflight_and_plan(dataset, classes, store, force, shard_size, max_classes, overrides, run_id, where)
    elif run_id not in (None, plan.run_id):
        raise ValueError(f"run_id={run_id!r} differs from the given plan's {plan.run_id!r}; pass one of them")
    run_id = plan.run_id
    for line in plan.summary_lines():
        logger.info(line)
    if dry_run:
        return {
            "run_id": run_id,
            "dry_run": True,
            "plan": plan.summary_lines(),
            "todo": plan.todo,
            "skipped": plan.skipped,
            "shards": plan.shards,
        }

    # The one run plan: its config (dataset + overrides + token settings) and keys go to every shard as they are.
    spec, config = get_dataset(plan.source or dataset), plan.config
    names = {c: spec.class_names[c] for c in plan.todo}
    shard_plan = plan.shard_plan()
    missing_reasons: dict[int, str] = {}
    if mode == "deployment" and plan.shards:
        shard_params = {"plan": shard_plan.model_dump(mode="json"), "force": force, "device": device}
        missing_reasons = _fan_out(plan, config, shard_params, run_id, shard_timeout_minutes, max_in_flight, names)
    else:
        for shard in plan.shards:  # local: each shard is an in-process child flow run
            dct_shard(
                plan=shard_plan, class_ids=shard, class_names=[names[c] for c in shard], run_id=run_id, force=force,
                device=device,
            )

    # Evaluate: pooled FID/KID over the selection's finished classes, then the report. A failure here must
    # not lose the tables of hours of GPU work: it is logged (a failed task in the UI) and the run publishes.
    # Each record is read once (in parallel) and shared; in deployment mode the pooled metrics read only
    # the feature files the shards wrote (docs/design.md, "Scale").
    outcomes = read_outcomes(config, plan)
    pooled_state = compute_pooled_metrics(
        config,
        plan,
        spec.reference_images,
        device if mode == "local" else "cpu",
        features_only=mode == "deployment",
        outcomes=outcomes,
        return_state=True,
    )
    pooled = pooled_state.result() if pooled_state.is_completed() else None
    if pooled is None:
        logger.error("pooled FID/KID not computed: %s", pooled_state.message)
    if probe:  # before the report, which links the probe page; a failed probe must not lose the run either
        probe_state = probe_samples(config, plan, device if mode == "local" else "cpu", return_state=True)
        if not probe_state.is_completed():
            logger.error("probe not written: %s", probe_state.message)
    report_uri = write_report(config, plan, spec.licence, outcomes=outcomes)
    logger.info("report: %s", report_uri)
    outcome = write_results(
        config, plan, list(spec.class_names), started_at, missing_reasons, pooled, report_uri, outcomes=outcomes
    )
    run = outcome.run
    _publish_artifacts(plan.dataset, plan, outcome)
    summary = {
        "run_id": run_id,
        "dataset": plan.dataset,
        "status": run.status,
        "store": plan.store_root,
        "done": run.classes_done,
        "diverged": run.classes_diverged,
        "failed": run.classes_failed,
        "skipped": run.classes_skipped,
        "failed_classes": outcome.failed_ids,
        "bundle_uri": run.bundle_uri,
        "report_uri": run.report_uri,
        "token_key": plan.token_key,
        "eval_key": plan.eval_key,
    }
    fraction = failed_fraction(len(outcome.failed_ids), outcome.attempted)
    if fraction > max_failed_fraction:
        raise RunFailedError(
            f"{len(outcome.failed_ids)} of {outcome.attempted} classes failed ({fraction:.0%} > "
            f"max_failed_fraction {max_failed_fraction:.0%}): {outcome.failed_ids}; re-run to retry only those"
        )
    return summary


def _fan_out(
    plan, config, shard_params: dict, run_id: str, shard_timeout_minutes: float | None, max_in_flight: int | None,
    class_names: dict[int, str],
) -> dict[int, str]:
    """Deployment mode: shards as child runs of `dct-shard/gpu`; records come back through the store."""
    from dct.artifacts.store import ArtifactStore
    from dct.run.plan import estimate_work
    from flows.fanout import run_shards_on_workers

    store = ArtifactStore.from_config(config.storage)
    if store.is_local:
        raise ValueError(
            f"store {store.root!r} is a local directory; in deployment mode the GPU workers and the parent share "
            "only the store, so use an S3-compatible store (DCT_STORE=s3://bucket/prefix)"
        )
    if shard_timeout_minutes is not None:
        timeout_s = shard_timeout_minutes * 60
    else:  # generous: twice the upper-bound estimate of the largest shard, at least 30 minutes
        largest = max(len(s) for s in plan.shards)
        timeout_s = max(1800.0, 2 * 3600 * estimate_work(config, largest)["gpu_hours_upper"])

    def unfinished(class_ids: list[int]) -> list[int]:
        done = store.finished_among(plan.dataset, plan.eval_key, class_ids)  # by key: no listing per shard
        return [c for c in class_ids if c not in done]

    return run_shards_on_workers(
        plan.shards,
        run_id=run_id,
        shard_params=shard_params,
        dataset_label=plan.dataset,
        shard_timeout_s=timeout_s,
        unfinished=unfinished,
        max_in_flight=max_in_flight,
        class_names=class_names,
    )


def _publish_artifacts(dataset: str, plan, outcome) -> None:
    from dct.artifacts.store import ArtifactStore
    from dct.evaluation.report import EXTREMES, extreme_classes

    key = f"dct-{dataset}".lower().replace("_", "-")
    # Not one row per class (10k rows is one ~3 MB API request): the worst and best classes; the rest
    # is in the Parquet table and the report.
    worst, best = extreme_classes(outcome.records, EXTREMES)
    rows = [{"rank": f"worst {i + 1}", **class_summary(r)} for i, r in enumerate(worst)]
    rows += [{"rank": f"best {i + 1}", **class_summary(r)} for i, r in enumerate(best)]
    table = f"{ArtifactStore(plan.store_root).results_uri('classes')}/dataset={dataset}"
    if rows:
        create_table_artifact(
            rows,
            key=f"{key}-classes",
            description=f"worst and best classes of run {plan.run_id} by top-1 uplift; all {len(outcome.records)} "
            f"classes: Parquet {table} (run_id={plan.run_id}) and the report",
        )
    run = outcome.run
    failed = ", ".join(map(str, outcome.failed_ids)) or "none"
    create_markdown_artifact(
        "\n".join(
            [
                f"# DCT run {plan.run_id} — {dataset}",
                f"- status: **{run.status}**; classes done {run.classes_done}, diverged {run.classes_diverged}, "
                f"failed {run.classes_failed} ({failed}), skipped (already finished) {run.classes_skipped}",
                f"- store: `{plan.store_root}`; token_key `{plan.token_key}`, eval_key `{plan.eval_key}`",
                f"- token bundle: `{run.bundle_uri}`",
                f"- per-class table (Parquet): `{table}`, run_id `{plan.run_id}`",
                f"- report: `{run.report_uri}`",
            ]
        ),
        key=f"{key}-summary",
        description=f"summary of run {plan.run_id}",
    )
