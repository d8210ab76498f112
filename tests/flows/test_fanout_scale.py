"""The deployment fan-out at many shards, against a real Prefect server (the test harness's).

The shards are tiny: a stand-in worker thread (its own API client, not counted) takes each scheduled
child run of `dct-shard/gpu` and moves it to a final state at once — Completed, except one Failed and
one Crashed shard. The parent's polling goes through a client whose HTTP requests are counted at the
transport (the network edge): reads per round must not grow with the number of shards, submission
must respect ``max_in_flight``, and every child's final state must still be acted on.
"""

from __future__ import annotations

import threading
import time

import httpx

SHARDS = 60
FAILED_SHARD, CRASHED_SHARD = 3, 5
MAX_IN_FLIGHT = 8
POLL_S = 0.25


def _stand_in_worker(deployment_id, stop: threading.Event, finished: set[int], seen: dict) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.states import Completed, Crashed, Failed, Running

    final = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
    with get_client(sync_client=True) as w:
        while not stop.is_set():
            runs = w.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))
            open_runs = [r for r in runs if not r.state or r.state.type.value not in final]
            seen["max_in_flight"] = max(seen.get("max_in_flight", 0), len(open_runs))
            seen["runs"] = len(runs)
            for r in open_runs:
                (cid,) = r.parameters["class_ids"]
                w.set_flow_run_state(r.id, Running(), force=True)
                if cid == FAILED_SHARD:
                    state = Failed(message="models could not be loaded")
                elif cid == CRASHED_SHARD and r.name.endswith("-a0"):
                    state = Crashed(message="worker process killed")
                else:
                    finished.add(cid)
                    state = Completed()
                w.set_flow_run_state(r.id, state, force=True)
            time.sleep(0.05)


def test_many_shards_poll_with_one_read_per_round_and_every_final_state_is_inspected(prefect_harness):
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    from flows.fanout import run_shards_on_workers

    with get_client(sync_client=True) as c:
        c.create_work_pool(WorkPoolCreate(name="gpu", type="process", concurrency_limit=4), overwrite=True)
        flow_id = c.create_flow_from_name("dct-shard")
        deployment_id = c.create_deployment(flow_id=flow_id, name="gpu", work_pool_name="gpu")

    requests: list[tuple[float, str, str]] = []

    def count(request: httpx.Request) -> None:
        requests.append((time.monotonic(), request.method, request.url.path))

    finished: set[int] = set()
    seen: dict = {}
    stop = threading.Event()
    worker = threading.Thread(target=_stand_in_worker, args=(deployment_id, stop, finished, seen), daemon=True)
    worker.start()

    @flow
    def parent() -> dict[int, str]:
        with get_client(sync_client=True, httpx_settings={"event_hooks": {"request": [count]}}) as polling:
            return run_shards_on_workers(
                [[c] for c in range(SHARDS)],
                run_id="fanout-scale",
                shard_params={"dataset": "tiny"},
                dataset_label="tiny",
                shard_timeout_s=600,
                unfinished=lambda ids: [c for c in ids if c not in finished],
                poll_s=POLL_S,
                max_in_flight=MAX_IN_FLIGHT,
                client=polling,
            )

    t0 = time.monotonic()
    try:
        reasons = parent()
    finally:
        elapsed = time.monotonic() - t0
        stop.set()
        worker.join(10)

    # Every final state acted on: the Failed shard's class gets its reason, the Crashed one was
    # resubmitted once (61 child runs) and then completed, all others completed.
    assert set(reasons) == {FAILED_SHARD} and "ended FAILED: models could not be loaded" in reasons[FAILED_SHARD]
    assert finished == set(range(SHARDS)) - {FAILED_SHARD}
    assert seen["runs"] == SHARDS + 1
    assert seen["max_in_flight"] <= MAX_IN_FLIGHT  # submitted in waves
    # Polling: one filtered read per round, never one read per shard.
    per_shard = [p for _, m, p in requests if m == "GET" and "/flow_runs/" in p]
    filtered = [p for _, m, p in requests if m == "POST" and p.endswith("/flow_runs/filter")]
    rounds = elapsed / POLL_S  # each round sleeps POLL_S first: an upper bound on the rounds
    assert per_shard == []
    assert 1 <= len(filtered) <= rounds + 1, (len(filtered), rounds)


def _http_error(status: int):
    from prefect.exceptions import PrefectHTTPStatusError

    request = httpx.Request("POST", "http://prefect.invalid/api/flow_runs/filter")
    response = httpx.Response(status, request=request, headers={"Retry-After": "0"})
    return PrefectHTTPStatusError.from_httpx_error(httpx.HTTPStatusError("rate", request=request, response=response))


def test_rate_limited_calls_back_off_and_retry_other_errors_fail_at_once():
    import logging

    from flows.fanout import _with_backoff

    calls = []

    def flaky():
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise _http_error(429)
        return "ok"

    assert _with_backoff(flaky, "poll", 0.0, logging.getLogger("test")) == "ok"
    # Exponential: at least 1 s, then at least 2 s (a sleep never returns early).
    assert len(calls) == 3 and calls[1] - calls[0] >= 1.0 and calls[2] - calls[1] >= 2.0

    def broken():
        calls.append(0)
        raise _http_error(500)

    calls.clear()
    try:
        _with_backoff(broken, "poll", 0.0, logging.getLogger("test"))
    except Exception as exc:  # noqa: BLE001 - the error itself is what is checked
        assert getattr(exc.response, "status_code", None) == 500
    assert calls == [0]
