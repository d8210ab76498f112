"""One product surface: one override type, one meaning per flag, `--run` as a handle, `[token]` in dataset files.

Fast, in-process checks of the surface's rules (the command × world × store matrix, tests/matrix, runs
every command end to end as a user does).
"""

from __future__ import annotations

import datetime as dt
import json

import pytest

from dct.artifacts.store import ArtifactStore
from dct.cli import build_parser
from dct.commands.common import overrides_from_args
from dct.config import RunOverrides

TOKEN_FLAGS = [
    "--seed", "7", "--num-vectors", "2", "--max-epochs", "3", "--initializer-token", "the", "--seed-schedule", "fresh",
]
EXPECTED = RunOverrides(seed=7, num_vectors=2, max_epochs=3, initializer_token="the", seed_schedule="fresh")


@pytest.mark.parametrize(
    "command",
    [
        ["run"],
        ["optimize", "--class", "0"],
        ["synthesize", "--per-class", "2"],
        ["augment-eval"],
    ],
)
def test_the_token_flags_mean_the_same_overrides_in_every_command(command):
    args = build_parser().parse_args([*command, *TOKEN_FLAGS])
    assert overrides_from_args(args) == EXPECTED
    assert overrides_from_args(build_parser().parse_args(command)) is None


@pytest.mark.parametrize("command", [["synthesize", "--per-class", "2"], ["generate", "--class", "0", "--token", "t"]])
def test_image_seeds_are_their_own_flag(command):
    """``--seed`` is the optimisation seed everywhere; the seed of rendered images is ``--image-seed``."""
    args = build_parser().parse_args([*command, "--image-seed", "5"])
    assert args.image_seed == 5
    assert getattr(args, "seed", None) is None


def test_a_dataset_files_token_section_reaches_the_run_config(tmp_path):
    from tiny import save_tiny_world

    from dct.models.datasets import get_dataset
    from dct.run.plan import build_config

    world = save_tiny_world(tmp_path / "world")
    plain = build_config(str(world))[1]
    world.write_text(world.read_text() + '[token]\nnum_vectors = 2\ninitializer_token = "the"\n')
    spec, config = build_config(str(world))
    assert spec.token.num_vectors == 2 and config.token.num_vectors == 2 and config.token.initializer_token == "the"
    # An override still wins over the file, and only the differing settings are named.
    assert build_config(str(world), RunOverrides(num_vectors=3))[1].token.num_vectors == 3
    assert RunOverrides.between(plain, config) == RunOverrides(num_vectors=2, initializer_token="the")
    world.write_text(world.read_text() + "vectors = 3\n")
    with pytest.raises(ValueError, match=r"token\.vectors"):
        get_dataset(str(world))


def test_the_seed_schedule_from_every_surface(tmp_path):
    """`[training] seed_schedule` in a dataset file, `--seed-schedule`, the flows' `overrides` (RunOverrides) and
    Python all set the same field; "fixed" keeps the key of a run without the setting, "fresh" gives another."""
    from tiny import save_tiny_world

    from dct.config import token_key
    from dct.run.plan import build_config

    world = save_tiny_world(tmp_path / "world")
    plain = build_config(str(world))[1]
    key = token_key(plain, "r1", "r2")
    assert plain.training.seed_schedule == "fixed"
    flags = overrides_from_args(build_parser().parse_args(["run", "--seed-schedule", "fresh"]))
    assert flags == RunOverrides.model_validate({"seed_schedule": "fresh"})  # what a deployment's parameter gives
    fresh = build_config(str(world), flags)[1]
    assert fresh.training.seed_schedule == "fresh" and token_key(fresh, "r1", "r2") != key
    assert RunOverrides.between(plain, fresh) == flags
    world.write_text(world.read_text().replace("[training]\n", '[training]\nseed_schedule = "fresh"\n'))
    assert build_config(str(world))[1] == fresh
    world.write_text(world.read_text().replace('seed_schedule = "fresh"', 'seed_schedule = "fixed"'))
    assert token_key(build_config(str(world))[1], "r1", "r2") == key
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--seed-schedule", "sometimes"])


def test_between_gives_the_flags_back_or_none_when_no_flag_can(tmp_path):
    from dct.models.datasets import get_dataset

    config = get_dataset("toy").run_config()
    for overrides in (RunOverrides(), RunOverrides(max_epochs=2, seed=5), RunOverrides(num_vectors=4, lr=0.5)):
        target = overrides.apply(config)
        found = RunOverrides.between(config, target)
        assert found == overrides and found.apply(config) == target
    other_model = config.model_copy(update={"diffusion": config.diffusion.model_copy(update={"model_id": "x/y"})})
    assert RunOverrides.between(config, other_model) is None


def _record_run(store: ArtifactStore, config, *, token_key: str, source: str | None, run_id: str | None = None):
    from dct.results import Provenance, RunRecord, new_run_id, write_run_record

    now = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    run_id = run_id or new_run_id()
    prov = Provenance(diffusion_model_id="tiny", diffusion_revision="r", classifier_model_id="tiny",
                      classifier_revision="r", device="cpu", dtype="float32")
    write_run_record(store, RunRecord(
        run_id=run_id, dataset=config.dataset, status="done", token_key=token_key, eval_key="ek",
        config_json=config.model_dump_json(), dataset_source=source, class_ids=[1, 2], provenance=prov,
        started_at=now, finished_at=now,
    ))
    return run_id


def test_a_run_is_a_handle_to_its_exact_settings(tmp_path):
    from tiny import save_tiny_world

    from dct.run.handle import resolve_settings
    from dct.run.plan import build_config

    world = save_tiny_world(tmp_path / "world")
    store = ArtifactStore.from_config(store=str(tmp_path / "store"))
    _, config = build_config(str(world), RunOverrides(max_epochs=1, seed=9, num_vectors=2), store.root)
    run_id = _record_run(store, config, token_key="tk", source=str(world))

    settings = resolve_settings(dataset=None, overrides=None, store=store.root, run=run_id)
    assert settings.config == config and settings.token_key == "tk" and settings.run.class_ids == [1, 2]
    assert settings.spec.name == "tiny" and settings.source == str(world)
    # A command given only --run takes the run's classes (and --classes, when given, wins).
    import argparse

    from dct.commands.common import resolve_command_settings

    args = argparse.Namespace(dataset=None, run=run_id, store=store.root, classes=None)
    assert resolve_command_settings(args, None)[1] == [1, 2]
    args.classes = "3"
    assert resolve_command_settings(args, None)[1] == "3"

    with pytest.raises(ValueError, match="takes the run's own settings; drop --seed 3"):
        resolve_settings(dataset=None, overrides=RunOverrides(seed=3), store=store.root, run=run_id,
                         overrides_given="--seed 3")
    with pytest.raises(ValueError, match="no run 'nope'"):
        resolve_settings(dataset=None, overrides=None, store=store.root, run="nope")
    old = _record_run(store, config, token_key="tk", source=None)
    with pytest.raises(ValueError, match="pass --dataset"):
        resolve_settings(dataset=None, overrides=None, store=store.root, run=old)
    assert resolve_settings(dataset=str(world), overrides=None, store=store.root, run=old).config == config
    with pytest.raises(ValueError, match="is a run of dataset 'tiny'"):
        resolve_settings(dataset="toy", overrides=None, store=store.root, run=run_id)


def test_a_command_that_finds_no_tokens_names_the_run_and_its_flags(tmp_path, capsys):
    """After `dct run --max-epochs 1 --seed 9`, `dct synthesize` with no flags names --run and those flags."""
    from synth_world import plant_tokens
    from tiny import save_tiny_world

    from dct.cli import main
    from dct.run.plan import build_config

    world = save_tiny_world(tmp_path / "world")
    store = ArtifactStore.from_config(store=str(tmp_path / "store"))
    plant_tokens(store, world, range(4))  # tokens under the dataset's own key ...
    # ... moved to another key, as a run with other settings would have left them.
    _, config = build_config(str(world), RunOverrides(max_epochs=1, seed=9), store.root)
    key_dir = next((tmp_path / "store" / "tokens" / "tiny").iterdir())
    key_dir.rename(key_dir.parent / "0123456789abcdef")
    run_id = _record_run(store, config, token_key="0123456789abcdef", source=str(world))
    capsys.readouterr()

    code = main(["synthesize", "--dataset", str(world), "--per-class", "2", "--store", store.root])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0, err
    assert f"pass --run {run_id}" in err and "--max-epochs 1" in err and "--seed 9" in err
    assert not (tmp_path / "store" / "synthetic").exists()
    # The record names its source and classes for the next command (run.json, not the table).
    assert json.loads((tmp_path / "store" / "runs" / "tiny" / run_id / "run.json").read_text())["class_ids"] == [1, 2]
