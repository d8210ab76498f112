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
