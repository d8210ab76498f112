"""Parquet results: explicit schemas, hive partitions, one file per run, read back by pandas/pyarrow/DuckDB."""

from __future__ import annotations

import datetime as dt
import logging
import re
from pathlib import Path

import pyarrow.dataset as pads
import pytest

from dct.results import (
    CLASS_SCHEMA,
    RUN_SCHEMA,
    ClassRecord,
    Provenance,
    RunRecord,
    class_records_for,
    latest_class_rows,
    read_results,
    read_run_record,
    result_files,
    results_dataset,
    results_relation,
    write_class_record,
    write_class_table,
    write_run_record,
)

DOCS = Path(__file__).resolve().parents[2] / "docs" / "storage.md"


def _publish(store, make_record, make_run, run_id, *, dataset="toy", classes=(0, 1, 2), hour=10, failed=()):
    run = make_run(run_id, dataset=dataset, hour=hour)
    records = []
    for i, cid in enumerate(classes):
        status = "failed" if cid in failed else "done"
        # each class finishes within its run's hour (the run's start time decides which result is the latest)
        at = dt.datetime(2026, 11, 26, hour, tzinfo=dt.UTC) + dt.timedelta(minutes=10 * i)
        rec = make_record(cid, run_id=run_id, dataset=dataset, status=status,
                          error="boom" if status == "failed" else None,
                          started_at=at, finished_at=at + dt.timedelta(minutes=5))
        write_class_record(store, rec)
        records.append(rec)
    # The parent reads the records back from the store, then writes the table from them.
    back = class_records_for(store, dataset, "ek0001", classes, run_id)
    assert back == records
    write_class_table(store, run, back)
    write_run_record(store, run)
    return run


def test_schema_matches_records():
    partition_only = {"run_date"}
    class_cols = set(ClassRecord.model_fields) - {"provenance"} - ClassRecord.JSON_ONLY | set(Provenance.model_fields)
    class_cols |= partition_only
    run_cols = set(RunRecord.model_fields) - {"provenance"} - RunRecord.JSON_ONLY | set(Provenance.model_fields)
    run_cols |= partition_only
    assert class_cols == set(CLASS_SCHEMA.names)
    assert run_cols == set(RUN_SCHEMA.names)
    assert CLASS_SCHEMA.field("schema_version").type == RUN_SCHEMA.field("schema_version").type


def test_every_column_is_documented():
    text = DOCS.read_text()
    for schema in (CLASS_SCHEMA, RUN_SCHEMA):
        for name in schema.names:
            assert re.search(rf"^\| `{name}` \|", text, re.M), f"column {name} is not documented in {DOCS}"


def test_round_trip_and_readers(store, make_record, make_run):
    # Two runs of one dataset on the SAME date, and a run of another dataset.
    _publish(store, make_record, make_run, "run-a", hour=9)
    _publish(store, make_record, make_run, "run-b", hour=17, classes=(2, 3), failed=(3,))
    _publish(store, make_record, make_run, "run-c", dataset="other", classes=(0,))

    files = result_files(store, "classes")
    assert len(files) == 3
    assert any(f.endswith("/results/classes/dataset=toy/run_date=2026-11-26/part-run-a-0.parquet") for f in files)

    # pandas
    df = read_results(store, "classes", dataset="toy")
    assert sorted(df["run_id"].unique()) == ["run-a", "run-b"]  # both same-day runs kept their rows
    assert len(df) == 5 and list(df.columns) == CLASS_SCHEMA.names
    assert set(df["run_date"]) == {dt.date(2026, 11, 26)}
    one = read_results(store, "classes", dataset="toy", run_id="run-b")
    assert sorted(zip(one["class_id"], one["status"], strict=True)) == [(2, "done"), (3, "failed")]
    assert one.loc[one["class_id"] == 3, "error"].item() == "boom"
    assert read_results(store, "classes")["dataset"].value_counts().to_dict() == {"toy": 5, "other": 1}
    assert read_results(store, "classes", dataset="toy", run_id="run-c").empty

    # pyarrow.dataset, hive partitions, filtering by partition and column
    dset = results_dataset(store, "classes")
    tbl = dset.to_table(filter=(pads.field("dataset") == "toy") & (pads.field("run_id") == "run-a"))
    assert tbl.num_rows == 3 and tbl.schema.field("run_date").type == CLASS_SCHEMA.field("run_date").type

    # DuckDB (S3 through the registered s3fs filesystem, not httpfs)
    rel = results_relation(store, "classes", dataset="toy")
    assert rel.aggregate("count(*)").fetchall()[0][0] == 5
    got = rel.filter("run_id = 'run-b' AND status = 'done'").project("class_id, guide_top1_dct").fetchall()
    assert got == [(2, 1.0)]
    assert results_relation(store, "classes", run_id="run-c").project("dataset").fetchall() == [("other",)]
    assert dict(zip(rel.columns, rel.types, strict=True))["run_date"] == "DATE"

    # the runs table
    runs = read_results(store, "runs", dataset="toy")
    assert sorted(runs["run_id"]) == ["run-a", "run-b"] and list(runs.columns) == RUN_SCHEMA.names
    assert results_relation(store, "runs").aggregate("count(*)").fetchall()[0][0] == 3
    assert read_run_record(store, "toy", "run-a").run_id == "run-a"

    # current result per class: 0 and 1 only in run-a; 2 finished in both runs -> run-b's (the later) row;
    # 3 failed in run-b only -> that failed row
    latest = latest_class_rows(df)
    assert list(zip(latest["class_id"], latest["run_id"], latest["status"], strict=True)) == [
        (0, "run-a", "done"), (1, "run-a", "done"), (2, "run-b", "done"), (3, "run-b", "failed"),
    ]
    assert latest.loc[latest["class_id"] == 2, "finished_at"].item() == df.loc[
        (df["class_id"] == 2) & (df["run_id"] == "run-b"), "finished_at"
    ].item()


def test_latest_class_rows_a_finished_row_beats_a_later_failed_one(store, make_record, make_run):
    """Monday done, Tuesday failed (e.g. an outage on a forced re-run): the current result is Monday's done row;
    with two finished rows the later one wins, whatever order the files are read in."""
    _publish(store, make_record, make_run, "run-late", hour=20, classes=(0, 1), failed=(0,))
    _publish(store, make_record, make_run, "run-early", hour=8, classes=(0, 1))
    df = read_results(store, "classes", dataset="toy")
    latest = latest_class_rows(df)
    assert list(zip(latest["class_id"], latest["run_id"], strict=True)) == [(0, "run-early"), (1, "run-late")]
    latest_reversed = latest_class_rows(df.iloc[::-1].reset_index(drop=True))
    assert list(latest_reversed["run_id"]) == ["run-early", "run-late"]


def test_republishing_a_run_replaces_only_its_own_file(store, make_record, make_run):
    _publish(store, make_record, make_run, "run-a")
    _publish(store, make_record, make_run, "run-b")
    _publish(store, make_record, make_run, "run-a", classes=(0,))
    df = read_results(store, "classes", dataset="toy")
    assert (df["run_id"] == "run-a").sum() == 1 and (df["run_id"] == "run-b").sum() == 3


def test_empty_store_reads_empty(store):
    assert read_results(store, "classes").empty
    rel = results_relation(store, "runs")
    assert rel.columns == RUN_SCHEMA.names and rel.fetchall() == []


def test_writer_refuses_foreign_or_duplicate_rows(store, make_record, make_run):
    run = make_run("run-a")
    with pytest.raises(ValueError, match="belongs to run"):
        write_class_table(store, run, [make_record(0, run_id="run-z")])
    with pytest.raises(ValueError, match="two records for class 0"):
        write_class_table(store, run, [make_record(0), make_record(0)])


def test_corrupt_parquet_file_is_skipped_with_a_warning(store, make_record, make_run, caplog):
    _publish(store, make_record, make_run, "run-a")
    bad = store.results_file_uri("classes", "toy", "2026-11-26", "run-junk")
    store.write_bytes(bad, b"PAR1 this is not a parquet file")
    with caplog.at_level(logging.WARNING, logger="dct.results"):
        assert len(read_results(store, "classes")) == 3
        assert results_relation(store, "classes").aggregate("count(*)").fetchall()[0][0] == 3
    assert "run-junk" in caplog.text
    with pytest.raises(Exception, match=r"(?i)parquet|magic|footer"):
        read_results(store, "classes", skip_invalid=False)


def test_naive_timestamps_are_refused(make_record):
    with pytest.raises(ValueError, match="timezone"):
        make_record(0, started_at=dt.datetime(2026, 11, 26, 10))


def test_documented_raw_readers_without_dct(s3_store, make_record, make_run):
    """The docs' by-hand recipes (plain s3fs + pyarrow / DuckDB, no httpfs) read the same rows."""
    import duckdb
    import pyarrow as pa
    import s3fs

    _publish(s3_store, make_record, make_run, "run-a")
    _publish(s3_store, make_record, make_run, "run-b", classes=(4,))
    base = s3_store.root.removeprefix("s3://")
    fs = s3fs.S3FileSystem(skip_instance_cache=True)  # endpoint from AWS_ENDPOINT_URL_S3

    part = pads.partitioning(pa.schema([("dataset", pa.string()), ("run_date", pa.date32())]), flavor="hive")
    dset = pads.dataset(f"{base}/results/classes", filesystem=fs, format="parquet", partitioning=part)
    assert dset.to_table(filter=pads.field("run_id") == "run-b").column("class_id").to_pylist() == [4]

    con = duckdb.connect()
    con.register_filesystem(fs)
    rows = con.sql(
        f"""SELECT class_id FROM read_parquet('s3://{base}/results/classes/*/*/*.parquet', hive_partitioning = true,
                                             hive_types = {{'dataset': 'VARCHAR', 'run_date': 'DATE'}})
            WHERE dataset = 'toy' AND run_id = 'run-a' ORDER BY class_id"""
    ).fetchall()
    assert rows == [(0,), (1,), (2,)]


def test_two_runs_on_the_same_date_both_keep_their_rows(store, make_record, make_run):
    _publish(store, make_record, make_run, "20261126T020000Z-aaaaaaaa", hour=2)
    _publish(store, make_record, make_run, "20261126T020000Z-bbbbbbbb", hour=2)  # same second, even
    df = read_results(store, "classes", dataset="toy")
    assert df.groupby("run_id").size().to_dict() == {"20261126T020000Z-aaaaaaaa": 3, "20261126T020000Z-bbbbbbbb": 3}
    assert len(read_results(store, "runs", dataset="toy")) == 2


def test_duckdb_connection_can_be_reused(s3_store, make_record, make_run):
    import duckdb

    _publish(s3_store, make_record, make_run, "run-a")
    con = duckdb.connect()
    a = results_relation(s3_store, "classes", con=con)
    b = results_relation(s3_store, "runs", con=con)
    assert a.aggregate("count(*)").fetchall() == [(3,)] and b.aggregate("count(*)").fetchall() == [(1,)]


def test_only_part_files_are_read(local_store, make_record, make_run):
    """docs/reliability.md: files whose names are not part-{run_id}-{i}.parquet are never read — here a valid
    Parquet copy under another name (a hand-made backup), whose rows would otherwise count twice."""
    import shutil

    _publish(local_store, make_record, make_run, "run-a")
    (part,) = [local_store.to_path(u) for u in result_files(local_store, "classes")]
    shutil.copy(part, Path(part).with_name("backup-of-run-a.parquet"))
    assert [Path(local_store.to_path(u)).name for u in result_files(local_store, "classes")] == ["part-run-a-0.parquet"]
    assert len(read_results(local_store, "classes")) == 3


# The columns of schema_version 1, as files of that version hold them (before the per-class feature metrics).
CLASS_COLUMNS_V1 = [
    "schema_version", "run_id", "dataset", "run_date", "class_id", "class_name", "token", "token_key", "eval_key",
    "status", "stop_reason", "error", "epochs", "best_epoch", "best_loss", "best_epoch_accuracy", "optimize_seconds",
    "evaluate_seconds", "token_reused", "token_uri", "samples_uri", "sample_format", "num_samples",
    "guide_top1_baseline", "guide_top5_baseline", "guide_top1_dct", "guide_top5_dct", "evaluator_top1_baseline",
    "evaluator_top5_baseline", "evaluator_top1_dct", "evaluator_top5_dct", "diffusion_model_id", "diffusion_revision",
    "diffusion_licence", "classifier_model_id", "classifier_revision", "classifier_licence", "evaluator_model_id",
    "evaluator_revision", "evaluator_licence", "dct_version", "python_version", "torch_version", "diffusers_version",
    "transformers_version", "device", "dtype", "started_at", "finished_at",
]
RUN_COLUMNS_V1 = [
    "schema_version", "run_id", "dataset", "run_date", "status", "token_key", "eval_key", "classes_planned",
    "classes_done", "classes_skipped", "classes_failed", "classes_diverged", "seconds", "fid_baseline", "fid_dct",
    "kid_baseline", "kid_std_baseline", "kid_dct", "kid_std_dct", "kid_subset_size", "fid_num_samples_baseline",
    "fid_num_samples_dct", "fid_num_reference", "fid_feature_extractor", "report_uri", "bundle_uri", "config_json",
    "diffusion_model_id", "diffusion_revision", "diffusion_licence", "classifier_model_id", "classifier_revision",
    "classifier_licence", "evaluator_model_id", "evaluator_revision", "evaluator_licence", "dct_version",
    "python_version", "torch_version", "diffusers_version", "transformers_version", "device", "dtype", "started_at",
    "finished_at",
]


def test_classes_and_runs_files_of_schema_version_1_still_read(local_store, make_record, make_run):
    """docs/storage.md, "Schema evolution": a version-1 file (no per-class feature metrics) reads beside a current
    one, every version-1 value intact and the newer columns null; a version-1 JSON record still parses."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from dct.results import _parse_record

    _publish(local_store, make_record, make_run, "run-a")
    for table, v1 in (("classes", CLASS_COLUMNS_V1), ("runs", RUN_COLUMNS_V1)):
        (part,) = [local_store.to_path(u) for u in result_files(local_store, table)]
        current = pq.read_table(part)
        in_file = [c for c in v1 if c in current.column_names]  # dataset and run_date are in the path
        old = current.select(in_file)  # exactly the version-1 columns, in their order
        old = old.set_column(0, "schema_version", pa.array([1] * old.num_rows, pa.int16()))
        old = old.set_column(in_file.index("run_id"), "run_id", pa.array(["run-0old"] * old.num_rows))
        pq.write_table(old, Path(part).with_name("part-run-0old-0.parquet"))
        df = read_results(local_store, table)
        schema = CLASS_SCHEMA if table == "classes" else RUN_SCHEMA
        newer = [c for c in schema.names if c not in v1]
        assert newer and list(df.columns) == schema.names
        older, now = df[df.run_id == "run-0old"], df[df.run_id == "run-a"]
        assert len(older) == len(now) > 0 and set(older["schema_version"]) == {1}
        assert older[newer].isna().all().all()
        same = [c for c in v1 if c not in ("schema_version", "run_id")]
        assert older[same].reset_index(drop=True).equals(now[same].reset_index(drop=True)), table

    record = make_record(3, precision_dct=0.5)
    data = json.loads(record.model_dump_json())
    v1_record = {k: v for k, v in data.items() if k in CLASS_COLUMNS_V1 or k == "provenance"} | {"schema_version": 1}
    back = _parse_record(json.dumps(v1_record).encode(), "records/toy/ek0001/00003.json")
    assert back.schema_version == 1 and back.precision_dct is None and back.guide_top1_dct == record.guide_top1_dct


def test_a_file_of_an_older_schema_reads_with_nulls_in_the_newer_columns(local_store, make_record, make_run):
    """docs/storage.md, "Schema evolution": readers impose the current schema."""
    import pyarrow.parquet as pq

    _publish(local_store, make_record, make_run, "run-a")
    (part,) = [local_store.to_path(u) for u in result_files(local_store, "classes")]
    import pyarrow as pa

    newer = ["guide_top1_dct", "guide_top5_dct", "sample_format"]
    old = pq.read_table(part).drop_columns(newer)  # as a file written before those columns existed
    old = old.set_column(old.schema.get_field_index("run_id"), "run_id", pa.array(["run-0old"] * old.num_rows))
    pq.write_table(old, Path(part).with_name("part-run-0old-0.parquet"))  # listed first: no schema to copy
    df = read_results(local_store, "classes")
    assert list(df.columns) == CLASS_SCHEMA.names and len(df) == 6
    older = df[df.run_id == "run-0old"]
    assert len(older) == 3 and older[newer].isna().all().all()
    assert df[df.run_id == "run-a"][newer].notna().all().all()
