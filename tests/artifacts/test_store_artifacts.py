"""Tokens, samples and records round-trip through the store (local and S3 over HTTP); resume semantics."""

from __future__ import annotations

import inspect
import os
import time

import pytest
import torch

from dct.artifacts.store import ArtifactStore, StoreUnavailableError
from dct.artifacts.token_file import read_token_bytes, token_file_bytes
from dct.config import RunOverrides
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


FAST = RunOverrides(max_epochs=1, images_per_epoch=2, num_samples=1)
MORE_SAMPLES = FAST.model_copy(update={"num_samples": 2})  # an evaluation setting: new eval_key, same token_key
MORE_EPOCHS = FAST.model_copy(update={"max_epochs": 2})  # a token setting: new token_key (and eval_key)


@pytest.fixture(scope="module")
def tiny_models(tiny_world):
    """The tiny world's models, loaded once (they do not depend on the run settings varied below)."""
    from dct.models.loading import load_models
    from dct.run.plan import build_config

    return load_models(build_config(str(tiny_world))[1], "cpu")


def _run_shard(root: str, tiny_world, models, classes: str, overrides: RunOverrides, run_id: str):
    """What a `dct run` does with the store, without Prefect: the real plan, then the real runner per class."""
    from dct.run.plan import build_config, plan_run
    from dct.run.runner import process_class

    plan = plan_run(dataset=str(tiny_world), classes=classes, store=root, overrides=overrides, run_id=run_id)
    spec, config = build_config(str(tiny_world), overrides, plan.store_root)
    store = ArtifactStore.from_config(config.storage)
    records = [
        process_class(store, config, models, class_id=c, class_name=spec.class_names[c], run_id=run_id)
        for c in plan.todo
    ]
    return plan, records


def test_resume_reuse_and_write_beside(store, tiny_world, tiny_models, monkeypatch):
    import dct.run.runner

    optimised: list[int] = []
    real = dct.run.runner.optimize_token

    def spy(*args, class_id, **kwargs):
        optimised.append(class_id)
        return real(*args, class_id=class_id, **kwargs)

    monkeypatch.setattr(dct.run.runner, "optimize_token", spy)
    root = store.root

    p1, r1 = _run_shard(root, tiny_world, tiny_models, "0-1", FAST, "run-1")
    assert p1.todo == [0, 1] and optimised == [0, 1] and not any(r.token_reused for r in r1)
    # Each record carries a copy of its token file, byte for byte (the bundle is built from it: docs/storage.md).
    assert all(r.token_file_copy() == store.read_token("tiny", p1.token_key, r.class_id) for r in r1)

    # Same keys: both classes finished -> nothing is redone; the new class is done.
    record0 = store.read_bytes(store.record_uri("tiny", p1.eval_key, 0))
    p2, _ = _run_shard(root, tiny_world, tiny_models, "0-2", FAST, "run-2")
    assert (p2.token_key, p2.eval_key) == (p1.token_key, p1.eval_key)
    assert p2.todo == [2] and p2.skipped == [0, 1] and optimised == [0, 1, 2]
    assert store.read_bytes(store.record_uri("tiny", p1.eval_key, 0)) == record0

    # Changed evaluation setting -> new eval_key: every class re-evaluated, no token re-optimised (reused),
    # the old records untouched.
    tokens = {c: store.read_token("tiny", p1.token_key, c) for c in (0, 1, 2)}
    p3, r3 = _run_shard(root, tiny_world, tiny_models, "0-2", MORE_SAMPLES, "run-3")
    assert p3.token_key == p1.token_key and p3.eval_key != p1.eval_key
    assert p3.todo == [0, 1, 2] and optimised == [0, 1, 2] and all(r.token_reused for r in r3)
    assert [len(store.list_samples("tiny", p3.eval_key, c, "dct")) for c in (0, 1, 2)] == [2, 2, 2]
    assert store.read_bytes(store.record_uri("tiny", p1.eval_key, 0)) == record0
    assert {c: store.read_token("tiny", p1.token_key, c) for c in (0, 1, 2)} == tokens
    assert [r.token_file_copy() for r in r3] == [tokens[c] for c in (0, 1, 2)]  # a reused token's copy too
    assert read_class_record(store, "tiny", p3.eval_key, 1).token_file_copy() == tokens[1]  # and in the stored record

    # Changed token setting -> new token_key (and so a new eval_key): optimised again and written beside, the
    # old token kept byte for byte.
    p4, r4 = _run_shard(root, tiny_world, tiny_models, "0", MORE_EPOCHS, "run-4")
    assert p4.token_key != p1.token_key and p4.eval_key not in (p1.eval_key, p3.eval_key)
    assert p4.todo == [0] and optimised == [0, 1, 2, 0] and not r4[0].token_reused
    assert store.read_token("tiny", p1.token_key, 0) == tokens[0]
    assert store.token_uri("tiny", p4.token_key, 0) != store.token_uri("tiny", p1.token_key, 0)
    assert r4[0].token_uri == store.token_uri("tiny", p4.token_key, 0) and store.has_token("tiny", p4.token_key, 0)


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
    elapsed = time.monotonic() - t0
    # Bounded by the store's own retry settings, not by a number tuned to one machine: each of s3fs's tries makes
    # `max_attempts` botocore attempts, sleeping at most 2**(k-1) s before attempt k+1, and s3fs sleeps
    # 0.1 * 1.7**i s after try i; a refused loopback connection costs milliseconds (0.5 s allowed per attempt).
    # tests/faults/test_storage_outage.py counts the attempts themselves.
    defaults = inspect.signature(ArtifactStore.__init__).parameters
    attempts, tries = defaults["max_attempts"].default, defaults["retries"].default
    backoff = tries * sum(2 ** (k - 1) for k in range(1, attempts)) + sum(0.1 * 1.7**i for i in range(tries - 1))
    assert elapsed <= backoff + 0.5 * attempts * tries, f"{elapsed:.1f}s > {backoff:.1f}s of backoff"
    assert "testing-secret-key" not in str(exc.value)


def test_concurrent_writers_of_different_content_leave_one_complete_version(local_store):
    """Two runs writing DIFFERENT bytes to one key at the same time (docs/storage.md, "Concurrent runs"): a
    reader only ever sees one writer's complete version, and the last writer's version stays."""
    import threading

    uri = local_store.token_uri("toy", "tk0001", 3)
    versions = [bytes([i]) * (4_000_000 + i) for i in (1, 2, 3)]  # distinct sizes and bytes
    local_store.write_bytes(uri, versions[0])
    errors: list[BaseException] = []
    seen: set[bytes] = set()
    stop = threading.Event()

    def write(data: bytes) -> None:
        try:
            for _ in range(6):
                local_store.write_bytes(uri, data)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def read() -> None:
        while not stop.is_set():
            try:
                data = local_store.read_bytes(uri)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)
                return
            seen.add(data[:1] + len(data).to_bytes(8, "big") if data in versions else b"torn" + data[:16])

    readers = [threading.Thread(target=read) for _ in range(2)]
    writers = [threading.Thread(target=write, args=(v,)) for v in versions[1:]]
    for t in readers + writers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    for t in readers:
        t.join()
    assert errors == []
    assert not any(s.startswith(b"torn") for s in seen), "a reader saw a partial or mixed object"
    last = local_store.read_bytes(uri)
    assert last in versions[1:]  # one writer's complete version: the one that replaced last
    folder = os.path.dirname(local_store.to_path(uri))
    assert os.listdir(folder) == ["00003.safetensors"]  # no temporary left behind
