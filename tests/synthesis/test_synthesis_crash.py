"""A real process SIGKILLed in the middle of a class: that class stays unfinished, the re-run completes it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

from synth_world import plant_tokens

from dct.artifacts.store import ArtifactStore
from dct.synthesis.config import SynthesisConfig
from dct.synthesis.synthesize import plan_synthesis, synthesize_dataset

CFG = SynthesisConfig(per_class=40, batch_size=1)  # one image per batch: a long window inside class 1

CHILD = textwrap.dedent(
    """
    import sys
    from dct.synthesis.config import SynthesisConfig
    from dct.synthesis.synthesize import synthesize_dataset
    synthesize_dataset(dataset=sys.argv[1], synthesis=SynthesisConfig.model_validate_json(sys.argv[3]),
                       classes=[0, 1], store=sys.argv[2])
    """
)


def test_sigkill_mid_class_leaves_it_unfinished_and_the_rerun_completes_it(synth_world, tmp_path):
    store = ArtifactStore.from_config(store=str(tmp_path / "store"))
    plant_tokens(store, synth_world, [0, 1])
    plan = plan_synthesis(dataset=str(synth_world), synthesis=CFG, classes=[0, 1], store=store.root)
    part = {c: store.synthetic_part_uri(plan.dataset, plan.synth_key, c) for c in (0, 1)}
    class1 = store.synthetic_uri(plan.dataset, plan.synth_key, "train", "00001-blue-square")
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(synth_world), store.root, CFG.model_dump_json()], env=dict(os.environ)
    )
    try:
        deadline = time.monotonic() + 600
        while not (store.exists(part[0]) and len(store.list_files(class1)) >= 3):
            assert proc.poll() is None, "the child ended before it could be killed"
            assert time.monotonic() < deadline, "class 1 never started"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
    written = len(store.list_files(class1))
    assert 3 <= written < CFG.per_class, written  # killed mid-class
    assert not store.exists(part[1])
    assert store.synthetic_finished_class_ids(plan.dataset, plan.synth_key) == {0}
    class0 = store.synthetic_uri(plan.dataset, plan.synth_key, "train", "00000-red-circle")
    class0_files = {u: os.stat(u).st_mtime_ns for u in store.list_files(class0)}

    plan2, summary = synthesize_dataset(dataset=str(synth_world), synthesis=CFG, classes=[0, 1], store=store.root)
    assert plan2.todo == [1]  # only the unfinished class
    assert store.synthetic_finished_class_ids(plan.dataset, plan.synth_key) == {0, 1}
    assert len(store.list_files(class1)) == CFG.per_class and summary["kept"] == 2 * CFG.per_class
    assert {u: os.stat(u).st_mtime_ns for u in store.list_files(class0)} == class0_files  # class 0 not redone
