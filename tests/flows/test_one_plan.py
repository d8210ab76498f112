"""One run plan: the parent's configuration and keys reach every shard as they are, and a shard whose models
give other keys writes nothing under them (docs/design.md, "One run plan")."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tiny import save_tiny_world

from dct.artifacts.store import open_store
from dct.config import RunOverrides
from dct.results import new_run_id
from dct.run.plan import plan_run


def _flip_one_byte(path: Path) -> None:
    """One byte of a weights file's data changed (the last byte: inside the tensor data, not the header)."""
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_shard_whose_model_differs_by_one_byte_writes_nothing_under_other_keys(prefect_harness, tmp_path):
    from flows.shard import dct_shard

    world = save_tiny_world(tmp_path / "world", max_epochs=1, num_samples=2)
    store_root = tmp_path / "store"
    plan = plan_run(dataset=str(world), classes="0-1", store=str(store_root), run_id=new_run_id())
    # The worker's copy of the local pipeline directory differs from the one the parent keyed by one byte.
    _flip_one_byte(world.parent / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors")

    summaries = dct_shard(plan=plan.shard_plan(), class_ids=[0, 1], class_names=["red circle", "blue square"],
                          run_id=plan.run_id)

    assert [s["status"] for s in summaries] == ["failed", "failed"]
    store = open_store(str(store_root))
    for class_id in (0, 1):
        assert not store.exists(store.record_uri("tiny", plan.eval_key, class_id))  # failed: the next run retries
        record = json.loads(store.read_bytes(store.attempt_uri("tiny", plan.eval_key, class_id, plan.run_id)))
        assert record["status"] == "failed" and record["token_key"] == plan.token_key
        # The message names both keys and the model that differs.
        assert plan.token_key in record["error"] and plan.eval_key in record["error"]
        assert "diffusion model here is revision" in record["error"]
    # No token and no record under any other key: nothing the parent could mistake, nothing half-done.
    assert not list((store_root / "tokens").rglob("*.safetensors"))
    keys = {part for p in store_root.rglob("*") if p.is_file() for part in p.relative_to(store_root).parts
            if re.fullmatch(r"[0-9a-f]{16}", part)}
    assert keys == {plan.eval_key}, keys


def test_the_plan_carries_overrides_and_dataset_token_settings_to_the_shard(prefect_harness, tmp_path):
    """A ``[token]`` section and a run override both reach the shard's tokens (2 vectors, the override's epochs)."""
    from flows.dct_flow import dct

    world = save_tiny_world(tmp_path / "world", max_epochs=2, num_samples=2)
    world.write_text(world.read_text() + '[token]\nnum_vectors = 2\n')
    store_root = tmp_path / "store"
    state = dct(dataset=str(world), classes="0", store=str(store_root), overrides=RunOverrides(max_epochs=1),
                return_state=True)
    assert state.is_completed(), state.message
    from dct.artifacts.token_file import load_token
    from dct.results import read_results

    row = read_results(str(store_root), "classes", dataset="tiny").iloc[0]
    _, vector, _ = load_token(row["token_uri"])
    assert tuple(vector.shape) == (2, 32)  # the dataset file's [token] num_vectors
    assert row["epochs"] == 1  # the override, not the file's max_epochs = 2
