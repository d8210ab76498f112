"""Features where the pixels are: shards cache each class's FID/KID features; the parent of a deployment
run reads only those files (no sample image, no network) and gets the same numbers as extracting them
from the stored samples."""

from __future__ import annotations

import shutil

import pytest
from eval_world import NUM_SAMPLES, RUN_CLASSES

from dct.artifacts.store import ArtifactStore


def _metrics(store, tiny_run, **kwargs):
    from dct.evaluation.metrics import finished_records, pooled_metrics

    plan = tiny_run.plan
    records = finished_records(store, plan.dataset, plan.eval_key, plan.selected)
    return pooled_metrics(store, tiny_run.config, records, reference_images=str(tiny_run.reference), **kwargs)


def test_parent_reads_only_feature_files_and_equals_extracting_from_the_samples(tiny_run, tmp_path):
    # The same samples without the shards' feature files: the parent extracts from the stored images.
    copy = tmp_path / "store"
    shutil.copytree(tiny_run.store_root, copy)
    shutil.rmtree(copy / "cache" / "tiny" / "fid-samples")
    from_samples = _metrics(ArtifactStore(str(copy)), tiny_run)

    # The same store with only the feature files the shards wrote (the fixture's local evaluation may
    # have rewritten them).
    shard_only = tmp_path / "shard-store"
    shutil.copytree(tiny_run.store_root, shard_only)
    shutil.rmtree(shard_only / "cache" / "tiny" / "fid-samples")
    shutil.copytree(tiny_run.shard_features, shard_only / "cache" / "tiny" / "fid-samples")
    store = ArtifactStore(str(shard_only))
    deployed = _metrics(store, tiny_run, features_only=True, evaluator_revision=tiny_run.plan.revisions.evaluator)

    reads = {kind: n for (op, kind), n in store.requests.items() if op in ("get", "list", "head")}
    assert "samples" not in reads  # no sample image read or listed
    per_class = store.requests[("get", "cache")] - 1  # minus the cached reference features
    assert per_class == len(RUN_CLASSES)  # one feature file per class, nothing else
    assert deployed.feature_extractor == from_samples.feature_extractor
    assert deployed.class_ids == from_samples.class_ids == RUN_CLASSES
    for v in ("baseline", "dct"):
        a, b = deployed.variants[v], from_samples.variants[v]
        assert a.num_samples == b.num_samples == len(RUN_CLASSES) * NUM_SAMPLES
        assert a.fid == pytest.approx(b.fid, rel=1e-9, abs=1e-9)
        assert a.kid == pytest.approx(b.kid, rel=1e-9, abs=1e-12)


def test_parent_excludes_classes_without_a_current_feature_file_and_says_so(tiny_run, tmp_path):
    from dct.evaluation.features import class_features_uri

    copy = tmp_path / "store"
    shutil.copytree(tiny_run.store_root, copy)
    store = ArtifactStore(str(copy))
    plan = tiny_run.plan
    name = _metrics(store, tiny_run).feature_extractor
    gone = class_features_uri(store, plan.dataset, plan.eval_key, name, RUN_CLASSES[0])
    shutil.os.remove(store.to_path(gone))
    fresh = ArtifactStore(str(copy))
    m = _metrics(fresh, tiny_run, features_only=True, evaluator_revision=plan.revisions.evaluator)
    assert m.class_ids == RUN_CLASSES[1:]
    assert m.variants["dct"].num_samples == (len(RUN_CLASSES) - 1) * NUM_SAMPLES
    assert any("1 classes have no current feature file" in n for n in m.notes)
    assert ("get", "samples") not in fresh.requests


def test_features_of_a_forced_rerun_are_not_taken_for_the_old_samples(tiny_run, tmp_path):
    """The cache entry names its sample set (run id + start): a record of a later attempt does not match."""
    from dct.evaluation.features import read_class_features
    from dct.evaluation.metrics import finished_records

    store = ArtifactStore(str(tiny_run.store_root))
    plan = tiny_run.plan
    records = finished_records(store, plan.dataset, plan.eval_key, plan.selected)
    name = _metrics(store, tiny_run).feature_extractor
    assert all(f is not None for f in read_class_features(store, records, name))
    later = [r.model_copy(update={"started_at": r.started_at.replace(year=r.started_at.year + 1)}) for r in records]
    assert read_class_features(store, later, name) == [None] * len(records)
    assert read_class_features(store, records, name + "-other") == [None] * len(records)
