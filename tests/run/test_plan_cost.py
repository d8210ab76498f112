"""The plan's cost line names the device the classes run on and never quotes a GPU estimate for a CPU run."""

from __future__ import annotations

import pytest

from dct.models.datasets import get_dataset
from dct.run.plan import GPU_SECONDS_PER_TRAINING_IMAGE, SECONDS_PER_TRAINING_IMAGE, Revisions, RunPlan, estimate_work


def _cost_line(dataset: str, device: str) -> str:
    config = get_dataset(dataset).run_config()
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
    seconds, basis = SECONDS_PER_TRAINING_IMAGE[("cpu", "toy")]
    assert "on cpu" in line and f"{seconds:g} s per training image" in line and basis in line
    assert "H100" not in line and "GPU-hours" not in line


def test_gpu_run_names_the_card_and_the_h100_basis():
    line = _cost_line("inet", "cuda:0 (NVIDIA A10G)")
    assert "on cuda:0 (NVIDIA A10G)" in line and "an H100 estimate" in line


def test_real_model_on_cpu_has_no_estimate_rather_than_a_wrong_one():
    line = _cost_line("inet", "cpu")
    assert "on cpu: no time estimate" in line and "H100" not in line
