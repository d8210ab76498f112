"""`dct probe`: which attributes a run's DCT images shift against its baseline images (docs/probe.md)."""

from __future__ import annotations

import argparse

from dct.commands.common import add_device_argument, positive_int, quiet_loader_progress


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "probe",
        help="bias probe: rank the image attributes a run's tokens shifted (baseline vs DCT, same seeds)",
        description="Reads a run's stored samples, measures attributes on baseline and DCT images paired by seed, "
        "and writes the `probe` table and a probe.html page beside the run report. Several --run options "
        "(optimisation runs of the same classes and seeds) widen the interval over runs.",
    )
    p.add_argument("--run", dest="runs", action="append", default=[], metavar="RUN_ID", help="run id (repeatable)")
    p.add_argument("--dataset", help="dataset of the runs; without --run, probe its latest run")
    p.add_argument("--store", help="store root URI (default: $DCT_STORE, else ./dct-store)")
    p.add_argument(
        "--attributes",
        default="all",
        help="comma list of built-in attributes and classifier sources (guide, evaluator); images = every "
        "built-in image statistic; default all",
    )
    p.add_argument("--fdr", type=float, default=0.05, help="Benjamini-Hochberg false-discovery rate (default 0.05)")
    p.add_argument(
        "--min-shift",
        type=float,
        default=0.05,
        help="smallest shift of interest in the attributes' 0-1 units (default 0.05; 0 = any shift)",
    )
    p.add_argument(
        "--min-effect",
        type=float,
        default=0.05,
        help="intervention margin: a significant shift is confirmed when moving the attribute alone moves the "
        "guide's probability of the class by more than this (0-1, default 0.05)",
    )
    p.add_argument(
        "--edit",
        dest="edits",
        action="append",
        default=[],
        metavar="[CLASS:]ATTRIBUTE=AMOUNT",
        help="also test this edit on the guide, significant or not (repeatable), e.g. 1:border_brightness=-0.3: "
        "does this run's guide follow the edit another guide's tokens made?",
    )
    p.add_argument("--bootstrap", type=positive_int, default=2000, help="bootstrap resamples (default 2000)")
    p.add_argument("--top-labels", type=positive_int, default=5, help="labels tested per class and classifier")
    add_device_argument(p)
    p.set_defaults(func=probe)


def probe(args: argparse.Namespace) -> int:
    from dct.artifacts.store import open_store
    from dct.config import RunConfig
    from dct.models.loading import resolve_device
    from dct.probe.probe import (
        build_extractors,
        check_samples_stored,
        find_runs,
        load_guide,
        parse_attribute_names,
        probe_records,
        run_records,
        summary_lines,
        write_probe,
    )

    # Cheapest checks first: arguments, the store's tables and records; models and images only after.
    names = parse_attribute_names(args.attributes)
    if not 0.0 < args.fdr < 1.0:
        raise ValueError(f"--fdr {args.fdr!r} must be within (0, 1), e.g. 0.05")
    if not 0.0 <= args.min_shift < 1.0:
        raise ValueError(f"--min-shift {args.min_shift!r} must be within [0, 1), e.g. 0.05 (0 = any shift)")
    if not 0.0 <= args.min_effect < 1.0:
        raise ValueError(f"--min-effect {args.min_effect!r} must be within [0, 1), e.g. 0.05 (a change in probability)")
    from dct.probe.attributes import softmax_probabilities
    from dct.probe.editors import ATTRIBUTE_EDITORS
    from dct.probe.intervention import parse_edit

    edits = [parse_edit(text, ATTRIBUTE_EDITORS) for text in args.edits]
    if args.bootstrap < 100:
        raise ValueError(f"--bootstrap {args.bootstrap!r} must be at least 100 resamples")
    device = resolve_device(args.device)
    quiet_loader_progress()
    store = open_store(args.store)
    runs = find_runs(store, args.runs, args.dataset)
    records_by_run = [run_records(store, r.dataset, r.run_id) for r in runs]
    for records in records_by_run:
        check_samples_stored(records)
    probed = set.intersection(*({r.class_id for r in recs} for recs in records_by_run))
    foreign = [e.class_id for e in edits if e.class_id is not None and e.class_id not in probed]
    if foreign:
        raise ValueError(f"--edit class(es) {foreign!r} are not among the probed classes {sorted(probed)}")
    config = RunConfig.model_validate_json(runs[0].config_json)
    guide = load_guide(config, device)
    extractors = build_extractors(names, config, device, guide=guide)
    result = probe_records(
        store,
        records_by_run,
        extractors,
        fdr=args.fdr,
        min_shift=args.min_shift,
        num_bootstrap=args.bootstrap,
        top_labels=args.top_labels,
        run_ids=[r.run_id for r in runs],
        guide=softmax_probabilities(guide),
        min_effect=args.min_effect,
        edits=edits,
    )
    uris, page = write_probe(store, result)
    for line in summary_lines(result.table):
        print(line)
    print(f"  table: {uris[0] if uris else 'no rows'}")
    print(f"  page:  {page}")
    return 0
