"""`dct run`: the `dct` flow in-process (toy by default, local store by default)."""

from __future__ import annotations

import argparse
import json

from dct.commands.common import (
    UserError,
    add_device_argument,
    add_override_arguments,
    overrides_from_args,
    positive_int,
    quiet_local_prefect,
)
from dct.commands.stopping import run_until_stopped


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="run the dct flow locally: optimise, evaluate and publish a dataset's class tokens",
        description="Runs the `dct` Prefect flow in this process. With PREFECT_API_URL unset, Prefect starts a "
        "temporary local API for the run (no server to manage); set PREFECT_API_URL to record runs on a server.",
    )
    p.add_argument("--dataset", default="toy", help="registered dataset or dataset file (default: toy)")
    p.add_argument("--classes", default="all", help='"all", ids "0,3", a range "0-99", or names (default: all)')
    p.add_argument("--store", help="store root URI (default: $DCT_STORE, else ./dct-store)")
    p.add_argument("--force", action="store_true", help="re-optimise classes that are already finished")
    p.add_argument("--shard-size", type=positive_int, default=16, help="classes per shard (default 16)")
    p.add_argument("--max-classes", type=positive_int, help="do at most this many classes (after skipping finished)")
    p.add_argument(
        "--max-failed-fraction",
        type=float,
        default=0.0,
        help="share of failed classes tolerated before the run is marked Failed (default 0)",
    )
    p.add_argument("--dry-run", action="store_true", help="preflight + plan only: print what would run and its cost")
    add_override_arguments(p, ("token", "evaluation", "memory"))
    p.add_argument(
        "--probe", action="store_true", help="also run the bias probe on the stored samples (see `dct probe`)"
    )
    add_device_argument(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:

    if not 0.0 <= args.max_failed_fraction <= 1.0:
        raise UserError(f"--max-failed-fraction {args.max_failed_fraction!r} must be within [0, 1]")
    from dct.models.loading import describe_device
    from dct.results import new_run_id
    from dct.run.plan import plan_run

    # The preflight and the plan before Prefect starts, cheapest first, so bad input fails in seconds with one
    # line and nothing written; the flow runs THIS plan (deployments, which start the flow without this command,
    # plan inside the flow with the same function).
    where = describe_device(args.device)
    overrides = overrides_from_args(args)
    run_id = new_run_id()
    plan = plan_run(
        dataset=args.dataset, classes=args.classes, store=args.store, force=args.force, shard_size=args.shard_size,
        max_classes=args.max_classes, overrides=overrides, run_id=run_id, device=where,
    )
    if args.dry_run:
        for line in plan.summary_lines():
            print(line)
        print("dry run: nothing was optimised")
        return 0
    quiet_local_prefect()
    try:
        from flows.dct_flow import dct  # Prefect is imported only once the input is known to be good
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("prefect"):
            raise UserError("`dct run` needs Prefect: pip install -e '.[orchestration]'") from None
        raise
    state = run_until_stopped(
        "dct run",
        dct,
        dataset=args.dataset,
        classes=args.classes,
        force=args.force,
        store=args.store,
        shard_size=args.shard_size,
        max_classes=args.max_classes,
        max_failed_fraction=args.max_failed_fraction,
        overrides=overrides,
        device=args.device,
        probe=args.probe,
        run_id=run_id,  # a flow parameter too: the run's flow runs are found by it in Prefect
        plan=plan,
        return_state=True,
    )
    return _print_outcome(args, plan.dataset, state, run_id)


def _failure_text(state) -> str:
    try:
        state.result()
    except Exception as exc:  # noqa: BLE001 - the flow's own error, shown as one line
        return f"{type(exc).__name__}: {exc}".splitlines()[0]
    return state.message or "the flow failed"


def _print_outcome(args: argparse.Namespace, dataset: str, state, run_id: str) -> int:
    from dct.artifacts.store import open_store
    from dct.results import headline_lines, read_results, read_run_record

    store = open_store(args.store)
    run = read_run_record(store, dataset, run_id)
    if run is None:
        # Failed before publishing (preflight): nothing was written.
        print(f"dct run: error: {_failure_text(state)}")
        return 2 if state.is_failed() else 0
    print(f"run {run.run_id} on dataset {run.dataset}: {run.status}")
    print(
        f"  classes: {run.classes_done} done, {run.classes_diverged} diverged, {run.classes_failed} failed, "
        f"{run.classes_skipped} skipped (already finished)"
    )
    for line in headline_lines(run, read_results(store, "classes", dataset=run.dataset, run_id=run.run_id)):
        print(f"  {line}")
    print(f"  tokens:  {store.uri('tokens', run.dataset, run.token_key)}")
    print(f"  bundle:  {run.bundle_uri}")
    print(f"  results: {store.results_uri('classes')}  and  {store.results_uri('runs')}")
    print(f"  report:  {run.report_uri or 'not generated in this build'}")
    print(f'  read:    python -c "from dct.results import read_results; print(read_results({store.root!r}))"')
    if state.is_failed():
        print(f"dct run: {_failure_text(state)}")
        return 1
    print(json.dumps({"run_id": run.run_id, "status": run.status}))
    return 0
