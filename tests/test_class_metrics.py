"""The per-class metric registry (dct/class_metrics.py) is the one declaration: record fields, table columns,
the report's keys and the docs' tables follow from it."""

from __future__ import annotations

import re
from pathlib import Path

from dct.artifacts.store import VARIANTS
from dct.class_metrics import (
    CLASS_METRICS,
    GENERATED,
    markdown_table,
    metric_columns,
    python_type,
    run_mean_columns,
    storage_rows,
)
from dct.results import CLASS_SCHEMA, RUN_SCHEMA, ClassRecord, RunRecord

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_schema_and_records_follow_the_registry():
    """docs/storage.md: every registered column is a nullable column of the registry's type in the classes table,
    in the registry's order, and a record field of the matching type defaulting to null; each run mean is a runs
    column and a run-record field."""
    cols = [c for _, _, c in metric_columns()]
    assert len(cols) == len(set(cols)) > 8
    names = CLASS_SCHEMA.names
    assert [n for n in names if n in cols] == cols
    for m, _, col in metric_columns():
        field = CLASS_SCHEMA.field(col)
        assert field.type == m.pa_type and field.nullable, col
        info = ClassRecord.model_fields[col]
        assert info.default is None and python_type(m) in getattr(info.annotation, "__args__", ()), col
    for _, _, col in run_mean_columns():
        assert RUN_SCHEMA.field(col).nullable and col in RunRecord.model_fields
    assert GENERATED == VARIANTS
    # the report's short keys are unique and keep the names older reports' classes.js used
    keys = [m.js_key(v) for m, v, _ in metric_columns()]
    assert len(keys) == len(set(keys))
    shard_keys = [m.js_key(v) for m, v, _ in metric_columns("shard")]
    assert shard_keys == ["g1b", "g1d", "g5b", "g5d", "e1b", "e1d", "e5b", "e5d"]


def test_docs_tables_match_the_registry():
    """docs/evaluation.md holds the registry's metric table; docs/storage.md one row per registered column, in
    order. After adding a metric, paste what the assertion prints."""
    text = (DOCS / "evaluation.md").read_text()
    block = re.search(r"<!-- class-metrics-table -->\n(.*?)\n<!-- /class-metrics-table -->", text, re.S)
    assert block and block.group(1) == markdown_table(), "docs/evaluation.md's table should be:\n" + markdown_table()
    storage = (DOCS / "storage.md").read_text().splitlines()
    rows = storage_rows()
    missing = [r for r in rows if r not in storage]
    assert missing == [], "docs/storage.md should have these rows:\n" + "\n".join(missing)
    positions = [storage.index(r) for r in rows]
    assert positions == sorted(positions)
    # no row for a column the registry does not have
    documented = {m.group(1) for line in storage if (m := re.match(r"^\| `([a-z0-9_]+)` \|", line))}
    stems = tuple(m.name + "_" for m in CLASS_METRICS)
    metricish = {c for c in documented if c.startswith(("mean_", *stems))}
    assert metricish <= {c for _, _, c in metric_columns()} | {c for _, _, c in run_mean_columns()}
