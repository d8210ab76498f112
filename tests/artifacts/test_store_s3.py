"""S3 specifics against the real moto HTTP server: endpoint variables, path-style addressing, no bucket creation."""

from __future__ import annotations

import pytest

from dct.artifacts.store import ArtifactStore
from dct.config import StorageConfig


def test_s3fs_itself_reads_AWS_ENDPOINT_URL_S3(s3_bucket, aws_env):
    """Verified fact behind the docs: with botocore >= 1.31, s3fs honours the endpoint variable on its own.

    The store passes the endpoint explicitly anyway (older botocore, shared config files).
    """
    import boto3
    import s3fs

    boto3.client("s3", endpoint_url=aws_env).put_object(Bucket=s3_bucket, Key="probe.txt", Body=b"hi")
    fs = s3fs.S3FileSystem(skip_instance_cache=True)  # no endpoint given
    assert fs.cat_file(f"{s3_bucket}/probe.txt") == b"hi"


def test_store_uses_endpoint_from_env_and_config(s3_bucket, aws_env, monkeypatch):
    st = ArtifactStore.from_config(store=f"s3://{s3_bucket}/p")
    assert st.endpoint_url == aws_env
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3")
    monkeypatch.setenv("AWS_ENDPOINT_URL", aws_env)
    st = ArtifactStore.from_config(store=f"s3://{s3_bucket}/p")
    assert st.endpoint_url == aws_env
    st.preflight()
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    st = ArtifactStore.from_config(StorageConfig(endpoint_url=aws_env), store=f"s3://{s3_bucket}/p")
    assert st.endpoint_url == aws_env
    assert st.fs.endpoint_url == aws_env  # passed to s3fs explicitly, not left to botocore's own lookup
    st.preflight()


@pytest.mark.parametrize("path_style", [True, False])
def test_path_style_addressing(s3_bucket, aws_env, path_style):
    """Path-style (``http://host/bucket/key``), as MinIO/Ceph behind one DNS name need; moto serves both."""
    st = ArtifactStore.from_config(StorageConfig(path_style=path_style), store=f"s3://{s3_bucket}/ps")
    uri = st.write_bytes(st.run_uri("toy", "run-1", "x.json"), b"{}")
    assert st.read_bytes(uri) == b"{}"
    style = st.fs.s3.meta.config.s3 or {}
    assert (style.get("addressing_style") == "path") is path_style


def test_dct_store_env_selects_s3(s3_bucket, aws_env, monkeypatch):
    monkeypatch.setenv("DCT_STORE", f"s3://{s3_bucket}/from-env")
    st = ArtifactStore.from_config()
    assert st.root == f"s3://{s3_bucket}/from-env"
    st.preflight()
