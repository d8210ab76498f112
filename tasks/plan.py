"""Preflight and planning task."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from dct.config import RunOverrides
from dct.run.plan import RunPlan, plan_run


@task(name="preflight-and-plan", cache_policy=NO_CACHE)
def preflight_and_plan(
    dataset: str,
    classes,
    store: str | None,
    force: bool,
    shard_size: int,
    max_classes: int | None,
    overrides: RunOverrides | None,
    run_id: str,
    device: str | None = None,
) -> RunPlan:
    """Validate dataset, classes, store and models; list the classes still to do, in shards."""
    return plan_run(
        dataset=dataset,
        classes=classes,
        store=store,
        force=force,
        shard_size=shard_size,
        max_classes=max_classes,
        overrides=overrides,
        run_id=run_id,
        device=device,
    )
