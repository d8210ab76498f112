"""Evaluation tasks of the parent flow: pooled FID/KID, then the HTML report (both read the store only)."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from dct.artifacts.store import ArtifactStore
from dct.config import RunConfig
from dct.results import ClassRecord
from dct.run.plan import RunPlan


@task(name="compute-pooled-metrics", cache_policy=NO_CACHE)
def compute_pooled_metrics(
    config: RunConfig,
    plan: RunPlan,
    reference_images: str | None,
    device: str = "cpu",
    features_only: bool = False,
    outcomes: dict[int, ClassRecord | None] | None = None,
) -> dict:
    """Pooled FID/KID of the baseline and DCT samples vs the reference images; returns RunRecord fields."""
    from dct.evaluation.metrics import finished_records, pooled_metrics
    from dct.models.loading import resolve_device

    logger = get_run_logger()
    store = ArtifactStore.from_config(config.storage)
    if outcomes is None:
        records = finished_records(store, plan.dataset, plan.eval_key, plan.selected)
    else:
        records = [r for c in plan.selected if (r := outcomes.get(c)) is not None and r.finished]
    metrics = pooled_metrics(
        store,
        config,
        records,
        reference_images=reference_images,
        device=resolve_device(device),
        features_only=features_only,
        evaluator_revision=plan.revisions.evaluator,
    )
    store.write_json(store.run_uri(plan.dataset, plan.run_id, "pooled.json"), metrics.to_json())
    fields = metrics.record_fields()
    logger.info(
        "FID baseline %s / dct %s, KID baseline %s±%s / dct %s±%s (%s)",
        *(fields[k] for k in ("fid_baseline", "fid_dct", "kid_baseline", "kid_std_baseline", "kid_dct", "kid_std_dct")),
        fields["fid_feature_extractor"],
    )
    for note in metrics.notes:
        logger.info("pooled metrics: %s", note)
    return fields


@task(name="write-report", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=[2, 10, 30])
def write_report(
    config: RunConfig,
    plan: RunPlan,
    dataset_licence: str | None = None,
    outcomes: dict[int, ClassRecord | None] | None = None,
) -> str:
    """Write the run's static HTML report (summary plots, searchable class index, FID/KID); returns its URI."""
    from dct.evaluation.report import write_run_report

    store = ArtifactStore.from_config(config.storage)
    uri = write_run_report(store, config, plan, dataset_licence=dataset_licence, outcomes=outcomes)
    get_run_logger().info("report: %s", uri)
    return uri
