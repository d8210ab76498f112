"""The plan's cost line names the device the classes run on and never quotes a GPU estimate for a CPU run."""

from __future__ import annotations

import pytest

from dct.models.datasets import get_dataset
from dct.run.plan import (
    GPU_SECONDS_PER_TRAINING_IMAGE,
    TOY_CPU_SECONDS_PER_TRAINING_IMAGE,
    Revisions,
    RunPlan,
    estimate_work,
    small_pipeline_cpu_cost,
)


def _cost_line(dataset: str, device: str, config=None) -> str:
    config = config or get_dataset(dataset).run_config()
    plan = RunPlan(
        dataset=dataset,
        run_id="r",
        store_root="/s",
        token_key="t",
        eval_key="e",
        selected=[0, 1],
        todo=[0, 1],
        skipped=[],
        shards=[[0, 1]],
        revisions=Revisions("d", "c", None),
        estimate=estimate_work(config, 2),
        device=device,
    )
    (line,) = [ln for ln in plan.summary_lines() if ln.startswith("work (upper bound)")]
    return line


def test_upper_bound_counts_every_attempt():
    t = get_dataset("toy").run_config().training
    e = estimate_work(get_dataset("toy").run_config(), 3)
    assert e["training_images"] == 3 * (t.restarts + 1) * t.max_epochs * t.images_per_epoch
    assert e["gpu_hours_upper"] == pytest.approx(e["training_images"] * GPU_SECONDS_PER_TRAINING_IMAGE / 3600)


def test_cpu_toy_run_quotes_the_cpu_measurement():
    line = _cost_line("toy", "cpu")
    assert "on cpu" in line and f"{TOY_CPU_SECONDS_PER_TRAINING_IMAGE:g} s per training image" in line
    assert "scaled from the toy's measurement" in line
    assert "H100" not in line and "GPU-hours" not in line


def test_any_small_local_pipeline_gets_a_cpu_estimate_scaled_by_its_unet(tmp_path):
    """Not only the registered toy names: a dataset file pointing at a small local pipeline gets a CPU estimate,
    scaled by UNet weight bytes × latent area (a UNet twice the toy's, with latents twice as wide: × 8)."""
    import json
    import shutil

    from dct.toy.models import PIPELINE_DIR

    copy = tmp_path / "pipeline"
    shutil.copytree(PIPELINE_DIR, copy)
    assert small_pipeline_cpu_cost(str(copy)) == pytest.approx(TOY_CPU_SECONDS_PER_TRAINING_IMAGE)
    weights = copy / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes() * 2)
    cfg = json.loads((copy / "unet" / "config.json").read_text())
    (copy / "unet" / "config.json").write_text(json.dumps({**cfg, "sample_size": 16}))
    assert small_pipeline_cpu_cost(str(copy)) == pytest.approx(8 * TOY_CPU_SECONDS_PER_TRAINING_IMAGE)
    config = get_dataset("toy").run_config()
    config = config.model_copy(update={"diffusion": config.diffusion.model_copy(update={"model_id": str(copy)})})
    line = _cost_line("my-world", "cpu", config)
    assert f"{8 * TOY_CPU_SECONDS_PER_TRAINING_IMAGE:g} s per training image" in line
    assert small_pipeline_cpu_cost("CompVis/stable-diffusion-v1-4") is None


def test_gpu_run_names_the_card_and_the_h100_basis():
    line = _cost_line("inet", "cuda:0 (NVIDIA A10G)")
    assert "on cuda:0 (NVIDIA A10G)" in line and "an H100 estimate" in line


def test_real_model_on_cpu_has_no_estimate_rather_than_a_wrong_one():
    line = _cost_line("inet", "cpu")
    assert "on cpu: no time estimate" in line and "H100" not in line
