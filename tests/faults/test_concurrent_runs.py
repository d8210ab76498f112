"""Two runs of the same dataset and config started together (a nightly run overlapping a manual one).

Each is a real `dct run` process with its own Prefect API, sharing one store. Guaranteed (docs/reliability.md,
"Concurrent runs"): both finish; no run has two rows for a class; every token file in the store is
complete and belongs to its key (atomic replacement: identical or last writer wins); every class ends
with one finished record.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dct.artifacts.token_file import load_token
from dct.results import read_results

pytestmark = pytest.mark.slow


def test_two_runs_started_together_stay_consistent(tiny_world, tmp_path):
    store = tmp_path / "store"
    procs = []
    for name in ("nightly", "manual"):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "DCT_"))}
        env |= {"PREFECT_HOME": str(tmp_path / f"prefect-{name}"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "300"}
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "dct.cli", "run", "--dataset", str(tiny_world), "--classes", "0-2",
                 "--store", str(store)],
                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            )
        )
    outputs = [p.communicate(timeout=900)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-3000:] for o in outputs)

    rows = read_results(str(store), table="classes", dataset="tiny")
    assert not rows.duplicated(["run_id", "class_id"]).any()
    assert set(rows["class_id"]) == {0, 1, 2}
    runs = read_results(str(store), table="runs", dataset="tiny")
    assert len(runs) == 2 and runs["run_id"].is_unique

    tokens = sorted(Path(store, "tokens", "tiny").rglob("*.safetensors"))
    assert len(tokens) == 3
    for path in tokens:
        token, _, meta = load_token(path)  # complete and parseable: never a torn write
        assert meta["class_id"] == str(int(path.stem)) and token == f"<dct-tiny-{int(path.stem):05d}>"
    records = sorted(Path(store, "records", "tiny").rglob("*.json"))
    assert [int(p.stem) for p in records] == [0, 1, 2]
    assert not list(Path(store).rglob(".*.tmp*"))  # no temporary file left visible
