"""Synthetic sets: readable by ImageFolder, HF datasets, WebDataset, pandas and DuckDB; resumable; keyed."""

from __future__ import annotations

import io
import os
import shutil

import numpy as np
import pytest
from synth_world import plant_tokens

from dct.artifacts.store import ArtifactStore
from dct.synthesis.config import FilterConfig, SynthesisConfig
from dct.synthesis.layout import METADATA_SCHEMA_VERSION
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
    assert set(df["schema_version"]) == {METADATA_SCHEMA_VERSION} and df.run_id.isna().all()  # no --run named
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


# ---- the seed block, the key, the judges, the formats (docs/synthesis.md, "Settings", "Keys", "Layout")


def _toy_config():
    from dct.run.plan import build_config

    return build_config("toy", None, "memory://unused")[1]  # 2 restarts: optimisation seeds 0..47; evaluation 10000..


@pytest.mark.parametrize(
    "fields, what",
    [
        ({"seed": 20, "per_class": 4}, "optimisation"),  # misses attempt 0's seeds 0..15, not the restarts' 16..47
        ({"seed": 9990, "per_class": 4, "filter": FilterConfig(max_factor=3.0)}, "evaluation"),  # 9990..10001: the cap
    ],
)
def test_the_seed_block_up_to_the_cap_misses_every_optimisation_and_evaluation_seed(fields, what):
    from dct.synthesis.config import check_synthesis

    config = _toy_config()
    assert config.training.restarts == 2 and config.evaluation.seeds[0] == 10_000
    with pytest.raises(ValueError, match=f"overlap the {what} seeds"):
        check_synthesis(SynthesisConfig(**fields), config)
    check_synthesis(SynthesisConfig(per_class=4, seed=48), config)  # right after the last restart's seeds: fine


def test_synth_key_covers_the_judges_revisions_and_the_effective_templates_and_sampler():
    from dct.synthesis.config import synth_key

    config = _toy_config()
    assert config.evaluation.evaluator is not None
    plain = SynthesisConfig(per_class=4)
    key = synth_key(plain, config, "tk", "guide-rev", "eval-rev")
    named = SynthesisConfig(per_class=4, templates=config.prompts.templates, sampler=config.sampler)
    assert synth_key(named, config, "tk", "guide-rev", "eval-rev") == key  # the dataset's own settings, named
    assert synth_key(plain, config, "tk", "other-guide-rev", "eval-rev") != key  # the guide scores every image
    assert synth_key(plain, config, "tk", "guide-rev", "other-eval-rev") != key  # so does the evaluator
    other = SynthesisConfig(per_class=4, templates=("a {} photo",))
    assert synth_key(other, config, "tk", "guide-rev", "eval-rev") != key
    assert synth_key(plain.model_copy(update={"batch_size": 3}), config, "tk", "guide-rev", "eval-rev") == key


def test_a_filter_by_the_evaluator_needs_one(synth_world):
    from dct.run.plan import build_config
    from dct.synthesis.config import check_synthesis

    _, config = build_config(str(synth_world), None, "memory://unused")
    assert config.evaluation.evaluator is None
    for by in ("evaluator", "both"):
        with pytest.raises(ValueError, match=f"filter by '{by}' needs an evaluator, but dataset 'tiny' has none"):
            check_synthesis(SynthesisConfig(per_class=2, filter=FilterConfig(by=by)), config)
    check_synthesis(SynthesisConfig(per_class=2, filter=FilterConfig(by="guide")), config)


@pytest.fixture(scope="module")
def judged_world(synth_world, tmp_path_factory):
    """The tiny world with a held-out evaluator: another tiny classifier, so guide and evaluator disagree."""
    import timm
    import torch
    from timm.models._hub import save_for_hf
    from tiny import TINY_CLASSES

    root = tmp_path_factory.mktemp("judged")
    for name in ("pipeline", "guide"):
        shutil.copytree(synth_world.parent / name, root / name)
    torch.manual_seed(7)
    evaluator = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=len(TINY_CLASSES), img_size=16, patch_size=8,
        embed_dim=32, depth=1, num_heads=2,
    ).eval()
    save_for_hf(evaluator, str(root / "evaluator"), model_config={"label_names": list(TINY_CLASSES)},
                safe_serialization=True)
    text = synth_world.read_text() + (
        '[evaluator]\nkind = "local"\nmodel_id = "./evaluator"\nlicence = "test-only"\n'
        "[evaluator.preprocess]\nresize = 16\ncrop = 16\nmean = [0.5, 0.5, 0.5]\nstd = [0.5, 0.5, 0.5]\n"
    )
    path = root / "tiny.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("by", ["evaluator", "both"])
def test_filter_by_the_evaluator_or_both_keeps_what_that_judge_accepts(judged_world, tmp_path, by):
    import pandas as pd

    store = ArtifactStore.from_config(store=str(tmp_path / "store"))
    plant_tokens(store, judged_world, [0, 1])
    threshold = 0.22  # the tiny random judges give these images 0.21-0.25: some pass one judge and not the other
    cfg = SynthesisConfig(per_class=4, batch_size=4, filter=FilterConfig(by=by, min_probability=threshold,
                                                                          max_factor=2.0))
    _, summary = synthesize_dataset(dataset=str(judged_world), synthesis=cfg, classes=[0, 1], store=store.root)
    df = pd.read_parquet(summary["metadata_uri"])
    df = df[df.filter_status != "over_quota"]
    guide_ok, eval_ok = df.guide_probability >= threshold, df.evaluator_probability >= threshold
    assert (guide_ok != eval_ok).any(), "the judges agree on every image: the test could not tell them apart"
    passes = eval_ok if by == "evaluator" else guide_ok & eval_ok
    assert (df.kept == passes).all()
    assert (df.filter_status == passes.map({True: "kept", False: "below_threshold"})).all()


def test_jpeg_sets_store_jpeg_quality_95_in_the_folder_and_the_shards(synth_world, tmp_path):
    import io

    import webdataset as wds
    from PIL import Image

    store = ArtifactStore.from_config(store=str(tmp_path / "store"))
    plant_tokens(store, synth_world, [0])
    cfg = SynthesisConfig(per_class=2, batch_size=2, image_format="jpeg", webdataset=True)
    plan, _ = synthesize_dataset(dataset=str(synth_world), synthesis=cfg, classes=[0], store=store.root)
    files = sorted((tmp_path / "store").glob(f"synthetic/tiny/{plan.synth_key}/train/00000-*/*"))
    assert [f.name for f in files] == ["1000000.jpeg", "1000001.jpeg"]
    for f in files:
        with Image.open(f) as im:
            assert im.format == "JPEG"
            again = io.BytesIO()
            im.convert("RGB").save(again, format="JPEG", quality=95)
            assert im.quantization == Image.open(again).quantization  # the tables of quality 95
    shards = store.list_files(store.synthetic_uri(plan.dataset, plan.synth_key, "webdataset"))
    samples = list(wds.WebDataset(shards, shardshuffle=False).decode("pil"))
    assert [s["__key__"] for s in samples] == ["00000-1000000", "00000-1000001"]
    assert all(s["jpeg"].size == (16, 16) for s in samples)


def test_a_class_the_filter_cannot_fill_is_finished_with_a_warning(synth_world, tmp_path, caplog):
    import logging

    store = ArtifactStore.from_config(store=str(tmp_path / "store"))
    plant_tokens(store, synth_world, [0])
    cfg = SynthesisConfig(per_class=2, batch_size=2, filter=FilterConfig(min_probability=1.0, max_factor=1.0))
    with caplog.at_level(logging.WARNING, logger="dct.synthesis.synthesize"):
        plan, summary = synthesize_dataset(dataset=str(synth_world), synthesis=cfg, classes=[0], store=store.root)
    assert store.synthetic_finished_class_ids(plan.dataset, plan.synth_key) == {0}
    assert (summary["kept"], summary["generated"]) == (0, 2)
    assert any("class 0" in r.getMessage() and "only 0 of 2 images passed the filter" in r.getMessage()
               for r in caplog.records if r.levelno == logging.WARNING)


def test_webdataset_shards_stay_within_shard_max_bytes_and_keep_every_sample_in_order():
    import tarfile

    from dct.synthesis.layout import webdataset_shards

    samples = [(f"00003-{s}", bytes([s]) * 5000, 3, {"seed": s}) for s in range(12)]
    max_bytes = 40_960
    shards = webdataset_shards(samples, "png", max_bytes)
    assert len(shards) > 1 and all(len(s) <= max_bytes for s in shards), [len(s) for s in shards]
    names = []
    for data in shards:
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            names += [m.name for m in tar.getmembers()]
    assert names == [f"00003-{s}.{e}" for s in range(12) for e in ("png", "cls", "json")]


def test_a_shard_refuses_models_whose_revisions_differ_from_the_plan(synth_world, tmp_path):
    import dataclasses

    from dct.models.loading import load_models
    from dct.run.plan import build_config
    from dct.synthesis.synthesize import check_loaded_revisions, plan_synthesis

    plan = plan_synthesis(dataset=str(synth_world), synthesis=SynthesisConfig(per_class=1), store=str(tmp_path / "s"))
    models = load_models(build_config(str(synth_world), None, str(tmp_path / "s"))[1], "cpu")
    check_loaded_revisions(plan, models)  # the models the plan keyed
    other = dataclasses.replace(plan, revisions=dataclasses.replace(plan.revisions, classifier="sha256:other"))
    with pytest.raises(ValueError, match=r"the classifier model loaded here is revision .* plan keyed 'sha256:other'"):
        check_loaded_revisions(other, models)


def test_a_stored_token_that_is_not_the_classs_own_is_refused(synth_world, tmp_path):
    """Every token goes through load_stored_token → check_token: another class's token file copied into class 0's
    place is refused, not rendered as class 0."""
    store = ArtifactStore.from_config(store=str(tmp_path / "store"))
    tkey = plant_tokens(store, synth_world, [0, 1])
    store.write_token("tiny", tkey, 0, store.read_token("tiny", tkey, 1))
    with pytest.raises(ValueError, match="holds '<dct-tiny-00001>', expected '<dct-tiny-00000>'"):
        synthesize_dataset(dataset=str(synth_world), synthesis=SynthesisConfig(per_class=1), classes=[0],
                           store=store.root)
    assert store.synthetic_finished_class_ids("tiny", store_plan_key(store, synth_world)) == set()


def store_plan_key(store, world) -> str:
    from dct.synthesis.synthesize import plan_synthesis

    return plan_synthesis(dataset=str(world), synthesis=SynthesisConfig(per_class=1), store=store.root).synth_key


def test_a_manifest_of_schema_version_1_reads_with_no_run(made):
    """Parts written before the run_id column existed still combine with new ones: their run_id is null."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from dct.synthesis.layout import read_table

    store, _, summary = made
    new = read_table(store.read_bytes(summary["metadata_uri"]))
    old = new.drop_columns(["run_id"]).replace_schema_metadata({b"dct.schema_version": b"1"})
    buf = pa.BufferOutputStream()
    pq.write_table(old, buf)
    back = read_table(buf.getvalue().to_pybytes())
    assert back.schema == new.schema and back.column("run_id").null_count == back.num_rows
    assert pa.concat_tables([back, new]).num_rows == 2 * new.num_rows
