"""Probe task of the parent flow (``probe=true``): which attributes the run's tokens shifted (docs/probe.md)."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from dct.artifacts.store import ArtifactStore
from dct.config import RunConfig
from dct.run.plan import RunPlan


@task(name="probe-samples", cache_policy=NO_CACHE)
def probe_samples(config: RunConfig, plan: RunPlan, device: str = "cpu") -> str:
    """Probe the run's stored samples (baseline vs DCT, same seeds); write the probe table and page; returns its URI."""
    from dct.models.loading import resolve_device
    from dct.probe.probe import probe_eval_key

    store = ArtifactStore.from_config(config.storage)
    uris, page = probe_eval_key(
        store,
        config,
        run_id=plan.run_id,
        eval_key=plan.eval_key,
        class_ids=plan.selected,
        device=resolve_device(device),
    )
    get_run_logger().info("probe: %s (%d table file(s))", page, len(uris))
    return page
