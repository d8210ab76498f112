from __future__ import annotations

import logging
import os
import sys
import uuid
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # tests/tiny.py helpers

# ONE Prefect test harness (and one tiny world) for the whole session, defined here at the root: a session
# fixture imported into several sub-directory conftests is one fixture PER directory, and a second harness
# started while the first is alive leaves the process-wide event worker talking to the first server, so the
# second one never records task runs (the credentials canary reads them).
from flows_fixtures import prefect_harness, tiny_world  # noqa: F401

logging.getLogger("werkzeug").setLevel(logging.ERROR)  # the moto server's per-request access log


# One thread: results differ slightly with the thread count (pinned, so comparisons are exact), and
# for the tiny test models one thread is far faster than two fighting over a shared 2-core machine.
# Subprocesses (workers, `dct run`) inherit it through OMP_NUM_THREADS.
os.environ["OMP_NUM_THREADS"] = "1"


@pytest.fixture(autouse=True)
def _deterministic_threads():
    torch.set_num_threads(1)


@pytest.fixture
def tripwire(monkeypatch):
    """Any model load raises :class:`tripwire.ModelLoaded` (tests/tripwire.py)."""
    import tripwire

    tripwire.arm(monkeypatch)


@pytest.fixture
def tiny_pipe(tmp_path):
    from tiny import tiny_pipeline

    return tiny_pipeline(tmp_path)


@pytest.fixture
def tiny_clf():
    from tiny import tiny_classifier

    return tiny_classifier()


# ---- a REAL S3-compatible HTTP server (moto) on loopback; the client is never patched in-process


@pytest.fixture(scope="session")
def moto_endpoint():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def aws_env(moto_endpoint, monkeypatch, tmp_path):
    """Standard AWS variables pointing at the moto server (inherited by subprocesses started by the test)."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_SECURITY_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing-key-id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret-key")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_endpoint)
    return moto_endpoint


@pytest.fixture
def s3_bucket(aws_env):
    """A fresh bucket per test (test setup, not product code)."""
    import boto3

    name = f"dct-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=aws_env).create_bucket(Bucket=name)
    return name
