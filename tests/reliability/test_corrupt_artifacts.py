"""A corrupt stored token is detected and re-optimised, never loaded into the pipeline.

Faults are injected by overwriting the stored token file (as a crashed copy, a foreign tool or a hand
edit would leave it), then running :func:`dct.run.runner.process_class` again on the tiny world.
A corrupt Parquet file beside valid ones: see test_corrupt_parquet_partition_does_not_hide_valid_runs
here and tests/artifacts/test_results.py (garbage bytes).
"""

from __future__ import annotations

import logging
import os

import pytest
import torch

from dct.artifacts.store import ArtifactStore
from dct.artifacts.token_file import load_stored_token, read_token_bytes, token_file_bytes
from dct.config import RunOverrides
from dct.method.tokens import get_token_vector
from dct.models.loading import load_models
from dct.run.plan import build_config
from dct.run.runner import process_class

CLASS_ID = 0


@pytest.fixture(scope="module")
def world(tiny_world, tmp_path_factory):
    """Config + models loaded once, and a local store holding one VALID token for class 0.

    Two epochs: with one, the best-loss rule returns the initial vector, and a token that was "re-optimised"
    could not be told from one that never was. Here the valid token is the vector after one update."""
    torch.set_num_threads(1)  # module fixtures run before the per-test autouse one
    root = tmp_path_factory.mktemp("corrupt-store")
    fast = RunOverrides(sample_format="none", num_samples=1, max_epochs=2, images_per_epoch=2)
    _, config = build_config(str(tiny_world), fast, str(root))
    models = load_models(config, "cpu")
    store = ArtifactStore.from_config(config.storage)
    first = process_class(store, config, models, class_id=CLASS_ID, class_name="red circle", run_id="run-0")
    assert first.token_reused is False and first.epochs == 2 and first.best_epoch == 1
    assert not torch.equal(_stored_vector(store, config, models), _initial_vector(models, config))
    return store, config, models


def _stored_vector(store, config, models) -> torch.Tensor:
    tkey, _ = models.keys(config)
    return read_token_bytes(store.read_token(config.dataset, tkey, CLASS_ID))[1]


def _initial_vector(models, config) -> torch.Tensor:
    """The initializer token's embedding: what a never-optimised token would hold."""
    tokenizer = models.pipe.tokenizer
    ids = tokenizer.encode(config.token.initializer_token, add_special_tokens=False)
    return get_token_vector(models.pipe.text_encoder, ids[0])


def _run(world, run_id):
    store, config, models = world
    return process_class(store, config, models, class_id=CLASS_ID, class_name="red circle", run_id=run_id)


def _pipeline_row(models, config) -> torch.Tensor:
    tok = models.pipe.tokenizer.convert_tokens_to_ids(config.token_string(CLASS_ID))
    return get_token_vector(models.pipe.text_encoder, tok)


def _planted(good: bytes, **meta_changes) -> tuple[bytes, torch.Tensor]:
    """A well-formed token file with a recognisable vector (all 7.0) and changed metadata."""
    token, vector, meta = read_token_bytes(good)
    planted = torch.full_like(vector, 7.0)
    meta = {k: v for k, v in (meta | meta_changes).items() if v is not None}
    return token_file_bytes(token, planted, meta), planted


def test_valid_stored_token_is_reused_unchanged(world):
    store, config, models = world
    tkey, _ = models.keys(config)
    path = store.token_uri(config.dataset, tkey, CLASS_ID)
    before = store.read_bytes(path)
    mtime = os.stat(path).st_mtime_ns
    record = _run(world, "run-valid")
    assert record.token_reused is True
    assert store.read_bytes(path) == before and os.stat(path).st_mtime_ns == mtime  # reused, not rewritten
    _, vector, _ = read_token_bytes(before)
    assert torch.equal(_pipeline_row(models, config), vector)


CORRUPTIONS = {
    "truncated": lambda good: (good[: len(good) // 2], None),
    "empty": lambda good: (b"", None),
    "foreign bytes": lambda good: (b"\x89PNG\r\n\x1a\n not a token file at all" * 4, None),
    "another class's token": lambda good: _planted(good, class_id="1"),
    "metadata token_key mismatch": lambda good: _planted(good, token_key="0123456789abcdef"),
    "no dct metadata (foreign tool)": lambda good: _planted(good, token_key=None, class_id=None, dataset=None),
    "another dataset": lambda good: _planted(good, dataset="other"),
}


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_corrupt_token_is_reoptimised_never_loaded(world, case, caplog):
    store, config, models = world
    tkey, _ = models.keys(config)
    uri = store.token_uri(config.dataset, tkey, CLASS_ID)
    good = store.read_bytes(uri)
    bad, planted = CORRUPTIONS[case](good)
    store.write_bytes(uri, bad)

    with caplog.at_level(logging.WARNING, logger="dct.run.runner"):
        record = _run(world, f"run-{case.split()[0]}")

    assert record.token_reused is False, f"{case}: a corrupt token was reused"
    assert record.epochs == 2 and record.best_epoch == 1, f"{case}: not re-optimised"
    assert "re-optimising" in caplog.text
    # The file is replaced by a valid token of THESE keys ...
    _, vector, meta = load_stored_token(store, config.dataset, tkey, CLASS_ID, config.token_string(CLASS_ID))
    assert meta["token_key"] == tkey and meta["class_id"] == str(CLASS_ID) and torch.isfinite(vector).all()
    # ... and the pipeline holds that re-optimised vector, never the planted one.
    row = _pipeline_row(models, config)
    assert torch.equal(row, vector)
    if planted is not None:
        assert not torch.equal(row, planted)
    # Re-optimised: moved from the initializer, and (optimisation is deterministic) equal to the original valid one.
    assert not torch.equal(vector, _initial_vector(models, config))
    assert torch.equal(vector, read_token_bytes(good)[1])


@pytest.mark.parametrize("case", ["non-finite vector", "wrong dimension"])
def test_well_formed_but_unusable_vector_is_reoptimised(world, case):
    """Correct metadata, but a vector no pipeline can use: NaN values, or another model's width."""
    from safetensors.torch import save

    store, config, models = world
    tkey, _ = models.keys(config)
    uri = store.token_uri(config.dataset, tkey, CLASS_ID)
    token, good, meta = read_token_bytes(store.read_bytes(uri))
    bad = torch.full_like(good, float("nan")) if case == "non-finite vector" else torch.ones(good.numel() * 2)
    store.write_bytes(uri, save({token: bad}, metadata=meta))  # token_file_bytes would refuse NaN: write raw
    record = _run(world, f"run-{case.split()[0]}")
    assert record.token_reused is False and record.status == "done" and record.epochs == 2
    _, vector, _ = load_stored_token(store, config.dataset, tkey, CLASS_ID, token)
    assert not torch.equal(vector, _initial_vector(models, config))
    assert torch.equal(vector, good)  # re-optimised (deterministically) to the valid token
    assert torch.equal(_pipeline_row(models, config), vector)
