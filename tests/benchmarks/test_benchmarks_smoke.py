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
def _reference_state(prompts, **kw):
    from benchmarks.presets import build_models, get_preset
    from benchmarks.reference import setup_reference

    torch.set_num_threads(1)
    preset = get_preset("toy")
    config = preset.run_config()
    pipe, clf = build_models(preset)  # seeded: identical weights on every call
    return config, setup_reference(pipe, clf, config, prompts, device="cpu", **kw)


def test_reference_conditioning_is_unpadded_at_batch_one():
    from benchmarks.optimize import CLASS_NAME
    from dct.config import epoch_prompts

    config = get_config()
    prompts = epoch_prompts(config.prompts.templates, config.token_string(0), CLASS_NAME, 3)
    _, state = _reference_state(prompts)
    tok = state.pipe.tokenizer
    for prompt, cond, uncond in zip(prompts, state.cond_ids, state.uncond_ids, strict=True):
        n = len(tok(prompt).input_ids)  # BOS + words + EOS
        assert cond.shape == uncond.shape == (1, n) and n < tok.model_max_length
        assert cond[0].tolist() == tok(prompt).input_ids


def get_config():
    from benchmarks.presets import get_preset

    return get_preset("toy").run_config()


def test_reference_clip_before_backward_under_the_grad_scaler_keeps_only_the_last_image():
    """Under the fp16 GradScaler (on CUDA in the reference) the clip before each backward cuts the earlier
    images' SCALED gradients to norm 1, so after unscaling the update is the last image's gradient alone
    (within 1/scale); without a scaler (CPU) the earlier images still count. The toy preset's token
    gradients are ~1e-6, below 2**-16, so the scale is raised until the scaled norm exceeds 1 as on SD."""
    from benchmarks.optimize import CLASS_NAME
    from benchmarks.reference import reference_accumulate
    from dct.config import epoch_prompts

    config = get_config()
    prompts = epoch_prompts(config.prompts.templates, config.token_string(0), CLASS_NAME, 3)
    seeds = [0, 1, 2]

    scale = 2.0**30

    def token_grad(prompts, seeds, grad_scale, n):
        _, state = _reference_state(prompts, grad_scale=grad_scale)
        reference_accumulate(state, config, seeds, target=3)
        if state.scaler is not None:
            state.scaler.unscale_(state.optimizer)
        grad = state.pipe.text_encoder.get_input_embeddings().weight.grad[state.token_id].clone()
        return grad * len(seeds) / n  # the loss of each image is divided by the accumulation count

    scaled = token_grad(prompts, seeds, scale, 3)
    last_alone = token_grad(prompts[-1:], seeds[-1:], None, 3)
    unscaled = token_grad(prompts, seeds, None, 3)
    ref = last_alone.norm()
    assert ref * scale > 10  # the scaled gradient of one image is well above the clip norm
    # the clipped remainder of the first two images, unscaled (+ float32 noise of the scaled sum)
    assert (scaled - last_alone).norm() <= 1.01 / scale + 1e-4 * ref
    assert (unscaled - last_alone).norm() > 0.1 * ref  # no scaler: the earlier images are in the sum
