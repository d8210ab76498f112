"""Tokens, samples and records round-trip through the store (local and S3 over HTTP); resume semantics."""

from __future__ import annotations

import os
import time

import pytest
import torch

from dct.artifacts.store import ArtifactStore, StoreUnavailableError
from dct.artifacts.token_file import read_token_bytes, token_file_bytes
from dct.results import read_class_attempt, read_class_outcome, read_class_record, write_class_record


def _token_bytes(class_id: int, token_key: str, dim: int = 32) -> tuple[bytes, torch.Tensor]:
    g = torch.Generator().manual_seed(class_id)
    vec = torch.randn(dim, generator=g)
    meta = {"token_key": token_key, "class_id": str(class_id), "dataset": "toy"}
    return token_file_bytes(f"<dct-toy-{class_id:05d}>", vec, meta), vec


def test_token_sample_record_round_trip(store, make_record):
    data, vec = _token_bytes(3, "tk0001")
    uri = store.write_token("toy", "tk0001", 3, data)
    assert uri == store.token_uri("toy", "tk0001", 3) and store.has_token("toy", "tk0001", 3)
    token, back, meta = read_token_bytes(store.read_token("toy", "tk0001", 3))
    assert token == "<dct-toy-00003>" and torch.equal(back, vec) and meta["token_key"] == "tk0001"

    for variant in ("baseline", "dct"):
        for seed in (10_001, 10_000):
            store.write_sample("toy", "ek0001", 3, variant, seed, f"{variant}-{seed}".encode())
    samples = store.list_samples("toy", "ek0001", 3, "dct")
    assert [os.path.basename(u) for u in samples] == ["010000.png", "010001.png"]
    assert store.read_bytes(samples[1]) == b"dct-10001"

    assert not store.is_finished("toy", "ek0001", 3)
    rec = make_record(3, token_uri=uri, samples_uri=store.samples_uri("toy", "ek0001", 3))
    assert write_class_record(store, rec) == store.record_uri("toy", "ek0001", 3)
    assert store.is_finished("toy", "ek0001", 3)
    assert read_class_record(store, "toy", "ek0001", 3) == rec
    assert store.finished_class_ids("toy", "ek0001") == {3}
    assert store.finished_class_ids("toy", "ek0001", [1, 2, 3]) == {3}
    assert read_class_record(store, "toy", "ek0001", 4) is None


def test_failed_class_is_recorded_but_not_finished(store, make_record):
    rec = make_record(5, status="failed", error="CUDA out of memory", run_id="run-b")
    uri = write_class_record(store, rec)
    assert uri == store.attempt_uri("toy", "ek0001", 5, "run-b")
    assert not store.is_finished("toy", "ek0001", 5)
    assert store.finished_class_ids("toy", "ek0001") == set()
    assert read_class_attempt(store, "toy", "ek0001", 5, "run-b") == rec
    assert read_class_outcome(store, "toy", "ek0001", 5, "run-b") == rec
    # A later run finishes it: the finished record wins; the old attempt stays (nothing is deleted).
    done = make_record(5, run_id="run-c")
    write_class_record(store, done)
    assert read_class_outcome(store, "toy", "ek0001", 5, "run-c") == done
    assert store.exists(uri)


def test_diverged_is_final(store, make_record):
    write_class_record(store, make_record(6, status="diverged", stop_reason="diverged"))
    assert store.is_finished("toy", "ek0001", 6)


class Shard:
    """The per-class protocol of a shard, reduced to its storage calls (the flow's real loop does the same)."""

    def __init__(self, store: ArtifactStore, make_record):
        self.store, self.make_record = store, make_record
        self.optimised: list[tuple[str, int]] = []
        self.evaluated: list[tuple[str, int]] = []

    def run(self, class_ids, token_key: str, eval_key: str, run_id: str) -> None:
        for cid in class_ids:
            if self.store.is_finished("toy", eval_key, cid):
                continue
            reused = self.store.has_token("toy", token_key, cid)
            if not reused:
                self.optimised.append((token_key, cid))
                self.store.write_token("toy", token_key, cid, _token_bytes(cid, token_key)[0])
            self.evaluated.append((eval_key, cid))
            for variant in ("baseline", "dct"):
                self.store.write_sample("toy", eval_key, cid, variant, 10_000, b"png")
            write_class_record(
                self.store,
                self.make_record(cid, run_id=run_id, token_key=token_key, eval_key=eval_key, token_reused=reused),
            )


def test_resume_reuse_and_write_beside(store, make_record):
    shard = Shard(store, make_record)
    shard.run([0, 1], "tk0001", "ek0001", "run-1")
    assert shard.optimised == [("tk0001", 0), ("tk0001", 1)]

    # Same keys: both classes finished -> nothing is redone; a new class is done.
    shard.run([0, 1, 2], "tk0001", "ek0001", "run-2")
    assert shard.optimised[-1] == ("tk0001", 2) and len(shard.optimised) == 3
    assert shard.evaluated.count(("ek0001", 0)) == 1

    # Changed evaluation setting -> new eval_key: re-evaluated, tokens reused, old records untouched.
    before = store.read_bytes(store.record_uri("toy", "ek0001", 0))
    shard.run([0, 1, 2], "tk0001", "ek0002", "run-3")
    assert len(shard.optimised) == 3
    assert [e for e in shard.evaluated if e[0] == "ek0002"] == [("ek0002", 0), ("ek0002", 1), ("ek0002", 2)]
    assert read_class_record(store, "toy", "ek0002", 0).token_reused
    assert store.read_bytes(store.record_uri("toy", "ek0001", 0)) == before

    # Changed token setting -> new token_key (and so a new eval_key): written beside, not over.
    old_token = store.read_token("toy", "tk0001", 0)
    shard.run([0], "tk0002", "ek0003", "run-4")
    assert shard.optimised[-1] == ("tk0002", 0)
    assert store.read_token("toy", "tk0001", 0) == old_token
    assert store.token_uri("toy", "tk0002", 0) != store.token_uri("toy", "tk0001", 0)
    assert store.has_token("toy", "tk0002", 0) and store.has_token("toy", "tk0001", 0)


def test_write_replaces_only_its_key_and_leaves_no_temporaries(local_store):
    a = local_store.run_uri("toy", "run-1", "a.txt")
    b = local_store.run_uri("toy", "run-1", "b.txt")
    local_store.write_bytes(a, b"1")
    local_store.write_bytes(b, b"2")
    local_store.write_bytes(a, b"3")
    assert local_store.read_bytes(a) == b"3" and local_store.read_bytes(b) == b"2"
    assert sorted(os.listdir(os.path.dirname(a))) == ["a.txt", "b.txt"]


def test_preflight_probe(store):
    uri = store.preflight("run-1")
    assert store.exists(uri) and uri.startswith(store.root + "/_dct/preflight/")


def test_preflight_fails_on_missing_bucket_and_never_creates_it(aws_env):
    import boto3

    st = ArtifactStore.from_config(store="s3://no-such-bucket-dct/x")
    with pytest.raises(FileNotFoundError):
        st.preflight()
    names = [b["Name"] for b in boto3.client("s3", endpoint_url=aws_env).list_buckets()["Buckets"]]
    assert "no-such-bucket-dct" not in names


def test_preflight_fails_fast_when_endpoint_is_down(aws_env, monkeypatch):
    import socket

    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{port}")
    st = ArtifactStore.from_config(store="s3://bucket-down/x")
    t0 = time.monotonic()
    with pytest.raises(StoreUnavailableError, match="unreachable") as exc:
        st.preflight()
    assert time.monotonic() - t0 < 15
    assert "testing-secret-key" not in str(exc.value)
