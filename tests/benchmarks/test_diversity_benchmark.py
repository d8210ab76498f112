"""The diversity benchmark's plan and table (its end-to-end path runs `dct run` and `dct augment-eval` as a user
does; `python -m benchmarks.diversity --help` says how)."""

from __future__ import annotations

import argparse
import math

import pytest


def test_runs_of_an_option_never_share_noise_and_the_mixture_mixes_the_defaults():
    from benchmarks.diversity import plan_options
    from dct.models.datasets import get_dataset
    from dct.run.plan import build_config

    options = {o.name: o for o in plan_options("toy", 3)}
    assert list(options) == ["defaults", "fresh", "ipe_x2", "mixture"]
    assert options["mixture"].mixture_of == "defaults"
    ipe = get_dataset("toy").training.images_per_epoch
    assert options["ipe_x2"].flags == ("--images-per-epoch", str(2 * ipe))
    for name in ("defaults", "fresh", "ipe_x2"):
        o = options[name]
        from dct.cli import build_parser
        from dct.commands.common import overrides_from_args

        seeds = []
        for r in range(3):
            overrides = overrides_from_args(build_parser().parse_args(["run", *o.run_flags(r)]))
            seeds.append(set(build_config("toy", overrides)[1].training.all_seeds))
        assert all(not seeds[i] & seeds[j] for i in range(3) for j in range(i + 1, 3)), name
    assert options["defaults"].seeds[0] == get_dataset("toy").training.seed  # run 0 is plain `dct run`
    assert [o.name for o in plan_options("toy", 1)] == ["defaults", "fresh", "ipe_x2"]  # nothing to mix
    with pytest.raises(ValueError, match="overlap the optimisation seeds"):
        plan_options("toy", 20, ["fresh"])  # 20 × 1920 fresh seeds reach the evaluation seeds


def test_the_table_takes_every_diversity_column_or_says_n_a():
    from benchmarks.diversity import diversity_columns, table_rows

    cols = ["class_id", "evaluator_top1_dct", "coverage_dct", "coverage_baseline", "Recall_dct", "vendi_score_dct"]
    assert diversity_columns(cols) == ["coverage_dct", "coverage_baseline", "Recall_dct", "vendi_score_dct"]
    per_option = {
        "defaults": {"runs": "2", "metrics": [{"evaluator_top1_dct": 0.5, "coverage_dct": 0.2},
                                              {"evaluator_top1_dct": 0.7, "coverage_dct": math.nan}],
                     "augment": {0: [0.4, 0.6], 1: [0.5, 0.5]}},
        "mixture": {"runs": "2 mixed", "metrics": None, "augment": {0: [0.3, 0.5], 1: [0.6]}, "over_seeds": True},
    }
    header, rows = table_rows(per_option, [0, 1], ["coverage_dct"])
    assert header == ["option", "runs", "evaluator top-1", "coverage_dct", "dct k=0", "dct k=1"]
    assert rows[0] == ["defaults", "2", "0.600 ± 0.141", "0.200", "0.500 ± 0.141", "0.500 ± 0.000"]
    assert rows[1] == ["mixture", "2 mixed", "n/a", "n/a", "0.400 ± 0.141 †", "0.600 †"]
    header, rows = table_rows(per_option, [0], [])
    assert header[3:6] == ["coverage (n/a)", "recall (n/a)", "vendi (n/a)"] and rows[0][3:6] == ["n/a"] * 3


def test_a_finished_experiment_is_not_run_again(tmp_path):
    from benchmarks.diversity import State, augment

    state = State.load(tmp_path / "state.json")
    state.runs["defaults"] = ["r0", None]
    state.save()
    assert State.load(tmp_path / "state.json").runs == {"defaults": ["r0", None]}
    table = tmp_path / "augment" / "defaults-r0" / "augment.parquet"
    table.parent.mkdir(parents=True)
    table.write_bytes(b"")
    args = argparse.Namespace()  # nothing to run: no argument is read
    assert augment(args, "defaults-r0", ["r0"], state, tmp_path) == table
