"""`dct run` and `dct generate` on a dataset file naming a local tiny SDXL pipeline (two text encoders).

Real processes (each with its own temporary Prefect API): tokens in the community two-encoder layout,
samples, Parquet rows, the run's bundle (loadable into a fresh SDXL pipeline with diffusers' calls) and
the report; then `dct generate` renders from that bundle, and `dct synthesize` makes a set from it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from tiny import save_tiny_world, tiny_sdxl_pipeline

from dct.artifacts.bundle import load_bundle_into
from dct.artifacts.token_file import load_token
from dct.results import read_results

pytestmark = pytest.mark.slow


def _dct(args: list[str], tmp_path: Path) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "DCT_"))}
    env |= {"PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "300"}
    proc = subprocess.run([sys.executable, "-m", "dct.cli", *args], env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return proc.stdout


def test_dct_run_and_generate_on_a_tiny_sdxl_dataset(tmp_path):
    world = save_tiny_world(tmp_path / "world", max_epochs=1, num_samples=2, sdxl=True)
    store = tmp_path / "store"
    out = _dct(["run", "--dataset", str(world), "--classes", "0-1", "--store", str(store)], tmp_path)
    assert "2 done, 0 diverged, 0 failed" in out

    rows = read_results(str(store), table="classes", dataset="tiny")
    assert sorted(rows["class_id"]) == [0, 1] and set(rows["status"]) == {"done"}
    tokens = {}
    for _, r in rows.iterrows():
        token, vector, meta = load_token(r["token_uri"])
        assert token == r["token"] and meta["token_key"] == r["token_key"]
        assert {k: tuple(v.shape) for k, v in vector.items()} == {"clip_l": (1, 32), "clip_g": (1, 40)}
        tokens[token] = vector
        samples = [p for p in Path(r["samples_uri"]).rglob("*") if p.is_file()]
        assert len(samples) == 2 * 2  # baseline and dct, num_samples each
    (run_dir,) = (store / "runs" / "tiny").iterdir()
    assert (run_dir / "report" / "index.html").is_file()

    # The bundle loads into a fresh SDXL pipeline (one documented call per text encoder) with the same rows.
    pipe = tiny_sdxl_pipeline(tmp_path / "fresh")
    manifest = load_bundle_into(pipe, str(run_dir / "bundle" / "tokens.safetensors"))
    assert sorted(e.token for e in manifest.tokens) == sorted(tokens)
    for token, vector in tokens.items():
        for key, tok, te in (("clip_l", pipe.tokenizer, pipe.text_encoder),
                             ("clip_g", pipe.tokenizer_2, pipe.text_encoder_2)):
            row = te.get_input_embeddings().weight[tok.convert_tokens_to_ids(token)]
            assert torch.equal(row, vector[key][0])

    # Another evaluation setting re-evaluates with the stored SDXL tokens (checked for both widths, reused).
    out = _dct(["run", "--dataset", str(world), "--classes", "0-1", "--store", str(store), "--num-samples", "1"],
               tmp_path)
    assert "2 done, 0 diverged, 0 failed" in out
    rows = read_results(str(store), table="classes", dataset="tiny")
    second = rows[rows["num_samples"] == 1]
    assert len(second) == 2 and second["token_reused"].all()

    gen = tmp_path / "gen"
    out = _dct(["generate", "--dataset", str(world), "--class", "1", "--bundle", str(run_dir / "bundle"),
                "--n", "2", "--baseline", "--out", str(gen)], tmp_path)
    assert "wrote 4 PNGs" in out
    assert sorted(p.name for p in gen.glob("*.png")) == ["baseline-00.png", "baseline-01.png", "dct-00.png",
                                                         "dct-01.png"]

    # `dct synthesize` from the run's bundle folder, with the guide filter, the baseline arm and WebDataset shards.
    out = _dct(["synthesize", "--dataset", str(world), "--classes", "0-1", "--per-class", "2", "--store", str(store),
                "--bundle", str(run_dir / "bundle"), "--filter", "guide", "--min-probability", "0.01", "--baseline",
                "--webdataset"], tmp_path)
    assert "images:  4 kept" in out
    (synth,) = (store / "synthetic" / "tiny").iterdir()
    meta = pd.read_parquet(synth / "metadata.parquet")
    assert sorted(meta[meta.kept & (meta.arm == "dct")].class_id) == [0, 0, 1, 1]
    assert sorted(meta[meta.arm == "baseline"].class_id) == [0, 0, 1, 1]
    assert len(list((synth / "train").rglob("*.png"))) == 4 and len(list((synth / "webdataset").glob("*.tar"))) == 2
