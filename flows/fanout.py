"""Deployment-mode fan-out: every shard becomes a child run of `dct-shard/gpu` on the GPU work pool.

All shards are submitted first (``run_deployment(..., timeout=0)``), then waited on together — a
blocking call per shard would run them one by one. Parent and workers share no Prefect result storage:
what a shard did is read back from the store by the parent (``dct.run.publish``). Every child's final state
is inspected, because a failed child does not fail its parent in Prefect by itself:

- Completed / Failed: final. A Failed shard (e.g. the models could not be loaded) is not retried: the
  same inputs would fail again; its unfinished classes are recorded as failed.
- Crashed (the process died: OOM-kill, SIGKILL, node loss detected by the worker) or timed out (the
  child stayed Running past ``shard_timeout_s``: a lost node whose heartbeat stopped): resubmitted
  ONCE with only the classes that have no record in the store yet. A timed-out child is first marked
  Cancelled so a late-reviving worker cannot publish into the next attempt's classes unnoticed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from uuid import UUID

from prefect import get_run_logger
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment
from prefect.states import Cancelled

SHARD_DEPLOYMENT = "dct-shard/gpu"
FINAL_STATES = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
RESUBMIT_STATES = {"CRASHED", "TIMED_OUT"}


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
    deployment: str = SHARD_DEPLOYMENT,
) -> ShardAttempt:
    flow_run = run_deployment(
        deployment,
        parameters={**params, "class_ids": class_ids, "run_id": run_id},
        timeout=0,  # submit only; waiting happens below for all shards together
        idempotency_key=f"{run_id}:shard-{index}:attempt-{attempt}",
        flow_run_name=f"{deployment.split('/')[0]}-{label}-{class_ids[0]:05d}-{class_ids[-1]:05d}-a{attempt}",
        as_subflow=True,
    )
    return ShardAttempt(index, attempt, class_ids, flow_run.id)


def run_shards_on_workers(
    shards: list[list[int]],
    *,
    run_id: str,
    shard_params: dict,
    dataset_label: str,
    shard_timeout_s: float,
    unfinished: Callable[[list[int]], list[int]],
    poll_s: float = 5.0,
    deployment: str = SHARD_DEPLOYMENT,
) -> dict[int, str]:
    """Submit every shard, wait for all, resubmit a Crashed or timed-out shard's unfinished classes once.

    Args:
        shard_params: parameters of `dct-shard` other than ``class_ids``/``run_id`` (JSON-serialisable).
        dataset_label: the dataset's name, for child run names.
        shard_timeout_s: a child still not final this long after a worker took it is treated as lost.
        unfinished: maps class ids to those without a record in the store (read back from the store).
        deployment: the shard deployment (``dct-shard/gpu``; synthesis uses ``dct-synthesize-shard/gpu``).

    Returns:
        For classes that ended without a record, a reason text (by class id) for their failed record.
    """
    logger = get_run_logger()
    pending = [_submit(i, 0, ids, run_id, shard_params, dataset_label, deployment) for i, ids in enumerate(shards)]
    logger.info("submitted %d shard runs to %s", len(pending), deployment)
    reasons: dict[int, str] = {}
    with get_client(sync_client=True) as client:
        while pending:
            time.sleep(poll_s)
            still = []
            for a in pending:
                fr = client.read_flow_run(a.flow_run_id)
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
                    client.set_flow_run_state(a.flow_run_id, Cancelled(message="dct: shard timed out"), force=True)
                    state, a.message = "TIMED_OUT", f"no final state after {shard_timeout_s:.0f}s (lost worker?)"
                elif state in FINAL_STATES:
                    a.message = (fr.state.message or "") if fr.state else ""
                if state not in FINAL_STATES | {"TIMED_OUT"}:
                    still.append(a)
                    continue
                a.state = state
                left = unfinished(a.class_ids)
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
                    still.append(_submit(a.index, 1, left, run_id, shard_params, dataset_label, deployment))
                else:
                    for c in left:
                        reasons[c] = f"shard run {a.flow_run_id} (attempt {a.attempt}) ended {state}: {a.message}"[:500]
            pending = still
    return reasons
