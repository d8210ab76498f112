"""`dct augment-eval` end to end on a user dataset: real image folders, both synthetic sets, table and plot."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
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
