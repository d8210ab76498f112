"""Does fitting a class token to a fixed handful of noise seeds trade diversity for accuracy?

    python -m benchmarks.diversity                                   # toy, all classes, 3 runs per option
    python -m benchmarks.diversity --classes 0,2 --runs 1            # a quick look
    python -m benchmarks.diversity --dataset world.toml --real-train train/ --real-test test/

Four ways to learn (or use) a dataset's class tokens, each run R times with independent optimisation seeds:

- ``defaults``: the dataset's settings (the same ``images_per_epoch`` noise seeds every epoch, as the authors' code);
- ``fresh``: ``--seed-schedule fresh``, new noise seeds every epoch;
- ``ipe_x2``: ``--images-per-epoch`` twice the dataset's;
- ``mixture``: the R ``defaults`` runs' tokens as one mixture (``--run A --run B --run C``: each class's synthetic
  images drawn evenly from the runs' tokens; no training of its own).

For each option: ``dct run`` per run (run r uses ``--seed base + r × block``, ``block`` = every seed one run may
use, so the runs' noise never overlaps), then ``dct augment-eval`` at k = 0 (the Classification Accuracy Score),
1, 4, 8 per run (the mixture: one, over its runs). Prints one table: per option, mean ± std over runs of the
held-out evaluator's top-1 on the DCT samples (the ``classes`` table), of every ``classes`` column whose name
contains ``coverage``, ``recall`` or ``vendi`` (``n/a`` when the table has none), and of the downstream top-1 of
the ``dct`` arm at each k. The mixture's ``classes`` columns are ``n/a`` (it has no samples of its own); its
augment numbers are mean ± std over the experiment's training seeds (marked †).

Resumable: run ids and finished experiments are kept in ``--out``/state.json; a re-run skips a run whose id is
recorded and an experiment whose ``augment.parquet`` exists, and an interrupted ``dct run`` resumes where it
stopped (the store skips finished classes). Every command's output goes to ``--out``/logs/.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

DIVERSITY_WORDS = ("coverage", "recall", "vendi")
OPTIONS = ("defaults", "fresh", "ipe_x2", "mixture")


@dataclass(frozen=True)
class Option:
    """One way to learn the tokens: the override flags of its runs and the seed of run r."""

    name: str
    flags: tuple[str, ...] = ()
    seeds: tuple[int, ...] = ()
    block: int = 0
    mixture_of: str | None = None  # the option whose runs this one mixes

    def run_flags(self, r: int) -> list[str]:
        return [*self.flags, "--seed", str(self.seeds[r])]


@dataclass
class State:
    """What is finished: run ids per option (one per run) and the experiments whose table exists."""

    path: Path
    runs: dict[str, list[str | None]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> State:
        if not path.exists():
            return cls(path)
        data = json.loads(path.read_text())
        return cls(path, runs=data.get("runs", {}), seconds=data.get("seconds", {}))

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"runs": self.runs, "seconds": self.seconds}, indent=1, sort_keys=True))
        os.replace(tmp, self.path)


def plan_options(dataset: str, runs: int, names: Sequence[str] = OPTIONS) -> list[Option]:
    """The options with their runs' seeds: run r uses ``seed + r × block`` (block = ``all_seeds`` of one run), so
    the runs of an option never share optimisation noise and the mixture's runs are independent.

    Raises:
        ValueError: an unknown option, or seeds that reach the dataset's evaluation seeds (fewer runs, or move
            ``evaluation.seed``).
    """
    from dct.config import RunOverrides
    from dct.run.plan import build_config

    unknown = sorted(set(names) - set(OPTIONS))
    if unknown:
        raise ValueError(f"options {unknown} are not among {list(OPTIONS)}")
    if runs < 1:
        raise ValueError(f"--runs {runs} must be at least 1")
    if "mixture" in names and runs < 2:
        print(f"note: --runs {runs}: the mixture needs at least 2 runs to mix; it is left out")
        names = [n for n in names if n != "mixture"]
    _, base = build_config(dataset)
    ipe = base.training.images_per_epoch
    overrides = {
        "defaults": ((), RunOverrides()),
        "fresh": (("--seed-schedule", "fresh"), RunOverrides(seed_schedule="fresh")),
        "ipe_x2": (("--images-per-epoch", str(2 * ipe)), RunOverrides(images_per_epoch=2 * ipe)),
    }
    out = []
    for name in names:
        if name == "mixture":
            out.append(Option("mixture", mixture_of="defaults"))
            continue
        flags, ov = overrides[name]
        block = len(ov.apply(base).training.all_seeds)
        seeds = tuple(base.training.seed + r * block for r in range(runs))
        for seed in seeds:  # every run's configuration must pass RunConfig's check against the evaluation seeds
            RunOverrides(**{**ov.model_dump(exclude_none=True), "seed": seed}).apply(base)
        out.append(Option(name, flags, seeds, block))
    if "mixture" in names and "defaults" not in names:
        raise ValueError("the mixture mixes the defaults' runs: keep 'defaults' in --options")
    return out


def _dct(args: list[str], log: Path) -> str:
    """Run ``python -m dct.cli ARGS``, output to ``log``; returns stdout. Raises RuntimeError with the log's tail."""
    log.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([sys.executable, "-m", "dct.cli", *args], capture_output=True, text=True, check=False)
    log.write_text(f"$ dct {' '.join(args)}\n{proc.stdout}\n--- stderr ---\n{proc.stderr}")
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-8:])
        raise RuntimeError(f"`dct {' '.join(args[:1])}` exited {proc.returncode} (log {log}):\n{tail}")
    return proc.stdout


def _common(args: argparse.Namespace) -> list[str]:
    return [*(["--store", args.store] if args.store else []), "--device", args.device]


def run_option(args: argparse.Namespace, option: Option, state: State, out: Path) -> None:
    """``dct run`` for every run of the option not recorded yet (the store skips finished classes)."""
    ids = state.runs.setdefault(option.name, [None] * args.runs)
    ids += [None] * (args.runs - len(ids))
    for r in range(args.runs):
        if ids[r] is not None:
            print(f"  {option.name} run {r}: {ids[r]} (recorded)")
            continue
        t0 = time.perf_counter()
        argv = ["run", "--dataset", args.dataset, "--classes", args.classes, *option.run_flags(r), *_common(args)]
        stdout = _dct(argv, out / "logs" / f"run-{option.name}-{r}.log")
        last = json.loads(next(ln for ln in reversed(stdout.splitlines()) if ln.startswith('{"run_id"')))
        if last["status"] not in ("done", "partial"):
            raise RuntimeError(f"{option.name} run {r}: `dct run` ended {last['status']!r} (log in {out / 'logs'})")
        ids[r] = last["run_id"]
        state.seconds[f"run-{option.name}-{r}"] = time.perf_counter() - t0
        state.save()
        print(f"  {option.name} run {r}: {ids[r]} ({time.perf_counter() - t0:.0f} s)")


def augment(args: argparse.Namespace, name: str, run_ids: list[str], state: State, out: Path) -> Path:
    """``dct augment-eval`` of these runs (several: a mixture) unless its table exists; returns the table."""
    folder = out / "augment" / name
    table = folder / "augment.parquet"
    if table.exists():
        print(f"  augment {name}: {table} (exists)")
        return table
    t0 = time.perf_counter()
    argv = [
        "augment-eval", *(a for r in run_ids for a in ("--run", r)), "--shots", args.shots,
        "--synthetic-per-class", str(args.synthetic_per_class), "--seeds", str(args.train_seeds),
        "--out", str(folder), *_common(args),
    ]
    if args.dataset_arg:  # a run records its dataset file; given again when it moved
        argv += ["--dataset", args.dataset]
    for flag, value in (("--real-train", args.real_train), ("--real-test", args.real_test),
                        ("--steps", args.steps), ("--sanity-k", args.sanity_k)):
        if value is not None:
            argv += [flag, str(value)]
    _dct(argv, out / "logs" / f"augment-{name}.log")
    state.seconds[f"augment-{name}"] = time.perf_counter() - t0
    state.save()
    print(f"  augment {name}: {time.perf_counter() - t0:.0f} s")
    return table


def class_metrics(store, dataset: str, run_ids: Sequence[str], classes: Sequence[int]) -> list[dict[str, float]]:
    """Per run: the mean over the selected classes of the held-out evaluator's top-1 on the DCT samples and of
    every numeric ``classes`` column whose name holds a diversity word. Rows are those of the run's ``eval_key``
    (a class finished by an earlier run keeps its row there), the latest per class."""
    from dct.results import read_results, read_run_record

    df = read_results(store, "classes", dataset=dataset)
    wanted = ["evaluator_top1_dct", *diversity_columns(df.columns)]
    out = []
    for run_id in run_ids:
        record = read_run_record(store, dataset, run_id)
        rows = df[(df.eval_key == record.eval_key) & df.class_id.isin(list(classes)) & (df.status == "done")]
        rows = rows.sort_values("finished_at").drop_duplicates("class_id", keep="last")
        out.append({c: float(rows[c].astype(float).mean()) if c in rows and rows[c].notna().any() else math.nan
                    for c in wanted})
    return out


def diversity_columns(columns) -> list[str]:
    """The ``classes`` columns whose names contain ``coverage``, ``recall`` or ``vendi`` (both variants)."""
    return [c for c in columns if any(w in c.lower() for w in DIVERSITY_WORDS)]


def augment_numbers(table: Path, shots: Sequence[int], arm: str = "dct") -> dict[int, float]:
    """Mean over training seeds of the overall top-1 of ``arm`` at each k."""
    import pandas as pd

    df = pd.read_parquet(table)
    df = df[df.class_id.isna() & (df.arm == arm)]
    return {k: float(df[df.k == k].accuracy.mean()) if (df.k == k).any() else math.nan for k in shots}


def augment_by_seed(table: Path, shots: Sequence[int], arm: str = "dct") -> dict[int, list[float]]:
    """The overall top-1 of ``arm`` at each k, one value per training seed."""
    import pandas as pd

    df = pd.read_parquet(table)
    df = df[df.class_id.isna() & (df.arm == arm)]
    return {k: df[df.k == k].sort_values("seed").accuracy.tolist() for k in shots}


def mean_std(values: Sequence[float]) -> str:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "n/a"
    m = sum(values) / len(values)
    if len(values) == 1:
        return f"{m:.3f}"
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))
    return f"{m:.3f} ± {sd:.3f}"


def table_rows(
    per_option: dict[str, dict], shots: Sequence[int], diversity: Sequence[str]
) -> tuple[list[str], list[list[str]]]:
    """The printed table: header and one row per option (cells already formatted)."""
    words = list(diversity) or [f"{w} (n/a)" for w in DIVERSITY_WORDS]
    header = ["option", "runs", "evaluator top-1", *words, *(f"dct k={k}" for k in shots)]
    rows = []
    for name, data in per_option.items():
        metrics = data.get("metrics")  # None for the mixture
        cells = [name, str(data["runs"])]
        if metrics is None:
            cells += ["n/a"] * (1 + len(words))
        else:
            cells.append(mean_std([m["evaluator_top1_dct"] for m in metrics]))
            cells += [mean_std([m.get(c, math.nan) for m in metrics]) if diversity else "n/a" for c in words]
        mark = " †" if data.get("over_seeds") else ""
        cells += [mean_std(data["augment"][k]) + mark for k in shots]
        rows.append(cells)
    return header, rows


def print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default=None, help="registered name or dataset file (default toy)")
    p.add_argument("--classes", default="all", help='"all", ids "0,3", a range "0-9" (default all)')
    p.add_argument("--runs", type=int, default=3, help="independent runs per option (R; the mixture mixes R)")
    p.add_argument("--options", default=",".join(OPTIONS), help=f"comma-separated subset of {','.join(OPTIONS)}")
    p.add_argument("--store", help="store root (default: $DCT_STORE, else ./dct-store, as dct)")
    p.add_argument("--out", help="state, logs and augment tables (default ./diversity-<dataset>)")
    p.add_argument("--shots", default="0,1,4,8", help="augment-eval k values (default 0,1,4,8; 0 = CAS)")
    p.add_argument("--synthetic-per-class", type=int, default=64, help="augment-eval synthetic images per class")
    p.add_argument("--train-seeds", type=int, default=3, help="augment-eval training seeds (its --seeds)")
    p.add_argument("--steps", type=int, help="augment-eval optimiser steps (default its 600)")
    p.add_argument("--sanity-k", type=int, help="augment-eval --sanity-k (default its 64)")
    p.add_argument("--real-train", help="augment-eval --real-train (datasets other than toy)")
    p.add_argument("--real-test", help="augment-eval --real-test (datasets other than toy)")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    args.dataset_arg = args.dataset
    args.dataset = args.dataset or "toy"
    from dct.artifacts.store import open_store
    from dct.models.datasets import select_classes
    from dct.run.plan import build_config

    spec, _ = build_config(args.dataset)
    classes = select_classes(spec, args.classes)
    shots = sorted({int(s) for s in args.shots.split(",")})
    options = plan_options(args.dataset, args.runs, [o for o in args.options.split(",") if o])
    out = Path(args.out or f"diversity-{spec.name}").absolute()
    out.mkdir(parents=True, exist_ok=True)
    state = State.load(out / "state.json")
    store = open_store(args.store)
    t0 = time.perf_counter()
    print(f"diversity benchmark: {spec.name}, classes {args.classes} ({len(classes)}), {args.runs} runs per option, "
          f"store {store.root}, out {out}")
    per_option: dict[str, dict] = {}
    for option in options:
        print(f"{option.name}: " + (f"the {option.mixture_of} runs mixed" if option.mixture_of else
                                    f"flags {' '.join(option.flags) or '(none)'}, seeds {list(option.seeds)}"))
        if option.mixture_of:
            run_ids = [r for r in state.runs[option.mixture_of][: args.runs]]
            by_seed = augment_by_seed(augment(args, option.name, run_ids, state, out), shots)
            per_option[option.name] = {"runs": f"{len(run_ids)} mixed", "metrics": None, "augment": by_seed,
                                       "over_seeds": True}
            continue
        run_option(args, option, state, out)
        run_ids = state.runs[option.name][: args.runs]
        tables = [augment(args, f"{option.name}-r{r}", [rid], state, out) for r, rid in enumerate(run_ids)]
        per_run = [augment_numbers(t, shots) for t in tables]
        per_option[option.name] = {
            "runs": str(len(run_ids)), "run_ids": run_ids,
            "metrics": class_metrics(store, spec.name, run_ids, classes),
            "augment": {k: [a[k] for a in per_run] for k in shots},
        }
    from dct.results import read_results

    diversity = diversity_columns(read_results(store, "classes", dataset=spec.name).columns)
    if "defaults" in per_option:  # the real-only reference (no token involved): real_matched at k = 0, real above
        tables = [out / "augment" / f"defaults-r{r}" / "augment.parquet" for r in range(args.runs)]
        ref = [{**augment_numbers(t, [0], "real_matched"), **augment_numbers(t, [k for k in shots if k], "real")}
               for t in tables]
        per_option["real only"] = {"runs": "-", "metrics": None, "augment": {k: [a[k] for a in ref] for k in shots}}
    header, rows = table_rows(per_option, shots, diversity)
    print()
    print(f"{spec.name}, classes {args.classes}: mean ± std over runs (held-out evaluator top-1 and diversity: the "
          "classes table, DCT samples; dct k=…: downstream top-1 of augment-eval's dct arm, k = 0: synthetic only)")
    print_table(header, rows)
    print("real only: no token; k = 0 is real_matched (as many real images per class as --synthetic-per-class)")
    if any(d.get("over_seeds") for d in per_option.values()):
        print("† the mixture: one synthetic set of all its runs' tokens; ± over augment-eval's training seeds")
    if not diversity:
        print(f"(no classes column names {', '.join(DIVERSITY_WORDS)}: n/a)")
    result = {"dataset": spec.name, "classes": classes, "header": header, "rows": rows,
              "seconds": time.perf_counter() - t0, "step_seconds": state.seconds}
    (out / "diversity.json").write_text(json.dumps(result, indent=1))
    print(f"wrote {out / 'diversity.json'}; {result['seconds']:.0f} s this time, "
          f"{sum(state.seconds.values()):.0f} s of steps in all")
    return result


if __name__ == "__main__":
    main()
