"""Stopping `dct run` / `dct synthesize` with SIGTERM or SIGINT (docs/reliability.md, "Stopping a run").

Real processes on the tiny world, signalled while a class is in progress: within 10 s the process exits with
143 (SIGTERM) / 130 (SIGINT), prints one line naming the classes finished before the stop, no traceback, no
Prefect server left behind; the class in progress has no record (no part) and the next run completes it.

One chain of runs keeps it short (the `runs` fixture): run 1 is stopped by SIGTERM in class 1; run 2 finishes
class 1 and is stopped by SIGINT (the whole process group, as Ctrl-C does) in class 2; run 3 finishes class 2
with exit code 0; then `dct synthesize` on the finished tokens is stopped by SIGTERM in class 1.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dct.artifacts.store import ArtifactStore
from dct.artifacts.token_file import load_token
from dct.results import read_class_record

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
STOP_SECONDS = 10.0  # the promise


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    from tiny import save_tiny_world

    path = save_tiny_world(tmp_path_factory.mktemp("stop-world"), max_epochs=24, num_samples=2)
    # Every class runs all its epochs (a few seconds): neither accuracy nor patience ends it early, so a signal
    # sent when class k's line appears lands in class k + 1.
    text = path.read_text().replace("[training]\n", "[training]\naccuracy_threshold = 1.0\npatience = 1000\n")
    path.write_text(text)
    return path


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "DCT_"))}
    return env | {
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "300",
        "PYTHONPATH": str(ROOT),
    }


def _start(args: list[str], tmp_path: Path, name: str) -> tuple[subprocess.Popen, Path]:
    log = tmp_path / f"{name}.log"
    with open(log, "wb") as out:  # the child keeps its own descriptor
        proc = subprocess.Popen(
            [sys.executable, "-m", "dct.cli", *args], stdout=out, stderr=subprocess.STDOUT, env=_env(tmp_path),
            cwd=tmp_path, start_new_session=True,  # its own process group, with the temporary Prefect server
        )
    return proc, log


def _wait_for(proc: subprocess.Popen, log: Path, pattern: str, timeout: float = 400) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if re.search(pattern, log.read_text(errors="replace"), re.MULTILINE):
            return
        if proc.poll() is not None:
            pytest.fail(f"exited {proc.returncode} before {pattern!r}:\n{log.read_text()[-3000:]}")
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    pytest.fail(f"no {pattern!r} within {timeout} s:\n{log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen, log: Path, sig: int, *, group: bool) -> dict:
    """Send ``sig`` to the process (or its whole group): its exit code, seconds until it exited, its output,
    and whether its process group (the temporary Prefect server included) is gone."""
    t0 = time.monotonic()
    (os.killpg if group else os.kill)(proc.pid, sig)
    try:
        rc = proc.wait(timeout=60)
    except subprocess.TimeoutExpired:  # not stopped: the test fails on the time, with the output to read
        os.killpg(proc.pid, signal.SIGKILL)
        rc = proc.wait()
    seconds = time.monotonic() - t0
    out = log.read_text(errors="replace")
    return {"rc": rc, "seconds": seconds, "out": out, "server_gone": _group_is_gone(proc.pid)}


def _group_is_gone(pgid: int) -> bool:
    """No process of the group is left (the temporary Prefect server was started in it)."""
    for _ in range(50):
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    os.killpg(pgid, signal.SIGKILL)
    return False


def _finished(store: Path, class_id: int) -> bool:
    records = list((store / "records" / "tiny").glob(f"*/{class_id:05d}.json"))
    for path in records:  # a record that exists is complete and is this class's
        assert read_class_record(ArtifactStore(str(store)), "tiny", path.parent.name, class_id).class_id == class_id
    return bool(records)


def _tokens_are_complete(store: Path) -> None:
    """Every token file under its final name is complete (a partial one would not load)."""
    for path in (store / "tokens" / "tiny").glob("*/*.safetensors"):
        load_token(str(path))


def _check_stopped(rc: int, seconds: float, out: str, expected_rc: int, line: str) -> None:
    assert rc == expected_rc and seconds < STOP_SECONDS, (rc, seconds, out[-3000:])
    assert "Traceback" not in out and "ConnectError" not in out, out[-3000:]
    assert out.rstrip("\n").splitlines()[-1] == line, out[-3000:]
    assert out.count("stopped by") == 1


@pytest.fixture(scope="module")
def runs(world, tmp_path_factory) -> dict:
    """The chain of three `dct run`s; for each: exit code, seconds from signal to exit, output, what it left."""
    tmp = tmp_path_factory.mktemp("stop-runs")
    store = tmp / "store"
    args = ["run", "--dataset", str(world), "--classes", "0-2", "--store", str(store), "--device", "cpu"]
    out: dict = {"store": store, "world": world, "tmp": tmp}

    def left() -> dict:
        _tokens_are_complete(store)
        return {c: _finished(store, c) for c in range(3)}

    # 1. SIGTERM to the process alone (`kill PID`) while class 1 is in progress.
    proc, log = _start(args, tmp, "run1")
    _wait_for(proc, log, r"\[1/3\] class 0 ")
    out["sigterm"] = _stop(proc, log, signal.SIGTERM, group=False) | {"finished": left()}
    # 2. The next run finishes class 1; SIGINT to its whole process group (Ctrl-C) while class 2 is in progress.
    proc, log = _start(args, tmp, "run2")
    _wait_for(proc, log, r"\[1/2\] class 1 ")
    out["sigint"] = _stop(proc, log, signal.SIGINT, group=True) | {"finished": left()}
    # 3. The next run finishes class 2.
    proc, log = _start(args, tmp, "run3")
    rc = proc.wait(timeout=600)
    out["last"] = {"rc": rc, "out": log.read_text(errors="replace"), "finished": left()}
    return out


def test_sigterm_ends_dct_run_with_one_line_and_the_class_in_progress_unfinished(runs):
    r = runs["sigterm"]
    _check_stopped(
        r["rc"], r["seconds"], r["out"], 143,
        "dct run: stopped by SIGTERM; classes finished before the stop: 0; the rest will be done by the next run",
    )
    assert r["server_gone"], "the temporary Prefect server outlived the stopped run"
    assert r["finished"] == {0: True, 1: False, 2: False}


def test_sigint_to_the_process_group_ends_dct_run_with_one_line(runs):
    r = runs["sigint"]
    _check_stopped(
        r["rc"], r["seconds"], r["out"], 130,
        "dct run: stopped by SIGINT; classes finished before the stop: 1; the rest will be done by the next run",
    )
    assert r["server_gone"]
    assert r["finished"] == {0: True, 1: True, 2: False}  # run 2 completed the class run 1 was stopped in


def test_the_next_run_completes_the_class_in_progress(runs):
    r = runs["last"]
    assert r["rc"] == 0, r["out"][-3000:]
    assert "1 done, 0 diverged, 0 failed, 2 skipped" in r["out"] and "Traceback" not in r["out"], r["out"][-3000:]
    assert r["finished"] == {0: True, 1: True, 2: True}


def test_sigterm_ends_dct_synthesize_with_one_line_and_no_part_for_the_class_in_progress(runs):
    store, tmp = runs["store"], runs["tmp"]
    args = ["synthesize", "--dataset", str(runs["world"]), "--classes", "0-2", "--per-class", "120", "--store",
            str(store), "--device", "cpu"]
    proc, log = _start(args, tmp, "synthesize")
    _wait_for(proc, log, r"class 0 \(red circle\): 120 kept")
    r = _stop(proc, log, signal.SIGTERM, group=True)
    _check_stopped(
        r["rc"], r["seconds"], r["out"], 143,
        "dct synthesize: stopped by SIGTERM; classes synthesized before the stop: 0; the rest will be done by the "
        "next run",
    )
    assert r["server_gone"]
    parts = sorted(p.name for p in (store / "synthetic" / "tiny").glob("*/parts/*.parquet"))
    assert parts == ["00000.parquet"]  # class 1 was in progress: no part, so not finished
