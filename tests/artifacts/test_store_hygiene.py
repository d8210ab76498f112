"""No credentials in anything the store writes; the storage modules stay light to import."""

from __future__ import annotations

import subprocess
import sys

import boto3
import torch

from dct.artifacts.bundle import export_bundle
from dct.artifacts.store import ArtifactStore
from dct.artifacts.token_file import token_file_bytes
from dct.results import write_class_record, write_class_table, write_run_record


def test_no_credentials_in_any_written_object(s3_store, s3_bucket, aws_env, make_record, make_run):
    s3_store.preflight("run-a")
    rec = make_record(1, run_id="run-a")
    data = token_file_bytes(rec.token, torch.ones(4), {"token_key": rec.token_key})
    s3_store.write_token("toy", rec.token_key, 1, data)
    s3_store.write_sample("toy", rec.eval_key, 1, "dct", 10_000, b"png")
    write_class_record(s3_store, rec)
    run = make_run("run-a")
    write_class_table(s3_store, run, [rec])
    write_run_record(s3_store, run)
    export_bundle(s3_store, [rec], "run-a")

    client = boto3.client("s3", endpoint_url=aws_env)
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=s3_bucket)["Contents"]]
    assert len(keys) >= 8
    for key in keys:
        body = client.get_object(Bucket=s3_bucket, Key=key)["Body"].read()
        for secret in (b"testing-secret-key", b"testing-key-id"):
            assert secret not in body, f"{secret!r} leaked into {key}"


def test_storage_modules_import_without_torch_or_prefect():
    code = (
        "import sys, dct.artifacts.store, dct.results; "
        "assert 'prefect' not in sys.modules and 'torch' not in sys.modules, "
        "[m for m in sys.modules if m.split('.')[0] in ('torch', 'prefect')][:3]"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_memory_store_round_trip():
    st = ArtifactStore("memory://dct-test-hygiene")
    uri = st.write_bytes(st.record_uri("toy", "ek", 2), b"{}")
    assert st.is_finished("toy", "ek", 2) and st.read_bytes(uri) == b"{}"
    assert st.finished_class_ids("toy", "ek") == {2}
