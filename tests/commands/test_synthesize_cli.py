"""`dct synthesize` / `dct augment-eval`: bad input ends in one line, exit code 2, before Prefect or any model."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    "args, message",
    [
        (["--per-class", "4", "--image-seed", "3"], "overlap the optimisation seeds"),
        (["--per-class", "4", "--image-seed", "10010"], "overlap the evaluation seeds"),
        # The toy restarts twice: seeds 16..47 belong to its restarts, not to its first attempt.
        (["--per-class", "4", "--image-seed", "20"], "overlap the optimisation seeds"),
        # 9990..9993 miss the evaluation seeds (10000..), the filter's cap of 3 x 4 (9990..10001) does not.
        (["--per-class", "4", "--image-seed", "9990", "--filter", "guide"], "overlap the evaluation seeds"),
        (["--per-class", "4", "--template", "a photo"], "exactly one '{}'"),
        (["--per-class", "4", "--filter", "guide", "--min-probability", "1.5"], "min_probability"),
        (["--per-class", "0"], "must be a positive integer"),
        (["--per-class", "4", "--classes", "99"], "out of range"),
    ],
)
def test_bad_synthesize_input_is_one_line_and_exit_2(tmp_path, args, message):
    store = tmp_path / "store"
    code = (
        "import sys; from dct.cli import main; rc = main(sys.argv[1:]); "
        "sys.exit(rc if 'prefect' not in sys.modules else 99)"
    )
    run = subprocess.run(
        [sys.executable, "-c", code, "synthesize", "--store", str(store), *args],
        capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 2, run.stdout + run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], run.stderr
    assert not store.exists()  # nothing written


@pytest.mark.parametrize(
    "bundle, message",
    [("no-such-bundle", "does not exist (looked at"), (".", "is a folder without tokens.safetensors")],
)
def test_bad_bundle_is_one_line_and_exit_2_before_prefect(tmp_path, bundle, message):
    store = tmp_path / "store"
    code = (
        "import sys; from dct.cli import main; rc = main(sys.argv[1:]); "
        "sys.exit(rc if 'prefect' not in sys.modules else 99)"
    )
    run = subprocess.run(
        [sys.executable, "-c", code, "synthesize", "--store", str(store), "--per-class", "2", "--bundle", bundle],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert run.returncode == 2, run.stdout + run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and repr(bundle) in lines[0], run.stderr
    assert [p.name for p in store.iterdir()] == ["_dct"]  # the store's write probe only


@pytest.mark.parametrize(
    "args, message",
    [
        (["--shots=-1,2"], "--shots '-1,2' must be comma-separated non-negative integers (0 = synthetic only)"),
        (["--shots", "one"], "--shots 'one' must be comma-separated non-negative integers"),
        (["--min-probability", "0"], "--min-probability 0.0 must be within (0, 1]"),
    ],
)
def test_bad_augment_eval_input_is_one_line_and_exit_2(capsys, args, message):
    from dct.cli import main

    assert main(["augment-eval", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_augment_eval_on_a_user_dataset_needs_real_image_folders(tmp_path, capsys):
    from tiny import save_tiny_world

    from dct.cli import main

    world = save_tiny_world(tmp_path / "world")
    assert main(["augment-eval", "--dataset", str(world), "--store", str(tmp_path / "store")]) == 2
    assert "needs --real-train and --real-test" in capsys.readouterr().err
    assert not (tmp_path / "store").exists()
