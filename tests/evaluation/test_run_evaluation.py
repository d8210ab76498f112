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
    """Every accuracy column equals top-1/top-5 recomputed here from the STORED images, by the guide and by the
    evaluator (different models: a column filled from the wrong one, or from the wrong variant, shows)."""
    from dct.artifacts.images import decode_image
    from dct.models.loading import load_models

    df = read_results(str(tiny_run.store_root), "classes", run_id=tiny_run.plan.run_id).set_index("class_id")
    assert sorted(df.index) == RUN_CLASSES
    assert (df["num_samples"] == NUM_SAMPLES).all()
    models = load_models(tiny_run.config, "cpu")
    store = ArtifactStore(str(tiny_run.store_root))
    recomputed, differ = {}, False
    for cid in RUN_CLASSES:
        for v in ("baseline", "dct"):
            uris = store.list_samples("tiny", tiny_run.plan.eval_key, cid, v)
            assert len(uris) == NUM_SAMPLES
            images = torch.stack([decode_image(store.read_bytes(u)) for u in uris])
            for who, clf in (("guide", models.classifier), ("evaluator", models.evaluator)):
                with torch.no_grad():
                    logits = clf(images)
                # top-k by rank: how many classes score strictly higher than the target
                rank = (logits > logits[:, cid : cid + 1]).sum(dim=1)
                for k in (1, 5):
                    recomputed[(cid, f"{who}_top{k}_{v}")] = int((rank < k).sum()) / len(images)
            g, e = (models.classifier(images).argmax(1), models.evaluator(images).argmax(1))
            differ |= bool((g != e).any())
    assert differ, "guide and evaluator agree on every image: the test could not tell their columns apart"
    stored = {(cid, col): float(df.loc[cid, col]) for cid, col in recomputed}
    assert stored == recomputed
    # Not every column is trivially 0 or 1 (4 classes: top-5 is 1 by definition, top-1 is not).
    assert all(v == 1.0 for (_, col), v in stored.items() if "_top5_" in col)
    assert any(0.0 < v < 1.0 for (_, col), v in stored.items() if "_top1_" in col), stored


def test_topk_accuracy_values():
    """topk_accuracy on scripted logits with more than 5 classes, over several batches."""
    from dct.evaluation.accuracy import topk_accuracy

    class Scripted(torch.nn.Module):
        def __init__(self, logits):
            super().__init__()
            self.logits, self.seen, self.anchor = logits, 0, torch.nn.Parameter(torch.zeros(1))

        def forward(self, images):
            out = self.logits[self.seen : self.seen + images.shape[0]]
            self.seen += images.shape[0]
            return out

    target = 3
    # Rank of class 3 per image: 0 (top-1), 2, 4 (still top-5), 5 (not top-5), 7 (last), 0.
    ranks = [0, 2, 4, 5, 7, 0]
    rows = []
    for r in ranks:
        order = [c for c in range(8) if c != target]
        order.insert(r, target)  # position r in descending order
        row = torch.empty(8)
        row[torch.tensor(order)] = torch.arange(8, 0, -1, dtype=torch.float)
        rows.append(row)
    logits = torch.stack(rows)
    top1, top5 = topk_accuracy(Scripted(logits), torch.zeros(len(ranks), 3, 4, 4), target, batch_size=4)
    assert (top1, top5) == (2 / 6, 4 / 6)


def test_classes_table_has_per_class_fidelity_and_diversity_from_the_shards_features(tiny_run):
    """docs/evaluation.md, "Per-class fidelity and diversity": every class's precision/recall/density/coverage
    and Vendi scores equal those recomputed here from the feature files the SHARDS wrote and the class's
    cached reference features (no image read); the runs row holds their means over classes."""
    from dct.evaluation.features import _load_tensors, cached_reference_features
    from dct.evaluation.fidelity import class_feature_metrics

    store = ArtifactStore(str(tiny_run.store_root))
    df = read_results(store, "classes", run_id=tiny_run.plan.run_id).set_index("class_id")
    name = tiny_run.pooled["fid_feature_extractor"]
    ref, ref_ids, _ = cached_reference_features(store, "tiny", str(tiny_run.reference), name)
    columns = [f"{m}_{v}" for m in ("precision", "recall", "density", "coverage", "vendi") for v in ("baseline", "dct")]
    columns += ["vendi_reference", "class_kid_baseline", "class_kid_dct", "class_kid_reference"]
    for cid in RUN_CLASSES:
        (path,) = tiny_run.shard_features.rglob(f"{cid:05d}.safetensors")
        feats, _ = _load_tensors(path.read_bytes())
        want, note = class_feature_metrics(ref[ref_ids == cid], feats, tiny_run.config.evaluation.nearest_k)
        # 12 samples of 32-d features: everything but the per-class FID (it needs 33), and the note says so
        assert note.startswith("baseline FID: 32-dimensional features need at least 33 images per set")
        assert df.loc[cid, "feature_metrics_note"] == note
        assert all(want[c] is not None for c in columns) and want["class_fid_dct"] is None
        assert df.loc[cid, "feature_metrics_reference"] == 40
        for col in columns:
            assert df.loc[cid, col] == pytest.approx(want[col], rel=1e-12), (cid, col)
        for v in ("baseline", "dct"):
            assert 0 <= df.loc[cid, f"precision_{v}"] <= 1 and 0 <= df.loc[cid, f"coverage_{v}"] <= 1
            assert 1 <= df.loc[cid, f"vendi_{v}"] <= NUM_SAMPLES
    assert df[columns].to_numpy().sum() > 0  # not all zero
    run = read_results(store, "runs", run_id=tiny_run.plan.run_id).iloc[0]
    assert run["nearest_k"] == 5 and run["feature_metrics_classes"] == len(RUN_CLASSES)
    for col in columns:
        if not col.startswith("class_"):  # a mean of per-class FID/KID would say less than the pooled FID/KID
            assert run[f"mean_{col}"] == pytest.approx(df[col].mean(), rel=1e-12), col


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
    assert row["fid_feature_extractor"].startswith("evaluator:pixel-stats-test:")
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
    # Equal up to float64 reordering (the cached features are read back as other tensors: a BLAS call may sum
    # in another order; (n - 1) * 2**-53 for the n < 2**10 terms of these reductions is < 1.2e-13).
    fields = again.record_fields()
    assert fields.keys() == tiny_run.pooled.keys()
    for name, value in fields.items():
        want = tiny_run.pooled[name]
        assert value == (pytest.approx(want, rel=1e-12) if isinstance(want, float) else want), name

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


def test_report_shows_fidelity_and_diversity_beside_accuracy_and_the_gain_coverage_plot(tiny_run):
    """docs/evaluation.md, "The report": per class, precision/recall/density/coverage/Vendi of both variants beside
    the accuracies (static table, classes.js for the sortable table and class.html), the values of the table."""
    import json

    store = ArtifactStore(str(tiny_run.store_root))
    df = read_results(store, "classes", run_id=tiny_run.plan.run_id).set_index("class_id")
    folder = Path(tiny_run.report_uri).parent
    page = (folder / "index.html").read_text()
    for label in ("guide top-1", "precision", "recall", "density", "coverage"):
        assert f"<th>{label}<br>baseline → DCT<br>" in page, label
    assert "<th>Vendi<br>baseline → DCT (real)<br>" in page
    index = json.loads((folder / "classes.js").read_text().removeprefix("window.DCT_REPORT=").rstrip(";\n"))
    # the class FID, null at 12 samples of 32-d features, has no column; the class KID has
    assert [m["key"] for m in index["metrics"]][-6:] == ["p", "r", "dn", "cv", "v", "k"]
    for row in index["classes"]:
        cid = row["id"]
        for key, col in (("cvd", "coverage_dct"), ("pb", "precision_baseline"), ("vr", "vendi_reference")):
            assert row[key] == pytest.approx(df.loc[cid, col], rel=1e-12)
        b, d = float(df.loc[cid, "coverage_baseline"]), float(df.loc[cid, "coverage_dct"])
        assert f'data-d="{d!r}" data-u="{d - b!r}"><span class="' in page  # the sortable cell of the static table
    assert (folder / "gain_coverage.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert '<img src="gain_coverage.png"' in page


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
