"""A tiny world with planted class tokens in a store (local or S3), so synthesis has tokens to render."""

from __future__ import annotations

import pytest

from dct.artifacts.store import ArtifactStore


@pytest.fixture(scope="session")
def synth_world(tmp_path_factory):
    from tiny import save_tiny_world

    return save_tiny_world(tmp_path_factory.mktemp("synth-world"))


@pytest.fixture
def local_store(tmp_path, monkeypatch):
    monkeypatch.delenv("DCT_STORE", raising=False)
    return ArtifactStore.from_config(store=str(tmp_path / "store"))


@pytest.fixture
def s3_store(s3_bucket, aws_env, monkeypatch):
    monkeypatch.delenv("DCT_STORE", raising=False)
    return ArtifactStore.from_config(store=f"s3://{s3_bucket}/team/dct")


@pytest.fixture(params=["local", "s3"])
def store(request) -> ArtifactStore:
    return request.getfixturevalue(f"{request.param}_store")
