"""Fixtures shared by the in-process flow tests (tests/flows, tests/faults): a Prefect harness and a tiny world."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import pytest

# Prefect reads PREFECT_HOME at import: keep every test's Prefect state out of the user's home, and remove it
# when the test session ends (subprocesses inherit the variable and never make their own).
if "PREFECT_HOME" not in os.environ:
    os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="dct-prefect-home-")
    atexit.register(shutil.rmtree, os.environ["PREFECT_HOME"], ignore_errors=True)
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    from tiny import save_tiny_world

    return save_tiny_world(tmp_path_factory.mktemp("tiny-world"))


def read_all_pages(read, **kw) -> list:
    """Every page of a Prefect API listing (the server returns at most 200 rows per request)."""
    rows, page = [], 200
    while True:
        batch = read(**kw, limit=page, offset=len(rows))
        rows += batch
        if len(batch) < page:
            return rows


def flow_runs_of(run_id: str) -> list:
    """The flow runs of ONE dct run (the harness's API is shared by the session): those whose ``run_id``
    parameter is ``run_id`` (the `dct` run and its shard runs), and any child run below them."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        runs = [
            r
            for r in read_all_pages(client.read_flow_runs, sort=FlowRunSort.ID_DESC)
            if (r.parameters or {}).get("run_id") == run_id
        ]
        ids = {r.id for r in runs}
        while ids:
            children = read_all_pages(
                client.read_flow_runs,
                flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=list(ids))),
                sort=FlowRunSort.ID_DESC,
            )
            new = [r for r in children if r.id not in {x.id for x in runs}]
            runs += new
            ids = {r.id for r in new}
    return runs
