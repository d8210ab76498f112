"""The deployments' pull steps on a worker: DCT_CODE_DIR missing or wrong fails with a message naming it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def _pull_steps() -> list[dict]:
    return yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())["pull"]


def _run_pull_steps(cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """Prefect's own step runner on the deployments' pull steps, in a fresh process started in ``cwd``
    (as a worker starts a flow run in a temporary directory); prints the resulting working directory."""
    # Prefect's runner resolves a relative (or empty) first pull-step directory against the process's start
    # directory through this context variable (prefect/runner/_workspace_resolver.py); so does this.
    code = (
        "import asyncio, os, pathlib, yaml; "
        "from prefect.deployments.steps.core import _PULL_STEP_SOURCE_CWD, run_steps; "
        f"steps = yaml.safe_load(open({str(ROOT / 'deployments' / 'prefect.yaml')!r}))['pull']; "
        "_PULL_STEP_SOURCE_CWD.set(pathlib.Path.cwd()); "
        "asyncio.run(run_steps(steps)); print('CWD=' + os.getcwd())"
    )
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=180
    )


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "DCT_CODE_DIR"}
    # The step runner resolves templates through the API (a temporary server here): give it time to start.
    return {**env, "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180", **extra}


def test_the_pull_steps_keep_the_placeholder_and_check_the_directory():
    steps = _pull_steps()
    assert steps[0] == {"prefect.deployments.steps.set_working_directory": {"directory": "{{ $DCT_CODE_DIR }}"}}
    assert steps[1] == {"dct.run.worker.check_code_directory": {}}


def test_dct_code_dir_set_right_runs_from_there(tmp_path):
    r = _run_pull_steps(tmp_path, _env(DCT_CODE_DIR=str(ROOT), PYTHONPATH=str(ROOT)))
    assert r.returncode == 0, r.stderr
    assert f"CWD={ROOT}" in r.stdout


def test_dct_code_dir_unset_defaults_to_the_checkout_dct_is_imported_from(tmp_path):
    r = _run_pull_steps(tmp_path, _env(PYTHONPATH=str(ROOT)))
    assert r.returncode == 0, r.stderr
    assert f"CWD={ROOT}" in r.stdout  # not the temporary directory the run started in


def test_dct_code_dir_pointing_elsewhere_names_the_variable(tmp_path):
    empty = tmp_path / "not-the-repo"
    empty.mkdir()
    r = _run_pull_steps(tmp_path, _env(DCT_CODE_DIR=str(empty), PYTHONPATH=str(ROOT)))
    assert r.returncode != 0
    assert f"ValueError: DCT_CODE_DIR {str(empty)!r} has no flows/dct_flow.py: set DCT_CODE_DIR" in r.stderr
    assert "docs/deployments.md" in r.stderr


def test_dct_code_dir_unset_without_a_checkout_names_the_variable(tmp_path):
    """dct installed as a package (no checkout around it) and no DCT_CODE_DIR: the error says what to set."""
    site = tmp_path / "site"
    shutil.copytree(ROOT / "dct", site / "dct", ignore=shutil.ignore_patterns("toy", "__pycache__"))
    work = tmp_path / "run"
    work.mkdir()
    r = _run_pull_steps(work, _env(PYTHONPATH=str(site)))
    assert r.returncode != 0
    assert "ValueError: DCT_CODE_DIR is not set on this worker: set DCT_CODE_DIR in the worker's environment" in (
        r.stderr
    )
    assert "the one that contains flows/dct_flow.py" in r.stderr
