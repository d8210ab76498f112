"""Synthesis with every token layout: SDXL tokens (two text encoders) and multi-vector tokens, from the
token store and from a run's bundle (its file, or its folder given relative to the store), with the guide
filter, the baseline arm and WebDataset shards, as one-vector SD tokens have them.

The pipeline the set was rendered with is inspected afterwards: every sub-token of every class is in every
text encoder, and its embedding row is the stored vector, bit for bit.
"""

from __future__ import annotations

import io
import os
import tarfile

import pytest
import torch
from synth_world import plant_bundle, plant_token_vectors

from dct.artifacts.store import ArtifactStore
from dct.config import RunOverrides, TokenConfig
from dct.method.tokens import SDXL_ENCODER_KEYS, sub_tokens, text_encoders
from dct.models.loading import load_models
from dct.run.plan import build_config
from dct.synthesis.config import FilterConfig, SynthesisConfig
from dct.synthesis.layout import read_table
from dct.synthesis.synthesize import (
    class_token,
    finalize_synthesis,
    plan_synthesis,
    synthesize_shard,
)

# min_probability far below the tiny guide's ~1/4: every image passes, so the counts are exact.
SET = SynthesisConfig(
    per_class=2, filter=FilterConfig(by="guide", min_probability=0.01), baseline=True, webdataset=True, batch_size=4
)
CLASSES = [0, 1]
# (pipeline, token.num_vectors the tokens were learned with, where synthesis takes them from)
CASES = {
    "sdxl-store": ("sdxl", 1, "store"),
    "sdxl-bundle-file": ("sdxl", 1, "bundle-file"),
    "sdxl-bundle-folder": ("sdxl", 1, "bundle-folder"),
    "2-vectors-store": ("sd", 2, "store"),
    "2-vectors-bundle-folder": ("sd", 2, "bundle-folder"),
    "sdxl-2-vectors-bundle-file": ("sdxl", 2, "bundle-file"),
}


@pytest.fixture(scope="module")
def sdxl_world(tmp_path_factory):
    from tiny import save_tiny_world

    return save_tiny_world(tmp_path_factory.mktemp("sdxl-world"), sdxl=True, max_epochs=1, num_samples=2)


def _expected_rows(vector, encoders: int) -> list[torch.Tensor]:
    """The stored vector as one (n, D) block per text encoder, in the pipeline's encoder order."""
    if encoders == 2:
        return [vector[k] for k in SDXL_ENCODER_KEYS]
    return [vector.reshape(-1, vector.shape[-1])]


@pytest.mark.parametrize("case", list(CASES))
def test_synthesis_installs_every_vector_into_every_text_encoder(case, request, tmp_path, monkeypatch):
    kind, n, source = CASES[case]
    world = str(request.getfixturevalue("sdxl_world" if kind == "sdxl" else "synth_world"))
    widths = (32, 40) if kind == "sdxl" else (32,)  # the tiny worlds' text encoders (tests/tiny.py)
    store = ArtifactStore.from_config(store=str(tmp_path / "store"))
    spec, config = build_config(world, None, store.root)
    learned = config.model_copy(update={"token": TokenConfig(num_vectors=n)})  # num_vectors enters token_key
    tkey, vectors = plant_token_vectors(store, learned, CLASSES, widths, n)
    monkeypatch.chdir(tmp_path)  # the folder is given relative to the store root, as docs/synthesis.md shows it
    bundle = None
    if source != "store":
        bundle = plant_bundle(store, learned, tkey, CLASSES, "run-1")
        given = bundle if source == "bundle-file" else "runs/tiny/run-1/bundle"
        # What `dct synthesize --bundle` plans with: the dataset's own config (one vector); the bundle decides.
        used = config
        plan = plan_synthesis(dataset=world, synthesis=SET, classes=CLASSES, store=store.root, bundle=given)
    elif n == 1:
        used = config
        plan = plan_synthesis(dataset=world, synthesis=SET, classes=CLASSES, store=store.root)
    else:
        used = learned
        # The run's settings as a user gives them: the same override (`--num-vectors n`) as `dct run`.
        plan = plan_synthesis(
            dataset=world, synthesis=SET, classes=CLASSES, store=store.root, overrides=RunOverrides(num_vectors=n)
        )
        assert plan.config == learned
    assert (plan.todo, plan.token_key, plan.bundle) == (CLASSES, tkey, bundle)

    models = load_models(used, "cpu")
    done = synthesize_shard(store, plan, used, SET, models, plan.todo, list(spec.class_names))
    summary = finalize_synthesis(store, plan, list(spec.class_names))

    assert [(d.class_id, d.kept, d.baseline) for d in done] == [(c, 2, 2) for c in CLASSES]
    rows = read_table(store.read_bytes(summary["metadata_uri"])).to_pylist()
    kept = [r for r in rows if r["arm"] == "dct" and r["kept"]]
    assert sorted(r["class_id"] for r in kept) == [0, 0, 1, 1]
    assert sorted(r["class_id"] for r in rows if r["arm"] == "baseline") == [0, 0, 1, 1]
    assert all(r["filter_status"] == "kept" and r["guide_probability"] >= 0.01 for r in kept)
    assert all(r["token"] == used.token_string(r["class_id"]) and r["token_key"] == tkey for r in rows)
    # The filter renders a whole batch (4) per class; the images over the quota are counted, not written.
    assert sorted(r["filter_status"] for r in rows if r["arm"] == "dct") == ["kept"] * 4 + ["over_quota"] * 4
    for r in rows:
        assert r["path"] is None or os.path.isfile(os.path.join(summary["root_uri"], r["path"]))
    shards = store.list_files(store.synthetic_uri(plan.dataset, plan.synth_key, "webdataset"))
    assert len(shards) == 2
    for uri in shards:
        with tarfile.open(fileobj=io.BytesIO(store.read_bytes(uri))) as tar:
            assert len([m for m in tar.getnames() if m.endswith(".png")]) == 2

    # Every sub-token of every class, in every text encoder, holds its stored vector.
    pairs = text_encoders(models.pipe)
    assert len(pairs) == len(widths)
    for c in CLASSES:
        names = sub_tokens(used.token_string(c), n)
        for (tokenizer, text_encoder), block in zip(pairs, _expected_rows(vectors[c], len(pairs)), strict=True):
            ids = tokenizer.convert_tokens_to_ids(names)
            assert tokenizer.unk_token_id not in ids
            table = text_encoder.get_input_embeddings().weight
            for token_id, vector in zip(ids, block, strict=True):
                assert torch.equal(table[token_id], vector)


def test_a_stored_token_with_another_number_of_vectors_is_refused(synth_world, tmp_path):
    """The token store is keyed by token_key, which holds num_vectors: a file there with another count is foreign."""
    store = ArtifactStore.from_config(store=str(tmp_path / "store"))
    _, config = build_config(str(synth_world), None, store.root)
    learned = config.model_copy(update={"token": TokenConfig(num_vectors=2)})
    tkey, _ = plant_token_vectors(store, learned, [0], (32,), 2)
    plan = plan_synthesis(
        dataset=str(synth_world), synthesis=SET, classes=[0], store=store.root, overrides=RunOverrides(num_vectors=2)
    )
    assert plan.token_key == tkey and plan.todo == [0]
    assert class_token(store, plan, learned, 0, (32,))[1].shape == (2, 32)
    three = learned.model_copy(update={"token": TokenConfig(num_vectors=3)})
    with pytest.raises(ValueError, match=r"token.num_vectors=3"):
        class_token(store, plan, three, 0, (32,))
    with pytest.raises(ValueError, match=r"expect \{'clip_l'"):
        class_token(store, plan, learned, 0, (32, 40))  # a one-encoder token for an SDXL pipeline
