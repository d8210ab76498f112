"""The synthesis flow in-process (`dct synthesize`): tokens planted for one class, the other optimised first."""

from __future__ import annotations

import pandas as pd
from synth_world import plant_tokens

from dct.artifacts.store import ArtifactStore


def test_dct_synthesize_optimises_missing_tokens_then_fills_the_set(prefect_harness, tiny_world, tmp_path, capsys):
    from dct.cli import main

    store = ArtifactStore.from_config(store=str(tmp_path / "store"))
    tkey = plant_tokens(store, tiny_world, [0])
    code = main(
        ["synthesize", "--dataset", str(tiny_world), "--per-class", "5", "--classes", "0,1", "--store", store.root,
         "--baseline", "--optimize-missing", "--batch-size", "3", "--device", "cpu"]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert store.has_token("tiny", tkey, 1)  # optimised by the dct flow first, under the same token_key
    (root,) = store.fs.glob(f"{store.root}/synthetic/tiny/*")
    df = pd.read_parquet(f"{root}/metadata.parquet")
    assert sorted(df.groupby(["arm", "class_id"]).size().to_dict().items()) == [
        (("baseline", 0), 5), (("baseline", 1), 5), (("dct", 0), 5), (("dct", 1), 5)
    ]
    assert f"{root}/train" in out and "10 kept of 10 generated" in out


def test_dct_synthesize_of_a_mixture_through_the_flow(prefect_harness, tiny_world, tmp_path, capsys):
    """`dct synthesize --run A --run B`: the flow takes the runs (its `run` parameter, a list in a deployment too)
    and the set names each image's run."""
    from synth_world import record_run

    from dct.cli import main
    from dct.config import RunOverrides

    store = ArtifactStore.from_config(store=str(tmp_path / "store"))
    runs = [record_run(store, tiny_world, RunOverrides(seed=s), classes=[0]) for s in (0, 10)]
    code = main(["synthesize", "--per-class", "4", "--store", store.root, "--run", runs[0], "--run", runs[1],
                 "--batch-size", "3", "--device", "cpu"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"a mixture of runs {runs[0]}, {runs[1]}" in out
    (root,) = store.fs.glob(f"{store.root}/synthetic/tiny/*")
    df = pd.read_parquet(f"{root}/metadata.parquet")
    assert df[df.arm == "dct"].sort_values("seed").run_id.tolist() == [runs[0], runs[1]] * 2
