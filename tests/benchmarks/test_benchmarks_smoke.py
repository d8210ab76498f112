"""Smoke test of the benchmark's code path on the toy preset: both variants, one epoch each."""

from __future__ import annotations

import math

import pytest
import torch


@pytest.fixture(scope="module")
def toy_result():
    from benchmarks.optimize import main

    # One timed epoch per variant, FLOP counting on, no memory subprocesses (they rebuild the models).
    return main(["--preset", "toy", "--epochs", "1", "--warmup", "0", "--no-memory", "--threads", "1"])


def test_both_variants_timed_and_compared(toy_result):
    assert set(toy_result["variants"]) == {"ours", "reference"}
    for s in toy_result["variants"].values():
        assert s["median_s"] > 0 and s["images_per_s"] > 0
        assert s["counted_flops"] > 0 and s["tflops_per_s"] > 0
    assert toy_result["ratio_reference_over_ours"] > 0
    # Same images through the same models: the counts differ only by each variant's recomputation.
    ours, ref = (toy_result["variants"][v]["counted_flops"] for v in ("ours", "reference"))
    assert 0.7 < ours / ref < 1.3
    assert toy_result["useful_flops_per_epoch"] == min(ours, ref)


def test_reference_epoch_moves_only_the_token_row():
    """The reference-style loop really trains the placeholder row (and only it, but for weight decay)."""
    from benchmarks.optimize import CLASS_NAME
    from benchmarks.presets import build_models, get_preset
    from benchmarks.reference import reference_epoch, setup_reference
    from dct.config import epoch_prompts

    torch.set_num_threads(1)  # 2 threads on a shared 2-core machine make OpenMP barriers spin
    preset = get_preset("toy")
    config = preset.run_config()
    pipe, clf = build_models(preset)
    prompts = epoch_prompts(config.prompts.templates, config.token_string(0), CLASS_NAME, 2)
    state = setup_reference(pipe, clf, config, prompts, device="cpu")
    table = pipe.text_encoder.get_input_embeddings().weight
    before = table.detach().clone()
    loss = reference_epoch(state, config, [0, 1], target=3)
    assert math.isfinite(loss)
    moved = (table.detach() - before).abs().amax(dim=1)
    assert moved[state.token_id] > 10 * moved[torch.arange(len(moved)) != state.token_id].max()


def test_sdxl_turbo_mid_runs_both_variants():
    """The SDXL code path of both variants (two text encoders, added conditioning), one 1-step epoch each."""
    from benchmarks.optimize import main

    result = main(["--preset", "sdxl-turbo-mid", "--epochs", "1", "--warmup", "0", "--no-memory", "--no-flops",
                   "--threads", "1"])
    assert set(result["variants"]) == {"ours", "reference"}
    assert all(s["median_s"] > 0 for s in result["variants"].values())


def test_reference_sdxl_epoch_moves_only_the_token_rows():
    """The SDXL reference-style loop trains the placeholder row of BOTH tables (and only them, but for decay)."""
    from benchmarks.optimize import CLASS_NAME
    from benchmarks.presets import build_models, get_preset
    from benchmarks.reference_sdxl import reference_sdxl_epoch, setup_reference_sdxl
    from dct.config import epoch_prompts

    torch.set_num_threads(1)
    preset = get_preset("sdxl-turbo-mid")
    config = preset.run_config()
    pipe, clf = build_models(preset)
    prompts = epoch_prompts(config.prompts.templates, config.token_string(0), CLASS_NAME, 2)
    state = setup_reference_sdxl(pipe, clf, config, prompts, device="cpu")
    tables = [pipe.text_encoder.get_input_embeddings().weight, pipe.text_encoder_2.get_input_embeddings().weight]
    before = [t.detach().clone() for t in tables]
    loss = reference_sdxl_epoch(state, config, [0, 1], target=3)
    assert math.isfinite(loss)
    for table, old, token_id in zip(tables, before, state.token_ids, strict=True):
        moved = (table.detach() - old).abs().amax(dim=1)
        assert moved[token_id] > 10 * moved[torch.arange(len(moved)) != token_id].max()
