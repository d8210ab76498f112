"""The flow's probe task (``probe=true``) through ``.fn()``, and the run report's link to the probe page."""

from __future__ import annotations

from dct.artifacts.store import REPORT_DIR, ArtifactStore
from dct.evaluation import report
from dct.results import read_results, read_run_record
from dct.run.plan import Revisions, RunPlan, build_config


def _plan(store: ArtifactStore, root: str, run_id: str) -> RunPlan:
    run = read_run_record(store, "toy", run_id)
    return RunPlan(
        dataset="toy", run_id=run_id, store_root=root, token_key=run.token_key, eval_key=run.eval_key,
        selected=[4, 9], todo=[4, 9], skipped=[], shards=[[4, 9]], revisions=Revisions("r", "r", None),
    )


def test_probe_task_writes_the_table_and_the_report_links_its_page(write_run):
    from prefect.logging import disable_run_logger

    from tasks.probe import probe_samples

    root, run_id = write_run({4: 0.0, 9: 0.1})
    store = ArtifactStore(root)
    _, config = build_config("toy", None, root)
    plan = _plan(store, root, run_id)
    index = store.run_uri("toy", run_id, REPORT_DIR, report.INDEX_FILE)
    report.write_run_report(store, config, plan)
    assert "probe.html" not in store.read_bytes(index).decode()  # no probe yet: no dead link
    with disable_run_logger():
        page = probe_samples.fn(config, plan)
    assert page == store.probe_page_uri("toy", run_id) and store.exists(page)
    df = read_results(root, "probe", run_id=run_id)
    # Default attributes: every built-in plus the run's guide (the toy guide, 10 labels → top 5 per class).
    assert {"border_brightness", "hue_blue"} <= set(df["attribute"]) and (df["source"] == "guide").sum() == 2 * 5
    sig9 = df[(df["class_id"] == 9) & df["significant"]]
    assert "border_brightness" in set(sig9["attribute"])
    # A probe after the report: its link is spliced into the existing index.html, and a re-rendered report
    # keeps exactly one.
    assert store.read_bytes(index).decode().count('<a href="probe.html">') == 1
    report.write_run_report(store, config, plan)
    assert store.read_bytes(index).decode().count('<a href="probe.html">') == 1
    assert REPORT_DIR == report.REPORT_DIR  # the probe page sits beside the report's index
