"""A toy run (the embedded world, its evaluator's features, its procedural reference set): accuracies of
both variants by guide and evaluator, and pooled FID/KID with their sample counts, land in the tables."""

from __future__ import annotations

import datetime as dt

import pytest
from needs import need

TOY_CLASSES = [0, 1, 5]
TOY_SAMPLES = 48  # 3 classes × 48 = 144 images per variant ≥ 129 for the evaluator's 128-d features


def _toy_weights_present() -> bool:
    try:
        from dct.toy.models import PIPELINE_DIR, classifier_path
    except ModuleNotFoundError:
        return False
    return PIPELINE_DIR.is_dir() and all(classifier_path(n).is_file() for n in ("guide", "evaluator"))


@pytest.mark.slow
def test_toy_run_tables_hold_accuracies_and_pooled_metrics(tmp_path):
    need(_toy_weights_present(), "the toy world's weights (dct/toy/weights/) are not in this checkout")
    from prefect.logging import disable_run_logger

    from dct.artifacts.store import ArtifactStore
    from dct.config import RunOverrides
    from dct.models.loading import load_models
    from dct.results import new_run_id, read_results
    from dct.run.plan import build_config, plan_run
    from dct.run.publish import publish_run
    from dct.run.runner import process_class
    from tasks.evaluate import compute_pooled_metrics, write_report

    overrides = RunOverrides(max_epochs=3, num_samples=TOY_SAMPLES)
    started = dt.datetime.now(dt.UTC)
    run_id = new_run_id(started)
    plan = plan_run(dataset="toy", classes=TOY_CLASSES, store=str(tmp_path), overrides=overrides, run_id=run_id)
    spec, config = build_config("toy", overrides, plan.store_root)
    store = ArtifactStore.from_config(config.storage)
    models = load_models(config, "cpu")
    for cid in plan.todo:
        process_class(store, config, models, class_id=cid, class_name=spec.class_names[cid], run_id=run_id)
    with disable_run_logger():
        pooled = compute_pooled_metrics.fn(config, plan, spec.reference_images, "cpu")
        report_uri = write_report.fn(config, plan, spec.licence)
    publish_run(
        store,
        config,
        plan,
        class_names=list(spec.class_names),
        started_at=started,
        pooled=pooled,
        report_uri=report_uri,
    )

    classes = read_results(str(tmp_path), "classes", run_id=run_id)
    cols = [f"{w}_top{k}_{v}" for w in ("guide", "evaluator") for k in (1, 5) for v in ("baseline", "dct")]
    assert classes[cols].notna().all().all() and (classes["num_samples"] == TOY_SAMPLES).all()
    row = read_results(str(tmp_path), "runs", run_id=run_id).iloc[0]
    n = len(TOY_CLASSES) * TOY_SAMPLES
    for v in ("baseline", "dct"):
        assert row[f"fid_{v}"] > 0 and row[f"kid_std_{v}"] > 0 and row[f"fid_num_samples_{v}"] == n
    assert row["fid_num_reference"] == len(TOY_CLASSES) * 128 and row["fid_feature_extractor"].startswith(
        "evaluator:toy"
    )
    print(f"\ntoy run {run_id}: report {report_uri}")
    print(classes[["class_id", "class_name", *cols[:2], *cols[4:6]]].to_string(index=False))
    print(
        {k: row[k] for k in ("fid_baseline", "fid_dct", "kid_baseline", "kid_std_baseline", "kid_dct", "kid_std_dct")}
    )
