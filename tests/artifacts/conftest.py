"""Store fixtures: a REAL S3-compatible HTTP server (moto) on loopback, started once per session.

The client is never patched in-process: s3fs/botocore talk HTTP to the server exactly as they would to
MinIO or AWS. Buckets are created here, by the test setup, with boto3 — production code never creates one.
"""

from __future__ import annotations

import pytest

from dct.artifacts.store import ArtifactStore

# moto_endpoint, aws_env and s3_bucket live in tests/conftest.py (the deployment tests use them too).


@pytest.fixture
def s3_store(s3_bucket, aws_env, monkeypatch):
    monkeypatch.delenv("DCT_STORE", raising=False)
    return ArtifactStore.from_config(store=f"s3://{s3_bucket}/team/dct")


@pytest.fixture
def local_store(tmp_path, monkeypatch):
    monkeypatch.delenv("DCT_STORE", raising=False)
    return ArtifactStore.from_config(store=str(tmp_path / "store"))


@pytest.fixture(params=["local", "s3"])
def store(request) -> ArtifactStore:
    """The same test against a local directory and against S3 over HTTP."""
    return request.getfixturevalue(f"{request.param}_store")


def _provenance(**overrides):
    from dct.results import Provenance

    base = dict(
        diffusion_model_id="toy/diffusion", diffusion_revision="d" * 40, diffusion_licence="creativeml-openrail-m",
        classifier_model_id="toy/classifier", classifier_revision="c" * 40, classifier_licence="apache-2.0",
        dct_version="0.1.0", python_version="3.11", torch_version="2.x", diffusers_version="0.42.1",
        transformers_version="4.x", device="cpu", dtype="float32",
    )
    return Provenance(**(base | overrides))


@pytest.fixture
def make_record():
    """Factory of valid ClassRecords: ``make_record(class_id=3, run_id=..., status=...)``."""
    import datetime as dt

    from dct.results import ClassRecord

    def make(class_id: int = 0, *, run_id: str = "run-a", dataset: str = "toy", token_key: str = "tk0001",
             eval_key: str = "ek0001", status: str = "done", **fields):
        now = dt.datetime(2026, 11, 26, 10, 0, tzinfo=dt.UTC)
        values = dict(
            run_id=run_id, dataset=dataset, class_id=class_id, class_name=f"class {class_id}",
            token=f"<dct-{dataset}-{class_id:05d}>", token_key=token_key, eval_key=eval_key, status=status,
            stop_reason="accuracy" if status == "done" else None, epochs=7, best_epoch=5, best_loss=0.25,
            optimize_seconds=12.5, evaluate_seconds=3.0, num_samples=4, sample_format="png",
            guide_top1_baseline=0.25, guide_top5_baseline=0.75, guide_top1_dct=1.0, guide_top5_dct=1.0,
            provenance=_provenance(), started_at=now, finished_at=now + dt.timedelta(seconds=16),
        )
        return ClassRecord(**(values | fields))

    return make


@pytest.fixture
def make_run():
    import datetime as dt

    from dct.results import RunRecord

    def make(run_id: str = "run-a", *, dataset: str = "toy", day: int = 26, hour: int = 10, **fields):
        values = dict(
            run_id=run_id, dataset=dataset, status="done", token_key="tk0001", eval_key="ek0001",
            classes_planned=3, classes_done=3, config_json=f'{{"dataset":"{dataset}"}}',
            provenance=_provenance(), started_at=dt.datetime(2026, 11, day, hour, tzinfo=dt.UTC),
        )
        return RunRecord(**(values | fields))

    return make
