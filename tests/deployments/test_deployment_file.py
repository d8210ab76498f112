"""What deployments/prefect.yaml promises (docs/deployments.md), read from the file and the flows it names —
the quick checks; tests/deployments/test_deployment_e2e.py deploys it on a real server."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def _deployments() -> dict[str, dict]:
    spec = yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())
    return {d["entrypoint"]: d for d in spec["deployments"]}


def test_dataset_and_per_class_have_no_default_so_a_run_without_them_is_rejected():
    from prefect.utilities.callables import parameter_schema

    from flows.dct_flow import dct
    from flows.synthesize_flow import dct_synthesize

    deployments = _deployments()
    for entrypoint, flow, required in (
        ("flows/dct_flow.py:dct", dct, {"dataset"}),
        ("flows/synthesize_flow.py:dct_synthesize", dct_synthesize, {"dataset", "per_class"}),
    ):
        assert not required & set(deployments[entrypoint].get("parameters") or {})
        assert required <= set(parameter_schema(flow.fn).required), entrypoint  # Prefect refuses a run without


def test_one_nightly_schedule_per_dataset_all_inactive_by_default():
    schedules = _deployments()["flows/dct_flow.py:dct"]["schedules"]
    by_dataset = {s["parameters"]["dataset"]: s for s in schedules}
    assert {d: s["cron"] for d, s in by_dataset.items()} == {
        "inet": "0 1 * * *", "inat": "0 2 * * *", "cub": "0 3 * * *"
    }
    assert all(s["timezone"] == "UTC" and s["active"] is False for s in schedules)


def test_never_two_optimize_all_runs_at_once_and_a_manual_run_waits_in_the_queue():
    limit = _deployments()["flows/dct_flow.py:dct"]["concurrency_limit"]
    assert limit == {"limit": 1, "collision_strategy": "ENQUEUE"}
