"""Two runs of the same dataset and config started together (a nightly run overlapping a manual one).

Each is a real `dct run` process with its own Prefect API, sharing one store. Guaranteed (docs/reliability.md,
"Concurrent runs"): both finish; no run has two rows for a class; every token file in the store is
complete and belongs to its key (atomic replacement: identical or last writer wins); every class ends
with one finished record.

That the runs really overlapped is not left to timing: each process holds its first class until the other
has reached its own (a file barrier in the store's parent folder, installed in front of `dct.cli.main`),
and the windows the runner itself records (``started_at``/``finished_at`` of every class record each run
returned) are checked to intersect.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from dct.artifacts.bundle import read_bundle
from dct.artifacts.store import ArtifactStore
from dct.artifacts.token_file import load_token
from dct.results import read_class_record, read_results, write_class_record

pytestmark = pytest.mark.slow

# `dct run`, with one addition: every class record the runner returns is appended to a log, and the first class
# waits (up to 10 minutes) until both runs have reached theirs. The product code itself is unchanged.
RUN = textwrap.dedent(
    """
    import json, os, sys, time
    from pathlib import Path

    import dct.run.runner as runner

    barrier, name = Path(os.environ["TEST_BARRIER"]), os.environ["TEST_RUN_NAME"]
    real = runner.process_class

    def process_class(*args, **kwargs):
        (barrier / name).touch()
        deadline = time.monotonic() + 600
        while len(list(barrier.iterdir())) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        record = real(*args, **kwargs)
        with open(os.environ["TEST_RECORD_LOG"], "a") as log:
            log.write(json.dumps({"name": name, "record": record.model_dump(mode="json")}) + "\\n")
        return record

    runner.process_class = process_class  # before the flow's tasks import it

    from dct.cli import main

    sys.exit(main(sys.argv[1:]))
    """
)


def _ts(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value)


def test_two_runs_started_together_stay_consistent(tiny_world, tmp_path):
    store = tmp_path / "store"
    barrier, record_log = tmp_path / "barrier", tmp_path / "records.jsonl"
    barrier.mkdir()
    procs = []
    for name in ("nightly", "manual"):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "DCT_"))}
        env |= {"PREFECT_HOME": str(tmp_path / f"prefect-{name}"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "300", "TEST_BARRIER": str(barrier),
                "TEST_RUN_NAME": name, "TEST_RECORD_LOG": str(record_log)}
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", RUN, "run", "--dataset", str(tiny_world), "--classes", "0-2",
                 "--store", str(store)],
                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            )
        )
    outputs = [p.communicate(timeout=900)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-3000:] for o in outputs)

    # Both runs processed every class, and they did so at the same time: the class windows the runner recorded
    # for one run intersect those of the other.
    returned = [json.loads(line) for line in record_log.read_text().splitlines()]
    windows = {
        name: [(_ts(r["record"]["started_at"]), _ts(r["record"]["finished_at"])) for r in returned if r["name"] == name]
        for name in ("nightly", "manual")
    }
    assert {n: len(w) for n, w in windows.items()} == {"nightly": 3, "manual": 3}, returned
    assert any(max(a0, b0) < min(a1, b1) for a0, a1 in windows["nightly"] for b0, b1 in windows["manual"]), windows

    rows = read_results(str(store), table="classes", dataset="tiny")
    assert not rows.duplicated(["run_id", "class_id"]).any()
    assert set(rows["class_id"]) == {0, 1, 2}
    runs = read_results(str(store), table="runs", dataset="tiny")
    assert len(runs) == 2 and runs["run_id"].is_unique
    assert set(rows["run_id"]) <= set(runs["run_id"])
    # Nothing failed: every row is done, every run is done, and each run accounts for all three classes.
    assert (rows["status"] == "done").all(), rows[["run_id", "class_id", "status", "error"]]
    assert (runs["status"] == "done").all() and (runs["classes_failed"] == 0).all()
    assert ((runs["classes_done"] + runs["classes_skipped"]) == 3).all(), runs

    tokens = sorted(Path(store, "tokens", "tiny").rglob("*.safetensors"))
    assert len(tokens) == 3
    alone = _optimised_alone(tiny_world, tmp_path / "alone")
    st = ArtifactStore.from_config(store=str(store))
    bundles = [read_bundle(st.read_bytes(uri)) for uri in runs["bundle_uri"]]
    records = sorted(Path(store, "records", "tiny").rglob("*.json"))
    assert [int(p.stem) for p in records] == [0, 1, 2]
    (eval_key,) = {p.parent.name for p in records}
    for path in tokens:
        class_id = int(path.stem)
        token, vector, meta = load_token(path)  # complete and parseable: never a torn write
        assert meta["class_id"] == str(class_id) and token == f"<dct-tiny-{class_id:05d}>"
        # The one finished record points at this file and says what produced it: the same optimisation result.
        final = read_class_record(st, "tiny", eval_key, class_id)
        assert final.token_uri == str(path) and final.token == token and final.token_key == meta["token_key"]
        assert final.epochs == int(meta["epochs"]) and final.best_loss == float(meta["best_loss"])
        assert final.stop_reason == meta["stop_reason"]
        # Both runs optimised it (deterministic, same keys): whoever wrote last, the vector is the same, and each
        # run's bundle (read from the store when that run published) holds exactly it.
        for tokens_in_bundle, vectors, _ in bundles:
            assert torch.equal(vectors[tokens_in_bundle.index(token)], vector)
        written = [r["record"] for r in returned if r["record"]["class_id"] == class_id]
        assert {r["run_id"] for r in written} == set(runs["run_id"])
        assert {(r["epochs"], r["best_loss"]) for r in written if not r["token_reused"]} <= {
            (final.epochs, final.best_loss)
        }
        # ... and it is what this class's optimisation gives (recomputed here, in a store of its own).
        assert torch.equal(vector, alone[class_id])
    assert not list(Path(store).rglob(".*.tmp*"))  # no temporary file left visible


def _optimised_alone(tiny_world: Path, root: Path) -> dict[int, torch.Tensor]:
    from dct.artifacts.token_file import read_token_bytes
    from dct.models.loading import load_models
    from dct.run.plan import build_config
    from dct.run.runner import process_class

    spec, config = build_config(str(tiny_world), None, str(root))
    models, st = load_models(config, "cpu"), ArtifactStore.from_config(config.storage)
    out = {}
    for c in (0, 1, 2):
        record = process_class(st, config, models, class_id=c, class_name=spec.class_names[c], run_id="alone")
        out[c] = read_token_bytes(st.read_bytes(record.token_uri))[1]
    return out


def test_a_class_finished_by_the_other_run_counts_as_skipped_not_failed(tiny_world, tmp_path):
    """The bookkeeping of the overlap above when one run does not process a class at all (in deployments a shard
    resubmitted after the other run finished its class is planned without it): the run publishes that class as
    skipped — no failed record, no row of its own, the class's token in its bundle — and ends done."""
    import datetime as dt_

    from synth_world import plant_tokens

    from dct.results import ClassRecord
    from dct.run.plan import build_config, plan_run
    from dct.run.publish import publish_run

    root = str(tmp_path / "store")
    store = ArtifactStore.from_config(store=root)
    plan = plan_run(dataset=str(tiny_world), classes="0-1", store=root, run_id="run-manual")
    assert plan.todo == [0, 1]
    spec, config = build_config(str(tiny_world), None, root)
    assert plant_tokens(store, tiny_world, [0, 1]) == plan.token_key
    now = dt_.datetime.now(dt_.UTC)
    prov = _provenance()
    for class_id, run_id in ((0, "run-manual"), (1, "run-nightly")):  # the nightly run finished class 1
        write_class_record(store, ClassRecord(
            run_id=run_id, dataset="tiny", class_id=class_id, class_name=spec.class_names[class_id],
            token=config.token_string(class_id), token_key=plan.token_key, eval_key=plan.eval_key, status="done",
            provenance=prov, started_at=now, finished_at=now,
        ))
    outcome = publish_run(store, config, plan, class_names=spec.class_names, started_at=now)
    run = outcome.run
    assert (run.status, run.classes_done, run.classes_skipped, run.classes_failed) == ("done", 1, 1, 0)
    assert outcome.missing == [] and [r.class_id for r in outcome.records] == [0]
    assert read_class_record(store, "tiny", plan.eval_key, 1).run_id == "run-nightly"  # not overwritten
    assert not list(Path(root).rglob("attempts/**/*.json"))  # no failed attempt recorded for anyone
    rows = read_results(root, table="classes", dataset="tiny")
    assert rows[["run_id", "class_id", "status"]].values.tolist() == [["run-manual", 0, "done"]]
    tokens, _, _ = read_bundle(store.read_bytes(run.bundle_uri))
    assert tokens == [config.token_string(0), config.token_string(1)]


def _provenance():
    from dct.results import Provenance

    return Provenance(diffusion_model_id="tiny", diffusion_revision="r", classifier_model_id="tiny",
                      classifier_revision="r", device="cpu", dtype="float32")
