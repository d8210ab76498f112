"""A finished tiny run in a store (samples, records, pooled metrics, report, tables), built once per session.

The run goes through the same library path as the ``dct`` flow (plan → process_class per class →
pooled metrics → report → publish) without Prefect, so the notebook and report tests have a real store.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import pytest
from eval_world import REFERENCE_PER_CLASS, RUN_CLASSES, evaluated_tiny_world, write_reference_folder


@dataclass
class TinyRun:
    world: Path
    store_root: Path
    reference: Path
    plan: object
    config: object
    pooled: dict
    report_uri: str
    outcome: object
    shard_features: Path  # the per-class feature files as the shards wrote them (before any evaluation)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> TinyRun:
    from prefect.logging import disable_run_logger

    from dct.artifacts.store import ArtifactStore
    from dct.models.datasets import get_dataset
    from dct.results import new_run_id
    from dct.run.plan import build_config, plan_run
    from dct.run.publish import publish_run
    from dct.run.runner import load_shard_models, process_class
    from tasks.evaluate import compute_pooled_metrics, write_report

    base = tmp_path_factory.mktemp("eval-run")
    reference = write_reference_folder(base / "reference", [0, 1, 2, 3], REFERENCE_PER_CLASS)
    world = evaluated_tiny_world(base / "world", reference)
    store_root = base / "store"
    started = dt.datetime.now(dt.UTC)
    run_id = new_run_id(started)
    plan = plan_run(dataset=str(world), classes=RUN_CLASSES, store=str(store_root), run_id=run_id)
    spec, config = build_config(str(world), None, plan.store_root)
    store = ArtifactStore.from_config(config.storage)
    models = load_shard_models(config, "cpu", store)  # as a shard: also writes each class's FID features
    for cid in plan.todo:
        process_class(store, config, models, class_id=cid, class_name=spec.class_names[cid], run_id=run_id)

    import shutil

    shard_features = base / "shard-features"
    shutil.copytree(store_root / "cache" / "tiny" / "fid-samples", shard_features)
    with disable_run_logger():
        pooled = compute_pooled_metrics.fn(config, plan, get_dataset(str(world)).reference_images, "cpu")
        report_uri = write_report.fn(config, plan, spec.licence)
    outcome = publish_run(
        store,
        config,
        plan,
        class_names=list(spec.class_names),
        started_at=started,
        pooled=pooled,
        report_uri=report_uri,
    )
    return TinyRun(world, store_root, reference, plan, config, pooled, report_uri, outcome, shard_features)
