"""Per-class tasks of a shard: load models once, then optimise + evaluate each class."""

from __future__ import annotations

import datetime as dt

from prefect import task
from prefect.cache_policies import NO_CACHE

from dct.artifacts.store import ArtifactStore
from dct.commands.stopping import note_finished
from dct.config import RunConfig
from dct.models.loading import Models
from dct.results import class_summary
from dct.run.plan import ShardPlan
from dct.run.runner import failed_record, plan_key_mismatch, process_class
from dct.run.runner import load_shard_models as load_models_and_features


@task(name="load-models", cache_policy=NO_CACHE)
def load_shard_models(config: RunConfig, device: str) -> Models:
    """Load the diffusion pipeline, the guide, the evaluator and the FID feature extractor once per shard."""
    return load_models_and_features(config, device, ArtifactStore.from_config(config.storage))


@task(name="check-plan-keys", cache_policy=NO_CACHE)
def check_plan_keys(plan: ShardPlan, models: Models) -> str | None:
    """None if the loaded models give the plan's token_key and eval_key, else why this shard must not write."""
    return plan_key_mismatch(plan, models)


@task(name="optimize-and-evaluate-class", cache_policy=NO_CACHE)
def optimize_and_evaluate_class(
    config: RunConfig, models: Models, class_id: int, class_name: str, run_id: str, force: bool
) -> dict:
    """Optimise one class token, sample and score both variants, write token, samples and record."""
    store = ArtifactStore.from_config(config.storage)
    record = process_class(store, config, models, class_id=class_id, class_name=class_name, run_id=run_id, force=force)
    note_finished("run", class_id)  # its record is written: named in the line of a stopped `dct run`
    return class_summary(record)


@task(name="record-failed-class", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=[1, 5, 20])
def record_failed_class(
    config: RunConfig,
    models: Models,
    class_id: int,
    class_name: str,
    run_id: str,
    error: str,
    started: dt.datetime,
    keys: tuple[str, str] | None = None,
) -> dict:
    """Write a failed-attempt record with the error text, so the next run retries this class."""
    store = ArtifactStore.from_config(config.storage)
    record = failed_record(
        store, config, models, class_id=class_id, class_name=class_name, run_id=run_id, error=error, started=started,
        keys=keys,
    )
    return class_summary(record)
