"""Synthetic sets: readable by ImageFolder, HF datasets, WebDataset, pandas and DuckDB; resumable; keyed."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
from synth_world import plant_tokens

from dct.artifacts.store import ArtifactStore
from dct.synthesis.config import FilterConfig, SynthesisConfig
from dct.synthesis.synthesize import synthesize_dataset

SET = SynthesisConfig(per_class=6, baseline=True, webdataset=True, batch_size=4)


@pytest.fixture(scope="module")
def made(synth_world, tmp_path_factory):
    """Every class of the tiny world synthesized once into a local store (shared: the tests only read it)."""
    store = ArtifactStore.from_config(store=str(tmp_path_factory.mktemp("synth") / "store"))
    plant_tokens(store, synth_world, range(4))
    plan, summary = synthesize_dataset(dataset=str(synth_world), synthesis=SET, store=store.root)
    return store, plan, summary


def _files(root: str) -> dict[str, int]:
    return {
        os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns for d, _, fs in os.walk(root) for f in fs
    }


def test_image_folder_reads_with_class_id_labels(made):
    from torchvision.datasets import ImageFolder

    summary = made[2]
    folder = ImageFolder(os.path.join(summary["root_uri"], "train"))
    assert len(folder) == 4 * SET.per_class
    # The folder of each image names its class id, and ImageFolder's label is that id.
    for path, label in folder.samples:
        assert int(os.path.basename(os.path.dirname(path)).split("-")[0]) == label
    assert sorted({label for _, label in folder.samples}) == [0, 1, 2, 3]
    image, label = folder[0]
    assert image.size == (16, 16) and label == 0


def test_hf_imagefolder_reads_with_class_id_labels(made, tmp_path):
    import datasets

    summary = made[2]
    ds = datasets.load_dataset(
        "imagefolder", data_dir=os.path.join(summary["root_uri"], "train"), split="train",
        cache_dir=str(tmp_path / "hf-cache"),
    )
    names = ds.features["label"].names
    assert [int(n.split("-")[0]) for n in names] == [0, 1, 2, 3]  # label index == class id
    assert sorted(ds["label"]) == sorted([c for c in range(4) for _ in range(SET.per_class)])


def test_webdataset_shards_yield_the_folder_images_and_labels(made):
    import webdataset as wds
    from PIL import Image

    store, plan, summary = made
    shards = sorted(store.list_files(store.synthetic_uri(plan.dataset, plan.synth_key, "webdataset")))
    assert len(shards) == 4
    seen = {}
    for sample in wds.WebDataset(shards, shardshuffle=False).decode("pil"):
        meta = sample["json"]
        seen[(int(sample["cls"]), meta["seed"])] = np.asarray(sample["png"])
    assert len(seen) == 4 * SET.per_class
    for (class_id, seed), pixels in seen.items():
        folder = [d for d in os.listdir(os.path.join(summary["root_uri"], "train")) if d.startswith(f"{class_id:05d}-")]
        with Image.open(os.path.join(summary["root_uri"], "train", folder[0], f"{seed}.png")) as im:
            assert np.array_equal(np.asarray(im.convert("RGB")), pixels)


def test_metadata_round_trips_through_pandas_and_duckdb(made):
    import duckdb
    import pandas as pd

    store, plan, summary = made
    df = pd.read_parquet(summary["metadata_uri"])
    assert set(df["schema_version"]) == {1}
    assert len(df[df.arm == "dct"]) == 4 * SET.per_class and len(df[df.arm == "baseline"]) == 4 * SET.per_class
    assert (df.synth_key == plan.synth_key).all() and (df.token_key == plan.token_key).all()
    # Every path is a file of the set, and the baseline arm uses the DCT arm's seeds and templates.
    for p in df.path:
        assert os.path.exists(os.path.join(summary["root_uri"], p))
    dct_rows = df[df.arm == "dct"].sort_values(["class_id", "seed"]).reset_index(drop=True)
    base_rows = df[df.arm == "baseline"].sort_values(["class_id", "seed"]).reset_index(drop=True)
    assert (dct_rows.seed == base_rows.seed).all() and (dct_rows.template_index == base_rows.template_index).all()
    assert all("<dct-tiny-" in p for p in dct_rows.prompt) and not any("<dct-" in p for p in base_rows.prompt)
    assert df.guide_probability.between(0, 1).all() and df.diffusion_licence.eq("test-only").all()
    counts = duckdb.sql(
        f"select class_id, count(*) n from read_parquet('{summary['metadata_uri']}') where arm = 'dct' and kept "
        "group by class_id order by class_id"
    ).fetchall()
    assert counts == [(c, SET.per_class) for c in range(4)]
    card = store.read_bytes(summary["card_uri"]).decode()
    assert "test-only" in card and "ImageFolder" in card and plan.synth_key in card


def test_rerun_writes_nothing_new(made, synth_world):
    store, plan, summary = made
    before = _files(summary["root_uri"])  # (the store's preflight probe is written each run, by design)
    plan2, summary2 = synthesize_dataset(dataset=str(synth_world), synthesis=SET, store=store.root)
    assert plan2.synth_key == plan.synth_key and plan2.todo == [] and summary2["written"] == []
    assert _files(summary["root_uri"]) == before


def test_changed_settings_write_a_new_set_beside(synth_world, tmp_path):
    store = ArtifactStore.from_config(store=str(tmp_path / "store"))
    plant_tokens(store, synth_world, [0])
    one = SynthesisConfig(per_class=2, batch_size=2)
    plan_a, _ = synthesize_dataset(dataset=str(synth_world), synthesis=one, classes=[0], store=store.root)
    before = _files(summary_root(store, plan_a))
    other = one.model_copy(update={"seed": 2_000_000})
    plan_b, _ = synthesize_dataset(dataset=str(synth_world), synthesis=other, classes=[0], store=store.root)
    same_but_batched = one.model_copy(update={"batch_size": 1})
    plan_c, _ = synthesize_dataset(dataset=str(synth_world), synthesis=same_but_batched, classes=[0], store=store.root)
    assert plan_b.synth_key != plan_a.synth_key and plan_c.synth_key == plan_a.synth_key and plan_c.todo == []
    assert _files(summary_root(store, plan_a)) == before  # the first set is untouched


def summary_root(store, plan) -> str:
    return store.synthetic_uri(plan.dataset, plan.synth_key)


def test_filter_keeps_only_confident_images_and_counts_the_rest(made, synth_world, tmp_path):
    import pandas as pd

    # The same tokens (planted from the same generator) and seeds as `made`: the same images, so its guide
    # probabilities tell which threshold keeps some images of each class and rejects others.
    unfiltered = pd.read_parquet(made[2]["metadata_uri"])
    unfiltered = unfiltered[(unfiltered.arm == "dct") & unfiltered.class_id.isin([0, 1])]
    threshold = float(unfiltered.guide_probability.median())
    store = ArtifactStore.from_config(store=str(tmp_path / "store"))
    plant_tokens(store, synth_world, [0, 1])
    cfg = SynthesisConfig(per_class=3, batch_size=4, filter=FilterConfig(min_probability=threshold, max_factor=2.0))
    _, summary = synthesize_dataset(dataset=str(synth_world), synthesis=cfg, classes=[0, 1], store=store.root)
    df = pd.read_parquet(summary["metadata_uri"])
    merged = df.merge(unfiltered[["class_id", "seed", "guide_probability"]], on=["class_id", "seed"])
    assert np.allclose(merged.guide_probability_x, merged.guide_probability_y)  # same images indeed
    for _, rows in df.groupby("class_id"):
        kept = rows[rows.kept]
        assert (kept.guide_probability >= threshold).all()
        assert (rows[rows.filter_status == "below_threshold"].guide_probability < threshold).all()
        assert len(kept) <= 3 and len(rows) <= cfg.max_images
        if len(kept) < 3:  # quota missed: generation went on to the cap
            assert len(rows) == cfg.max_images
        assert all(p.startswith("filtered/") for p in rows[rows.filter_status == "below_threshold"].path)
        assert all(p.startswith("train/") for p in kept.path)
    assert (df.filter_status == "below_threshold").any() and df.kept.any()
    card = store.read_bytes(summary["card_uri"]).decode()
    assert f"probability ≥ {threshold}" in card


@pytest.mark.parametrize("seed, what", [(0, "optimisation"), (1000, "evaluation")])
def test_overlapping_seed_block_is_refused_before_any_model_loads(synth_world, tmp_path, seed, what):
    # A copy of the world whose models do not exist: loading (or resolving) any model would fail differently.
    world = tmp_path / "gone" / "tiny.toml"
    world.parent.mkdir()
    shutil.copy(synth_world, world)
    with pytest.raises(ValueError, match=f"overlap the {what} seeds"):
        synthesize_dataset(
            dataset=str(world), synthesis=SynthesisConfig(per_class=4, seed=seed), store=str(tmp_path / "store")
        )
    assert not (tmp_path / "store").exists()  # nothing written


def test_template_without_token_slot_is_refused():
    with pytest.raises(ValueError, match="exactly one"):
        SynthesisConfig(per_class=1, templates=("a photo of a dog",))


def test_s3_store_holds_the_folder_and_manifest(synth_world, s3_store):
    import pandas as pd
    import s3fs  # noqa: F401 - pandas reads s3:// through it

    plant_tokens(s3_store, synth_world, [1, 2])
    cfg = SynthesisConfig(per_class=3, batch_size=3, webdataset=True)
    plan, summary = synthesize_dataset(dataset=str(synth_world), synthesis=cfg, store=s3_store.root)
    assert plan.missing_tokens == [0, 3] and sorted(plan.todo) == [1, 2]
    images = s3_store.list_files(s3_store.synthetic_uri(plan.dataset, plan.synth_key, "train", "00001-blue-square"))
    assert [os.path.basename(u) for u in images] == ["1000000.png", "1000001.png", "1000002.png"]
    df = pd.read_parquet(summary["metadata_uri"], storage_options={"client_kwargs": {
        "endpoint_url": os.environ["AWS_ENDPOINT_URL_S3"]}})
    assert sorted(set(df.class_id)) == [1, 2] and len(df) == 6
    assert s3_store.synthetic_finished_class_ids(plan.dataset, plan.synth_key) == {1, 2}
