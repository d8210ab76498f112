"""Per-class tasks of a shard: load models once, then optimise + evaluate each class."""

from __future__ import annotations

import datetime as dt

from prefect import task
from prefect.cache_policies import NO_CACHE

from dct.artifacts.store import ArtifactStore
from dct.config import RunConfig
from dct.models.loading import Models
from dct.results import class_summary
from dct.run.runner import failed_record, process_class
from dct.run.runner import load_shard_models as load_models_and_features


@task(name="load-models", cache_policy=NO_CACHE)
def load_shard_models(config: RunConfig, device: str) -> Models:
    """Load the diffusion pipeline, the guide, the evaluator and the FID feature extractor once per shard."""
    return load_models_and_features(config, device, ArtifactStore.from_config(config.storage))


@task(name="optimize-and-evaluate-class", cache_policy=NO_CACHE)
def optimize_and_evaluate_class(
    config: RunConfig, models: Models, class_id: int, class_name: str, run_id: str, force: bool
) -> dict:
    """Optimise one class token, sample and score both variants, write token, samples and record."""
    store = ArtifactStore.from_config(config.storage)
    record = process_class(store, config, models, class_id=class_id, class_name=class_name, run_id=run_id, force=force)
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
) -> dict:
    """Write a failed-attempt record with the error text, so the next run retries this class."""
    store = ArtifactStore.from_config(config.storage)
    record = failed_record(
        store, config, models, class_id=class_id, class_name=class_name, run_id=run_id, error=error, started=started
    )
    return class_summary(record)
