"""A mixture of K runs' tokens: `--run A --run B --run C` draws each class's images evenly from the runs' tokens.

The runs are independent optimisations of one configuration (only `--seed` differs); image j of a class uses run
j mod K's token, and the manifest names the run of every image.
"""

from __future__ import annotations

import pytest
from synth_world import record_run

from dct.artifacts.store import ArtifactStore
from dct.config import RunOverrides
from dct.run.handle import resolve_settings
from dct.synthesis.config import SynthesisConfig
from dct.synthesis.layout import read_table
from dct.synthesis.synthesize import synthesize_dataset

SEEDS = (0, 10, 20)  # the tiny world's 3 images per epoch: optimisation seeds 0-2, 10-12, 20-22 (disjoint)


@pytest.fixture
def runs(synth_world, local_store) -> list[str]:
    return [record_run(local_store, synth_world, RunOverrides(seed=s)) for s in SEEDS]


def _images(store: ArtifactStore, summary: dict) -> dict[tuple[int, int], tuple[bytes, dict]]:
    rows = read_table(store.read_bytes(summary["metadata_uri"])).to_pylist()
    return {
        (r["class_id"], r["seed"]): (store.read_bytes(f"{summary['root_uri']}/{r['path']}"), r)
        for r in rows if r["arm"] == "dct"
    }


def test_a_mixture_draws_each_class_evenly_from_every_runs_token_and_names_the_run(synth_world, local_store, runs):
    """Image j of a class is exactly what run j mod 3 alone renders for that seed (its token, its key), each run
    makes a third of every class, and the manifest and the card name the run of each image."""
    store = local_store
    per_class = 6
    synthesis = SynthesisConfig(per_class=per_class, batch_size=4)
    mixed = resolve_settings(dataset=None, overrides=None, store=store.root, run=runs)
    plan, summary = synthesize_dataset(
        dataset=str(synth_world), synthesis=synthesis, classes=[0, 1], store=store.root, settings=mixed
    )
    assert plan.is_mixture and [m["run_id"] for m in plan.members] == runs
    mixture = _images(store, summary)
    assert len(mixture) == 2 * per_class
    alone = {}
    for run_id in runs:
        single = resolve_settings(dataset=None, overrides=None, store=store.root, run=run_id)
        one_plan, one_summary = synthesize_dataset(
            dataset=str(synth_world), synthesis=synthesis, classes=[0, 1], store=store.root, settings=single
        )
        assert one_plan.synth_key != plan.synth_key
        alone[run_id] = (one_plan.token_key, _images(store, one_summary))
    for (class_id, seed), (data, row) in mixture.items():
        j = seed - synthesis.seed
        run_id = runs[j % 3]
        token_key, images = alone[run_id]
        assert (row["run_id"], row["token_key"]) == (run_id, token_key), (class_id, j)
        assert data == images[(class_id, seed)][0], f"class {class_id} image {j} is not run {run_id}'s"
    for class_id in (0, 1):
        made = [row["run_id"] for (c, _), (_, row) in mixture.items() if c == class_id]
        assert sorted(made) == sorted(runs * (per_class // 3))
    card = store.read_bytes(summary["card_uri"]).decode()
    assert "a mixture of 3 runs" in card and all(f"run `{r}`" in card for r in runs)
    assert f"{2 * per_class // 3} kept images" in card


@pytest.mark.parametrize(
    "case, message",
    [
        ("other-max-epochs", r"differ in training\.max_epochs \(2 vs 3\)"),
        ("shared-seeds", r"share optimisation seeds \(1\.\.2\).*at least 3 apart"),
        ("twice", r"is given twice"),
    ],
)
def test_a_mixture_takes_only_independent_runs_of_one_configuration(synth_world, local_store, runs, case, message):
    store = local_store
    other = {
        "other-max-epochs": lambda: record_run(store, synth_world, RunOverrides(seed=30, max_epochs=3)),
        "shared-seeds": lambda: record_run(store, synth_world, RunOverrides(seed=1)),
        "twice": lambda: runs[1],
    }[case]()
    with pytest.raises(ValueError, match=message):
        resolve_settings(dataset=None, overrides=None, store=store.root, run=[*runs[:2], other])


def test_a_mixture_from_the_command_line_refuses_flags_and_bundles_in_one_line(synth_world, local_store, runs, capsys):
    from dct.cli import main

    store = local_store
    base = ["synthesize", "--per-class", "2", "--store", store.root, "--run", runs[0], "--run", runs[1]]
    for extra, message in (
        (["--max-epochs", "3"], f"--run {runs[0]} --run {runs[1]} takes the run's own settings; drop --max-epochs 3"),
        (["--bundle", "b"], "a mixture of 2 runs reads each run's tokens from the store: drop --bundle"),
        (["--optimize-missing"], "--optimize-missing learns tokens under one configuration"),
    ):
        capsys.readouterr()
        assert main([*base, *extra]) == 2, extra
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and message in err, err
    other = record_run(store, synth_world, RunOverrides(seed=30, max_epochs=3))
    assert main([*base, "--run", other]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "differ in training.max_epochs" in err, err
    assert not store.fs.exists(store.to_path(store.uri("synthetic")))
