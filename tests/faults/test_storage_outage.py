"""Storage outages against a real S3 server (moto) behind a fault-injecting proxy; flows run in-process."""

from __future__ import annotations

import time
from urllib.parse import urlparse

import boto3
import pytest
from proxy import FaultProxy

from dct.results import read_results


@pytest.fixture
def outage_store(s3_bucket, aws_env, monkeypatch):
    """An S3 store reached through a FaultProxy; returns (store uri, proxy)."""
    url = urlparse(aws_env)
    proxy = FaultProxy((url.hostname, url.port))
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.endpoint)
    yield f"s3://{s3_bucket}/outage", proxy
    proxy.close()


def _shard_runs() -> int:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return sum(1 for r in client.read_flow_runs() if (r.name or "").startswith("dct-shard-"))


def test_endpoint_down_before_the_run_fails_preflight_fast(prefect_harness, tiny_world, outage_store):
    from flows.dct_flow import dct

    store, proxy = outage_store
    proxy.blocked = lambda line: True  # the endpoint is down for everything
    shards_before = _shard_runs()
    t0 = time.monotonic()
    state = dct(dataset=str(tiny_world), store=store, classes="0-1", return_state=True)
    elapsed = time.monotonic() - t0
    assert state.is_failed()
    with pytest.raises(Exception, match="unreachable"):
        state.result()
    assert elapsed < 60, f"preflight took {elapsed:.0f}s"
    assert _shard_runs() == shards_before  # no shard was started
    assert not any(blocked is False for *_, blocked in proxy.seen)


def test_outage_during_one_class_fails_only_that_class_and_rerun_completes_it(
    prefect_harness, tiny_world, outage_store, aws_env
):
    """Every request about class 1's artifacts fails (the store's bounded retries run out): class 1 is recorded
    as failed with the error text; classes 0 and 2 finish; once the store is healthy a re-run does only 1."""
    from flows.dct_flow import dct

    store, proxy = outage_store
    # The store is down for class 1's artifacts until the shard has given up on it; the failed-attempt
    # record (attempts/) is what the shard writes then, and the outage is over from that moment on.
    outage = {"over": False}

    def class_1_outage(line: str) -> bool:
        if "/attempts/" in line:
            outage["over"] = True
        return "/00001" in line and not outage["over"]

    proxy.blocked = class_1_outage
    state = dct(dataset=str(tiny_world), store=store, classes="0-2", max_failed_fraction=0.5, return_state=True)
    assert state.is_completed(), state.message
    summary = state.result()
    assert summary["failed_classes"] == [1]
    assert summary["done"] + summary["diverged"] == 2
    assert any(blocked for *_, blocked in proxy.seen)  # the fault really happened

    proxy.blocked = lambda line: False
    rows = read_results(store, table="classes", dataset="tiny").set_index("class_id")
    assert rows.loc[1, "status"] == "failed" and rows.loc[1, "error"]
    assert set(rows.loc[[0, 2], "status"]) <= {"done", "diverged"}

    # Nothing half-written is visible: every token in the bucket parses.
    from dct.artifacts.token_file import read_token_bytes

    s3 = boto3.client("s3", endpoint_url=aws_env)
    bucket, prefix = store.removeprefix("s3://").split("/", 1)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/tokens/")["Contents"]]
    for key in keys:
        read_token_bytes(s3.get_object(Bucket=bucket, Key=key)["Body"].read())

    again = dct(dataset=str(tiny_world), store=store, classes="0-2", return_state=True).result()
    assert again["skipped"] == 2 and again["failed"] == 0 and again["done"] + again["diverged"] == 1
