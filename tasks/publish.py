"""Publishing task: tables, bundle and run record, read back from the store."""

from __future__ import annotations

import datetime as dt

from prefect import task
from prefect.cache_policies import NO_CACHE

from dct.artifacts.store import ArtifactStore
from dct.config import RunConfig
from dct.results import ClassRecord, read_class_outcomes
from dct.run.plan import RunPlan
from dct.run.publish import RunOutcome, publish_run


@task(name="read-class-outcomes", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=[2, 10, 30])
def read_outcomes(config: RunConfig, plan: RunPlan) -> dict[int, ClassRecord | None]:
    """Read every selected class's record once, in parallel: evaluation, report and publishing share them."""
    store = ArtifactStore.from_config(config.storage)
    return read_class_outcomes(store, plan.dataset, plan.eval_key, plan.selected, plan.run_id)


@task(name="write-results", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=[2, 10, 30])
def write_results(
    config: RunConfig,
    plan: RunPlan,
    class_names: list[str],
    started_at: dt.datetime,
    missing_reasons: dict[int, str] | None = None,
    pooled: dict | None = None,
    report_uri: str | None = None,
    outcomes: dict[int, ClassRecord | None] | None = None,
) -> RunOutcome:
    """Read the per-class records back from the store; write the Parquet tables, bundle and run record."""
    return publish_run(
        ArtifactStore.from_config(config.storage),
        config,
        plan,
        class_names=class_names,
        started_at=started_at,
        missing_reasons=missing_reasons,
        pooled=pooled,
        report_uri=report_uri,
        outcomes=outcomes,
    )
