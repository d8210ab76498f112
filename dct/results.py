"""Per-class and per-run records, their Parquet tables, and reading helpers for notebooks.

Three tables, each with ONE explicit pyarrow schema (:data:`CLASS_SCHEMA`, :data:`RUN_SCHEMA`,
:data:`PROBE_SCHEMA`) and a ``schema_version`` column; every column is documented in docs/storage.md
(``probe``: docs/probe.md).

- ``classes``: one row per class processed in a run (done, diverged or failed).
- ``runs``: one row per run (counts, pooled FID/KID per variant, report link, config).
- ``probe``: one row per class × attribute of a bias probe (written by ``dct.probe``).

Both are hive-partitioned by ``dataset`` and ``run_date`` (UTC date the run started) and every run writes
its own file ``part-{run_id}-{i}.parquet`` (pyarrow's ``basename_template``), so two runs on the same day
never collide and no run rewrites another's rows. Re-publishing the SAME run replaces only its own file.

The per-class record is also stored as a small JSON object: a record with a finished status at
:meth:`ArtifactStore.record_uri` is the class's "finished" marker (written last, after its token and
samples); a failed attempt goes to :meth:`ArtifactStore.attempt_uri` so a re-run retries it. The parent
flow reads these back from the store and writes the Parquet table from them.
"""

from __future__ import annotations

import base64
import datetime as dt
import importlib.metadata
import logging
import os
import platform
import posixpath
import re
import tempfile
import uuid
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator

from dct.artifacts.store import ArtifactStore, open_store, validate_class_id, validate_component
from dct.class_metrics import GENERATED, column, metric_columns, python_type, run_mean_columns
from dct.config import RunConfig

if TYPE_CHECKING:
    import duckdb
    import pandas as pd

logger = logging.getLogger(__name__)

CLASS_SCHEMA_VERSION = 3  # 2: the per-class metrics computed from features (dct.class_metrics); 3: per-class FID, KID
RUN_SCHEMA_VERSION = 2  # 2: nearest_k, feature_metrics_classes and their means over classes
PROBE_SCHEMA_VERSION = 3  # 2: min_shift; 3: the intervention test, baseline_spread

ClassStatus = Literal["done", "diverged", "failed"]
# Statuses whose record is a "finished" marker. "diverged" (NaN loss) is deterministic for the same
# token_key, so re-running would only diverge again; "failed" (an exception: OOM, storage, ...) is
# transient and is retried by the next run. `force` re-runs everything.
FINISHED_STATUSES: tuple[str, ...] = ("done", "diverged")
RunStatus = Literal["done", "partial", "failed"]

PARTITION_SCHEMA = pa.schema([("dataset", pa.string()), ("run_date", pa.date32())])
_UTC_TS = pa.timestamp("us", tz="UTC")


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def new_run_id(now: dt.datetime | None = None) -> str:
    """A sortable, unique, path-safe run id: ``YYYYmmddTHHMMSSZ-<8 hex>``."""
    now = (now or _utcnow()).astimezone(dt.UTC)
    return f"{now:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"


def library_versions() -> dict[str, str]:
    """Versions of the libraries that decide results (for the ``*_version`` columns); no imports needed."""
    out = {"python_version": platform.python_version()}
    for dist in ("dct", "torch", "diffusers", "transformers"):
        try:
            out[f"{dist}_version"] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[f"{dist}_version"] = "not-installed"
    return out


# ---------------------------------------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------------------------------------


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    @field_validator("started_at", "finished_at", check_fields=False)
    @classmethod
    def _aware_utc(cls, v: dt.datetime | None) -> dt.datetime | None:
        if v is None:
            return v
        if v.tzinfo is None:
            raise ValueError(f"timestamp {v!r} has no timezone; use datetime.now(datetime.UTC)")
        return v.astimezone(dt.UTC)


class Provenance(BaseModel):
    """Models, licences, libraries and hardware behind a result (shared by both records)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    diffusion_model_id: str
    diffusion_revision: str = Field(description="resolved commit SHA / content hash")
    diffusion_licence: str = "unknown"
    classifier_model_id: str
    classifier_revision: str
    classifier_licence: str = "unknown"
    evaluator_model_id: str | None = None
    evaluator_revision: str | None = None
    evaluator_licence: str | None = None
    dct_version: str = "unknown"
    python_version: str = "unknown"
    torch_version: str = "unknown"
    diffusers_version: str = "unknown"
    transformers_version: str = "unknown"
    device: str = Field(description="e.g. 'cuda:0 (NVIDIA H100 80GB HBM3)' or 'cpu'")
    dtype: str = Field(description="compute dtype actually used, e.g. 'bfloat16'")


class _ClassRecordBase(_Record):
    """The outcome of one class for one ``eval_key`` (one row of the ``classes`` table).

    Units: seconds are wall-clock seconds; accuracies are fractions in [0, 1] over ``num_samples``
    images per variant; losses are the mean cross-entropy (nats) of one epoch. Every per-class metric of
    :mod:`dct.class_metrics` is a field (``guide_top1_dct``, ``precision_dct``, ...), one per registered column,
    null by default; the shard fills its own (``source="shard"``), the parent those computed from features when
    it publishes the run (the shard's JSON record, written before the pooled evaluation, leaves them null).
    """

    schema_version: int = CLASS_SCHEMA_VERSION
    run_id: str
    dataset: str
    class_id: int
    class_name: str
    token: str
    token_key: str
    eval_key: str
    status: ClassStatus
    stop_reason: str | None = None
    error: str | None = None
    epochs: int | None = None
    best_epoch: int | None = None
    best_loss: float | None = None
    best_epoch_accuracy: float | None = None
    optimize_seconds: float | None = None
    evaluate_seconds: float | None = None
    token_reused: bool = False
    token_uri: str | None = None
    samples_uri: str | None = None
    sample_format: str | None = None
    num_samples: int | None = None
    feature_metrics_reference: int | None = Field(
        default=None, description="reference images of the class behind precision/recall/density/coverage"
    )
    feature_metrics_note: str | None = Field(default=None, description="why a metric from features is null")
    token_file_base64: str | None = Field(
        default=None,
        description="a copy of the class's token file (its bytes, base64): the run's parent builds the export "
        "bundle from the records it has read, with no token read per class (docs/storage.md); None in records "
        "written before records carried it",
    )
    provenance: Provenance
    started_at: dt.datetime
    finished_at: dt.datetime

    JSON_ONLY: ClassVar[frozenset[str]] = frozenset({"token_file_base64"})

    @field_validator("run_id", "dataset", "token_key", "eval_key")
    @classmethod
    def _safe(cls, v: str, info: Any) -> str:
        return validate_component(v, info.field_name)

    @field_validator("class_id")
    @classmethod
    def _class_id(cls, v: int) -> int:
        return validate_class_id(v)

    @property
    def finished(self) -> bool:
        return self.status in FINISHED_STATUSES

    @staticmethod
    def token_file_field(data: bytes) -> str:
        """The ``token_file_base64`` value of a token file's bytes (:meth:`token_file_copy` reads it back)."""
        return base64.b64encode(data).decode()

    def token_file_copy(self) -> bytes | None:
        """The token file's bytes as the shard wrote (or reused) them, or None (an older record: read the file).

        Raises:
            ValueError: ``token_file_base64`` is not base64.
        """
        return None if self.token_file_base64 is None else base64.b64decode(self.token_file_base64, validate=True)

    def row(self, run_date: dt.date) -> dict[str, Any]:
        """Flat dict in :data:`CLASS_SCHEMA` column order (provenance columns inlined)."""
        flat = self.model_dump(exclude={"provenance", *self.JSON_ONLY}) | self.provenance.model_dump()
        flat["run_date"] = run_date
        return {name: flat[name] for name in CLASS_SCHEMA.names}


# One field per registered per-class metric column (dct.class_metrics), null by default.
ClassRecord = create_model(
    "ClassRecord",
    __base__=_ClassRecordBase,
    __module__=__name__,
    __doc__=_ClassRecordBase.__doc__,
    **{col: (python_type(m) | None, None) for m, _, col in metric_columns()},
)


# One summary of a class outcome: what a task returns and what the flow's table artifact shows.
CLASS_SUMMARY_FIELDS: tuple[str, ...] = (
    "class_id",
    "class_name",
    "status",
    "stop_reason",
    "error",
    "epochs",
    *(column(name, v) for name in ("guide_top1", "evaluator_top1") for v in GENERATED),
)
MAX_ERROR_CHARS = 2000


def class_summary(record: ClassRecord) -> dict[str, Any]:
    """The few fields of a record worth showing per class (task results, the Prefect table artifact)."""
    return {k: getattr(record, k) for k in CLASS_SUMMARY_FIELDS}


def headline_lines(run: RunRecord, classes: pd.DataFrame) -> list[str]:
    """What a run achieved, in two or three lines: mean top-1 baseline → DCT by the guide and the held-out
    evaluator over this run's optimised classes, and the pooled FID/KID (the end of ``dct run``).

    Args:
        run: the run's record; classes: its rows of the ``classes`` table (:func:`read_results`).
    """
    rows = classes[classes["status"] != "failed"] if len(classes) else classes
    if not len(rows):
        return ["accuracy: no class was optimised in this run (all finished before, or failed)"]

    def mean(col: str) -> float | None:
        values = rows[col].dropna()
        return float(values.mean()) if len(values) else None

    n = int(rows["num_samples"].max()) if "num_samples" in rows and rows["num_samples"].notna().any() else None
    per = f", {n} images each" if n else ""
    classes_text = f"{len(rows)} class" + ("" if len(rows) == 1 else "es")
    text = f"top-1 baseline → DCT (mean of {classes_text}{per}): guide " + _change(
        mean("guide_top1_baseline"), mean("guide_top1_dct")
    )
    ev = mean("evaluator_top1_dct")
    text += (
        ", held-out evaluator " + _change(mean("evaluator_top1_baseline"), ev)
        if ev is not None
        else " (no held-out evaluator for this dataset)"
    )
    lines = [text]
    if run.fid_dct is not None and run.fid_baseline is not None:
        fid = f"FID baseline → DCT: {run.fid_baseline:.2f} → {run.fid_dct:.2f}"
        if run.kid_dct is not None and run.kid_baseline is not None:
            fid += f"; KID {run.kid_baseline:.4f} → {run.kid_dct:.4f}"
        lines.append(f"{fid} ({run.fid_feature_extractor or 'features'} vs the reference set; lower is closer)")
    else:
        lines.append("FID/KID: not computed for this run (see docs/evaluation.md)")
    return lines


def _change(before: float | None, after: float | None) -> str:
    return f"{before:.2f} → {after:.2f}" if before is not None and after is not None else "n/a"


def class_line(summary: dict[str, Any], seconds: float, position: str = "") -> str:
    """One log line per finished class: status, wall time, epochs and top-1 baseline → DCT by guide and evaluator."""
    head = f"{position}class {summary['class_id']} ({summary['class_name']}): {summary['status']} in {seconds:.0f} s"
    if summary.get("status") == "failed":
        return f"{head}: {summary.get('error') or 'no error text'}"[:300]
    text = f"{head}, {summary.get('epochs')} epochs; top-1 baseline → DCT: guide " + _change(
        summary.get("guide_top1_baseline"), summary.get("guide_top1_dct")
    )
    if summary.get("evaluator_top1_dct") is not None:
        text += ", evaluator " + _change(summary.get("evaluator_top1_baseline"), summary.get("evaluator_top1_dct"))
    return text


def build_provenance(
    config: RunConfig,
    *,
    diffusion_revision: str,
    classifier_revision: str,
    evaluator_revision: str | None,
    device: str,
    dtype: str,
) -> Provenance:
    """The provenance of a result: the config's models with their resolved revisions, libraries, hardware."""
    ev = config.evaluation.evaluator
    versions = library_versions()
    return Provenance(
        diffusion_model_id=config.diffusion.model_id,
        diffusion_revision=diffusion_revision,
        diffusion_licence=config.diffusion.licence,
        classifier_model_id=f"{config.classifier.kind}:{config.classifier.model_id}",
        classifier_revision=classifier_revision,
        classifier_licence=config.classifier.licence,
        evaluator_model_id=f"{ev.kind}:{ev.model_id}" if ev else None,
        evaluator_revision=evaluator_revision,
        evaluator_licence=ev.licence if ev else None,
        **versions,
        device=device,
        dtype=dtype,
    )


def failed_class_record(
    config: RunConfig,
    *,
    run_id: str,
    class_id: int,
    class_name: str,
    token_key: str,
    eval_key: str,
    error: BaseException | str,
    provenance: Provenance,
    started: dt.datetime,
    finished: dt.datetime | None = None,
) -> ClassRecord:
    """A ``failed`` record with the error text (truncated); the next run retries the class. Not written here."""
    text = (error if isinstance(error, str) else f"{type(error).__name__}: {error}")[:MAX_ERROR_CHARS]
    return ClassRecord(
        run_id=run_id,
        dataset=config.dataset,
        class_id=class_id,
        class_name=class_name,
        token=config.token_string(class_id),
        token_key=token_key,
        eval_key=eval_key,
        status="failed",
        error=text,
        provenance=provenance,
        started_at=started,
        finished_at=finished or _utcnow(),
    )


class _RunRecordBase(_Record):
    """One run of the ``dct`` flow over one dataset (one row of the ``runs`` table).

    FID/KID are pooled over all classes of the run, per variant, against the dataset's reference images;
    ``kid_*`` is the mean over subsets and ``kid_std_*`` its standard deviation (torchmetrics).
    """

    schema_version: int = RUN_SCHEMA_VERSION
    run_id: str
    dataset: str
    status: RunStatus
    token_key: str
    eval_key: str
    classes_planned: int = 0
    classes_done: int = 0
    classes_skipped: int = 0
    classes_failed: int = 0
    classes_diverged: int = 0
    seconds: float | None = None
    fid_baseline: float | None = None
    fid_dct: float | None = None
    kid_baseline: float | None = None
    kid_std_baseline: float | None = None
    kid_dct: float | None = None
    kid_std_dct: float | None = None
    kid_subset_size: int | None = None
    fid_num_samples_baseline: int | None = None
    fid_num_samples_dct: int | None = None
    fid_num_reference: int | None = None
    fid_feature_extractor: str | None = None
    nearest_k: int | None = None
    feature_metrics_classes: int | None = None
    report_uri: str | None = None
    bundle_uri: str | None = None
    config_json: str = Field(description="canonical JSON of the RunConfig (no credentials: it holds none)")
    # What `--run RUN_ID` needs beyond config_json (run.json only, not table columns: JSON_ONLY; None in older
    # records).
    dataset_source: str | None = Field(
        default=None, description="the dataset as the run named it: registry name or the dataset file's absolute path"
    )
    class_ids: list[int] | None = Field(default=None, description="the classes the run selected")
    provenance: Provenance
    started_at: dt.datetime
    finished_at: dt.datetime | None = None

    JSON_ONLY: ClassVar[frozenset[str]] = frozenset({"dataset_source", "class_ids"})

    @field_validator("run_id", "dataset", "token_key", "eval_key")
    @classmethod
    def _safe(cls, v: str, info: Any) -> str:
        return validate_component(v, info.field_name)

    @property
    def run_date(self) -> dt.date:
        """Partition date: the UTC date the run started."""
        return self.started_at.astimezone(dt.UTC).date()

    def row(self) -> dict[str, Any]:
        flat = self.model_dump(exclude={"provenance"}) | self.provenance.model_dump()
        flat["run_date"] = self.run_date
        return {name: flat[name] for name in RUN_SCHEMA.names}


# The means over classes of the registered metrics that have them (``mean_precision_dct``, ...).
RunRecord = create_model(
    "RunRecord",
    __base__=_RunRecordBase,
    __module__=__name__,
    __doc__=_RunRecordBase.__doc__,
    **{col: (float | None, None) for _, _, col in run_mean_columns()},
)


# ---------------------------------------------------------------------------------------------------------
# Schemas (explicit; documented column by column in docs/storage.md)
# ---------------------------------------------------------------------------------------------------------

_PROVENANCE_FIELDS = [
    pa.field("diffusion_model_id", pa.string(), nullable=False),
    pa.field("diffusion_revision", pa.string(), nullable=False),
    pa.field("diffusion_licence", pa.string(), nullable=False),
    pa.field("classifier_model_id", pa.string(), nullable=False),
    pa.field("classifier_revision", pa.string(), nullable=False),
    pa.field("classifier_licence", pa.string(), nullable=False),
    pa.field("evaluator_model_id", pa.string()),
    pa.field("evaluator_revision", pa.string()),
    pa.field("evaluator_licence", pa.string()),
    pa.field("dct_version", pa.string(), nullable=False),
    pa.field("python_version", pa.string(), nullable=False),
    pa.field("torch_version", pa.string(), nullable=False),
    pa.field("diffusers_version", pa.string(), nullable=False),
    pa.field("transformers_version", pa.string(), nullable=False),
    pa.field("device", pa.string(), nullable=False),
    pa.field("dtype", pa.string(), nullable=False),
]

CLASS_SCHEMA = pa.schema(
    [
        pa.field("schema_version", pa.int16(), nullable=False),
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("run_date", pa.date32(), nullable=False),
        pa.field("class_id", pa.int32(), nullable=False),
        pa.field("class_name", pa.string(), nullable=False),
        pa.field("token", pa.string(), nullable=False),
        pa.field("token_key", pa.string(), nullable=False),
        pa.field("eval_key", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("stop_reason", pa.string()),
        pa.field("error", pa.string()),
        pa.field("epochs", pa.int32()),
        pa.field("best_epoch", pa.int32()),
        pa.field("best_loss", pa.float64()),
        pa.field("best_epoch_accuracy", pa.float64()),
        pa.field("optimize_seconds", pa.float64()),
        pa.field("evaluate_seconds", pa.float64()),
        pa.field("token_reused", pa.bool_(), nullable=False),
        pa.field("token_uri", pa.string()),
        pa.field("samples_uri", pa.string()),
        pa.field("sample_format", pa.string()),
        pa.field("num_samples", pa.int32()),
        *(pa.field(col, m.pa_type) for m, _, col in metric_columns()),  # the registry's, in its order
        pa.field("feature_metrics_reference", pa.int32()),
        pa.field("feature_metrics_note", pa.string()),
        *_PROVENANCE_FIELDS,
        pa.field("started_at", _UTC_TS, nullable=False),
        pa.field("finished_at", _UTC_TS, nullable=False),
    ],
    metadata={"dct.table": "classes", "dct.schema_version": str(CLASS_SCHEMA_VERSION)},
)

RUN_SCHEMA = pa.schema(
    [
        pa.field("schema_version", pa.int16(), nullable=False),
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("run_date", pa.date32(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("token_key", pa.string(), nullable=False),
        pa.field("eval_key", pa.string(), nullable=False),
        pa.field("classes_planned", pa.int32(), nullable=False),
        pa.field("classes_done", pa.int32(), nullable=False),
        pa.field("classes_skipped", pa.int32(), nullable=False),
        pa.field("classes_failed", pa.int32(), nullable=False),
        pa.field("classes_diverged", pa.int32(), nullable=False),
        pa.field("seconds", pa.float64()),
        pa.field("fid_baseline", pa.float64()),
        pa.field("fid_dct", pa.float64()),
        pa.field("kid_baseline", pa.float64()),
        pa.field("kid_std_baseline", pa.float64()),
        pa.field("kid_dct", pa.float64()),
        pa.field("kid_std_dct", pa.float64()),
        pa.field("kid_subset_size", pa.int32()),
        pa.field("fid_num_samples_baseline", pa.int32()),
        pa.field("fid_num_samples_dct", pa.int32()),
        pa.field("fid_num_reference", pa.int32()),
        pa.field("fid_feature_extractor", pa.string()),
        pa.field("nearest_k", pa.int32()),
        pa.field("feature_metrics_classes", pa.int32()),
        *(pa.field(col, pa.float64()) for _, _, col in run_mean_columns()),
        pa.field("report_uri", pa.string()),
        pa.field("bundle_uri", pa.string()),
        pa.field("config_json", pa.string(), nullable=False),
        *_PROVENANCE_FIELDS,
        pa.field("started_at", _UTC_TS, nullable=False),
        pa.field("finished_at", _UTC_TS),
    ],
    metadata={"dct.table": "runs", "dct.schema_version": str(RUN_SCHEMA_VERSION)},
)

# One row per class × attribute of a probe (docs/probe.md): the shift DCT − baseline in the attribute's own
# units, its paired effect size, bootstrap interval and Benjamini–Hochberg q-value, and its rank in the class.
PROBE_SCHEMA = pa.schema(
    [
        pa.field("schema_version", pa.int16(), nullable=False),
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("run_ids", pa.list_(pa.string()), nullable=False),
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("run_date", pa.date32(), nullable=False),
        pa.field("eval_keys", pa.list_(pa.string()), nullable=False),
        pa.field("class_id", pa.int32(), nullable=False),
        pa.field("class_name", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("attribute", pa.string(), nullable=False),
        pa.field("unit", pa.string(), nullable=False),
        pa.field("num_runs", pa.int32(), nullable=False),
        pa.field("num_seeds", pa.int32(), nullable=False),
        pa.field("baseline_mean", pa.float64(), nullable=False),
        pa.field("dct_mean", pa.float64(), nullable=False),
        pa.field("baseline_spread", pa.float64()),  # null before version 3
        pa.field("shift", pa.float64(), nullable=False),
        pa.field("ci_low", pa.float64(), nullable=False),
        pa.field("ci_high", pa.float64(), nullable=False),
        pa.field("effect_size", pa.float64(), nullable=False),
        pa.field("p_value", pa.float64(), nullable=False),
        pa.field("q_value", pa.float64(), nullable=False),
        pa.field("significant", pa.bool_(), nullable=False),
        pa.field("rank", pa.int32(), nullable=False),
        # The intervention test (version 3; null on rows not tested): verdict, effect on the guide's P(class).
        pa.field("intervention", pa.string()),
        pa.field("intervention_amount", pa.float64()),  # the edit's size: the shift, or what --edit asked
        pa.field("intervention_effect", pa.float64()),
        pa.field("intervention_ci_low", pa.float64()),
        pa.field("intervention_ci_high", pa.float64()),
        pa.field("intervention_forward", pa.float64()),
        pa.field("intervention_backward", pa.float64()),
        pa.field("edit_reached", pa.float64()),
        pa.field("confidence", pa.float64(), nullable=False),
        pa.field("fdr", pa.float64(), nullable=False),
        pa.field("min_shift", pa.float64()),  # null in version-1 files (their margin was 0)
        pa.field("min_effect", pa.float64()),  # null before version 3, or when no intervention ran
        pa.field("num_bootstrap", pa.int32(), nullable=False),
        pa.field("created_at", _UTC_TS, nullable=False),
    ],
    metadata={"dct.table": "probe", "dct.schema_version": str(PROBE_SCHEMA_VERSION)},
)

SCHEMAS: dict[str, pa.Schema] = {"classes": CLASS_SCHEMA, "runs": RUN_SCHEMA, "probe": PROBE_SCHEMA}


# ---------------------------------------------------------------------------------------------------------
# Per-class JSON records in the store
# ---------------------------------------------------------------------------------------------------------


def write_class_record(store: ArtifactStore, record: ClassRecord) -> str:
    """Store a per-class record; call it LAST, after the class's token and samples are written.

    A finished status (``done``/``diverged``) goes to :meth:`ArtifactStore.record_uri` (the "finished"
    marker); ``failed`` goes to :meth:`ArtifactStore.attempt_uri` so the next run retries the class.

    Returns:
        The record's URI.
    """
    if record.finished:
        uri = store.record_uri(record.dataset, record.eval_key, record.class_id)
    else:
        uri = store.attempt_uri(record.dataset, record.eval_key, record.class_id, record.run_id)
    return store.write_bytes(uri, record.model_dump_json(indent=1).encode())


def _parse_record(data: bytes, uri: str) -> ClassRecord:
    record = ClassRecord.model_validate_json(data)
    if record.schema_version > CLASS_SCHEMA_VERSION:
        raise ValueError(
            f"record {uri!r} has schema_version {record.schema_version}, newer than this dct "
            f"({CLASS_SCHEMA_VERSION}); upgrade dct"
        )
    return record


def read_class_record(store: ArtifactStore, dataset: str, eval_key: str, class_id: int) -> ClassRecord | None:
    """The finished record of a class, or None if the class is not finished."""
    uri = store.record_uri(dataset, eval_key, class_id)
    try:
        data = store.read_bytes(uri)
    except FileNotFoundError:
        return None
    return _parse_record(data, uri)


def read_class_attempt(
    store: ArtifactStore, dataset: str, eval_key: str, class_id: int, run_id: str
) -> ClassRecord | None:
    """The failed-attempt record a run left for a class, or None."""
    uri = store.attempt_uri(dataset, eval_key, class_id, run_id)
    try:
        data = store.read_bytes(uri)
    except FileNotFoundError:
        return None
    return _parse_record(data, uri)


def read_class_outcome(
    store: ArtifactStore, dataset: str, eval_key: str, class_id: int, run_id: str
) -> ClassRecord | None:
    """What the parent flow needs after a shard: the finished record if any, else this run's failed attempt.

    None means the class left no record at all (e.g. its worker was killed): it is unfinished.
    """
    return read_class_record(store, dataset, eval_key, class_id) or read_class_attempt(
        store, dataset, eval_key, class_id, run_id
    )


# ---------------------------------------------------------------------------------------------------------
# Writing the Parquet tables
# ---------------------------------------------------------------------------------------------------------


def _write_partitioned(store: ArtifactStore, table_name: str, table: pa.Table, run_id: str) -> list[str]:
    """Write ``table`` (one dataset, one run date) hive-partitioned with ``basename_template`` = run id.

    pyarrow writes straight to final names, so a reader could see a half-written file; it therefore
    writes into a private temporary directory first, and each finished file is then put into the store
    with :meth:`ArtifactStore.write_bytes` (atomic) under the location the store builds for it.
    """
    (dataset,) = set(table.column("dataset").to_pylist())
    (run_date,) = set(table.column("run_date").to_pylist())
    uris: list[str] = []
    with tempfile.TemporaryDirectory(prefix="dct-parquet-") as tmp:
        pads.write_dataset(
            table,
            tmp,
            format="parquet",
            partitioning=pads.partitioning(PARTITION_SCHEMA, flavor="hive"),
            basename_template=f"part-{run_id}-{{i}}.parquet",
            existing_data_behavior="error",
        )
        for folder, _, files in os.walk(tmp):
            for name in sorted(files):
                m = re.fullmatch(rf"part-{re.escape(run_id)}-(\d+)\.parquet", name)
                assert m, f"unexpected file {name!r} from write_dataset"
                uri = store.results_file_uri(table_name, dataset, run_date.isoformat(), run_id, int(m.group(1)))
                rel = os.path.relpath(os.path.join(folder, name), tmp).replace(os.sep, "/")
                assert uri.endswith("/" + rel) or uri.endswith(os.sep + rel.replace("/", os.sep)), (uri, rel)
                with open(os.path.join(folder, name), "rb") as f:
                    uris.append(store.write_bytes(uri, f.read()))
    return uris


def write_class_table(store: ArtifactStore, run: RunRecord, records: Sequence[ClassRecord]) -> list[str]:
    """Write the ``classes`` rows of one run (the records this run produced) as Parquet.

    Args:
        store: the artifact store.
        run: the run; gives the partition (dataset, run date) and the file name (run id).
        records: one per class processed in this run; skipped (already finished) classes are not repeated.

    Returns:
        URIs of the written files (none if ``records`` is empty).

    Raises:
        ValueError: a record of another run or dataset, or two records for the same class.
    """
    seen: set[tuple[str, int]] = set()
    for r in records:
        if r.run_id != run.run_id or r.dataset != run.dataset:
            raise ValueError(
                f"record of class {r.class_id} belongs to run {r.run_id!r}/dataset {r.dataset!r}, not "
                f"{run.run_id!r}/{run.dataset!r}; write each run's own records"
            )
        if (r.eval_key, r.class_id) in seen:
            raise ValueError(f"two records for class {r.class_id} (eval_key {r.eval_key!r}); pass one per class")
        seen.add((r.eval_key, r.class_id))
    if not records:
        return []
    rows = [r.row(run.run_date) for r in sorted(records, key=lambda r: (r.eval_key, r.class_id))]
    return _write_partitioned(store, "classes", pa.Table.from_pylist(rows, schema=CLASS_SCHEMA), run.run_id)


def write_run_record(store: ArtifactStore, run: RunRecord) -> list[str]:
    """Write the run's JSON record (``runs/{dataset}/{run_id}/run.json``) and its ``runs`` table row.

    Returns:
        ``[json_uri, *parquet_uris]``.
    """
    json_uri = store.write_bytes(
        store.run_uri(run.dataset, run.run_id, "run.json"), run.model_dump_json(indent=1).encode()
    )
    table = pa.Table.from_pylist([run.row()], schema=RUN_SCHEMA)
    return [json_uri, *_write_partitioned(store, "runs", table, run.run_id)]


def write_probe_table(store: ArtifactStore, table: pa.Table) -> list[str]:
    """Write one probe's rows (:data:`PROBE_SCHEMA`; one dataset, one ``run_id``) into the ``probe`` table.

    The file is named by the probed run (``part-{run_id}-{i}.parquet``), so probing the same run again
    replaces its own rows and nothing else.

    Returns:
        URIs of the written files (none if ``table`` is empty).

    Raises:
        ValueError: a table of another schema, or rows of several datasets or runs.
    """
    if not table.schema.equals(PROBE_SCHEMA, check_metadata=False):
        raise ValueError("the probe table does not have PROBE_SCHEMA; build it with dct.probe")
    if table.num_rows == 0:
        return []
    run_ids = set(table.column("run_id").to_pylist())
    if len(run_ids) != 1 or len(set(table.column("dataset").to_pylist())) != 1:
        raise ValueError(f"probe rows of runs {sorted(run_ids)!r}: write one probe (one dataset, one run_id) at a time")
    return _write_partitioned(store, "probe", table, run_ids.pop())


def read_run_record(store: ArtifactStore, dataset: str, run_id: str) -> RunRecord | None:
    uri = store.run_uri(dataset, run_id, "run.json")
    try:
        return RunRecord.model_validate_json(store.read_bytes(uri))
    except FileNotFoundError:
        return None


# ---------------------------------------------------------------------------------------------------------
# Reading (notebooks)
# ---------------------------------------------------------------------------------------------------------

StoreLike = ArtifactStore | str | None


def _as_store(store: StoreLike) -> ArtifactStore:
    return store if isinstance(store, ArtifactStore) else open_store(store)


def result_files(
    store: StoreLike, table: str = "classes", *, dataset: str | None = None, run_id: str | None = None,
    skip_invalid: bool = True,
) -> list[str]:
    """URIs of the Parquet files of ``table``, pruned by dataset / run id from the path alone.

    Args:
        skip_invalid: skip (with a warning) files whose Parquet footer cannot be read — e.g. a truncated
            file copied in by hand — so one bad file does not hide every valid run. False: raise.
    """
    st = _as_store(store)
    base = st.to_path(st.results_uri(table))
    ds_part = f"dataset={validate_component(dataset, 'dataset')}" if dataset is not None else "dataset=*"
    pattern = posixpath.join(base.replace(os.sep, "/"), ds_part, "run_date=*", "*.parquet")
    name_re = re.compile(rf"part-{re.escape(validate_component(run_id, 'run_id')) if run_id else '.+'}-\d+\.parquet")
    paths = sorted(p for p in st.glob(pattern) if name_re.fullmatch(posixpath.basename(p)))
    good: list[str] = []
    st.count_reads(paths)  # each file's footer is read below
    for p in paths:
        try:
            with st.fs.open(p, "rb") as f:
                pq.read_metadata(f)
        except (pa.ArrowInvalid, OSError) as exc:
            if not skip_invalid:
                raise
            logger.warning("skipping unreadable Parquet file %s: %s", st._uri(p), exc)
            continue
        good.append(st._uri(p))
    return good


def _filter(dataset: str | None, run_id: str | None) -> pads.Expression | None:
    expr = None
    for col, val in (("dataset", dataset), ("run_id", run_id)):
        if val is not None:
            term = pads.field(col) == val
            expr = term if expr is None else expr & term
    return expr


def results_dataset(
    store: StoreLike, table: str = "classes", *, dataset: str | None = None, run_id: str | None = None,
    skip_invalid: bool = True,
) -> pads.Dataset:
    """A ``pyarrow.dataset.Dataset`` over the table (hive partitions ``dataset``, ``run_date``), S3 included.

    The full current schema is imposed, so files written with an older ``schema_version`` read with
    nulls in newer columns. Filter further with ``.to_table(filter=pyarrow.dataset.field(...) == ...)``.
    """
    st = _as_store(store)
    schema = SCHEMAS[table]
    files = [st.to_path(u) for u in result_files(st, table, dataset=dataset, run_id=run_id, skip_invalid=skip_invalid)]
    st.count_reads(files)  # pyarrow reads them through the store's filesystem
    return pads.dataset(
        files,
        schema=schema,
        format="parquet",
        filesystem=st.fs,
        partitioning=pads.partitioning(PARTITION_SCHEMA, flavor="hive"),
        partition_base_dir=st.to_path(st.results_uri(table)),
    )


def read_results(
    store: StoreLike = None, table: str = "classes", *, dataset: str | None = None, run_id: str | None = None,
    columns: Sequence[str] | None = None, skip_invalid: bool = True,
) -> pd.DataFrame:
    """The results table as a pandas DataFrame, straight from the store (local or ``s3://``).

    Args:
        store: an ArtifactStore, a root URI, or None (``$DCT_STORE``, else ./dct-store).
        table: ``"classes"`` (one row per class and run), ``"runs"`` (one row per run) or ``"probe"``.
        dataset: only this dataset; run_id: only this run.
        columns: subset of columns (default all, in schema order).

    Returns:
        A DataFrame with the columns of :data:`CLASS_SCHEMA` / :data:`RUN_SCHEMA` (empty if no files).

    Example:
        >>> df = read_results("s3://bucket/dct", dataset="inat")          # doctest: +SKIP
    """
    if table not in SCHEMAS:
        raise ValueError(f"table {table!r} is not one of {sorted(SCHEMAS)}")
    dset = results_dataset(store, table, dataset=dataset, run_id=run_id, skip_invalid=skip_invalid)
    tbl = dset.to_table(columns=list(columns) if columns else None, filter=_filter(dataset, run_id))
    return tbl.to_pandas()


def results_relation(
    store: StoreLike = None, table: str = "classes", *, dataset: str | None = None, run_id: str | None = None,
    con: duckdb.DuckDBPyConnection | None = None, skip_invalid: bool = True,
) -> duckdb.DuckDBPyRelation:
    """The results table as a DuckDB relation, S3 included, without DuckDB's httpfs extension.

    For ``s3://`` stores the store's s3fs filesystem is registered with the connection
    (``con.register_filesystem``): httpfs downloads itself at first use, which air-gapped workers cannot.

    Args:
        con: connection to use (default: a new in-memory one, kept alive by the relation). For an S3
            store, the store's s3fs filesystem is (re-)registered on it under the name ``s3``.

    Returns:
        A lazy relation; e.g. ``rel.filter("status = 'done'").aggregate("avg(guide_top1_dct)").df()``.
    """
    import duckdb

    if table not in SCHEMAS:
        raise ValueError(f"table {table!r} is not one of {sorted(SCHEMAS)}")
    st = _as_store(store)
    con = con or duckdb.connect()
    files = result_files(st, table, dataset=dataset, run_id=run_id, skip_invalid=skip_invalid)
    if not files:
        return con.from_arrow(SCHEMAS[table].empty_table())
    st.count_reads([st.to_path(u) for u in files])  # DuckDB reads them through the store's filesystem
    if st.protocol != "file":
        # Register THIS store's filesystem (its endpoint); replace another one registered under the name.
        name = st.fs.protocol[0] if isinstance(st.fs.protocol, tuple) else st.fs.protocol
        if name in set(con.list_filesystems()):
            con.unregister_filesystem(name)
        con.register_filesystem(st.fs)
    cols = ", ".join(f'"{n}"' for n in SCHEMAS[table].names)
    rel = con.sql(
        f"SELECT {cols} FROM read_parquet($files, hive_partitioning = true, union_by_name = true, "
        "hive_types = {'dataset': 'VARCHAR', 'run_date': 'DATE'})",
        params={"files": files},
    )
    if dataset is not None:
        rel = rel.filter(duckdb.ColumnExpression("dataset") == duckdb.ConstantExpression(dataset))
    if run_id is not None:
        rel = rel.filter(duckdb.ColumnExpression("run_id") == duckdb.ConstantExpression(run_id))
    return rel


def latest_class_rows(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (dataset, eval_key, class_id): a finished row beats a failed one, then the latest wins.

    The ``classes`` table keeps every run's rows (a class that failed on Monday and finished on Tuesday
    has two); this is the view "current result per class" for a configuration.
    """
    if df.empty:
        return df
    ranked = df.assign(_finished=df["status"].isin(FINISHED_STATUSES))
    ranked = ranked.sort_values(["_finished", "finished_at"])
    keys = ["dataset", "eval_key", "class_id"]
    latest = ranked.drop_duplicates(keys, keep="last").drop(columns="_finished")
    return latest.sort_values(keys).reset_index(drop=True)


def read_class_records(
    store: ArtifactStore, dataset: str, eval_key: str, class_ids: Iterable[int]
) -> dict[int, ClassRecord | None]:
    """The finished record (or None) of each of ``class_ids``, read in parallel, each once."""
    ids = list(class_ids)
    uris = [store.record_uri(dataset, eval_key, c) for c in ids]
    return {
        c: None if data is None else _parse_record(data, uri)
        for c, uri, data in zip(ids, uris, store.read_many(uris), strict=True)
    }


def read_class_outcomes(
    store: ArtifactStore, dataset: str, eval_key: str, class_ids: Iterable[int], run_id: str
) -> dict[int, ClassRecord | None]:
    """:func:`read_class_outcome` of each class, batched: one listing of the records folder, the listed
    finished records (one parallel read each), then this run's failed attempts only for the others.

    Each class costs one read (the listing is one request per 1,000 records), not a failed GET first.
    """
    ids = list(class_ids)
    listed = store.finished_class_ids(dataset, eval_key, ids)
    out: dict[int, ClassRecord | None] = dict.fromkeys(ids)
    out.update(read_class_records(store, dataset, eval_key, [c for c in ids if c in listed]))
    rest = [c for c, r in out.items() if r is None]
    uris = [store.attempt_uri(dataset, eval_key, c, run_id) for c in rest]
    for c, uri, data in zip(rest, uris, store.read_many(uris), strict=True):
        out[c] = None if data is None else _parse_record(data, uri)
    return out


def class_records_for(
    store: ArtifactStore, dataset: str, eval_key: str, class_ids: Iterable[int], run_id: str
) -> list[ClassRecord]:
    """The records a run produced for ``class_ids`` (finished in this run, or failed in it), read back."""
    outcomes = read_class_outcomes(store, dataset, eval_key, class_ids, run_id)
    return [r for r in outcomes.values() if r is not None and r.run_id == run_id]
