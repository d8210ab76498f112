"""`dct augment-eval` end to end on a user dataset: real image folders, both synthetic sets, table and plot."""

from __future__ import annotations

import datetime as dt
import html
from pathlib import Path

import pandas as pd
import pytest
from synth_world import plant_tokens

from dct.artifacts.store import ArtifactStore


def _real_folder(root: Path, per_class: int, seed: int) -> Path:
    """Class-id image folders of procedural shapes (the images only need a size and a label here)."""
    from PIL import Image

    from dct.toy.shapes import render

    for c, name in enumerate(("red-circle", "blue-square", "green-triangle", "small-dog")):
        folder = root / f"{c:05d}-{name}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray((render(c, seed + i)[0] * 255).astype("uint8")).save(folder / f"{i}.png")
    return root


def _finished_run(store: ArtifactStore, world, token_key: str, *, started: int = 0, dataset: str | None = None) -> str:
    """What `dct run` leaves for the planted tokens: a run record, its runs-table row and its report index."""
    from dct.evaluation.report import write_run_report
    from dct.results import Provenance, RunRecord, new_run_id, write_run_record
    from dct.run.plan import Revisions, RunPlan, build_config

    _, config = build_config(str(world), None, store.root)
    ds = dataset or config.dataset
    run_id = new_run_id()
    now = dt.datetime(2025, 1, 1, tzinfo=dt.UTC) + dt.timedelta(hours=started)
    prov = Provenance(
        diffusion_model_id="tiny", diffusion_revision="r", classifier_model_id="tiny", classifier_revision="r",
        device="cpu", dtype="float32",
    )
    plan = RunPlan(
        dataset=ds, run_id=run_id, store_root=store.root, token_key=token_key, eval_key="ek", selected=[0, 1, 2, 3],
        todo=[], skipped=[0, 1, 2, 3], shards=[], revisions=Revisions("r", "r", None),
    )
    report = write_run_report(store, config, plan, outcomes={})
    write_run_record(
        store,
        RunRecord(
            run_id=run_id, dataset=ds, status="done", token_key=token_key, eval_key="ek", report_uri=report,
            config_json=config.model_dump_json(), provenance=prov, started_at=now, finished_at=now,
        ),
    )
    return run_id


def _argv(world, store, train, test, out, *extra) -> list[str]:
    return [
        "augment-eval", "--dataset", str(world), "--store", store.root, "--real-train", str(train), "--real-test",
        str(test), "--shots", "1,2", "--synthetic-per-class", "3", "--seeds", "2", "--steps", "3", "--sanity-k", "3",
        "--min-probability", "0.2", "--out", str(out), "--device", "cpu", *extra,
    ]


def test_augment_eval_writes_the_table_and_plot_for_every_arm(tmp_path, capsys):
    from PIL import Image
    from tiny import save_tiny_world

    from dct.cli import main

    world = save_tiny_world(tmp_path / "world")
    store = ArtifactStore.from_config(store=str(tmp_path / "store"))
    plant_tokens(store, world, range(4))
    train, test = _real_folder(tmp_path / "train", 3, 0), _real_folder(tmp_path / "test", 2, 1000)
    out = tmp_path / "out"
    code = main(
        ["augment-eval", "--dataset", str(world), "--store", store.root, "--real-train", str(train), "--real-test",
         str(test), "--shots", "1,2", "--synthetic-per-class", "3", "--seeds", "2", "--steps", "3",
         "--sanity-k", "3", "--min-probability", "0.2", "--out", str(out), "--device", "cpu"]
    )
    printed = capsys.readouterr().out
    assert code == 0, printed
    df = pd.read_parquet(out / "augment.parquet")
    overall = df[df.class_id.isna()]
    assert sorted(set(overall.arm)) == ["baseline", "dct", "dct_filtered", "real"]
    assert len(overall) == 2 * (2 * 4 + 1)  # seeds × (shots × arms + the real-only sanity run)
    assert set(df[df.class_id.notna()].class_id) == {0, 1, 2, 3}
    assert overall.accuracy.between(0, 1).all() and (df.downstream_model == "test_efficientnet").all()
    with Image.open(out / "augment.png") as im:
        assert im.format == "PNG"
    assert "mean ± std" in printed and "per class" in printed


def test_augment_eval_adds_its_section_to_the_report_of_the_run_with_the_tokens(tmp_path, capsys):
    """The run's index.html shows the plot and mean ± std per arm and k computed from the stored Parquet;
    augment.html adds the per-class table; the latest run with OTHER tokens is not the one chosen."""
    from tiny import save_tiny_world

    from dct.cli import main

    world = save_tiny_world(tmp_path / "world")
    store = ArtifactStore.from_config(store=str(tmp_path / "store"))
    tkey = plant_tokens(store, world, range(4))
    run_id = _finished_run(store, world, tkey, started=0)
    _finished_run(store, world, "otherkey", started=1)  # later, but another token_key: not this experiment's run
    train, test = _real_folder(tmp_path / "train", 3, 0), _real_folder(tmp_path / "test", 2, 1000)
    code = main(_argv(world, store, train, test, tmp_path / "out"))
    printed = capsys.readouterr().out
    assert code == 0, printed
    ds = pd.read_parquet(tmp_path / "out" / "augment.parquet").dataset.iloc[0]
    report = Path(store.to_path(store.run_uri(ds, run_id, "report")))
    assert f"run {run_id}: section added to" in printed
    df = pd.read_parquet(report / "augment.parquet")
    assert (df.run_id == run_id).all() and (df.token_key == tkey).all()
    index = (report / "index.html").read_text()
    page = (report / "augment.html").read_text()
    assert index.count("<!-- dct:section augment -->") == 1
    assert index.index("Augmentation experiment") < index.index("<h2>Summary</h2>")
    assert "src='augment.png'" in index and "href='augment.html'" in index and (report / "augment.png").is_file()
    overall = df[df.class_id.isna()]
    for (k, arm), acc in overall.groupby(["k", "arm"]).accuracy:
        cell = f"{acc.mean():.3f} ± {acc.std():.3f} <span class='muted'>(n={len(acc)})</span>"
        assert cell in index and cell in page, (k, arm, cell)
    per = df[df.class_id.notna()].groupby(["class_id", "k", "arm"]).accuracy.mean()
    assert "<th>k=2 dct_filtered</th>" in page
    for cid in range(4):
        row = page[page.index(f"<tr><td>{cid} ") :].split("</tr>")[0]
        assert row.count("<td class='num'>") == len(per.loc[cid]), row
        assert f"<td class='num'>{per.loc[(cid, 1, 'real')]:.2f}</td>" in row
    # Running again replaces the section, it does not stack a second one.
    assert main(_argv(world, store, train, test, tmp_path / "out2", "--run", run_id)) == 0
    assert (report / "index.html").read_text().count("<!-- dct:section augment -->") == 1
    # A later re-render of the report keeps the section.
    from dct.evaluation.report import read_report_sections

    assert [n for n, _ in read_report_sections(store, ds, run_id)] == ["augment"]


@pytest.mark.parametrize("case", ["unknown", "other-dataset", "other-tokens"])
def test_a_bad_run_fails_in_one_line_before_any_image_is_rendered(tmp_path, capsys, case):
    from tiny import save_tiny_world

    from dct.cli import main

    world = save_tiny_world(tmp_path / "world")
    store = ArtifactStore.from_config(store=str(tmp_path / "store"))
    tkey = plant_tokens(store, world, range(4))
    run_id = {
        "unknown": "20990101T000000Z-00000000",
        "other-dataset": _finished_run(store, world, tkey, dataset="inet"),
        "other-tokens": _finished_run(store, world, "otherkey"),
    }[case]
    capsys.readouterr()  # the tiny world's save progress
    code = main(_argv(world, store, tmp_path / "absent", tmp_path / "absent", tmp_path / "out", "--run", run_id))
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "Traceback" not in err, err
    assert repr(run_id) in err
    expected = {"unknown": "no run", "other-dataset": "of dataset 'inet'", "other-tokens": "under token_key otherkey"}
    assert expected[case] in html.unescape(err)
    assert not store.fs.exists(store.to_path(store.uri("synthetic"))), "synthesis ran before the run was checked"


def test_each_synthetic_arm_is_its_own_set_of_images(tmp_path):
    """The arms the experiment trains on: baseline = the baseline arm's images, dct = the unfiltered DCT images,
    dct_filtered = the kept images of the guide-filtered set, each decoded from its own files."""
    from tiny import save_tiny_world

    from dct.artifacts.images import decode_image
    from dct.commands.augment_eval import _synthetic_arms
    from dct.synthesis.config import FilterConfig, SynthesisConfig
    from dct.synthesis.layout import read_table
    from dct.synthesis.synthesize import synthesize_dataset

    world = save_tiny_world(tmp_path / "world")
    store = ArtifactStore.from_config(store=str(tmp_path / "store"))
    plant_tokens(store, world, range(4))
    sets = {
        name: synthesize_dataset(dataset=str(world), synthesis=cfg, store=store.root)
        for name, cfg in (
            ("plain", SynthesisConfig(per_class=2, baseline=True, batch_size=8)),
            ("filtered", SynthesisConfig(per_class=2, batch_size=8, filter=FilterConfig(min_probability=0.2))),
        )
    }
    arms = _synthetic_arms(store, sets)

    def files(name: str, arm: str) -> list:
        summary = sets[name][1]
        rows = [r for r in read_table(store.read_bytes(summary["metadata_uri"])).to_pylist() if r["arm"] == arm]
        return [decode_image(store.read_bytes(f"{summary['root_uri']}/{r['path']}")) for r in rows if r["kept"]]

    import torch

    for arm, name, source in (("baseline", "plain", "baseline"), ("dct", "plain", "dct"),
                              ("dct_filtered", "filtered", "dct")):
        expected = files(name, source)
        assert len(expected) > 0 and torch.equal(arms[arm].images, torch.stack(expected)), arm
    assert not torch.equal(arms["baseline"].images, arms["dct"].images)


def test_k0_is_the_classification_accuracy_score_from_the_command_and_a_run_handle(tmp_path, capsys):
    """`--shots 0,1 --run RUN_ID`: the CAS rows (each synthetic arm without a real image) and real_matched (real
    only with --synthetic-per-class real images per class) are in the Parquet, the printed table and the report."""
    from tiny import save_tiny_world

    from dct.cli import main

    world = save_tiny_world(tmp_path / "world")
    store = ArtifactStore.from_config(store=str(tmp_path / "store"))
    tkey = plant_tokens(store, world, range(4))
    run_id = _finished_run(store, world, tkey)
    train, test = _real_folder(tmp_path / "train", 3, 0), _real_folder(tmp_path / "test", 2, 1000)
    argv = _argv(world, store, train, test, tmp_path / "out", "--run", run_id)
    argv[argv.index("--shots") + 1], argv[argv.index("--seeds") + 1] = "0,1", "1"
    code = main(argv)
    captured = capsys.readouterr()
    printed = captured.out
    assert code == 0, captured.err
    df = pd.read_parquet(tmp_path / "out" / "augment.parquet")
    cas = df[(df.k == 0) & df.class_id.isna()]
    assert sorted(cas.arm) == ["baseline", "dct", "dct_filtered", "real_matched"]
    synthetic = cas[cas.arm != "real_matched"]
    assert (synthetic.real_images == 0).all() and (synthetic.synthetic_images > 0).all()
    assert cas[cas.arm == "real_matched"].real_images.tolist() == [3 * 4]  # --synthetic-per-class 3, 4 classes
    assert "real" not in set(cas.arm) and (df.run_id == run_id).all()
    assert "real_matched" in printed and "Classification Accuracy Score" in printed
    report = Path(store.to_path(store.run_uri(df.dataset.iloc[0], run_id, "report")))
    assert "Classification Accuracy Score" in (report / "index.html").read_text()


def test_k0_with_too_few_real_images_for_its_reference_fails_in_one_line_before_synthesis(tmp_path, capsys):
    from tiny import save_tiny_world

    from dct.cli import main

    world = save_tiny_world(tmp_path / "world")
    store = ArtifactStore.from_config(store=str(tmp_path / "store"))
    plant_tokens(store, world, range(4))
    train, test = _real_folder(tmp_path / "train", 3, 0), _real_folder(tmp_path / "test", 2, 1000)
    argv = _argv(world, store, train, test, tmp_path / "out", "--shots", "0", "--synthetic-per-class", "5")
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--synthetic-per-class 5" in err and "has 3 images of class 0" in err, err
    assert not store.fs.exists(store.to_path(store.uri("synthetic"))), "synthesis ran before the check"


def test_augment_eval_of_a_mixture_trains_on_every_runs_images_and_attaches_to_no_single_run(tmp_path, capsys):
    """`--run A --run B --run C`: the DCT arm's images come from the three runs' tokens, evenly; the rows name the
    mixture's keys; no run's report gets the section (it would show another set's numbers as that run's)."""
    from synth_world import record_run
    from tiny import save_tiny_world

    from dct.cli import main
    from dct.config import RunOverrides
    from dct.evaluation.report import read_report_sections
    from dct.synthesis.layout import read_table

    world = save_tiny_world(tmp_path / "world")
    store = ArtifactStore.from_config(store=str(tmp_path / "store"))
    runs = [record_run(store, world, RunOverrides(seed=s)) for s in (0, 10, 20)]
    train, test = _real_folder(tmp_path / "train", 3, 0), _real_folder(tmp_path / "test", 2, 1000)
    argv = _argv(world, store, train, test, tmp_path / "out", *(a for r in runs for a in ("--run", r)))
    argv[argv.index("--shots") + 1], argv[argv.index("--seeds") + 1] = "0", "1"
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    df = pd.read_parquet(tmp_path / "out" / "augment.parquet")
    assert df.run_id.isna().all() and df.token_key.iloc[0].count("+") == 2
    assert "results go to --out only" in captured.out
    sets = tmp_path / "store" / "synthetic" / df.dataset.iloc[0]
    rows = read_table((sets / df.synth_key.iloc[0] / "metadata.parquet").read_bytes()).to_pandas()
    made = rows[rows.arm == "dct"].groupby("class_id").run_id.value_counts()
    assert set(made.index.get_level_values("run_id")) == set(runs) and set(made) == {1}  # 3 per class, 1 per run
    assert all(read_report_sections(store, df.dataset.iloc[0], r) == [] for r in runs)


def test_a_built_in_world_brings_its_real_images_and_folders_replace_them(tmp_path, monkeypatch, capsys):
    """docs/worlds.md: `dct augment-eval --dataset toy` takes the toy's real images from the World interface
    (`augment_real`, drawn before any image is generated), and `--real-train`/`--real-test` folders replace them."""
    from synth_world import plant_token_vectors

    from dct.cli import main
    from dct.run.plan import build_config
    from dct.toy.world import TOY

    store = ArtifactStore.from_config(store=str(tmp_path / "store"))
    _, config = build_config("toy", None, store.root)
    plant_token_vectors(store, config, [0, 1], (64,), 1)  # the toy text encoder's width
    calls: list[tuple] = []
    real = TOY.augment_real

    def spy(class_ids, seeds, per_class, test_per_class):  # records the call, returns the real images
        generated = len(list((tmp_path / "store").rglob("*.png")))  # synthetic images made so far
        calls.append((list(class_ids), seeds, per_class, test_per_class, generated))
        return real(class_ids, seeds, per_class, test_per_class)

    monkeypatch.setattr(TOY, "augment_real", spy)
    argv = ["augment-eval", "--dataset", "toy", "--classes", "0,1", "--store", store.root, "--shots", "1",
            "--synthetic-per-class", "2", "--seeds", "1", "--steps", "2", "--sanity-k", "0", "--test-per-class", "3",
            "--min-probability", "0.01", "--device", "cpu"]
    assert main([*argv, "--out", str(tmp_path / "world")]) == 0, capsys.readouterr().out
    assert calls == [([0, 1], 1, 1, 3, 0)]  # once, before any image was generated
    assert list((tmp_path / "store").rglob("*.png"))  # (and images were generated after it)
    df = pd.read_parquet(tmp_path / "world" / "augment.parquet")
    assert (df[(df.arm == "real") & df.class_id.isna()].real_images == 2).all()

    train, test = _real_folder(tmp_path / "train", 2, 0), _real_folder(tmp_path / "test", 2, 1000)
    code = main([*argv, "--real-train", str(train), "--real-test", str(test), "--out", str(tmp_path / "folders")])
    assert code == 0, capsys.readouterr().out
    assert len(calls) == 1  # the folders, not the world's images
