"""The deployment fan-out at many shards, against a real Prefect server (the test harness's).

The shards are tiny: a stand-in worker thread (its own API client, not counted) takes each scheduled
child run of `dct-shard/gpu` and moves it to a final state at once — Completed, except one Failed and
one Crashed shard. The parent's polling goes through a client whose HTTP requests are counted at the
transport (the network edge): reads per round must not grow with the number of shards, submission
must respect ``max_in_flight``, and every child's final state must still be acted on. A rate-limited
(hosted) API is played by the same transport answering 429 to some filter calls.
"""

from __future__ import annotations

import itertools
import json
import threading
import time

import httpx
import pytest

SHARDS = 60
FAILED_SHARD, CRASHED_SHARD = 3, 5
MAX_IN_FLIGHT = 8
POLL_S = 0.25
FIRST_WAVE_HOLD_S = 6.0


def _stand_in_worker(
    deployment_id, stop: threading.Event, finished: set[int], seen: dict, hold_s: float = 0.0,
    hold_first: int = 0, never_ends: tuple[int, float] | None = None,
) -> None:
    """Takes every open child run; moves it to its final state once it has been Running ``hold_s``
    (the first ``hold_first`` runs it sees: at least 1 s). ``never_ends=(class_id, s)``: that class's first
    attempt stays Running for ``s`` seconds (a lost node that comes back late), then completes."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.states import Completed, Crashed, Failed, Running

    final = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
    running: dict = {}  # flow run id -> when this worker set it Running
    with get_client(sync_client=True) as w:
        while not stop.is_set():
            runs = w.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))
            open_runs = [r for r in runs if not r.state or r.state.type.value not in final]
            seen["max_in_flight"] = max(seen.get("max_in_flight", 0), len(open_runs))
            seen["runs"] = len(runs)
            for r in open_runs:
                (cid,) = r.parameters["class_ids"]
                if r.id not in running:
                    w.set_flow_run_state(r.id, Running(), force=True)
                    running[r.id] = time.monotonic()
                held = hold_s
                if r.id in list(running)[:hold_first] and len(runs) <= hold_first:
                    held = max(hold_s, FIRST_WAVE_HOLD_S)  # until a run beyond the first wave exists
                if never_ends and cid == never_ends[0] and r.name.endswith("-a0"):
                    held = never_ends[1]
                if time.monotonic() - running[r.id] < held:
                    continue
                if cid == FAILED_SHARD:
                    state = Failed(message="models could not be loaded")
                elif cid == CRASHED_SHARD and r.name.endswith("-a0"):
                    state = Crashed(message="worker process killed")
                else:
                    finished.add(cid)
                    state = Completed()
                w.set_flow_run_state(r.id, state, force=True)
            time.sleep(0.05)


def _child_runs(deployment_id) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    with get_client(sync_client=True) as c:
        return c.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))


def _most_open_at_a_submission(deployment_id) -> int:
    """The most child runs not final at the moment another child run was created, by the server's clock."""
    from prefect.client.orchestration import get_client

    final = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
    spans = []
    with get_client(sync_client=True) as c:
        for r in _child_runs(deployment_id):
            states = sorted(c.read_flow_run_states(r.id), key=lambda st: st.timestamp)
            ended = next(st.timestamp for st in states if st.type.value in final)
            spans.append((r.created, ended))
    return max(sum(1 for c0, e in spans if c0 < created < e) for created, _ in spans)


@pytest.mark.parametrize("shards, max_in_flight", [(60, MAX_IN_FLIGHT), (12, 4)], ids=["60-shards", "12-shards"])
def test_many_shards_poll_with_one_read_per_round_and_every_final_state_is_inspected(
    prefect_harness, shards, max_in_flight
):
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    from flows.fanout import run_shards_on_workers

    with get_client(sync_client=True) as c:
        c.create_work_pool(WorkPoolCreate(name="gpu", type="process", concurrency_limit=4), overwrite=True)
        flow_id = c.create_flow_from_name("dct-shard")
        deployment_id = c.create_deployment(flow_id=flow_id, name=f"gpu-{shards}", work_pool_name="gpu")

    requests: list[tuple[float, str, str, int]] = []  # (sent, method, path, flow run ids asked for)

    def count(request: httpx.Request) -> None:
        asked = 0
        if request.method == "POST" and request.url.path.endswith("/flow_runs/filter"):
            body = json.loads(request.content or b"{}")
            asked = len(((body.get("flow_runs") or {}).get("id") or {}).get("any_") or [])
        requests.append((time.monotonic(), request.method, request.url.path, asked))

    finished: set[int] = set()
    seen: dict = {}
    stop = threading.Event()
    # The first wave stays Running until a run beyond it exists (or FIRST_WAVE_HOLD_S): a parent that submitted
    # more than max_in_flight at once would have them all open together, whatever the machine's speed.
    worker = threading.Thread(
        target=_stand_in_worker, args=(deployment_id, stop, finished, seen), kwargs={"hold_first": max_in_flight},
        daemon=True,
    )
    worker.start()

    @flow
    def parent() -> dict[int, str]:
        with get_client(sync_client=True, httpx_settings={"event_hooks": {"request": [count]}}) as polling:
            return run_shards_on_workers(
                [[c] for c in range(shards)],
                run_id=f"fanout-scale-{shards}",
                shard_params={"dataset": "tiny"},
                dataset_label="tiny",
                shard_timeout_s=600,
                unfinished=lambda ids: [c for c in ids if c not in finished],
                poll_s=POLL_S,
                max_in_flight=max_in_flight,
                client=polling,
                deployment=f"dct-shard/gpu-{shards}",
            )

    try:
        reasons = parent()
    finally:
        stop.set()
        worker.join(10)

    # Every final state acted on: the Failed shard's class gets its reason, the Crashed one was
    # resubmitted once (one more child run) and then completed, all others completed.
    assert set(reasons) == {FAILED_SHARD} and "ended FAILED: models could not be loaded" in reasons[FAILED_SHARD]
    assert finished == set(range(shards)) - {FAILED_SHARD}
    assert seen["runs"] == shards + 1
    # Submitted in waves: when any child run was created, fewer than max_in_flight others were not final.
    assert _most_open_at_a_submission(deployment_id) < max_in_flight
    # Polling: one filtered read per round (rounds are spaced by at least POLL_S: each sleeps first), asking
    # for every shard in flight at once; never one read per shard.
    per_shard = [p for _, m, p, _ in requests if m == "GET" and "/flow_runs/" in p]
    filtered = [(t, asked) for t, m, p, asked in requests if m == "POST" and p.endswith("/flow_runs/filter")]
    assert per_shard == []
    assert filtered and max(asked for _, asked in filtered) == max_in_flight  # the first round asks for the wave
    gaps = [b - a for (a, _), (b, _) in itertools.pairwise(filtered)]
    assert min(gaps) >= POLL_S * 0.99, sorted(gaps)[:5]


def test_a_shard_that_never_ends_is_cancelled_at_its_timeout_and_resubmitted_once(prefect_harness):
    """A lost node: its run stays Running (nobody reports it). The per-shard timeout marks it Cancelled and the
    shard's unfinished class is resubmitted once (docs/deployments.md, "Failure handling of the fan-out")."""
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    from flows.fanout import run_shards_on_workers

    with get_client(sync_client=True) as c:
        c.create_work_pool(WorkPoolCreate(name="gpu", type="process", concurrency_limit=4), overwrite=True)
        flow_id = c.create_flow_from_name("dct-shard")
        deployment_id = c.create_deployment(flow_id=flow_id, name="gpu-lost-node", work_pool_name="gpu")
    finished: set[int] = set()
    seen: dict = {}
    stop = threading.Event()
    # Class 1's first attempt stays Running for 30 s (then its node "comes back" and completes it): far past
    # the 2 s timeout, so only the timeout can end it in time.
    worker = threading.Thread(
        target=_stand_in_worker, args=(deployment_id, stop, finished, seen), kwargs={"never_ends": (1, 30.0)},
        daemon=True,
    )
    worker.start()

    @flow
    def parent() -> dict[int, str]:
        return run_shards_on_workers(
            [[0], [1], [2]], run_id="fanout-lost", shard_params={"dataset": "tiny"}, dataset_label="tiny",
            shard_timeout_s=2, unfinished=lambda ids: [c for c in ids if c not in finished], poll_s=POLL_S,
            max_in_flight=3, deployment="dct-shard/gpu-lost-node",
        )

    try:
        reasons = parent()
    finally:
        stop.set()
        worker.join(10)
    assert reasons == {} and finished == {0, 1, 2}
    states = {r.name: r.state.type.value for r in _child_runs(deployment_id)}
    assert states == {
        "dct-shard-tiny-00000-00000-a0": "COMPLETED",
        "dct-shard-tiny-00001-00001-a0": "CANCELLED",  # marked by the parent at its timeout
        "dct-shard-tiny-00001-00001-a1": "COMPLETED",  # the resubmission, once
        "dct-shard-tiny-00002-00002-a0": "COMPLETED",
    }, states


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

    from prefect.exceptions import PrefectHTTPStatusError

    calls.clear()
    with pytest.raises(PrefectHTTPStatusError) as raised:
        _with_backoff(broken, "poll", 0.0, logging.getLogger("test"))
    assert raised.value.response.status_code == 500
    assert calls == [0]  # at once: no retry


class _RateLimitedFilter(httpx.BaseTransport):
    """The real HTTP transport, except that the flow-run filter calls numbered in ``limited`` (1-based) answer
    429 at once, as a hosted API's rate limiter does, without reaching the server.

    Prefect's client retries a 429 itself, resending the same request (PREFECT_CLIENT_MAX_RETRIES more
    times, waiting Retry-After): a limited call answers 429 to every attempt, so the error reaches the
    polling loop whatever the retry setting (the server's own 503s under load stay retried).
    """

    def __init__(self, limited: set[int]) -> None:
        self.inner = httpx.HTTPTransport()
        self.limited = limited
        self.calls: list[httpx.Request] = []  # one per filter call, however many attempts it took
        self.attempts: list[tuple[int, float, float, int]] = []  # (call number, sent, answered, status)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if not (request.method == "POST" and request.url.path.endswith("/flow_runs/filter")):
            return self.inner.handle_request(request)
        if not self.calls or self.calls[-1] is not request:
            self.calls.append(request)
        sent = time.monotonic()
        if len(self.calls) in self.limited:
            response = httpx.Response(
                429, headers={"Retry-After": "0"}, json={"detail": "rate limit exceeded"}, request=request
            )
        else:
            response = self.inner.handle_request(request)
            response.read()
        self.attempts.append((len(self.calls), sent, time.monotonic(), response.status_code))
        return response

    def close(self) -> None:
        self.inner.close()


def test_polling_backs_off_on_429_doubling_each_round_and_returns_to_poll_s_after_success(prefect_harness):
    import logging

    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.settings import PREFECT_CLIENT_MAX_RETRIES

    from flows.fanout import run_shards_on_workers

    shards, in_flight, poll_s, limited = 6, 3, 0.25, {3, 4, 5}
    with get_client(sync_client=True) as c:
        c.create_work_pool(WorkPoolCreate(name="gpu", type="process", concurrency_limit=4), overwrite=True)
        flow_id = c.create_flow_from_name("dct-shard")
        deployment_id = c.create_deployment(flow_id=flow_id, name="gpu-rate-limited", work_pool_name="gpu")

    transport = _RateLimitedFilter(limited)
    warnings: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno >= logging.WARNING:
                warnings.append(record.getMessage())

    run_logger, collect = logging.getLogger("prefect.flow_runs"), Collect()
    run_logger.addHandler(collect)
    finished: set[int] = set()
    seen: dict = {}
    stop = threading.Event()
    # Each child stays Running 1.5 s: most rounds find nothing final and submit nothing, so a round's
    # spacing is its delay alone (submitting a wave takes seconds on a loaded machine).
    worker = threading.Thread(
        target=_stand_in_worker, args=(deployment_id, stop, finished, seen, 1.5), daemon=True
    )
    worker.start()

    @flow
    def parent() -> dict[int, str]:
        with get_client(sync_client=True, httpx_settings={"transport": transport}) as polling:
            return run_shards_on_workers(
                [[c] for c in range(shards)],
                run_id="fanout-429",
                shard_params={"dataset": "tiny"},
                dataset_label="tiny",
                shard_timeout_s=600,
                unfinished=lambda ids: [c for c in ids if c not in finished],
                poll_s=poll_s,
                max_in_flight=in_flight,
                client=polling,
                deployment="dct-shard/gpu-rate-limited",
            )

    try:
        reasons = parent()
    finally:
        stop.set()
        worker.join(10)
        run_logger.removeHandler(collect)

    # The run survives the 429s and every final state is still acted on.
    assert set(reasons) == {FAILED_SHARD} and "ended FAILED: models could not be loaded" in reasons[FAILED_SHARD]
    assert finished == set(range(shards)) - {FAILED_SHARD}
    assert seen["runs"] == shards + 1  # the Crashed shard resubmitted once
    # Each limited call was retried by Prefect's client to its limit, then reached the loop: one round each.
    limited_attempts = [n for n, _, _, status in transport.attempts if status == 429]
    assert limited_attempts == [n for n in sorted(limited) for _ in range(PREFECT_CLIENT_MAX_RETRIES.value() + 1)]
    assert len(transport.calls) > max(limited) + 1
    # A round's spacing: from the previous call's last answer to this call's first attempt (its sleep, plus
    # the previous round's work). After the k-th 429 in a row the loop sleeps poll_s * 2**k.
    first_sent = {n: sent for n, sent, _, _ in reversed(transport.attempts)}
    last_answered = {n: answered for n, _, answered, _ in transport.attempts}
    gaps = {n: first_sent[n] - last_answered[n - 1] for n in range(2, len(transport.calls) + 1)}
    # A sleep never returns early, so the lower bound is exact; the upper bound is the next step of the doubling
    # (a shared, loaded machine delays a round by tenths of a second, never by a whole step).
    for k, n in enumerate(sorted(limited), 1):
        expected = poll_s * 2**k
        assert expected <= gaps[n + 1] < 2 * expected, (k, gaps)
    # After the successful round the delay is poll_s again: later rounds that had nothing to submit are
    # spaced ~poll_s (never less), not the 2 s the backoff had reached.
    after = [gap for n, gap in gaps.items() if n > max(limited) + 1]
    assert min(after) >= poll_s and min(after) < 4 * poll_s, gaps
    # Each 429 round warned, naming the rate limit.
    rate_limited = [w for w in warnings if "rate limited" in w and "429" in w]
    assert len(rate_limited) == len(limited), warnings
