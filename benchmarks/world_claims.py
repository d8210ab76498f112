"""The paper's first claim on a world, from `dct run` runs: per class, baseline, descriptive ceiling and DCT top-1 by
the held-out evaluator, the per-class FID/KID against the real images with the real-vs-real floor, and the pooled FID.

    python -m dct.fashion.evaluate --runs 0 --out fashion-ceiling            # baseline and ceiling (no optimisation)
    dct run --dataset fashion --seed 0; dct run --dataset fashion --seed 1000; dct run --dataset fashion --seed 2000
    python -m benchmarks.world_claims --dataset fashion --ceiling fashion-ceiling/results.json \\
        --run RUN_A --run RUN_B --run RUN_C [--store DIR]

DCT numbers are mean ± std over the runs (each run its own optimisation seeds); the baseline's do not depend on the
run (same prompts, same evaluation seeds). Checks the fashion world's acceptance (docs/worlds.md): on every class
whose ceiling reaches the world's ``ceiling_eligible``, DCT ≥ that in the mean of the runs and the mean gain over
those classes ≥ +0.5; the control classes (a group of one class, whose name is unambiguous) not worse than the
baseline by more than 0.05; pooled FID of DCT below the baseline's.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path


def _ms(values: list[float], digits: int = 2) -> str:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.fmean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def _mean(values) -> float:
    values = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return statistics.fmean(values) if values else math.nan


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="fashion", help="a built-in world's dataset (default fashion)")
    p.add_argument("--run", action="append", required=True, help="a `dct run` id (repeat: one per optimisation run)")
    p.add_argument("--ceiling", type=Path, required=True, help="results.json of `python -m dct.<world>.evaluate`")
    p.add_argument("--store", default=None, help="store root (default: $DCT_STORE, else ./dct-store)")
    p.add_argument("--out", type=Path, default=None, help="also write the numbers as JSON here")
    args = p.parse_args(argv)
    from dct.artifacts.store import open_store
    from dct.results import read_results, read_run_record
    from dct.worlds import get_world

    world = get_world(args.dataset)
    store = open_store(args.store)
    ceiling = {c["class_id"]: c for c in json.loads(args.ceiling.read_text())["classes"]}
    classes = read_results(store, "classes", dataset=world.name)
    runs = read_results(store, "runs", dataset=world.name)
    per_run = []
    for run_id in args.run:
        record = read_run_record(store, world.name, run_id)
        rows = classes[(classes.eval_key == record.eval_key) & (classes.status == "done")]
        per_run.append(rows.sort_values("finished_at").drop_duplicates("class_id", keep="last").set_index("class_id"))
    pooled = runs[runs.run_id.isin(args.run)]
    ids = sorted(set().union(*(r.index for r in per_run)) & set(ceiling))
    controls = [g[0] for g in world.groups if len(g) == 1]
    header = ("| id | class | name | baseline E | ceiling E (prompt) | DCT E, mean ± std over runs | gain | eligible "
              "| class FID baseline → DCT (real-vs-real floor) | class KID ×10³ baseline → DCT (floor) |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    out = {"classes": [], "runs": args.run}
    for cid in ids:
        base = _mean(r.loc[cid, "evaluator_top1_baseline"] for r in per_run if cid in r.index)
        dct = [float(r.loc[cid, "evaluator_top1_dct"]) for r in per_run if cid in r.index]
        ceil = ceiling[cid]["ceiling"]["evaluator"]
        eligible = ceil >= world.ceiling_eligible
        variants = ("baseline", "dct", "reference")
        fid = {v: [r.loc[cid, f"class_fid_{v}"] for r in per_run if cid in r.index] for v in variants}
        kid = {v: [1e3 * r.loc[cid, f"class_kid_{v}"] for r in per_run if cid in r.index] for v in variants}
        row = {"class_id": cid, "class": world.describe(cid), "name": world.class_names[cid], "baseline": base,
               "ceiling": ceil, "ceiling_prompt": ceiling[cid]["ceiling_prompt_noun"], "dct": dct,
               "dct_mean": statistics.fmean(dct), "eligible": eligible, "control": cid in controls,
               **{f"class_fid_{v}": _mean(x) for v, x in fid.items()},
               **{f"class_kid_{v}_e3": _mean(x) for v, x in kid.items()}}
        out["classes"].append(row)
        lines.append(
            f"| {cid} | {row['class']} | {row['name']} | {base:.2f} | {ceil:.2f} ({row['ceiling_prompt']}) | "
            f"{_ms(dct)} | {row['dct_mean'] - base:+.2f} | {'yes' if eligible else 'no'}"
            f"{' (control)' if row['control'] else ''} | {_mean(fid['baseline']):.1f} → {_ms(fid['dct'], 1)} "
            f"({_mean(fid['reference']):.2f}) | {_mean(kid['baseline']):.1f} → {_ms(kid['dct'], 1)} "
            f"({_mean(kid['reference']):.2f}) |"
        )
    print("\n".join(lines))
    fid_b, fid_d = _mean(pooled.fid_baseline), [float(x) for x in pooled.fid_dct]
    print(f"\npooled FID vs the real reference images ({len(pooled)} runs): baseline {fid_b:.2f}, DCT {_ms(fid_d)}")
    eligible = [r for r in out["classes"] if r["eligible"]]
    # The controls' names are unambiguous already (baseline 1.00 in the fashion world): they cannot gain, and are
    # judged by their own check; the mean gain is over the eligible classes whose names leave something to learn.
    judged = [r for r in eligible if not r["control"]]
    gain = statistics.fmean(r["dct_mean"] - r["baseline"] for r in judged) if judged else math.nan
    gain_all = statistics.fmean(r["dct_mean"] - r["baseline"] for r in eligible) if eligible else math.nan
    checks = {
        f"every eligible class (ceiling >= {world.ceiling_eligible}) reaches DCT >= {world.ceiling_eligible}": all(
            r["dct_mean"] >= world.ceiling_eligible for r in eligible),
        "mean gain over eligible classes other than the controls >= +0.5": gain >= 0.5,
        "control classes not worse than baseline by more than 0.05": all(
            r["dct_mean"] >= r["baseline"] - 0.05 for r in out["classes"] if r["control"]),
        "pooled FID: DCT below baseline": statistics.fmean(fid_d) < fid_b,
    }
    print(f"eligible classes: {[r['class_id'] for r in eligible]} (controls {controls}); mean gain {gain:+.3f} "
          f"without the controls, {gain_all:+.3f} with them; below the ceiling: "
          f"{[r['class_id'] for r in out['classes'] if not r['eligible']]} (reported, not judged)")
    for what, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}  {what}")
    out |= {"pooled_fid_baseline": fid_b, "pooled_fid_dct": fid_d, "mean_gain_eligible": gain,
            "mean_gain_eligible_with_controls": gain_all,
            "checks": checks, "table": lines}
    if args.out:
        args.out.write_text(json.dumps(out, indent=1, default=float))
    return out


if __name__ == "__main__":
    main()
