"""A real process SIGKILLed mid-class leaves the class unfinished and no partial file visible to readers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

from dct.artifacts.store import ArtifactStore
from dct.config import RunOverrides

# Runs in a child process: the REAL runner on one class of the tiny world. Every store write is reported (in the
# order the runner makes them); the write of the class record (a finished marker: records/...) is held, so the
# parent can SIGKILL the process exactly between the artifacts and the record.
CHILD = textwrap.dedent(
    """
    import sys, time
    from dct.artifacts.store import ArtifactStore
    from dct.models.loading import load_models
    from dct.run.plan import build_config
    from dct.run.runner import process_class
    from dct.config import RunOverrides

    world, root = sys.argv[1], sys.argv[2]
    spec, config = build_config(world, RunOverrides(max_epochs=1, images_per_epoch=2, num_samples=2), root)
    models = load_models(config, "cpu")
    store = ArtifactStore.from_config(config.storage)
    real_write = ArtifactStore.write_bytes

    def write_bytes(self, uri, data):
        if "/records/" in uri:
            print("RECORD_NEXT", uri, flush=True)
            time.sleep(120)  # killed here, before the record exists
        real_write(self, uri, data)
        print("WROTE", uri, flush=True)
        return uri

    ArtifactStore.write_bytes = write_bytes
    process_class(store, config, models, class_id=3, class_name=spec.class_names[3], run_id="run-killed")
    """
)


# Writes a large object, but stops between writing the temporary file and renaming it into place.
CHILD_MID_WRITE = textwrap.dedent(
    """
    import os, sys, time
    from dct.artifacts.store import ArtifactStore
    store = ArtifactStore.from_config(store=sys.argv[1])
    real_replace = os.replace
    def stalled_replace(src, dst):
        print("TEMP_WRITTEN", flush=True)
        time.sleep(60)  # killed here: the data is on disk under a temporary name only
        real_replace(src, dst)
    os.replace = stalled_replace
    store.write_sample("toy", "ek0001", 7, "dct", 10000, b"x" * 5_000_000)
    """
)


def _run_until(script: str, args: list[str], marker: str) -> list[str]:
    """Run ``script`` until it prints a line starting with ``marker``, SIGKILL it; return the lines before it."""
    proc = subprocess.Popen(
        [sys.executable, "-c", script, *args], stdout=subprocess.PIPE, text=True, env=dict(os.environ)
    )
    lines = []
    try:
        for line in proc.stdout:
            if line.startswith(marker):
                break
            lines.append(line.strip())
        else:
            raise AssertionError(f"the child ended without {marker!r}; it said {lines}")
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
    return lines


def test_sigkill_between_artifacts_and_record_leaves_class_unfinished(store: ArtifactStore, tiny_world):
    """The runner's own write order: token, then every sample, and the record last; killed before the record,
    the class is not finished, a re-plan schedules it again and the re-run reuses the token it left."""
    from dct.models.loading import load_models
    from dct.run.plan import build_config, plan_run
    from dct.run.runner import process_class

    wrote = _run_until(CHILD, [str(tiny_world), store.root], "RECORD_NEXT")
    uris = [line.split(" ", 1)[1] for line in wrote]
    spec, config = build_config(
        str(tiny_world), RunOverrides(max_epochs=1, images_per_epoch=2, num_samples=2), store.root
    )
    models = load_models(config, "cpu")
    tkey, ekey = models.keys(config)
    samples = [store.sample_uri("tiny", ekey, 3, v, s) for v in ("baseline", "dct") for s in config.evaluation.seeds]
    assert uris == [store.token_uri("tiny", tkey, 3), *samples]  # everything but the record, in this order
    assert store.has_token("tiny", tkey, 3) and all(store.exists(u) for u in samples)  # the artifacts are there
    assert not store.is_finished("tiny", ekey, 3)  # ... but the class is not finished
    assert store.finished_class_ids("tiny", ekey, [3]) == set()

    plan = plan_run(
        dataset=str(tiny_world), classes="3", store=store.root, run_id="run-after",
        overrides=RunOverrides(max_epochs=1, images_per_epoch=2, num_samples=2),
    )
    assert (plan.eval_key, plan.todo) == (ekey, [3])
    token_bytes = store.read_token("tiny", tkey, 3)
    again = process_class(store, config, models, class_id=3, class_name=spec.class_names[3], run_id="run-after")
    assert again.token_reused and store.read_token("tiny", tkey, 3) == token_bytes
    assert store.is_finished("tiny", ekey, 3)


def test_sigkill_mid_write_shows_no_partial_file(local_store: ArtifactStore):
    _run_until(CHILD_MID_WRITE, [local_store.root], "TEMP_WRITTEN")
    uri = local_store.sample_uri("toy", "ek0001", 7, "dct", 10000)
    assert not local_store.exists(uri)
    assert local_store.list_samples("toy", "ek0001", 7, "dct") == []
    leftovers = os.listdir(os.path.dirname(uri))
    assert len(leftovers) == 1 and leftovers[0].startswith(".")  # the hidden temporary, never read as a sample
