"""Batched, parallel reads (`ArtifactStore.read_many`) and the by-key finished check, local and on S3."""

from __future__ import annotations

import pytest


def test_read_many_returns_each_object_in_order_and_none_where_missing(store):
    uris = [store.record_uri("toy", "ek0001", c) for c in range(40)]
    for c in range(0, 40, 3):
        store.write_bytes(uris[c], f"record {c}".encode())
    got = store.read_many([*uris, uris[3]], max_concurrency=8)  # a duplicate is answered too
    assert got[:40] == [f"record {c}".encode() if c % 3 == 0 else None for c in range(40)]
    assert got[40] == b"record 3"
    assert store.requests[("get", "records")] == 40  # the duplicate is read once
    assert store.read_many([]) == []


def test_read_many_refuses_bad_concurrency_and_uris_outside_the_store(store):
    with pytest.raises(ValueError, match="max_concurrency=0"):
        store.read_many([store.record_uri("toy", "ek0001", 0)], max_concurrency=0)
    with pytest.raises(ValueError, match="outside the store root"):
        store.read_many(["/etc/passwd"])


def test_finished_among_checks_only_the_given_classes_by_key(store):
    for c in (1, 5, 7):
        store.write_bytes(store.record_uri("toy", "ek0001", c), b"{}")
    before = store.requests.copy()
    assert store.finished_among("toy", "ek0001", [0, 1, 2, 7]) == {1, 7}
    spent = store.requests - before
    assert spent == {("head", "records"): 4}  # one HEAD per asked class, no listing of the folder
