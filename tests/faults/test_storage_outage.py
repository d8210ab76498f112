"""Storage outages against a real S3 server (moto) behind a fault-injecting proxy; flows run in-process."""

from __future__ import annotations

import itertools
import uuid
from urllib.parse import urlparse

import boto3
import pytest
from flows_fixtures import flow_runs_of
from proxy import FaultProxy

from dct.results import read_results

# The store's retry bounds as documented (docs/reliability.md, "Storage outages": 3 x 3 x 2 = 18 requests per
# failed call), not read from the store's defaults: changed defaults must fail here until the docs change too.
# aiohttp sends an idempotent request a second time, at once, when the server drops the connection before
# answering: one botocore attempt = 2 requests.
ATTEMPTS = 3  # botocore attempts per call (standard mode)
TRIES = 3  # s3fs tries of the call
RESENDS = 2
SLACK_S = 2.0  # scheduling latency allowed on top of an upper bound (lower bounds need none)


def assert_bounded_retries(times: list[float]) -> None:
    """The blocked requests of ONE failed store call: exactly TRIES x ATTEMPTS attempts, spaced as configured.

    botocore's standard mode sleeps rand(0, 1) * 2**(k-1) s before attempt k+1 (an upper bound: the jitter
    can be ~0); s3fs sleeps exactly 0.1 * 1.7**i s after its try i (a lower bound)."""
    assert len(times) == TRIES * ATTEMPTS * RESENDS, f"{len(times)} blocked requests: {times}"
    attempts = times[::RESENDS]
    for a, b in zip(times[::RESENDS], times[1::RESENDS], strict=True):
        assert b - a < 0.5, f"the client's re-send came {b - a:.2f}s later"
    for i in range(TRIES):
        one_try = attempts[i * ATTEMPTS : (i + 1) * ATTEMPTS]
        for k, (a, b) in enumerate(itertools.pairwise(one_try), start=1):
            assert b - a <= 2 ** (k - 1) + SLACK_S, f"try {i}: {b - a:.2f}s before attempt {k + 1}"
        if i + 1 < TRIES:
            gap = attempts[(i + 1) * ATTEMPTS] - one_try[-1]
            wait = 0.1 * 1.7**i
            assert wait <= gap <= wait + 2 ** (ATTEMPTS - 1) + SLACK_S, f"{gap:.2f}s between s3fs tries {i} and {i + 1}"


@pytest.fixture
def outage_store(s3_bucket, aws_env, monkeypatch):
    """An S3 store reached through a FaultProxy; returns (store uri, proxy)."""
    url = urlparse(aws_env)
    proxy = FaultProxy((url.hostname, url.port))
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.endpoint)
    yield f"s3://{s3_bucket}/outage", proxy
    proxy.close()


def test_endpoint_down_before_the_run_fails_preflight_fast(prefect_harness, tiny_world, outage_store):
    from flows.dct_flow import dct

    store, proxy = outage_store
    proxy.blocked = lambda line: True  # the endpoint is down for everything
    run_id = f"outage-{uuid.uuid4().hex[:8]}"
    state = dct(dataset=str(tiny_world), store=store, classes="0-1", run_id=run_id, return_state=True)
    assert state.is_failed()
    with pytest.raises(Exception, match="unreachable"):
        state.result()
    runs = flow_runs_of(run_id)
    assert [r.name for r in runs] == ["dct-tiny-0-1"]  # this run, and no shard run of it was started
    assert not any(blocked is False for *_, blocked in proxy.seen)
    # Bounded: the preflight's one write probe, retried exactly as configured, then the run failed (no wall-clock
    # threshold: how long that takes follows from the backoff bounds checked here, on any machine).
    lines = sorted(proxy.seen)
    assert {line for _, line, _ in lines} == {lines[0][1]} and lines[0][1].startswith("PUT "), lines
    assert "/_dct/preflight/" in lines[0][1]
    assert_bounded_retries([t for t, *_ in lines])


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
    # The fault really happened, and class 1's first store call (is its token there?) gave up after exactly the
    # configured attempts and tries, spaced by their backoff, and nothing else of class 1's was tried after it.
    blocked = sorted((t, line) for t, line, b in proxy.seen if b)
    assert {line.split()[0] for _, line in blocked} == {"HEAD"}, blocked
    assert len({line for _, line in blocked}) == 1, blocked
    assert_bounded_retries([t for t, _ in blocked])

    proxy.blocked = lambda line: False
    rows = read_results(store, table="classes", dataset="tiny").set_index("class_id")
    assert rows.loc[1, "status"] == "failed"
    # The recorded error names the connection failure and the endpoint (what an operator needs to look at).
    assert "Connection was closed before we received a valid response" in rows.loc[1, "error"], rows.loc[1, "error"]
    assert proxy.endpoint in rows.loc[1, "error"]
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
