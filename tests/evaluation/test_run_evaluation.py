"""A finished tiny run: per-class accuracies and pooled FID/KID in the tables, the report, the tasks."""

from __future__ import annotations

import posixpath
import re
import shutil
from pathlib import Path

import pytest
import torch
from eval_world import NUM_SAMPLES, RUN_CLASSES

from dct.artifacts.store import ArtifactStore
from dct.results import read_results


def test_classes_table_has_both_variants_accuracies_by_guide_and_evaluator(tiny_run):
    df = read_results(str(tiny_run.store_root), "classes", run_id=tiny_run.plan.run_id).set_index("class_id")
    assert sorted(df.index) == RUN_CLASSES
    for who in ("guide", "evaluator"):
        for k in (1, 5):
            for v in ("baseline", "dct"):
                col = df[f"{who}_top{k}_{v}"]
                assert col.notna().all() and col.between(0, 1).all(), (who, k, v)
    assert (df["num_samples"] == NUM_SAMPLES).all()
    # 4 classes: top-5 covers every class, so top-5 accuracy is 1 for every variant.
    assert (df["guide_top5_dct"] == 1.0).all()


def test_samples_are_on_evaluation_seeds_disjoint_from_optimisation_seeds(tiny_run):
    store = ArtifactStore(str(tiny_run.store_root))
    config = tiny_run.config
    for cid in RUN_CLASSES:
        for v in ("baseline", "dct"):
            seeds = [
                int(posixpath.basename(u).split(".")[0])
                for u in store.list_samples("tiny", tiny_run.plan.eval_key, cid, v)
            ]
            assert seeds == list(config.evaluation.seeds)
            assert not set(seeds) & set(config.training.seeds)


def test_runs_table_has_pooled_fid_kid_with_sample_counts(tiny_run):
    runs = read_results(str(tiny_run.store_root), "runs", run_id=tiny_run.plan.run_id)
    assert len(runs) == 1
    row = runs.iloc[0]
    n = len(RUN_CLASSES) * NUM_SAMPLES
    for v in ("baseline", "dct"):
        assert row[f"fid_{v}"] >= 0 and row[f"kid_{v}"] == row[f"kid_{v}"] and row[f"kid_std_{v}"] >= 0
        assert row[f"fid_num_samples_{v}"] == n
    assert row["fid_num_reference"] == len(RUN_CLASSES) * 40  # restricted to the run's classes
    assert row["kid_subset_size"] == n // 2
    assert row["fid_feature_extractor"].startswith("evaluator:local:")
    assert row["report_uri"] == tiny_run.report_uri
    pooled = ArtifactStore(str(tiny_run.store_root)).read_json(
        ArtifactStore(str(tiny_run.store_root)).run_uri("tiny", tiny_run.plan.run_id, "pooled.json")
    )
    assert pooled["min_fid_samples"] == 33 and pooled["class_ids"] == RUN_CLASSES


def test_pooled_metrics_reuse_cached_sample_features_and_state_why_fid_is_missing(tiny_run, monkeypatch):
    from dct.evaluation.metrics import finished_records, pooled_metrics

    store = ArtifactStore(str(tiny_run.store_root))
    plan, config = tiny_run.plan, tiny_run.config
    records = finished_records(store, plan.dataset, plan.eval_key, plan.selected)
    import dct.evaluation.features

    def no_decoding(*a, **k):
        raise AssertionError("sample features must come from the cache")

    monkeypatch.setattr(dct.evaluation.features, "load_class_samples", no_decoding)
    again = pooled_metrics(store, config, records, reference_images=str(tiny_run.reference))
    assert again.record_fields() == tiny_run.pooled

    # Two classes: 24 images per variant, fewer than 33 for 32-d features -> FID not computed, KID still is.
    small = pooled_metrics(store, config, records[:2], reference_images=str(tiny_run.reference))
    for v in ("baseline", "dct"):
        m = small.variants[v]
        assert m.fid is None and m.kid is not None and m.num_samples == 2 * NUM_SAMPLES
        assert "FID needs more images than feature dimensions (>= 33 for 32-d features); have 24" in m.fid_not_computed
    assert small.record_fields()["fid_num_samples_dct"] == 24

    # KID capped for memory (10k classes): an equal share per class; FID still uses every image.
    capped = pooled_metrics(store, config, records, reference_images=str(tiny_run.reference), max_kid_samples=12)
    assert capped.kid_subset_size == 6 and any("KID on 4 images per class" in n for n in capped.notes)
    assert capped.record_fields()["fid_dct"] == pytest.approx(tiny_run.pooled["fid_dct"], rel=1e-9)
    assert capped.record_fields()["fid_num_samples_dct"] == len(RUN_CLASSES) * NUM_SAMPLES

    none = pooled_metrics(store, config, records, reference_images=None)
    assert none.record_fields()["fid_dct"] is None and "no reference_images" in none.notes[0]


def test_report_shows_grids_with_working_relative_links(tiny_run, tmp_path):
    index = Path(tiny_run.report_uri)
    assert index.name == "index.html" and index.parent.name == "report"
    assert index.parent.parent.name == tiny_run.plan.run_id
    page = index.read_text()
    for cid in RUN_CLASSES:
        assert f'id="c{cid}"' in page
    srcs = re.findall(r'<img src="([^"]+)"', page)
    hrefs = re.findall(r'<a href="([^"#][^"]*)"><img', page)
    assert len(hrefs) == len(RUN_CLASSES) * 2 * min(8, NUM_SAMPLES)
    for link in [*srcs, *hrefs]:
        assert not link.startswith(("/", "file:", "s3:")), link
        assert (index.parent / link).resolve().is_file(), link
    assert all(h.startswith("../../../../samples/tiny/") for h in hrefs)
    assert (index.parent / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for text in ("test-only evaluator", "test images (CC0)", "guide top-1", "evaluator top-1", "FID vs reference"):
        assert text in page
    # The report folder alone is self-contained (thumbnails are copies inside it).
    copy = tmp_path / "downloaded-report"
    shutil.copytree(index.parent, copy)
    for src in re.findall(r'<img src="([^"]+)"', (copy / "index.html").read_text()):
        assert (copy / src).is_file()


def test_report_escapes_html_and_handles_failed_classes(tiny_run):
    from dct.evaluation.report import ClassSection, render_report_html
    from dct.results import read_class_record

    store = ArtifactStore(str(tiny_run.store_root))
    rec = read_class_record(store, "tiny", tiny_run.plan.eval_key, RUN_CLASSES[0])
    evil = rec.model_copy(update={"class_name": "<script>alert(1)</script>"})
    page = render_report_html(
        config=tiny_run.config,
        plan=tiny_run.plan,
        sections=[ClassSection(0, evil), ClassSection(9, None)],
        pooled=None,
        plot_href=None,
    )
    assert "<script>alert" not in page and "&lt;script&gt;" in page
    assert "no record" in page and "not computed for this run" in page


def test_accuracy_plot_scales_to_many_classes(tiny_run):
    from dct.evaluation.report import accuracy_plot_png
    from dct.results import read_class_record

    store = ArtifactStore(str(tiny_run.store_root))
    rec = read_class_record(store, "tiny", tiny_run.plan.eval_key, RUN_CLASSES[0])
    many = [rec.model_copy(update={"class_id": i, "guide_top1_dct": float(torch.rand(1))}) for i in range(300)]
    assert accuracy_plot_png(many)[:4] == b"\x89PNG"
