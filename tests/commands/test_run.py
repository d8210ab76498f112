"""`dct run` as a newcomer runs it: a clean console (no traceback, no ERROR line), a plan that names the
device, one line per class, and a summary with the headline numbers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    from tiny import save_tiny_world

    base = tmp_path_factory.mktemp("first-run")
    world = save_tiny_world(base / "world")
    # The user's environment, not the test suite's: no Prefect settings at all (the suite sets some for its
    # own harness), only a private PREFECT_HOME so nothing lands in the real home directory.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(base / "prefect-home"), PYTHONPATH=str(ROOT), DCT_STORE=str(base / "store"))
    exe = Path(sys.executable).parent / "dct"
    r = subprocess.run(
        [str(exe), "run", "--dataset", str(world), "--classes", "0-1", "--device", "cpu"],
        cwd=base,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return r, r.stdout + r.stderr


def test_a_successful_run_prints_no_traceback_and_no_error(first_run):
    r, out = first_run
    assert r.returncode == 0, out[-3000:]
    assert "Traceback" not in out, out
    assert " ERROR " not in out and "| ERROR" not in out, out


def test_the_plan_names_the_device_it_runs_on(first_run):
    _, out = first_run
    (work,) = [ln for ln in out.splitlines() if "work (upper bound)" in ln]
    assert "on cpu" in work and "H100" not in work, work


def test_one_line_per_class_and_the_headline_numbers(first_run):
    _, out = first_run
    lines = out.splitlines()
    for i, cid in enumerate((0, 1)):
        assert any(f"[{i + 1}/2] class {cid} (" in ln and "top-1 baseline → DCT: guide" in ln for ln in lines)
    assert "  top-1 baseline → DCT (mean of 2 classes, 4 images each): guide " in out
    assert "(no held-out evaluator for this dataset)" in out  # the tiny world has none
    assert "FID/KID: not computed for this run" in out  # its fid_features = "none"
    assert '"status": "done"' in out


def test_dct_synthesize_prints_no_traceback_error_or_loader_progress_bar(tmp_path):
    """`dct synthesize` starts the same in-process Prefect as `dct run`: the same clean console."""
    from tiny import save_tiny_world

    world = save_tiny_world(tmp_path / "world")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), PYTHONPATH=str(ROOT), DCT_STORE=str(tmp_path / "store"))
    exe = Path(sys.executable).parent / "dct"
    r = subprocess.run(
        [str(exe), "synthesize", "--dataset", str(world), "--classes", "0", "--per-class", "2", "--optimize-missing",
         "--device", "cpu"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    assert "Traceback" not in out and " ERROR " not in out and "| ERROR" not in out, out
    assert "Loading pipeline components" not in out and "Loading weights" not in out, out
