"""notebooks/results.ipynb executes headless (nbclient) against the store of a finished run."""

from __future__ import annotations

import os
from pathlib import Path

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "results.ipynb"


def _text(output) -> str:
    if output.get("output_type") == "stream":
        return output.get("text", "")
    data = output.get("data", {})
    return data.get("text/plain", "") + data.get("text/html", "")


def test_results_notebook_runs_and_shows_the_uplift_table(tiny_run, tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    repo = str(NOTEBOOK.parents[1])
    monkeypatch.setenv("DCT_STORE", str(tiny_run.store_root))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH")) if p))
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend produces the PNG outputs
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "\n".join(_text(o) for o in outputs)
    assert "uplift table" in text and "guide_uplift" in text and "evaluator_uplift" in text
    for name in ("red circle", "blue square", "small dog"):
        assert name in text
    assert "share_of_classes_improved" in text  # the DuckDB aggregate
    assert "fid_dct" in text and tiny_run.plan.run_id in text  # the pooled metrics table
    assert any("image/png" in o.get("data", {}) for o in outputs)  # the plots
