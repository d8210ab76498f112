"""A real process SIGKILLed mid-class leaves the class unfinished and no partial file visible to readers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

from dct.artifacts.store import ArtifactStore

# Runs in a child process: writes a class's artifacts, says so, then waits to be killed before the record.
CHILD = textwrap.dedent(
    """
    import sys, time
    from dct.artifacts.store import ArtifactStore
    store = ArtifactStore.from_config(store=sys.argv[1])
    store.write_token("toy", "tk0001", 7, b"token-bytes")
    for variant in ("baseline", "dct"):
        store.write_sample("toy", "ek0001", 7, variant, 10000, b"png-bytes")
    print("ARTIFACTS_WRITTEN", flush=True)
    time.sleep(60)  # killed here, before write_class_record
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


def _run_until(script: str, root: str, marker: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", script, root], stdout=subprocess.PIPE, text=True, env=dict(os.environ)
    )
    try:
        line = proc.stdout.readline().strip()
        assert line == marker, f"child said {line!r}"
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()


def test_sigkill_between_artifacts_and_record_leaves_class_unfinished(store: ArtifactStore):
    _run_until(CHILD, store.root, "ARTIFACTS_WRITTEN")
    assert store.has_token("toy", "tk0001", 7)  # the artifacts are there ...
    assert len(store.list_samples("toy", "ek0001", 7, "dct")) == 1
    assert not store.is_finished("toy", "ek0001", 7)  # ... but the class is not finished
    assert store.finished_class_ids("toy", "ek0001", [7]) == set()


def test_sigkill_mid_write_shows_no_partial_file(local_store: ArtifactStore):
    _run_until(CHILD_MID_WRITE, local_store.root, "TEMP_WRITTEN")
    uri = local_store.sample_uri("toy", "ek0001", 7, "dct", 10000)
    assert not local_store.exists(uri)
    assert local_store.list_samples("toy", "ek0001", 7, "dct") == []
    leftovers = os.listdir(os.path.dirname(uri))
    assert len(leftovers) == 1 and leftovers[0].startswith(".")  # the hidden temporary, never read as a sample
