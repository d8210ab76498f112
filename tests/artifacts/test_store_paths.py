"""Root resolution and path safety: no user-supplied name can escape the store root.

See docs/reliability.md, "Security".
"""

from __future__ import annotations

import os

import pytest

from dct.artifacts.store import ArtifactStore, resolve_endpoint_url, resolve_store_root, validate_component
from dct.config import StorageConfig

BAD_NAMES = [
    "..", ".", "../etc", "a/b", "/abs", "\\\\server\\share", "C:\\x", "a\x00b", "x" * 129, "", ".hidden",
    "a b", "dataset=x", "café", "~root", "a\nb",
]


def test_root_precedence(tmp_path):
    env = {"DCT_STORE": "s3://bucket/from-env"}
    assert resolve_store_root("s3://bucket/param/", environ=env) == "s3://bucket/param"
    assert resolve_store_root(None, environ=env) == "s3://bucket/from-env"
    assert resolve_store_root(None, environ={}, cwd=str(tmp_path)) == str(tmp_path / "dct-store")
    assert resolve_store_root("rel/dir", environ={}, cwd=str(tmp_path)) == str(tmp_path / "rel" / "dir")
    assert resolve_store_root(f"file://{tmp_path}/x", environ={}) == str(tmp_path / "x")
    assert os.path.isabs(resolve_store_root(None, environ={}))


@pytest.mark.parametrize("root", ["s3://", "gs://bucket/x", "http://host/x", "s3://b/\x00"])
def test_bad_roots_are_refused(root):
    with pytest.raises(ValueError, match="store root"):
        resolve_store_root(root, environ={})


def test_s3_root_cannot_climb_out_of_its_bucket():
    with pytest.raises(ValueError, match=r"'\.\.'"):
        resolve_store_root("s3://bucket/a/../../other", environ={})


def test_endpoint_resolution_order():
    env = {"AWS_ENDPOINT_URL": "http://generic", "AWS_ENDPOINT_URL_S3": "http://s3-specific"}
    assert resolve_endpoint_url(StorageConfig(endpoint_url="http://cfg"), env) == "http://cfg"
    assert resolve_endpoint_url(StorageConfig(), env) == "http://s3-specific"
    assert resolve_endpoint_url(None, {"AWS_ENDPOINT_URL": "http://generic"}) == "http://generic"
    assert resolve_endpoint_url(None, {}) is None


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_unsafe_names_are_refused_naming_the_value(bad, local_store):
    with pytest.raises(ValueError) as exc:
        validate_component(bad, "dataset")
    assert repr(bad[:80]) in str(exc.value) or repr(bad[:80] + "...") in str(exc.value)
    for build in (
        lambda: local_store.token_uri(bad, "tk", 0),
        lambda: local_store.token_uri("toy", bad, 0),
        lambda: local_store.record_uri("toy", bad, 0),
        lambda: local_store.attempt_uri("toy", "ek", 0, bad),
        lambda: local_store.run_uri("toy", bad, "run.json"),
        lambda: local_store.run_uri(bad, "run-1"),
        lambda: local_store.results_file_uri("classes", bad, "2026-11-26", "r"),
        lambda: local_store.results_file_uri("classes", "toy", "2026-11-26", bad),
        lambda: local_store.cache_uri("toy", bad),
    ):
        with pytest.raises(ValueError):
            build()


@pytest.mark.parametrize("bad", [-1, 1.0, "3", True, None])
def test_class_id_must_be_a_non_negative_int(bad, local_store):
    with pytest.raises(ValueError, match="class_id"):
        local_store.token_uri("toy", "tk", bad)


def test_bad_variant_format_and_seed(local_store):
    with pytest.raises(ValueError, match="variant"):
        local_store.sample_uri("toy", "ek", 0, "../dct", 0)
    with pytest.raises(ValueError, match="format"):
        local_store.sample_uri("toy", "ek", 0, "dct", 0, ext="png/../../x")
    with pytest.raises(ValueError, match="seed"):
        local_store.sample_uri("toy", "ek", 0, "dct", -3)


def test_every_location_is_inside_the_root(local_store, s3_store):
    for st in (local_store, s3_store):
        uris = [
            st.token_uri("toy", "tk", 3), st.sample_uri("toy", "ek", 3, "dct", 10_000), st.record_uri("toy", "ek", 3),
            st.attempt_uri("toy", "ek", 3, "run-1"), st.run_uri("toy", "run-1", "bundle", "tokens.safetensors"),
            st.results_file_uri("runs", "toy", "2026-11-26", "run-1"), st.cache_uri("toy", "fid-evaluator.npz"),
        ]
        for uri in uris:
            assert uri.startswith(st.root + "/"), uri
            st.to_path(uri)  # does not raise


def test_uris_outside_the_root_are_refused(local_store, s3_store):
    with pytest.raises(ValueError, match="outside the store root"):
        local_store.to_path(local_store.root + "/../elsewhere/x")
    with pytest.raises(ValueError, match="outside the store root"):
        local_store.read_bytes("/etc/passwd")
    with pytest.raises(ValueError, match="outside the store root"):
        s3_store.to_path("s3://another-bucket/x")
    with pytest.raises(ValueError, match="outside the store root"):
        s3_store.write_bytes(s3_store.root + "/../../x", b"no")


def test_repr_has_no_credentials(s3_store):
    assert "testing-secret-key" not in repr(s3_store) and "testing-key-id" not in repr(s3_store)


def test_local_flag(local_store, s3_store):
    assert local_store.is_local and not s3_store.is_local
    assert ArtifactStore("memory://x").is_local is False


def test_the_layout_names_classes_by_zero_padded_id_and_samples_by_seed(local_store):
    """docs/storage.md, "Layout": ids, not names, zero-padded to 5 digits; a sample is named by its noise seed, so
    the baseline and DCT image of one seed share a name."""
    st = local_store

    def rel(uri: str) -> str:
        return os.path.relpath(st.to_path(uri), st.to_path(st.root))

    assert rel(st.token_uri("toy", "tk1", 3)) == "tokens/toy/tk1/00003.safetensors"
    assert rel(st.record_uri("toy", "ek1", 3)) == "records/toy/ek1/00003.json"
    assert rel(st.attempt_uri("toy", "ek1", 3, "run-1")) == "attempts/toy/ek1/00003/run-1.json"
    assert rel(st.sample_uri("toy", "ek1", 123456, "dct", 10_000)) == "samples/toy/ek1/123456/dct/010000.png"
    base, dct = (os.path.basename(st.sample_uri("toy", "ek1", 3, v, 10_007)) for v in ("baseline", "dct"))
    assert base == dct == "010007.png"
