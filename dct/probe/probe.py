"""Probe stored runs: per class, the attributes whose values the DCT images shift against the baseline images.

Compute (:func:`probe_values`) is separate from I/O (:func:`load_paired_samples`, :func:`write_probe`).
The unit is a pair of images on the same noise seed; the statistics are in :mod:`dct.probe.stats` and the
table's columns in docs/probe.md.
"""

from __future__ import annotations

import datetime as dt
import logging
import posixpath
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pyarrow as pa
import torch

from dct.artifacts.images import decode_image
from dct.artifacts.store import PROBE_PAGE, VARIANTS, ArtifactStore
from dct.evaluation.report import add_report_section
from dct.probe.attributes import AttributeExtractor, softmax_probabilities
from dct.probe.editors import ATTRIBUTE_EDITORS, AttributeEditor
from dct.probe.intervention import (
    CONFIRMED,
    DEFAULT_MIN_EFFECT,
    NOT_CONFIRMED,
    NOT_TESTABLE,
    RequestedEdit,
    check_min_effect,
    intervene,
)
from dct.probe.page import backing_line, render_probe_page
from dct.probe.samples import PairedSamples, ProbeResult
from dct.probe.stats import (
    DEFAULT_BOOTSTRAP,
    DEFAULT_CONFIDENCE,
    DEFAULT_FDR,
    DEFAULT_MIN_SHIFT,
    benjamini_hochberg,
    paired_shifts,
)
from dct.results import (
    PROBE_SCHEMA,
    PROBE_SCHEMA_VERSION,
    ClassRecord,
    read_class_record,
    read_run_record,
    write_probe_table,
)

logger = logging.getLogger(__name__)

# A classifier source adds one attribute per label; per class only the labels most probable on either
# variant are tested (so a 10,000-label source adds a handful of rows per class, not 10,000).
DEFAULT_TOP_LABELS = 5


def check_samples_stored(records: Sequence[ClassRecord]) -> None:
    """Raises ValueError unless every record is finished and stored its samples (cheap: no image is read)."""
    if not records:
        raise ValueError("no finished classes to probe; run `dct run` first (the probe reads its stored samples)")
    none = [r.class_id for r in records if r.sample_format == "none" or not r.samples_uri]
    if none:
        r = records[0]
        shown = ", ".join(map(str, none[:10])) + (" ..." if len(none) > 10 else "")
        raise ValueError(
            f"run {r.run_id!r} stored no samples (sample_format=none) for class(es) {shown}; the probe compares "
            "stored images: re-run with evaluation.sample_format = \"png\" (or \"jpeg\")"
        )
    diverged = [r.class_id for r in records if r.status != "done"]
    if diverged:
        raise ValueError(f"class(es) {diverged!r} did not finish with status 'done'; probe only done classes")


def probe_eval_key(
    store: ArtifactStore,
    config,
    *,
    run_id: str,
    eval_key: str,
    class_ids: Sequence[int],
    attributes: str | None = None,
    device: torch.device | str = "cpu",
) -> tuple[list[str], str]:
    """What the flow's ``probe=true`` runs: probe the run's classes, write the table and the page.

    Args:
        config: the run's ``RunConfig`` (dataset, classifiers).
        run_id: the run that names the probe (its table file and page).
        eval_key: the run's evaluation key (its records and samples).
        class_ids: the run's selected classes.
        attributes: as ``dct probe --attributes`` (default all).

    Returns:
        ``(parquet URIs, page URI)`` from :func:`write_probe`.
    """
    names = parse_attribute_names(attributes)
    records = eval_key_records(store, config.dataset, eval_key, class_ids)
    check_samples_stored(records)
    guide = load_guide(config, device)
    extractors = build_extractors(names, config, device, guide=guide)
    result = probe_records(store, [records], extractors, run_ids=[run_id], guide=softmax_probabilities(guide))
    return write_probe(store, result)


def _seed_of(uri: str) -> int:
    return int(posixpath.basename(uri).split(".")[0])


def load_paired_samples(store: ArtifactStore, record: ClassRecord, seeds: Sequence[int] | None = None) -> PairedSamples:
    """A class's stored baseline and DCT samples on the seeds both variants have (or on ``seeds``).

    Raises:
        ValueError: the record stored no samples, or fewer than 2 seeds are shared by both variants.
    """
    check_samples_stored([record])
    by_variant = {
        v: {_seed_of(u): u for u in store.list_samples(record.dataset, record.eval_key, record.class_id, v)}
        for v in VARIANTS
    }
    common = sorted(set(by_variant["baseline"]) & set(by_variant["dct"]))
    if seeds is not None:
        common = [s for s in seeds if s in set(common)]
    if len(common) < 2:
        raise ValueError(
            f"class {record.class_id} of run {record.run_id!r} has {len(common)} seed(s) with both a baseline and a "
            f"DCT sample under {record.samples_uri!r}; the probe needs at least 2 (raise evaluation.num_samples)"
        )
    uris = {v: tuple(by_variant[v][s] for s in common) for v in VARIANTS}
    imgs = {v: torch.stack([decode_image(store.read_bytes(u)) for u in uris[v]]) for v in VARIANTS}
    return PairedSamples(record, tuple(common), imgs["baseline"], imgs["dct"], uris)


def _extract(extractors: Sequence[AttributeExtractor], images: torch.Tensor) -> dict[str, tuple[str, str, np.ndarray]]:
    out: dict[str, tuple[str, str, np.ndarray]] = {}
    for ex in extractors:
        vals = ex(images).cpu().numpy()
        for j, name in enumerate(ex.names):
            out[name] = (ex.name, ex.unit, vals[:, j])
    return out


def probe_values(
    samples: dict[int, list[PairedSamples]],
    extractors: Sequence[AttributeExtractor],
    *,
    top_labels: int = DEFAULT_TOP_LABELS,
    num_bootstrap: int = DEFAULT_BOOTSTRAP,
    confidence: float = DEFAULT_CONFIDENCE,
    fdr: float = DEFAULT_FDR,
    min_shift: float = DEFAULT_MIN_SHIFT,
    run_ids: Sequence[str] | None = None,
    created_at: dt.datetime | None = None,
    guide: Callable[[torch.Tensor], torch.Tensor] | None = None,
    min_effect: float = DEFAULT_MIN_EFFECT,
    editors: Mapping[str, AttributeEditor] | None = None,
    edits: Sequence[RequestedEdit] = (),
) -> ProbeResult:
    """The probe table of some classes: one row per class × attribute, q-values over ALL rows; every
    significant shift tested by intervention on the guide (:mod:`dct.probe.intervention`).

    Args:
        samples: class id → its paired samples, one per optimisation run (all on the same seeds).
        extractors: built-in statistics and/or classifier sources (:mod:`dct.probe.attributes`).
        top_labels: per class and multi-column source (a classifier), test only the labels among the
            ``top_labels`` most probable on either variant (never the class's own label when the source's
            labels are the dataset's classes: the token was optimised to raise it).
        num_bootstrap, confidence: the bootstrap interval (:func:`dct.probe.stats.paired_shifts`).
        fdr: the false-discovery rate of the Benjamini–Hochberg control; ``significant`` = q ≤ fdr and
            the interval lies beyond ``min_shift`` (wholly above it or below −min_shift).
        min_shift: the smallest shift of interest, in the attributes' units (:data:`DEFAULT_MIN_SHIFT`);
            p-values test |shift| ≤ min_shift (0: the classic test against no shift).
        run_ids: the probed runs, the first one naming the probe (its table file and page); default: the
            records' runs. A run that skipped finished classes probes records that earlier runs wrote.
        guide: images ``(B, 3, H, W)`` → ``(B, C)`` the run's guide's class probabilities; None: no
            intervention test (its columns stay null).
        min_effect: the intervention's margin on the guide's probability (:data:`DEFAULT_MIN_EFFECT`).
        editors: attribute → editor (default :data:`dct.probe.editors.ATTRIBUTE_EDITORS`); a significant
            shift of an attribute without one is ``not testable``.
        edits: interventions asked for by name: the row of that class and attribute is tested with the given
            amount instead of its shift, significant or not (``intervention_amount`` says which was used).

    Returns:
        A :class:`ProbeResult`.

    Raises:
        ValueError: no classes or extractors, runs of a class on different seeds, a bad ``fdr`` / ``top_labels``.
    """
    if not samples:
        raise ValueError("no classes to probe")
    if not extractors:
        raise ValueError("no attribute extractors given; pass at least one (see dct.probe.attributes)")
    if not 0.0 < fdr < 1.0:
        raise ValueError(f"fdr {fdr!r} must be within (0, 1), e.g. 0.05")
    if top_labels < 1:
        raise ValueError(f"top_labels {top_labels!r} must be a positive integer")
    if not 0.0 <= min_shift < 1.0:
        raise ValueError(f"min_shift {min_shift!r} must be within [0, 1), e.g. 0.05 (0 tests against no shift)")
    check_min_effect(min_effect)
    editors = ATTRIBUTE_EDITORS if editors is None else editors
    if edits and guide is None:
        raise ValueError("edits need the guide: pass guide= (the run's classifier) to test them")
    for e in edits:
        if e.class_id is not None and e.class_id not in samples:
            raise ValueError(f"--edit class {e.class_id} is not among the probed classes {sorted(samples)}")
    created_at = created_at or dt.datetime.now(dt.UTC)
    first = next(iter(samples.values()))[0].record
    run_ids = list(run_ids or sorted({p.record.run_id for runs in samples.values() for p in runs}))
    eval_keys = sorted({p.record.eval_key for runs in samples.values() for p in runs})
    rows: list[dict] = []
    diffs: dict[int, dict[str, np.ndarray]] = {}
    for cid in sorted(samples):
        runs = samples[cid]
        if len({p.seeds for p in runs}) != 1:
            raise ValueError(f"class {cid}: the runs were evaluated on different seeds; probe runs with the same seeds")
        per_run = [(_extract(extractors, p.baseline), _extract(extractors, p.dct)) for p in runs]
        keep = _kept_attributes(extractors, per_run, top_labels, cid)
        base = np.stack([[b[n][2] for n in keep] for b, _ in per_run]).transpose(0, 2, 1)  # (R, S, K)
        tok = np.stack([[d[n][2] for n in keep] for _, d in per_run]).transpose(0, 2, 1)
        st = paired_shifts(
            base, tok, num_bootstrap=num_bootstrap, confidence=confidence, min_shift=min_shift, seed=cid
        )
        diffs[cid] = {n: tok[:, :, k] - base[:, :, k] for k, n in enumerate(keep)}
        src = per_run[0][0]
        for k, name in enumerate(keep):
            rows.append(
                {
                    "schema_version": PROBE_SCHEMA_VERSION,
                    "run_id": run_ids[0],
                    "run_ids": run_ids,
                    "dataset": first.dataset,
                    "run_date": created_at.date(),
                    "eval_keys": eval_keys,
                    "class_id": cid,
                    "class_name": runs[0].record.class_name,
                    "source": src[name][0],
                    "attribute": name,
                    "unit": src[name][1],
                    "num_runs": st.num_runs,
                    "num_seeds": st.num_seeds,
                    "baseline_mean": float(st.baseline_mean[k]),
                    "baseline_spread": float(base[:, :, k].std()),
                    "dct_mean": float(st.dct_mean[k]),
                    "shift": float(st.shift[k]),
                    "ci_low": float(st.ci_low[k]),
                    "ci_high": float(st.ci_high[k]),
                    "effect_size": float(st.effect_size[k]),
                    "p_value": float(st.p_value[k]),
                    "confidence": confidence,
                    "fdr": fdr,
                    "min_shift": min_shift,
                    "min_effect": min_effect if guide is not None else None,
                    "num_bootstrap": num_bootstrap,
                    "created_at": created_at,
                }
            )
    q = benjamini_hochberg(np.array([r["p_value"] for r in rows]))
    for r, qv in zip(rows, q, strict=True):
        r["q_value"] = float(qv)
        r["significant"] = bool(qv <= fdr and (r["ci_low"] > min_shift or r["ci_high"] < -min_shift))
    if guide is not None:
        _test_by_intervention(rows, samples, guide, editors, edits, min_effect, num_bootstrap, confidence)
    # Rank within a class: significant shifts first — confirmed by intervention, then not testable, then not
    # confirmed — each by absolute shift (NOT by d: see dct.probe.stats).
    by_class: dict[int, list[dict]] = {}
    for r in rows:
        by_class.setdefault(r["class_id"], []).append(r)
    for cls_rows in by_class.values():
        for i, r in enumerate(sorted(cls_rows, key=_rank_key)):
            r["rank"] = i + 1
    rows.sort(key=lambda r: (r["class_id"], r["rank"]))
    return ProbeResult(pa.Table.from_pylist(rows, schema=PROBE_SCHEMA), samples, diffs)


_VERDICT_ORDER = {CONFIRMED: 0, None: 1, NOT_TESTABLE: 1, NOT_CONFIRMED: 2}


def _rank_key(row: dict) -> tuple:
    return (not row["significant"], _VERDICT_ORDER[row.get("intervention")], -abs(row["shift"]))


def _test_by_intervention(rows, samples, guide, editors, edits, min_effect, num_bootstrap, confidence) -> None:
    """Fill the intervention columns of every significant row and of every row an edit names (in place);
    other rows stay null."""
    unedited: dict[int, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
    for r in rows:
        asked = [e for e in edits if e.attribute == r["attribute"] and e.class_id in (None, r["class_id"])]
        if not r["significant"] and not asked:
            continue
        amount = asked[-1].amount if asked else r["shift"]
        editor = editors.get(r["attribute"]) if r["source"] == r["attribute"] else None
        if editor is None:
            r["intervention"] = NOT_TESTABLE
            continue
        cid, runs = r["class_id"], samples[r["class_id"]]

        def probability(images: torch.Tensor, cid: int = cid) -> torch.Tensor:
            return guide(images)[:, cid].float().cpu()

        if cid not in unedited:
            unedited[cid] = ([probability(p.baseline) for p in runs], [probability(p.dct) for p in runs])
        res = intervene(
            [p.baseline for p in runs],
            [p.dct for p in runs],
            editor,
            amount,
            probability,
            unedited=unedited[cid],
            min_effect=min_effect,
            num_bootstrap=num_bootstrap,
            confidence=confidence,
            seed=cid,
        )
        r.update(
            intervention=res.verdict,
            intervention_amount=amount,
            intervention_effect=res.effect,
            intervention_ci_low=res.ci_low,
            intervention_ci_high=res.ci_high,
            intervention_forward=res.forward,
            intervention_backward=res.backward,
            edit_reached=res.reached,
        )


def _kept_attributes(extractors, per_run, top_labels: int, class_id: int) -> list[str]:
    """Every single-column attribute; of a multi-column source, the ``top_labels`` most probable labels
    (without the class's own label when the source's labels are the dataset's classes)."""
    keep: list[str] = []
    for ex in extractors:
        names = [n for k, n in enumerate(ex.names) if not (ex.labels_are_classes and k == class_id)]
        if len(names) <= top_labels:
            keep += names
            continue
        score = {n: max(max(b[n][2].mean(), d[n][2].mean()) for b, d in per_run) for n in names}
        keep += sorted(names, key=lambda n: -score[n])[:top_labels]
    return keep


def run_records(
    store: ArtifactStore, dataset: str, run_id: str, class_ids: Sequence[int] | None = None
) -> list[ClassRecord]:
    """The ``done`` records of a run's configuration (its ``eval_key``), by class id.

    Args:
        class_ids: only these classes (default: every finished one of the ``eval_key``).

    Raises:
        ValueError: the store has no run ``run_id`` of ``dataset``.
    """
    run = read_run_record(store, dataset, run_id)
    if run is None:
        raise ValueError(f"no run {run_id!r} of dataset {dataset!r} in store {store.root!r}; check --run / --store")
    return eval_key_records(store, dataset, run.eval_key, class_ids)


def eval_key_records(
    store: ArtifactStore, dataset: str, eval_key: str, class_ids: Sequence[int] | None = None
) -> list[ClassRecord]:
    """The ``done`` records of ``eval_key`` (one listing), by class id; diverged classes have no token to probe."""
    ids = sorted(store.finished_class_ids(dataset, eval_key, class_ids))
    records = [r for c in ids if (r := read_class_record(store, dataset, eval_key, c)) is not None]
    return [r for r in records if r.status == "done"]


def probe_records(
    store: ArtifactStore,
    records_by_run: Sequence[Sequence[ClassRecord]],
    extractors: Sequence[AttributeExtractor],
    **options,
) -> ProbeResult:
    """Load the paired samples of the classes every run finished and probe them (``options``: :func:`probe_values`).

    Raises:
        ValueError: a run without stored samples (before any image is read), or no class shared by the runs.
    """
    for records in records_by_run:
        check_samples_stored(records)
    shared = set.intersection(*({r.class_id for r in recs} for recs in records_by_run))
    if not shared:
        raise ValueError("the runs share no finished class; probe runs of the same dataset and classes")
    samples: dict[int, list[PairedSamples]] = {}
    for cid in sorted(shared):
        first = load_paired_samples(store, next(r for r in records_by_run[0] if r.class_id == cid))
        others = [
            load_paired_samples(store, next(r for r in recs if r.class_id == cid), first.seeds)
            for recs in records_by_run[1:]
        ]
        samples[cid] = [first, *others]
    return probe_values(samples, extractors, **options)


def write_probe(store: ArtifactStore, result: ProbeResult, *, max_classes: int = 200) -> tuple[list[str], str]:
    """Write the ``probe`` table and the probe page (beside the report of the first run).

    Returns:
        ``(parquet URIs, page URI)``.
    """
    uris = write_probe_table(store, result.table)
    row = result.table.slice(0, 1).to_pylist()[0]
    page_uri = store.probe_page_uri(row["dataset"], row["run_id"])
    page = render_probe_page(store, result, page_uri, max_classes=max_classes)
    store.write_bytes(page_uri, page.encode("utf-8"))
    # The run report links the page: spliced into an existing index.html (a probe after the run), or stored
    # for the report to include (the flow's probe runs before the report).
    add_report_section(store, row["dataset"], row["run_id"], PROBE_SECTION, probe_section_html(result.table))
    logger.info("probe of run %s: %s", row["run_id"], page_uri)
    return uris, page_uri


PROBE_SECTION = "probe"


def probe_section_html(table: pa.Table) -> str:
    """The run report's link to the probe page, with the probe's counts."""
    rows = table.to_pylist()
    classes = len({r["class_id"] for r in rows})
    significant = sum(r["significant"] for r in rows)
    return (
        f'<p><a href="{PROBE_PAGE}">Bias probe: attributes the tokens shifted</a> '
        f"({significant} significant shifts over {classes} classes)</p>"
    )


def _finding(r: dict) -> str:
    text = f"{r['attribute']} {r['shift']:+.3f} [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]"
    if r.get("intervention_effect") is not None:
        text += (
            f" -> guide P(class) {r['intervention_effect']:+.3f} "
            f"[{r['intervention_ci_low']:+.3f}, {r['intervention_ci_high']:+.3f}]"
        )
    return text


def summary_lines(table: pa.Table, *, per_class: int = 3, max_classes: int = 20) -> list[str]:
    """A short text summary: counts and what backs them, then per class its significant shifts — confirmed by
    intervention first, then not confirmed, then not testable — each in absolute units with its interval."""
    rows = table.to_pylist()
    if not rows:
        return ["probe: no rows"]
    sig = [r for r in rows if r["significant"]]
    classes = sorted({r["class_id"] for r in rows})
    r0 = rows[0]
    verdicts = {v: [r for r in sig if r.get("intervention") == v] for v in (CONFIRMED, NOT_CONFIRMED, NOT_TESTABLE)}
    tested = r0.get("min_effect") is not None
    counts = (
        f"{len(verdicts[CONFIRMED])} confirmed by intervention on the guide (P(class) rises by > "
        f"{r0['min_effect']:g}), {len(verdicts[NOT_CONFIRMED])} not confirmed, {len(verdicts[NOT_TESTABLE])} not "
        "testable"
        if tested
        else "no intervention test (no guide given)"
    )
    out = [
        f"probe of run {r0['run_id']} ({r0['dataset']}): {len(classes)} classes x {len(rows) // len(classes)} "
        f"attributes, {len(sig)} significant shifts (|shift| > {r0['min_shift']:g}, BH FDR {r0['fdr']:.0%}, "
        f"{r0['confidence']:.0%} bootstrap CI beyond it); {counts}",
        f"  {backing_line(r0['num_runs'], r0['num_seeds'])}",
    ]
    shown = 0
    for cid in classes:
        mine = [r for r in rows if r["class_id"] == cid and r["significant"]]
        if not mine:
            continue
        if shown == max_classes:
            out.append("  ... more classes in the probe table")
            break
        shown += 1
        out.append(f"  class {cid} {mine[0]['class_name']}:")
        groups = [(v, [r for r in mine if r.get("intervention") == v]) for v in verdicts]
        if not tested:
            groups = [("significant", mine)]
        for label, group in groups:
            if group:
                more = f" (+{len(group) - per_class} more)" if len(group) > per_class else ""
                out.append(f"    {label}: " + "; ".join(_finding(r) for r in group[:per_class]) + more)
    if not sig:
        out.append("  no attribute shifted significantly")
    asked = [r for r in rows if r.get("intervention_amount") is not None and r["intervention_amount"] != r["shift"]]
    if asked:
        out.append("  edits asked for (--edit), significant or not:")
        for r in asked:
            out.append(
                f"    class {r['class_id']} {r['class_name']}: {r['attribute']} moved by "
                f"{r['intervention_amount']:+.3f} (its shift here {r['shift']:+.3f}): {r['intervention']}, "
                f"guide P(class) {r['intervention_effect']:+.3f} "
                f"[{r['intervention_ci_low']:+.3f}, {r['intervention_ci_high']:+.3f}]"
            )
    return out


# Classifier sources that ``--attributes`` can name: the run's own guide and its held-out evaluator.
CLASSIFIER_SOURCES = ("guide", "evaluator")


def parse_attribute_names(text: str | None) -> list[str]:
    """``"all"`` (every built-in and both classifier sources), or a comma list of built-ins / sources, where
    ``images`` stands for every built-in image statistic (no classifier).

    Raises:
        ValueError: an unknown name (the message lists the valid ones).
    """
    from dct.probe.attributes import ATTRIBUTE_EXTRACTORS

    names = [n.strip() for n in (text or "all").split(",") if n.strip()]
    if names == ["all"]:
        return [*ATTRIBUTE_EXTRACTORS, *CLASSIFIER_SOURCES]
    valid = [*ATTRIBUTE_EXTRACTORS, *CLASSIFIER_SOURCES]
    unknown = [n for n in names if n not in valid and n != "images"]
    if unknown or not names:
        raise ValueError(f"--attributes {text!r}: unknown {unknown!r}; choose from {valid}, 'images' or 'all'")
    expanded = [x for n in names for x in (ATTRIBUTE_EXTRACTORS if n == "images" else [n])]
    return list(dict.fromkeys(expanded))


def load_guide(config, device: torch.device | str = "cpu"):
    """The run config's guiding classifier (an ``ImageClassifier``), loaded once for the probe."""
    from dct.models.classifiers import load_classifier

    return load_classifier(config.classifier, device).classifier


def build_extractors(
    names: Sequence[str], config, device: torch.device | str = "cpu", *, guide=None
) -> list[AttributeExtractor]:
    """The extractors ``names`` ask for; ``guide`` / ``evaluator`` load the run config's classifiers.

    Args:
        names: from :func:`parse_attribute_names`.
        config: the probed run's ``RunConfig`` (its classifier and evaluator).
        device: where the classifiers run.
        guide: the guide, if already loaded (:func:`load_guide`): not loaded twice.

    Returns:
        The extractors; ``evaluator`` is left out (with a log line) when the run has none.
    """
    from dct.models.classifiers import load_classifier
    from dct.probe.attributes import classifier_attributes, resolve_attributes

    builtins = [n for n in names if n not in CLASSIFIER_SOURCES]
    out = resolve_attributes(builtins) if builtins else []
    for source in (n for n in names if n in CLASSIFIER_SOURCES):
        if source == "guide" and guide is not None:
            out.append(classifier_attributes(guide, source, labels_are_classes=True))
            continue
        clf_config = config.classifier if source == "guide" else config.evaluation.evaluator
        if clf_config is None:
            logger.info("the run has no evaluator: attribute source 'evaluator' skipped")
            continue
        clf = load_classifier(clf_config, device).classifier
        out.append(classifier_attributes(clf, source, labels_are_classes=True))
    return out


def find_runs(
    store: ArtifactStore, run_ids: Sequence[str], dataset: str | None, *, token_key: str | None = None
) -> list:
    """The ``RunRecord``s of ``run_ids`` (or, with none, the latest run of ``dataset``), all of one dataset.

    Args:
        dataset: the runs' dataset: its name in the store, or a dataset file (its ``name`` is looked up, as
            every command takes a dataset file where it takes a dataset); a given run of another dataset is
            refused by name.
        token_key: only runs that learned their tokens under this key: the latest such run when no
            ``run_ids`` are given; a given run with another key is refused (``dct augment-eval``).

    Raises:
        ValueError: neither given, a run not in the store, a run of another dataset, runs of several
            datasets, a run with another ``token_key``.
    """
    from dct.models.datasets import is_dataset_file, load_dataset_file
    from dct.results import read_results

    if not run_ids and not dataset:
        raise ValueError("give --run RUN_ID (repeatable) or --dataset D (its latest run)")
    if dataset and is_dataset_file(dataset):
        # Runs are stored under the dataset's name; a registered name (or the name of a file's runs) is one.
        dataset = load_dataset_file(dataset).name
    # Named runs are looked up in every dataset, so a run of another one is named as such, not as missing.
    runs = read_results(
        store, "runs", dataset=None if run_ids else dataset, columns=["run_id", "dataset", "token_key", "started_at"]
    )
    if run_ids:
        missing = [r for r in run_ids if r not in set(runs["run_id"])]
        if missing:
            raise ValueError(f"no run {missing!r} in store {store.root!r}; check --run / --store")
        runs = runs[runs["run_id"].isin(run_ids)]
        foreign = runs[runs["dataset"] != dataset] if dataset else runs.iloc[:0]
        if len(foreign):
            r = foreign.iloc[0]
            raise ValueError(
                f"run {r['run_id']!r} is a run of dataset {r['dataset']!r}, not {dataset!r}; "
                f"pass --dataset {r['dataset']} or a run of {dataset!r}"
            )
        if token_key is not None:
            other = runs[runs["token_key"] != token_key]
            if len(other):
                r = other.iloc[0]
                raise ValueError(
                    f"run {r['run_id']!r} learned its tokens under token_key {r['token_key']!r}, not "
                    f"{token_key!r} (the tokens used here); pass a run with token_key {token_key!r} or leave --run out"
                )
    else:
        if token_key is not None:
            runs = runs[runs["token_key"] == token_key]
        if runs.empty:
            keyed = f" with token_key {token_key!r}" if token_key is not None else ""
            raise ValueError(
                f"no run of dataset {dataset!r}{keyed} in store {store.root!r}; run `dct run` first or check --store"
            )
        runs = runs.sort_values("started_at").tail(1)
    datasets = sorted(set(runs["dataset"]))
    if len(datasets) != 1:
        raise ValueError(f"runs {list(run_ids)!r} belong to datasets {datasets!r}; probe one dataset at a time")
    records = [read_run_record(store, datasets[0], rid) for rid in dict.fromkeys(runs["run_id"])]
    missing = [rid for rid, r in zip(dict.fromkeys(runs["run_id"]), records, strict=True) if r is None]
    if missing:
        raise ValueError(f"run(s) {missing!r} have a runs-table row but no run.json in {store.root!r}; re-publish them")
    return records
