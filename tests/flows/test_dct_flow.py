"""The `dct` flow run in-process under a Prefect test harness, on the tiny world (a dataset file)."""

from __future__ import annotations

import pytest

from dct.config import RunOverrides
from dct.results import read_results


def _run(world, store, **kw):
    from flows.dct_flow import dct

    return dct(dataset=str(world), store=str(store), return_state=True, **kw)


def test_two_classes_complete_then_skip(prefect_harness, tiny_world, tmp_path):
    store = tmp_path / "store"
    state = _run(tiny_world, store, classes="0-1")
    assert state.is_completed(), state.message
    summary = state.result()
    assert summary["done"] + summary["diverged"] == 2 and summary["failed"] == 0
    df = read_results(str(store), table="classes", dataset="tiny")
    assert sorted(df["class_id"]) == [0, 1]
    assert df["guide_top1_dct"].notna().all()
    tokens = list((store / "tokens" / "tiny").rglob("*.safetensors"))
    assert len(tokens) == 2

    again = _run(tiny_world, store, classes="0-1").result()
    assert again["skipped"] == 2 and again["done"] == 0
    runs = read_results(str(store), table="runs", dataset="tiny")
    assert len(runs) == 2  # the second run still publishes its run row


def test_failed_class_recorded_and_run_fails(prefect_harness, tiny_world, tmp_path, monkeypatch):
    import dct.run.runner

    real = dct.run.runner.optimize_token

    def flaky(pipe, classifier, *, class_id, **kw):
        if class_id == 1:
            raise RuntimeError("injected failure for class 1")
        return real(pipe, classifier, class_id=class_id, **kw)

    monkeypatch.setattr(dct.run.runner, "optimize_token", flaky)
    store = tmp_path / "store"
    state = _run(tiny_world, store, classes=[0, 1])
    assert state.is_failed()
    with pytest.raises(Exception, match=r"1 of 2 classes failed"):
        state.result()
    df = read_results(str(store), table="classes", dataset="tiny").set_index("class_id")
    assert df.loc[1, "status"] == "failed" and "injected failure for class 1" in df.loc[1, "error"]
    assert df.loc[0, "status"] in ("done", "diverged")

    # The same failure is tolerated with max_failed_fraction=0.5 (a fresh store: both classes attempted).
    state = _run(tiny_world, tmp_path / "store2", classes=[0, 1], max_failed_fraction=0.5)
    assert state.is_completed(), state.message
    assert state.result()["failed_classes"] == [1]

    # Once the fault is gone, a re-run retries only the failed class; the finished one is not redone.
    monkeypatch.setattr(dct.run.runner, "optimize_token", real)
    summary = _run(tiny_world, store, classes=[0, 1]).result()
    assert summary["skipped"] == 1 and summary["failed"] == 0 and summary["done"] + summary["diverged"] == 1
    df = read_results(str(store), table="classes", dataset="tiny")
    assert sorted(df["class_id"]) == [0, 1, 1]  # one failed row, then the retry's row


def test_dry_run_plans_without_loading_the_pipeline(prefect_harness, tiny_world, tmp_path, tripwire):
    """The tripwire sits on the third-party loaders (tests/tripwire.py), which every load path reaches."""
    state = _run(
        tiny_world, tmp_path / "store", classes="all", dry_run=True, shard_size=3, overrides=RunOverrides(max_epochs=4)
    )
    assert state.is_completed(), state.message
    out = state.result()
    assert out["dry_run"] and out["shards"] == [[0, 1, 2], [3]]
    assert any("training images" in line for line in out["plan"])


def test_the_dry_run_tripwire_fires_on_a_real_run(prefect_harness, tiny_world, tmp_path, tripwire):
    """The control: the same tripwire stops a run that does load models (so the dry run's pass means something)."""
    state = _run(tiny_world, tmp_path / "store", classes="0", overrides=RunOverrides(max_epochs=1, num_samples=1))
    assert state.is_failed()
    assert "a model was loaded" in str(state.result(raise_on_failure=False))


def test_plan_keys_equal_the_keys_of_loaded_models(tiny_world):
    """The parent plans with revisions resolved without loading the pipeline; they must equal the shard's."""
    from dct.models.loading import load_models
    from dct.run.plan import build_config, resolve_revisions

    _, config = build_config(str(tiny_world))
    rev = resolve_revisions(config)
    models = load_models(config, "cpu")
    assert (rev.diffusion, rev.classifier) == (models.pipe_revision, models.classifier_revision)


def test_deployment_mode_refuses_a_worker_local_store(prefect_harness, tiny_world, tmp_path):
    """docs/deployments.md: a worker-local directory is refused in deployment mode (the parent reads every record
    back from the store the GPU workers write), before any shard run is submitted."""
    state = _run(tiny_world, tmp_path / "store", classes="0", mode="deployment")
    assert state.is_failed()
    assert "is a local directory; in deployment mode" in str(state.result(raise_on_failure=False))
