"""Deployment-mode fan-out: every shard becomes a child run of `dct-shard/gpu` on the GPU work pool.

Shards are submitted (``run_deployment(..., timeout=0)``) in waves: at most ``max_in_flight`` child
runs are not final at any time (default: twice the gpu pool's concurrency limit, so every free GPU
finds the next shard queued), and a new one is submitted as one finishes — 625 shards of a 10k-class
dataset are not 625 scheduled runs at once. The children are waited on together, with ONE filtered
``read_flow_runs`` call per polling round (by the ids in flight), not one call per shard, so the API
load is constant in the number of shards (docs/design.md, "Scale"); an HTTP 429 from a rate-limited
(hosted) API backs the round off exponentially instead of failing the run.

Parent and workers share no Prefect result storage: what a shard did is read back from the store by
the parent (``dct.run.publish``). Every child's final state is inspected, because a failed child does
not fail its parent in Prefect by itself:

- Completed / Failed: final. A Failed shard (e.g. the models could not be loaded) is not retried: the
  same inputs would fail again; its unfinished classes are recorded as failed.
- Crashed (the process died: OOM-kill, SIGKILL, node loss detected by the worker) or timed out (the
  child stayed Running past ``shard_timeout_s``: a lost node whose heartbeat stopped): resubmitted
  ONCE with only the classes that have no record in the store yet. A timed-out child is first marked
  Cancelled so a late-reviving worker cannot publish into the next attempt's classes unnoticed.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from prefect import get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError
from prefect.states import Cancelled

SHARD_DEPLOYMENT = "dct-shard/gpu"
GPU_POOL = "gpu"
FINAL_STATES = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
RESUBMIT_STATES = {"CRASHED", "TIMED_OUT"}
DEFAULT_MAX_IN_FLIGHT = 64  # a pool without a concurrency limit (or none found)
MAX_BACKOFF_S = 120.0


@dataclass
class ShardAttempt:
    index: int
    attempt: int
    class_ids: list[int]
    flow_run_id: UUID
    submitted: float = field(default_factory=time.monotonic)
    state: str = "SCHEDULED"
    message: str = ""
    started: float | None = None


def _submit(
    index: int, attempt: int, class_ids: list[int], run_id: str, params: dict, label: str,
    deployment: str = SHARD_DEPLOYMENT, class_names: Mapping[int, str] | None = None,
) -> ShardAttempt:
    names = {"class_names": [class_names[c] for c in class_ids]} if class_names is not None else {}
    flow_run = run_deployment(
        deployment,
        parameters={**params, **names, "class_ids": class_ids, "run_id": run_id},
        timeout=0,  # submit only; waiting happens below for all shards together
        idempotency_key=f"{run_id}:shard-{index}:attempt-{attempt}",
        flow_run_name=f"{deployment.split('/')[0]}-{label}-{class_ids[0]:05d}-{class_ids[-1]:05d}-a{attempt}",
        as_subflow=True,
    )
    return ShardAttempt(index, attempt, class_ids, flow_run.id)


def _max_in_flight(client: Any, requested: int | None, logger, base_s: float) -> int:
    """``requested``, else twice the gpu pool's concurrency limit, else :data:`DEFAULT_MAX_IN_FLIGHT`."""
    if requested is not None:
        if isinstance(requested, bool) or not isinstance(requested, int) or requested < 1:
            raise ValueError(f"max_in_flight={requested!r} must be a positive int (child runs not final at once)")
        return requested
    try:
        pool = _with_backoff(lambda: client.read_work_pool(GPU_POOL), "reading the gpu pool", base_s, logger)
        limit = pool.concurrency_limit
    except ObjectNotFound:
        limit = None
    return 2 * limit if limit else DEFAULT_MAX_IN_FLIGHT


def _is_rate_limited(exc: BaseException) -> bool:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None) == 429


def _with_backoff(call: Callable[[], Any], what: str, base_s: float, logger) -> Any:
    """``call()``, retried with exponential backoff (``base_s`` doubling, at most MAX_BACKOFF_S) on HTTP 429."""
    delay = max(base_s, 1.0)
    while True:
        try:
            return call()
        except PrefectHTTPStatusError as exc:
            if not _is_rate_limited(exc):
                raise
            logger.warning("%s: rate limited by the Prefect API (HTTP 429); retrying in %.0fs", what, delay)
            time.sleep(delay)
            delay = min(2 * delay, MAX_BACKOFF_S)


def run_shards_on_workers(
    shards: list[list[int]],
    *,
    run_id: str,
    shard_params: dict,
    dataset_label: str,
    shard_timeout_s: float,
    unfinished: Callable[[list[int]], list[int]],
    poll_s: float = 5.0,
    max_in_flight: int | None = None,
    client: Any = None,
    deployment: str = SHARD_DEPLOYMENT,
    class_names: Mapping[int, str] | None = None,
) -> dict[int, str]:
    """Submit the shards in waves, wait for all, resubmit a Crashed or timed-out shard's unfinished classes once.

    Args:
        shard_params: parameters of `dct-shard` other than ``class_ids``/``run_id`` (JSON-serialisable).
        dataset_label: the dataset's name, for child run names.
        shard_timeout_s: a child still not final this long after a worker took it is treated as lost.
        unfinished: maps class ids to those without a record in the store (read back from the store);
            asked only for shards that did not complete (a Completed shard recorded every class, and
            publishing reads every record anyway).
        max_in_flight: child runs not final at once (default: twice the gpu pool's concurrency limit).
        client: a sync Prefect client to poll with (default: a new one).
        deployment: the shard deployment (``dct-shard/gpu``; synthesis uses ``dct-synthesize-shard/gpu``).
        class_names: names by class id; each shard run gets those of its own classes (``class_names``), so
            a worker never rebuilds the dataset to name them.

    Returns:
        For classes that ended without a record, a reason text (by class id) for their failed record.
    """
    logger = get_run_logger()
    reasons: dict[int, str] = {}
    with get_client(sync_client=True) if client is None else _borrowed(client) as client:
        limit = _max_in_flight(client, max_in_flight, logger, poll_s)
        queue = deque((i, 0, ids) for i, ids in enumerate(shards))  # (index, attempt, class ids) to submit
        pending: list[ShardAttempt] = []

        def submit_up_to_limit() -> None:
            while queue and len(pending) < limit:
                i, attempt, ids = queue.popleft()

                def submit(i: int = i, attempt: int = attempt, ids: list[int] = ids) -> ShardAttempt:
                    return _submit(i, attempt, ids, run_id, shard_params, dataset_label, deployment, class_names)

                pending.append(_with_backoff(submit, f"submitting shard {i}", poll_s, logger))

        submit_up_to_limit()
        logger.info(
            "submitted %d of %d shard runs to %s (at most %d in flight)", len(pending), len(shards), deployment,
            limit,
        )
        delay = poll_s
        while pending:
            time.sleep(delay)
            ids = [a.flow_run_id for a in pending]
            try:  # ONE request per round, whatever the number of shards in flight
                runs = client.read_flow_runs(
                    flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)), limit=len(ids)
                )
            except PrefectHTTPStatusError as exc:
                if not _is_rate_limited(exc):
                    raise
                delay = min(2 * delay or 1.0, MAX_BACKOFF_S)  # from poll_s=0 too
                logger.warning("polling rate limited by the Prefect API (HTTP 429); next round in %.0fs", delay)
                continue
            delay = poll_s
            by_id = {fr.id: fr for fr in runs}
            still = []
            for a in pending:
                fr = by_id.get(a.flow_run_id)
                if fr is None:  # not visible yet (e.g. a replica lagging): look again next round
                    still.append(a)
                    continue
                state = fr.state.type.value if fr.state else "SCHEDULED"
                if a.started is None and (fr.start_time or state in ("PENDING", "RUNNING")):
                    # The clock starts once a worker has taken the run (Pending): a run still Scheduled is
                    # only waiting for a free GPU, but a worker that dies before its run reaches Running
                    # leaves it Pending forever.
                    a.started = time.monotonic()
                if (
                    state not in FINAL_STATES
                    and a.started is not None
                    and time.monotonic() - a.started > shard_timeout_s
                ):
                    _with_backoff(
                        lambda a=a: client.set_flow_run_state(
                            a.flow_run_id, Cancelled(message="dct: shard timed out"), force=True
                        ),
                        f"cancelling shard {a.index}",
                        poll_s,
                        logger,
                    )
                    state, a.message = "TIMED_OUT", f"no final state after {shard_timeout_s:.0f}s (lost worker?)"
                elif state in FINAL_STATES:
                    a.message = (fr.state.message or "") if fr.state else ""
                if state not in FINAL_STATES | {"TIMED_OUT"}:
                    still.append(a)
                    continue
                a.state = state
                left = [] if state == "COMPLETED" else unfinished(a.class_ids)
                logger.info(
                    "shard %d attempt %d: %s (%d of %d classes unfinished)",
                    a.index,
                    a.attempt,
                    state,
                    len(left),
                    len(a.class_ids),
                )
                if left and state in RESUBMIT_STATES and a.attempt == 0:
                    logger.warning(
                        "shard %d %s; resubmitting its %d unfinished classes once", a.index, state, len(left)
                    )
                    queue.appendleft((a.index, 1, left))
                else:
                    for c in left:
                        reasons[c] = f"shard run {a.flow_run_id} (attempt {a.attempt}) ended {state}: {a.message}"[:500]
            pending = still
            submit_up_to_limit()
    return reasons


class _borrowed:
    """A caller's client as a context manager that does not close it."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def __enter__(self) -> Any:
        return self.client

    def __exit__(self, *exc: object) -> None:
        return None
