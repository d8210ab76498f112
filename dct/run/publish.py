"""Publishing a run: read the per-class records back from the store, write the Parquet tables and the
token export bundle, and the run record. The parent never trusts in-memory results from workers: the
store is the only channel between them (docs/design.md, "Data flow").
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from dct.artifacts.bundle import export_bundle
from dct.artifacts.store import ArtifactStore
from dct.config import RunConfig, canonical_json
from dct.evaluation.metrics import PooledMetrics
from dct.results import (
    ClassRecord,
    Provenance,
    RunRecord,
    build_provenance,
    failed_class_record,
    read_class_outcomes,
    write_class_record,
    write_class_table,
    write_run_record,
)
from dct.run.plan import RunPlan

logger = logging.getLogger(__name__)


@dataclass
class RunOutcome:
    run: RunRecord
    records: list[ClassRecord]  # this run's records (done, diverged or failed), by class id
    missing: list[int]  # planned classes whose worker left no record (the parent recorded them as failed)

    @property
    def failed_ids(self) -> list[int]:
        return sorted(r.class_id for r in self.records if r.status == "failed")

    @property
    def attempted(self) -> int:
        return len(self.records)


def _parent_provenance(config: RunConfig, plan: RunPlan) -> Provenance:
    return build_provenance(
        config,
        diffusion_revision=plan.revisions.diffusion,
        classifier_revision=plan.revisions.classifier,
        evaluator_revision=plan.revisions.evaluator,
        device="none (no class processed)",
        dtype="n/a",
    )


def record_missing_classes(
    store: ArtifactStore,
    config: RunConfig,
    plan: RunPlan,
    class_ids: list[int],
    reasons: dict[int, str],
    class_names: Sequence[str],
) -> list[ClassRecord]:
    """Failed-attempt records, written by the parent, for planned classes whose worker left no record."""
    now = dt.datetime.now(dt.UTC)
    out = []
    for c in class_ids:
        record = failed_class_record(
            config,
            run_id=plan.run_id,
            class_id=c,
            class_name=class_names[c],
            token_key=plan.token_key,
            eval_key=plan.eval_key,
            error=reasons.get(c, "no record: the worker that had this class stopped without writing one"),
            provenance=_parent_provenance(config, plan),
            started=now,
            finished=now,
        )
        write_class_record(store, record)
        out.append(record)
    return out


def with_feature_metrics(store: ArtifactStore, plan: RunPlan, records: list[ClassRecord]) -> list[ClassRecord]:
    """``records`` with the per-class metrics the pooled evaluation computed from features (its ``pooled.json``,
    one read per run), so they reach the ``classes`` table; unchanged where it has no entry (or did not run)."""
    try:
        pooled = store.read_json(store.run_uri(plan.dataset, plan.run_id, "pooled.json"))
    except FileNotFoundError:
        return records
    fields = PooledMetrics.class_fields(pooled)
    return [r.model_copy(update=fields[r.class_id]) if r.class_id in fields else r for r in records]


def publish_run(
    store: ArtifactStore,
    config: RunConfig,
    plan: RunPlan,
    *,
    class_names: Sequence[str],
    started_at: dt.datetime,
    pooled: dict | None = None,
    report_uri: str | None = None,
    missing_reasons: dict[int, str] | None = None,
    outcomes: dict[int, ClassRecord | None] | None = None,
) -> RunOutcome:
    """Write this run's class table, the export bundle of all finished classes and the run record.

    Planned classes that left no record at all (a killed worker) get a failed record written here, with
    the reason from ``missing_reasons`` where the fan-out knows it.

    Args:
        pooled: pooled distribution metrics (RunRecord fields such as ``fid_dct``), if computed.
        outcomes: :func:`dct.results.read_class_outcomes` of ``plan.selected`` if the caller already read
            them (the flow reads each record once for evaluation, report and publishing); else read here.
    """
    if outcomes is None:
        outcomes = read_class_outcomes(store, plan.dataset, plan.eval_key, plan.selected, plan.run_id)
    records = [r for c in plan.todo if (r := outcomes.get(c)) is not None and r.run_id == plan.run_id]
    seen = {r.class_id for r in records}
    # A planned class finished by a concurrent run (its record names another run) is done, not missing:
    # it counts as skipped here, and its row belongs to the run that wrote the record.
    elsewhere = sorted(
        c for c in plan.todo if c not in seen and (r := outcomes.get(c)) is not None and r.finished
    )
    missing = [c for c in plan.todo if c not in seen and c not in elsewhere]
    records += record_missing_classes(store, config, plan, missing, missing_reasons or {}, class_names)
    records = with_feature_metrics(store, plan, records)
    done = [r for r in records if r.status == "done"]
    diverged = [r for r in records if r.status == "diverged"]
    failed = len(records) - len(done) - len(diverged)

    # The bundle holds every finished class of the selection, also those finished by earlier runs.
    finished = [r for c in plan.selected if (r := outcomes.get(c)) is not None and r.finished]
    bundle_uri = export_bundle(store, finished, plan.run_id)[0] if any(r.status == "done" for r in finished) else None

    status = "failed" if failed and not (done or diverged) else "partial" if failed else "done"
    run = RunRecord(
        run_id=plan.run_id,
        dataset=plan.dataset,
        status=status,
        token_key=plan.token_key,
        eval_key=plan.eval_key,
        classes_planned=len(plan.todo),
        classes_done=len(done),
        classes_skipped=len(plan.skipped) + len(elsewhere),
        classes_failed=failed,
        classes_diverged=len(diverged),
        seconds=(dt.datetime.now(dt.UTC) - started_at).total_seconds(),
        report_uri=report_uri,
        bundle_uri=bundle_uri,
        config_json=canonical_json(config),
        dataset_source=plan.source,
        class_ids=list(plan.selected),
        provenance=records[0].provenance if records else _parent_provenance(config, plan),
        started_at=started_at,
        finished_at=dt.datetime.now(dt.UTC),
        **(pooled or {}),
    )
    write_class_table(store, run, records)
    write_run_record(store, run)
    logger.info(
        "run %s: %d done, %d diverged, %d failed, %d skipped",
        plan.run_id,
        len(done),
        len(diverged),
        failed,
        len(plan.skipped),
    )
    return RunOutcome(run=run, records=sorted(records, key=lambda r: r.class_id), missing=missing)
