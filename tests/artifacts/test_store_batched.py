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


def test_finished_class_ids_is_one_listing_whatever_the_number_of_classes(store):
    for c in range(25):
        store.write_bytes(store.record_uri("toy", "ek0001", c), b"{}")
    before = store.requests.copy()
    assert store.finished_class_ids("toy", "ek0001") == set(range(25))
    assert store.requests - before == {("list", "records"): 1}  # no HEAD or GET per class


def test_every_read_of_the_results_readers_is_counted(store, make_record, make_run):
    """The request counts (what the scale benchmark reports) see the readers' listing and every file they read,
    also the reads pyarrow and DuckDB make through the store's filesystem."""
    from dct.artifacts.store import ArtifactStore
    from dct.results import read_results, results_relation, write_class_table

    for run_id, day in (("run-a", 26), ("run-b", 27)):
        write_class_table(store, make_run(run_id, day=day), [make_record(0, run_id=run_id)])
    for read in (lambda st: read_results(st, "classes"), lambda st: results_relation(st, "classes").df()):
        fresh = ArtifactStore(store.root)
        assert len(read(fresh)) == 2
        assert fresh.requests[("list", "results")] == 1  # one glob over the partitions
        assert fresh.requests[("get", "results")] == 4  # each file's footer, then each file's rows


def test_list_folders_lists_the_folders_in_one_counted_request(store):
    for name in ("00001-b", "00000-a"):
        store.write_bytes(f"{store.uri('real', name)}/x.png", b"png")
    hidden = f"{store.to_path(store.uri('real'))}/.hidden"  # not a storage name: written past the store's checks
    store.fs.makedirs(hidden, exist_ok=True)
    store.fs.pipe_file(f"{hidden}/x.png", b"png")
    store.write_bytes(store.uri("real", "loose.txt"), b"not a folder")
    before = store.requests.copy()
    folders = store.list_folders(store.uri("real"))
    assert [f.rsplit("/", 1)[-1] for f in folders] == ["00000-a", "00001-b"]
    assert store.requests - before == {("list", "real"): 1}
    assert store.list_folders(store.uri("absent")) == []
