"""The probe on stored runs: it finds a planted shift, writes its table and page, and refuses runs without samples."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
import torch

from dct.artifacts.store import ArtifactStore
from dct.cli import main
from dct.probe.attributes import classifier_attributes, resolve_attributes
from dct.probe.probe import probe_records, probe_values, run_records
from dct.probe.samples import PairedSamples
from dct.results import PROBE_SCHEMA, PROBE_SCHEMA_VERSION, read_results

BUILTINS = ["brightness", "border_brightness", "salient_x", "salient_spread", "hue_blue"]


def test_probe_finds_the_planted_background_shift_and_nothing_else(write_run):
    root, run_id = write_run({4: 0.0, 9: 0.1})
    store = ArtifactStore(root)
    result = probe_records(store, [run_records(store, "toy", run_id)], resolve_attributes(BUILTINS), num_bootstrap=500)
    rows = {(r["class_id"], r["attribute"]): r for r in result.table.to_pylist()}
    assert len(rows) == 2 * len(BUILTINS)  # one row per class × attribute
    blue_bg = rows[(9, "border_brightness")]
    assert blue_bg["significant"] and blue_bg["rank"] in (1, 2)  # brightness moves with it, by less
    assert blue_bg["shift"] == pytest.approx(0.1, abs=0.01)
    assert blue_bg["ci_low"] > 0.08 and blue_bg["num_seeds"] == 32 and blue_bg["num_runs"] == 1
    assert rows[(9, "border_brightness")]["shift"] > rows[(9, "brightness")]["shift"]  # the shape did not move
    # Class 4 is the control: its images did not change, so nothing survives the BH control.
    assert not any(r["significant"] for (cid, _), r in rows.items() if cid == 4)
    assert not rows[(9, "salient_x")]["significant"]


def test_probe_table_has_the_schema_and_reads_back(write_run, capsys):
    root, run_id = write_run({4: 0.0, 9: 0.1})
    argv = ["probe", "--run", run_id, "--store", root, "--attributes", ",".join(BUILTINS), "--bootstrap", "200"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"probe of run {run_id}" in out and "class 9 class 9:\n" in out and ": border_brightness +0.1" in out
    df = read_results(root, "probe", run_id=run_id)
    assert list(df.columns) == PROBE_SCHEMA.names
    assert len(df) == 2 * len(BUILTINS) and set(df["schema_version"]) == {PROBE_SCHEMA_VERSION}
    assert list(df["run_ids"].iloc[0]) == [run_id]
    store = ArtifactStore(root)
    page = store.read_bytes(store.probe_page_uri("toy", run_id)).decode()
    assert "border_brightness" in page and "<img src='../../../../samples/toy/" in page
    # Probing the same run again replaces its own rows, it does not add to them.
    assert main(["probe", "--run", run_id, "--store", root, "--attributes", "brightness", "--bootstrap", "200"]) == 0
    assert len(read_results(root, "probe", run_id=run_id)) == 2


def test_probe_of_a_run_without_samples_fails_with_one_line(write_run, capsys):
    root, run_id = write_run({9: 0.1}, sample_format="none")
    assert main(["probe", "--run", run_id, "--store", root, "--attributes", "brightness"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "sample_format=none" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--attributes", "brightnes"], "brightnes"),
        (["--fdr", "2"], "--fdr"),
        (["--bootstrap", "10"], "--bootstrap"),
        ([], "no run"),
    ],
)
def test_bad_probe_arguments_fail_with_one_line(write_run, capsys, argv, match):
    root, run_id = write_run({9: 0.1})
    run = ["--run", "20990101T000000Z-00000000"] if not argv else ["--run", run_id]
    assert main(["probe", *run, "--store", root, *argv]) == 2
    assert match in capsys.readouterr().err


def test_several_runs_widen_the_interval_over_runs(write_run):
    root, first = write_run({9: 0.1})
    _, second = write_run({9: 0.04})  # a second optimisation run: same seeds, smaller shift
    store = ArtifactStore(root)
    one = probe_records(store, [run_records(store, "toy", first)], resolve_attributes(["border_brightness"]))
    two = probe_records(
        store, [run_records(store, "toy", r) for r in (first, second)], resolve_attributes(["border_brightness"])
    )
    (r1,), (r2,) = one.table.to_pylist(), two.table.to_pylist()
    assert r2["num_runs"] == 2 and sorted(r2["run_ids"]) == sorted([first, second])
    assert r2["shift"] == pytest.approx(0.07, abs=0.01)
    assert r2["ci_high"] - r2["ci_low"] > 3 * (r1["ci_high"] - r1["ci_low"])


def test_classifier_as_attribute_on_a_tiny_model(tiny_clf):
    """The label probabilities of any classifier become attributes; only the top labels per class are tested."""
    from dct.results import ClassRecord, Provenance

    torch.manual_seed(0)
    base = torch.rand(12, 3, 16, 16)
    dct = (base + 0.4 * torch.rand(1, 3, 16, 16)).clamp(0, 1)  # one fixed change to every image
    now = dt.datetime.now(dt.UTC)
    prov = Provenance(diffusion_model_id="t", diffusion_revision="r", classifier_model_id="t", classifier_revision="r",
                      device="cpu", dtype="float32")
    rec = ClassRecord(run_id="r1", dataset="tiny", class_id=1, class_name="blue square", token="<c>", token_key="t",
                      eval_key="e", status="done", provenance=prov, started_at=now, finished_at=now)
    pairs = {1: [PairedSamples(rec, tuple(range(12)), base, dct)]}
    result = probe_values(pairs, [classifier_attributes(tiny_clf, "guide")], top_labels=2, num_bootstrap=200)
    rows = result.table.to_pylist()
    assert len(rows) == 2 and {r["source"] for r in rows} == {"guide"}
    p_base, p_dct = tiny_clf(base).softmax(-1), tiny_clf(dct).softmax(-1)
    for r in rows:
        j = tiny_clf.labels.index(r["attribute"].removeprefix("guide:"))
        assert r["shift"] == pytest.approx(float(p_dct[:, j].mean() - p_base[:, j].mean()), abs=1e-5)
    kept = {r["attribute"] for r in rows}
    top = np.argsort(-np.maximum(p_base.mean(0).numpy(), p_dct.mean(0).numpy()))[:2]
    assert kept == {f"guide:{tiny_clf.labels[j]}" for j in top}


def test_many_null_classes_report_nothing_after_the_bh_control():
    """60 classes whose DCT images differ from the baseline by noise alone: raw p < 0.05 is common, discoveries not."""
    from dct.results import ClassRecord, Provenance

    now = dt.datetime.now(dt.UTC)
    prov = Provenance(diffusion_model_id="t", diffusion_revision="r", classifier_model_id="t", classifier_revision="r",
                      device="cpu", dtype="float32")
    gen = torch.Generator().manual_seed(0)
    pairs = {}
    for cid in range(60):
        rec = ClassRecord(run_id="r1", dataset="tiny", class_id=cid, class_name=f"c{cid}", token="<c>", token_key="t",
                          eval_key="e", status="done", provenance=prov, started_at=now, finished_at=now)
        base = torch.rand(16, 3, 16, 16, generator=gen)
        dct = (base + 0.05 * torch.randn(16, 3, 16, 16, generator=gen)).clamp(0, 1)
        pairs[cid] = [PairedSamples(rec, tuple(range(16)), base, dct)]
    # Against no shift at all (min_shift=0), the hardest case for the control; the default margin only adds to it.
    result = probe_values(pairs, resolve_attributes(BUILTINS), num_bootstrap=200, min_shift=0.0)
    df = result.table.to_pandas()
    assert (df["p_value"] <= 0.05).sum() >= 5  # uncorrected, noise looks like findings
    assert not df["significant"].any()


def test_rank_is_by_absolute_shift_not_by_effect_size():
    """A tiny shift that every seed shares has a huge d; a large noisy shift must still rank above it."""
    from dct.probe.attributes import AttributeExtractor
    from dct.results import ClassRecord, Provenance

    now = dt.datetime.now(dt.UTC)
    prov = Provenance(diffusion_model_id="t", diffusion_revision="r", classifier_model_id="t", classifier_revision="r",
                      device="cpu", dtype="float32")
    rec = ClassRecord(run_id="r1", dataset="tiny", class_id=0, class_name="c0", token="<c>", token_key="t",
                      eval_key="e", status="done", provenance=prov, started_at=now, finished_at=now)
    gen = torch.Generator().manual_seed(0)
    base = torch.rand(32, 3, 1, 1, generator=gen).mul(0.5).expand(32, 3, 8, 8).clone()
    dct = base.clone()
    dct[:, 0] += 0.02 + 0.001 * torch.randn(32, 1, 1, generator=gen)  # red: small, very consistent
    dct[:, 1] += 0.15 + 0.05 * torch.randn(32, 1, 1, generator=gen)  # green: large, noisy
    channel = [AttributeExtractor(n, (n,), "channel mean, 0-1", lambda x, i=i: x[:, i].mean((1, 2))) for i, n in
               enumerate(("red", "green"))]
    pairs = {0: [PairedSamples(rec, tuple(range(32)), base, dct)]}
    rows = {r["attribute"]: r for r in probe_values(pairs, channel, num_bootstrap=200, min_shift=0.0).table.to_pylist()}
    assert rows["red"]["effect_size"] > rows["green"]["effect_size"] and rows["red"]["significant"]
    assert rows["green"]["rank"] == 1 and rows["red"]["rank"] == 2


def test_probe_takes_a_dataset_file_where_other_commands_do(write_run, tmp_path, capsys):
    """`--dataset FILE` names the file's dataset (its runs are stored under its `name`), as in `dct run`."""
    root, run_id = write_run({9: 0.1})
    dataset_file = tmp_path / "files" / "my-toy.toml"
    dataset_file.parent.mkdir()
    dataset_file.write_text('base = "toy"\nname = "toy"\n')
    argv = ["probe", "--dataset", str(dataset_file), "--store", root, "--attributes", "brightness"]
    assert main([*argv, "--bootstrap", "200"]) == 0, capsys.readouterr().err
    assert f"probe of run {run_id}" in capsys.readouterr().out


def _channel_probe(per_run_shifts: dict[str, list[float]], seeds: int = 32, **options) -> dict[str, dict]:
    """probe_values of one class whose DCT images move each named channel by ``per_run_shifts[name][r]`` in run r
    (plus a little per-seed noise): rows by attribute."""
    from dct.probe.attributes import AttributeExtractor
    from dct.results import ClassRecord, Provenance

    now = dt.datetime.now(dt.UTC)
    prov = Provenance(diffusion_model_id="t", diffusion_revision="r", classifier_model_id="t", classifier_revision="r",
                      device="cpu", dtype="float32")
    names = list(per_run_shifts)
    runs = len(next(iter(per_run_shifts.values())))
    gen = torch.Generator().manual_seed(0)
    base = torch.rand(seeds, 3, 1, 1, generator=gen).mul(0.5).expand(seeds, 3, 8, 8).clone()
    pairs = []
    for r in range(runs):
        rec = ClassRecord(run_id=f"r{r}", dataset="tiny", class_id=0, class_name="c0", token="<c>", token_key="t",
                          eval_key=f"e{r}", status="done", provenance=prov, started_at=now, finished_at=now)
        dct = base.clone()
        for i, name in enumerate(names):
            dct[:, i] += per_run_shifts[name][r] + 0.002 * torch.randn(seeds, 1, 1, generator=gen)
        pairs.append(PairedSamples(rec, tuple(range(seeds)), base, dct))
    channel = [AttributeExtractor(n, (n,), "channel mean, 0-1", lambda x, i=i: x[:, i].mean((1, 2))) for i, n in
               enumerate(names)]
    table = probe_values({0: pairs}, channel, num_bootstrap=400, **options).table.to_pylist()
    return {r["attribute"]: r for r in table}


def test_significant_needs_the_interval_beyond_the_margin_and_significant_rows_rank_first():
    """docs/probe.md, "Statistics": significant = q <= fdr AND the interval wholly beyond ±min_shift; rank puts
    significant rows first. "red" moves by 0.2, 0.2 and 0 in three runs: every seed agrees on the mean 0.13, so
    its p (which does not see the runs) is tiny, but the interval over runs reaches inside the margin. "green"
    moves by 0.08 in every run: smaller, and beyond the margin."""
    rows = _channel_probe({"red": [0.2, 0.2, 0.0], "green": [0.08, 0.08, 0.08]}, min_shift=0.05)
    red, green = rows["red"], rows["green"]
    assert red["q_value"] <= 0.05 and red["ci_low"] < 0.05 < red["shift"]  # q passes, the interval does not
    assert not red["significant"]
    assert green["significant"] and green["ci_low"] > 0.05
    assert abs(red["shift"]) > abs(green["shift"])
    assert (green["rank"], red["rank"]) == (1, 2)  # significant first, although red shifted more


def test_runs_evaluated_on_different_seeds_are_refused(write_run):
    """Several runs are pooled seed by seed: runs whose stored seeds differ are refused, naming the class."""
    root, first = write_run({9: 0.1}, seeds=range(8))
    _, second = write_run({9: 0.1}, seeds=range(4, 12))  # overlaps only in 4..7
    store = ArtifactStore(root)
    with pytest.raises(ValueError, match="class 9: the runs were evaluated on different seeds"):
        probe_records(
            store, [run_records(store, "toy", r) for r in (first, second)], resolve_attributes(["border_brightness"]),
            num_bootstrap=200,
        )


def test_baseline_and_dct_samples_are_paired_by_seed(write_run):
    """Each seed's baseline image is compared with the same seed's DCT image: with no planted shift the two
    images of every pair are the same image (and each seed's image differs from the others')."""
    from dct.probe.probe import load_paired_samples

    root, run_id = write_run({9: 0.0}, seeds=range(6))
    store = ArtifactStore(root)
    (record,) = run_records(store, "toy", run_id)
    pairs = load_paired_samples(store, record)
    assert pairs.seeds == tuple(range(6))
    assert torch.equal(pairs.baseline, pairs.dct)
    assert len({round(float(img.mean()), 4) for img in pairs.baseline}) == 6
