"""A static HTML report per run: what the images look like, how accurate they are, and what made them.

Layout, under the run's folder (``runs/{dataset}/{run_id}/report/``)::

    index.html        summary (counts, mean accuracies, pooled FID/KID, uplift distribution, worst and best
                      classes, failures); the per-class table (a static table up to STATIC_TABLE_MAX
                      classes, above that searchable/sortable/paged by the page itself from classes.js);
                      baseline vs DCT grids on the same seeds (every class of a small run, the worst and
                      best classes of a large one); run metadata; models and their licences
    class.html        the detail page of ANY class (``class.html#c123``): accuracies, token, both variants'
                      samples, loaded lazily from the store; rendered from classes.js by the page
    classes.js        the class index (``window.DCT_REPORT = {...}``): one small row per selected class
    summary.png       distribution of the per-class uplift (DCT − baseline top-1: histogram and a
                      baseline-vs-DCT density), guide and evaluator
    accuracy.png      top-1 accuracy per class, baseline vs DCT (bars up to 40 classes, else a scatter;
                      only up to STATIC_TABLE_MAX classes)
    gain_coverage.png per class: top-1 accuracy gain vs coverage change (DCT − baseline), one point per class
    thumbs/{class_id:05d}-{variant}-{seed:06d}.{png|jpg}
    sections/{name}.html   sections other commands added to the finished report (``dct augment-eval``:
                      ``augment``), shown in index.html between markers (:func:`add_report_section`)

At 10,000 classes the report reads nothing per class beyond the records it is given (thumbnails only
for the grid classes), and the HTML stays small: the per-class data is one ``classes.js`` loaded with a
``<script>`` tag (works from ``file://``, a bucket website or a downloaded copy; no server needed).

Links: every thumbnail is a COPY inside ``report/`` (small images byte-for-byte, larger ones downscaled
to ``thumb_size`` JPEG), so the report folder alone is self-contained: it renders from the store, from a
static-website bucket, or after ``aws s3 cp --recursive .../report ./report``. Each thumbnail also links
to its full-size sample by a RELATIVE path into the store layout (``../../../../samples/...``), which
resolves inside the store or a downloaded copy of the whole store; ``class.html`` shows samples from
those same relative paths (so it needs the store beside the report, as the full-size links do).
No absolute path or store URI is
written into the HTML, so moving the store does not break it.

The pages are Jinja2 templates shipped with the package (``templates/``: ``index.html.j2``, ``class.html.j2``,
``report.css``, the tables' JavaScript); the per-class columns are the registered metrics (:mod:`dct.class_metrics`)
that have a value. Compute (:func:`accuracy_plot_png`, :func:`render_report_html`) is separate from I/O
(:func:`write_run_report`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the report reads a plan; it never makes one
    from dct.run.plan import RunPlan

import datetime as dt
import functools
import html
import importlib.resources
import io
import json
import logging
import os
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import jinja2
from markupsafe import Markup

from dct.artifacts.store import VARIANTS, ArtifactStore
from dct.class_metrics import CLASS_METRICS, REFERENCE, ClassMetric, column, metric_columns
from dct.config import RunConfig, baseline_prompts, epoch_prompts
from dct.evaluation.metrics import PooledMetrics
from dct.results import ClassRecord, read_class_outcomes

logger = logging.getLogger(__name__)

REPORT_DIR = "report"
INDEX_FILE = "index.html"
PLOT_FILE = "accuracy.png"
THUMBS_DIR = "thumbs"
BAR_CHART_MAX_CLASSES = 40  # above this, the plot is a baseline-vs-DCT scatter instead of bars
SUMMARY_PLOT_FILE = "summary.png"
SCATTER_PLOT_FILE = "gain_coverage.png"
INDEX_JS_FILE = "classes.js"
DETAIL_FILE = "class.html"
STATIC_TABLE_MAX = 500  # above this many classes the per-class table is built by the page from classes.js
EXTREMES = 10  # worst and best classes listed (and shown as grids in a large run)
FAILURES_SHOWN = 100
# Sections other commands add to a finished report (``dct augment-eval``): one HTML fragment each under
# ``report/sections/{name}.html``, shown in ``index.html`` between markers so a later write replaces only it.
SECTIONS_DIR = "sections"
_SUMMARY_H2 = "<h2>Summary</h2>"


@dataclass(frozen=True)
class GridImage:
    """One cell of a class grid: the thumbnail inside the report, and the full sample in the store."""

    seed: int
    thumb_href: str  # relative to the report folder
    full_href: str  # relative to the report folder, into the store layout


@dataclass
class ClassSection:
    class_id: int
    record: ClassRecord | None  # None: the class left no record in this run
    images: dict[str, list[GridImage]] = field(default_factory=dict)
    from_earlier_run: bool = False


# ---------------------------------------------------------------------------------------------------------
# Compute: plot and HTML (no I/O)
# ---------------------------------------------------------------------------------------------------------


def _acc(r: ClassRecord | None, who: str, k: int, variant: str) -> float | None:
    return getattr(r, column(f"{who}_top{k}", variant)) if r is not None else None


def accuracy_plot_png(records: Sequence[ClassRecord], *, title: str = "") -> bytes:
    """PNG of top-1 accuracy per class, baseline vs DCT, one panel per classifier (guide, evaluator).

    Bars per class up to :data:`BAR_CHART_MAX_CLASSES` classes; above that, one point per class
    (baseline on x, DCT on y; above the diagonal = DCT helped).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np

    recs = sorted((r for r in records if r.status != "failed"), key=lambda r: r.class_id)
    panels = [("guide", "guide (optimised against)")]
    if any(r.evaluator_top1_dct is not None for r in recs):
        panels.append(("evaluator", "held-out evaluator"))
    n = len(recs)
    bars = n <= BAR_CHART_MAX_CLASSES
    panel_width = max(4.5, min(12.0, 0.35 * n + 2.5)) if bars else 4.5
    fig, axes = plt.subplots(1, len(panels), figsize=(panel_width * len(panels), 3.6), squeeze=False)
    for ax, (who, label) in zip(axes.ravel(), panels, strict=True):
        base = np.array([np.nan if (a := _acc(r, who, 1, "baseline")) is None else a for r in recs], dtype=float)
        dct = np.array([np.nan if (a := _acc(r, who, 1, "dct")) is None else a for r in recs], dtype=float)
        if bars:
            x = np.arange(n)
            ax.bar(x - 0.2, base, 0.4, label="baseline prompt", color="#9aa5b1")
            ax.bar(x + 0.2, dct, 0.4, label="DCT token", color="#d9480f")
            ax.set_xticks(x, [f"{r.class_id}\n{r.class_name[:14]}" for r in recs], fontsize=7)
            ax.set_ylabel("top-1 accuracy")
        else:
            ax.plot([0, 1], [0, 1], color="#888", lw=1, ls="--")
            ax.scatter(base, dct, s=10, alpha=0.6, color="#d9480f")
            ax.set_xlabel("baseline top-1")
            ax.set_ylabel("DCT top-1")
            ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(0, 1.05)
        mean_b = float(np.nanmean(base)) if np.isfinite(base).any() else float("nan")
        mean_d = float(np.nanmean(dct)) if np.isfinite(dct).any() else float("nan")
        ax.set_title(f"{label}: mean top-1 {mean_b:.2f} → {mean_d:.2f}", fontsize=10)
        if bars:
            ax.legend(fontsize=8, loc="upper left")
    if title:
        fig.suptitle(title, fontsize=11)
    return figure_png(fig, dpi=110)


def figure_png(fig, *, dpi: float | None = None) -> bytes:
    """A matplotlib figure as PNG bytes (laid out tight, then closed); the report's and augment-eval's plots."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi if dpi is not None else "figure")
    plt.close(fig)
    return buf.getvalue()


def _uplift(r: ClassRecord | None, who: str) -> float | None:
    """DCT − baseline top-1 of one class and classifier (None where either is missing)."""
    b, d = _acc(r, who, 1, "baseline"), _acc(r, who, 1, "dct")
    return None if b is None or d is None else d - b


def ranking_classifier(records: Sequence[ClassRecord]) -> str:
    """Which accuracy ranks classes: the held-out evaluator's where there is one (the honest measure)."""
    return "evaluator" if any(r.evaluator_top1_dct is not None for r in records) else "guide"


def extreme_classes(records: Sequence[ClassRecord], k: int = EXTREMES) -> tuple[list[ClassRecord], list[ClassRecord]]:
    """``(worst, best)``: the ``k`` finished classes with the lowest and the highest top-1 uplift.

    Ties are broken by class id, so the lists are deterministic.
    """
    who = ranking_classifier(records)
    scored = sorted(
        ((u, r.class_id, r) for r in records if r.status != "failed" and (u := _uplift(r, who)) is not None),
        key=lambda t: (t[0], t[1]),
    )
    worst = [r for _, _, r in scored[:k]]
    best = [r for _, _, r in sorted(scored, key=lambda t: (-t[0], t[1]))[:k]]
    return worst, best


def uplift_plot_png(records: Sequence[ClassRecord], *, title: str = "") -> bytes:
    """PNG of the per-class uplift at any number of classes, per classifier (guide, evaluator).

    Per classifier two panels: the histogram of DCT − baseline top-1 over classes (mean and median
    marked), and the density of (baseline, DCT) top-1 pairs as a 2-D histogram (above the diagonal =
    DCT helped). Neither turns into a solid block at 10,000 classes, as a scatter of points does.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np

    recs = [r for r in records if r.status != "failed"]
    whos = ["guide"] + (["evaluator"] if any(r.evaluator_top1_dct is not None for r in recs) else [])
    fig, axes = plt.subplots(len(whos), 2, figsize=(10, 3.4 * len(whos)), squeeze=False)
    for row, who in zip(axes, whos, strict=True):
        pairs = np.array(
            [(b, d) for r in recs if (b := _acc(r, who, 1, "baseline")) is not None
             and (d := _acc(r, who, 1, "dct")) is not None],
            dtype=float,
        ).reshape(-1, 2)
        up = pairs[:, 1] - pairs[:, 0]
        ax = row[0]
        if up.size:
            ax.hist(up, bins=np.linspace(-1, 1, 41), color="#d9480f", alpha=0.85)
            ax.axvline(float(np.mean(up)), color="#1b1f24", lw=1.2, label=f"mean {np.mean(up):+.3f}")
            ax.axvline(float(np.median(up)), color="#1b1f24", lw=1.2, ls="--", label=f"median {np.median(up):+.3f}")
            ax.legend(fontsize=8, loc="upper left")
        ax.axvline(0, color="#888", lw=0.8)
        helped = float(np.mean(up > 0)) if up.size else float("nan")
        ax.set_title(f"{who}: top-1 uplift (DCT − baseline), {up.size} classes, {helped:.0%} improved", fontsize=10)
        ax.set_xlabel("uplift in top-1 accuracy")
        ax.set_ylabel("classes")
        ax = row[1]
        if up.size:
            h = ax.hist2d(pairs[:, 0], pairs[:, 1], bins=20, range=[[0, 1], [0, 1]], cmap="Oranges", cmin=1)
            fig.colorbar(h[3], ax=ax, label="classes")
        ax.plot([0, 1], [0, 1], color="#555", lw=1, ls="--")
        ax.set_xlabel("baseline top-1")
        ax.set_ylabel("DCT top-1")
        ax.set_title(f"{who}: baseline vs DCT top-1 (density)", fontsize=10)
    if title:
        fig.suptitle(title, fontsize=11)
    return figure_png(fig, dpi=100)


def gain_coverage_plot_png(records: Sequence[ClassRecord], *, title: str = "") -> bytes | None:
    """PNG: per class, the top-1 accuracy gain (DCT − baseline; held-out evaluator where there is one) against
    the coverage change (DCT − baseline), one point per class; None when no class has both.

    Right of 0: DCT's images cover more of the class's real images; above 0: more are classified right. A
    class low on the left gained accuracy by losing diversity.
    """
    who = ranking_classifier(records)
    points = [
        (cd - cb, u)
        for r in records
        if r.status != "failed"
        and (u := _uplift(r, who)) is not None
        and (cb := r.coverage_baseline) is not None
        and (cd := r.coverage_dct) is not None
    ]
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np

    xy = np.array(points, dtype=float)
    fig, ax = plt.subplots(figsize=(5.6, 4.2))
    ax.axhline(0, color="#888", lw=0.8)
    ax.axvline(0, color="#888", lw=0.8)
    ax.scatter(xy[:, 0], xy[:, 1], s=14 if len(xy) <= 500 else 4, alpha=0.7 if len(xy) <= 500 else 0.3,
               color="#d9480f")
    lower_left = float(np.mean((xy[:, 0] < 0) & (xy[:, 1] > 0)))
    ax.set_xlabel("coverage change (DCT − baseline)")
    ax.set_ylabel(f"{who} top-1 gain (DCT − baseline)")
    ax.set_title(
        f"{len(xy)} classes: mean coverage change {xy[:, 0].mean():+.2f}, mean gain {xy[:, 1].mean():+.2f}\n"
        f"{lower_left:.0%} gained accuracy while losing coverage (upper left)",
        fontsize=9,
    )
    if title:
        fig.suptitle(title, fontsize=10)
    return figure_png(fig, dpi=100)


def class_index(
    *, plan: RunPlan, sections: Sequence[ClassSection], sample_prefixes: dict[int, str], max_images: int,
    seeds: Sequence[int],
) -> dict[str, Any]:
    """The report's class index (written as ``classes.js``): one small row per selected class.

    Args:
        sample_prefixes: class id → relative path (from the report folder) of its samples folder.
    """
    rows = []
    for s in sections:
        r = s.record
        row: dict[str, Any] = {"id": s.class_id, "name": r.class_name if r else ""}
        row["status"] = r.status if r else "no record"
        if r is not None:
            for m, v, col in metric_columns():  # short keys: g1b = guide_top1_baseline, ...
                row[m.js_key(v)] = getattr(r, col)
            row |= {"ep": r.epochs, "token": r.token, "earlier": s.from_earlier_run}
            if r.status != "failed" and s.class_id in sample_prefixes:
                row |= {"s": sample_prefixes[s.class_id], "x": r.sample_format, "n": r.num_samples}
            if r.error:
                row["err"] = r.error.strip().splitlines()[0][:300] if r.error.strip() else ""
        rows.append(row)
    return {
        "dataset": plan.dataset,
        "run_id": plan.run_id,
        "seeds": list(seeds)[:max_images],
        "metrics": [
            {"key": m.key, "label": m.label, "variants": [v[0] for v in m.variants], "digits": m.digits,
             "better": m.better}
            for m in shown_metrics([s.record for s in sections if s.record is not None])
        ],
        "classes": rows,
    }


def shown_metrics(records: Sequence[ClassRecord]) -> list[ClassMetric]:
    """The registered metrics (registry order) that have a value for at least one of ``records``: the
    columns of the report's per-class tables (no evaluator: no evaluator columns; no features: none of theirs)."""
    return [m for m in CLASS_METRICS if any(getattr(r, c) is not None for r in records for c in m.columns)]


def _metric_cell(r: ClassRecord | None, m: ClassMetric) -> dict[str, Any]:
    """One metric's cell of the static table: baseline → DCT text, change, colour, the reference's value."""
    b, d = (None, None) if r is None else (getattr(r, m.column("baseline")), getattr(r, m.column("dct")))
    ref = getattr(r, m.column(REFERENCE)) if r is not None and REFERENCE in m.variants else None
    change = d - b if b is not None and d is not None else None
    better = None if change is None else change if m.better == "higher" else -change
    return {
        "text": f"{_fmt(b, m.digits)} → {_fmt(d, m.digits)}",
        "cls": _change_class(better),
        "ref": None if ref is None else _fmt(ref, m.digits),
        "d": "" if d is None else repr(d),
        "u": "" if change is None else repr(change),
    }


def class_index_js(index: dict[str, Any]) -> str:
    """``classes.js``: the index as a script (a ``<script src>`` loads from ``file://``; ``fetch`` does not)."""
    body = json.dumps(index, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    return "window.DCT_REPORT=" + body.replace("</", "<\\/") + ";\n"


_TEMPLATES = "templates"  # package data: dct/evaluation/templates/ (pyproject [tool.setuptools.package-data])


def _escape(value: Any) -> Markup:
    """``html.escape`` (quotes as ``&quot;``/``&#x27;``), marked safe so autoescaping does not escape it twice."""
    return Markup(html.escape(str(value)))


def _change_class(delta: float | None) -> str:
    """CSS class of a change: ``up`` (green) above 0, ``down`` (red) below, else none."""
    return "up" if delta is not None and delta > 0 else "down" if delta is not None and delta < 0 else ""


@functools.cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("dct.evaluation", _TEMPLATES),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters.update(e=_escape, escape=_escape, fmt=_fmt, change_class=_change_class)
    return env


@functools.cache
def _asset(name: str) -> str:
    """A static file of the templates folder (CSS, JavaScript), as shipped."""
    return importlib.resources.files("dct.evaluation").joinpath(_TEMPLATES, name).read_text(encoding="utf-8")


def _style() -> Markup:
    # One rule per line in the file, one line in the page.
    return Markup("".join(line.strip() for line in _asset("report.css").splitlines()))


def render_detail_html() -> str:
    """``class.html``: one static page that shows any class of the run, named by the URL's ``#c{id}``."""
    return _environment().get_template("class.html.j2").render(
        style=_style(), index_js=INDEX_JS_FILE, detail_js=Markup(_asset("class_detail.js"))
    )


def _fmt(x: float | None, digits: int = 2) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _fmt_metric(x: float | None) -> str:
    if x is None:
        return "not computed"
    return f"{x:.4g}"


def _prompt(config: RunConfig, variant: str, token: str, class_name: str) -> str:
    """The first evaluation image's prompt of a variant (what the report shows beside the row)."""
    if variant == "baseline":
        return baseline_prompts(config.prompts.templates, config.prompts.baseline_word, class_name, 1)[0]
    return epoch_prompts(config.prompts.templates, token, class_name, 1)[0]


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- dct:section {name} -->", f"<!-- /dct:section {name} -->"


def section_block(name: str, fragment: str) -> str:
    """A section's fragment between its markers, as ``index.html`` holds it."""
    begin, end = _markers(name)
    return f"{begin}\n{fragment}\n{end}"


def splice_section(page: str, name: str, fragment: str) -> str:
    """``page`` (an ``index.html``) with section ``name`` replaced, or inserted before the summary if absent.

    A page written before sections existed has no markers: the block goes before its summary heading (or
    before ``</body>``), so reports of earlier runs show the section too.
    """
    begin, end = _markers(name)
    block = section_block(name, fragment)
    start = page.find(begin)
    if start >= 0 and (stop := page.find(end, start)) >= 0:
        return page[:start] + block + page[stop + len(end) :]
    anchor = page.find(_SUMMARY_H2)
    if anchor < 0:
        anchor = page.rfind("</body>")
    if anchor < 0:
        return page + block
    return page[:anchor] + block + "\n" + page[anchor:]


def render_report_html(
    *,
    config: RunConfig,
    plan: RunPlan,
    sections: Sequence[ClassSection],
    pooled: dict[str, Any] | None,
    plot_href: str | None,
    dataset_licence: str | None = None,
    generated_at: dt.datetime | None = None,
    summary_href: str | None = None,
    index_href: str | None = None,
    extra_sections: Sequence[tuple[str, str]] = (),
    scatter_href: str | None = None,
) -> str:
    """The report's HTML (links relative to the report folder), from the template ``templates/index.html.j2``.

    Args:
        sections: one per selected class, in class-id order; those with ``images`` get a grid.
        pooled: ``PooledMetrics.to_json()``, or None.
        summary_href: the uplift-distribution plot (:func:`uplift_plot_png`).
        index_href: ``classes.js``; given, rows link to ``class.html#c{id}`` where the page has no grid
            of that class, and above :data:`STATIC_TABLE_MAX` classes the table is built from it.
        extra_sections: ``(name, HTML fragment)`` of sections other commands added (:func:`add_report_section`),
            shown before the summary; the fragments are trusted HTML (their writers escape their values).
        scatter_href: the per-class accuracy gain vs coverage change plot (:func:`gain_coverage_plot_png`).
    """
    generated_at = generated_at or dt.datetime.now(dt.UTC)
    records = [s.record for s in sections if s.record is not None]
    prov = next((r.provenance for r in records), None)
    has_eval = any(r.evaluator_top1_dct is not None for r in records)

    def mean(who: str, variant: str) -> str:
        vals = [v for r in records if r.status != "failed" and (v := _acc(r, who, 1, variant)) is not None]
        return _fmt(sum(vals) / len(vals)) if vals else "–"

    summary_rows = [("guide top-1 (mean over classes)", mean("guide", "baseline"), mean("guide", "dct"))]
    if has_eval:
        summary_rows.append(("held-out evaluator top-1", mean("evaluator", "baseline"), mean("evaluator", "dct")))
    feature_note = None
    for m in shown_metrics(records):
        if m.source != "features":
            continue

        def col_mean(variant: str, m: ClassMetric = m) -> str:
            vals = [x for r in records if (x := getattr(r, m.column(variant))) is not None]
            return _fmt(sum(vals) / len(vals), m.digits) if vals else "–"

        label = f"{m.label} (mean over classes"
        label += f"; real images {col_mean(REFERENCE)})" if REFERENCE in m.variants else ")"
        summary_rows.append((label, col_mean("baseline"), col_mean("dct")))
        feature_note = (
            f"per class, against the class's reference images in the FID/KID feature space: precision, recall, "
            f"density and coverage with k = {config.evaluation.nearest_k} nearest neighbours; Vendi score with the "
            "cosine kernel, the real images' on as many images (docs/evaluation.md)"
        )
    pooled_rows = []
    if pooled:
        pv = pooled.get("variants") or {}
        for label, key in (("FID", "fid"), ("KID", "kid")):
            cells = []
            for v in VARIANTS:
                m = pv.get(v) or {}
                val, n = m.get(key), m.get("num_samples")
                std = m.get("kid_std") if key == "kid" else None
                text = _fmt_metric(val) + (f" ± {std:.2g}" if std is not None and val is not None else "")
                cells.append((text, n if n is not None else "–"))
            pooled_rows.append((label, cells))
    pooled_info = None
    if pooled:
        pooled_info = {
            "feature_extractor": str(pooled.get("feature_extractor")),
            "num_reference": str(pooled.get("num_reference")),
            "min_fid_samples": pooled.get("min_fid_samples"),
            "kid_subset_size": pooled.get("kid_subset_size"),
            "notes": [str(n) for n in pooled.get("notes") or []],
        }
    statuses = [s.record.status if s.record else "no record" for s in sections]
    gridded = {s.class_id for s in sections if s.record is not None and s.images}

    def link(cid: int) -> str:
        if cid in gridded or not index_href:
            return f"#c{cid}"
        return f"{DETAIL_FILE}#c{cid}"

    who = ranking_classifier(records)
    worst, best = extreme_classes(records)
    shown = shown_metrics(records)

    def grid_accuracies(r: ClassRecord) -> list[Markup]:
        out = [
            Markup(
                f"guide top-1 {_fmt(r.guide_top1_baseline)} → <b>{_fmt(r.guide_top1_dct)}</b> "
                f"(top-5 {_fmt(r.guide_top5_baseline)} → {_fmt(r.guide_top5_dct)})"
            )
        ]
        if r.evaluator_top1_dct is not None:
            out.append(
                Markup(
                    f"evaluator top-1 {_fmt(r.evaluator_top1_baseline)} → <b>{_fmt(r.evaluator_top1_dct)}</b> "
                    f"(top-5 {_fmt(r.evaluator_top5_baseline)} → {_fmt(r.evaluator_top5_dct)})"
                )
            )
        return out

    return _environment().get_template("index.html.j2").render(
        plan=plan,
        config=config,
        style=_style(),
        generated=generated_at.strftime("%Y-%m-%d %H:%M UTC"),
        extra_blocks=[Markup(section_block(name, fragment)) for name, fragment in extra_sections],
        summary_rows=summary_rows,
        pooled_rows=pooled_rows,
        pooled=pooled_info,
        status_counts=[f"{k} {statuses.count(k)}" for k in ("done", "diverged", "failed", "no record")
                       if k in statuses],
        summary_href=summary_href,
        plot_href=plot_href,
        ranking=who,
        extremes=[("worst", worst), ("best", best)] if worst else [],
        link=link,
        acc=_acc,
        uplift=lambda r: _uplift(r, who) or 0.0,
        failures=[s for s in sections if s.record is None or s.record.status == "failed"],
        failures_shown=FAILURES_SHOWN,
        failure_text=_failure_text,
        dynamic_table=bool(index_href) and len(sections) > STATIC_TABLE_MAX,
        index_href=index_href,
        table_js=Markup(_asset("class_table.js")),
        sections=sections,
        metrics=shown,
        metric_cells=lambda r: [_metric_cell(r, m) for m in shown],
        sort_js=Markup(_asset("table_sort.js")),
        feature_note=feature_note,
        scatter_href=scatter_href,
        status_text=_status_text,
        grid_accuracies=grid_accuracies,
        prompt_of=lambda v, r: _prompt(config, v, r.token, r.class_name),
        metadata=_metadata(config, plan, prov),
        model_rows=_model_rows(config, plan, pooled, dataset_licence, prov),
        openrail="openrail" in config.diffusion.licence.lower(),
    )


def _failure_text(r: ClassRecord | None) -> str:
    return (r.error or "failed").strip().splitlines()[0][:300] if r else "no record (the worker left none)"


def _status_text(s: ClassSection) -> str:
    return (s.record.status + (" (earlier run)" if s.from_earlier_run else "")) if s.record else "no record"


def _metadata(config: RunConfig, plan: RunPlan, prov) -> list[tuple[str, str]]:
    """The "Run metadata" table: keys, settings, and where and with what the classes ran."""
    meta = [
        ("run id", plan.run_id),
        ("dataset", plan.dataset),
        ("store", plan.store_root),
        ("token_key", plan.token_key),
        ("eval_key", plan.eval_key),
        ("sampler", config.sampler.model_dump_json()),
        ("training", config.training.model_dump_json()),
        ("optimizer", config.optimizer.model_dump_json()),
        ("evaluation", config.evaluation.model_dump_json(exclude={"evaluator"})),
        ("prompt templates", " | ".join(config.prompts.templates)),
    ]
    if prov is not None:
        meta += [
            ("device / dtype", f"{prov.device} / {prov.dtype}"),
            (
                "versions",
                f"dct {prov.dct_version}, torch {prov.torch_version}, diffusers {prov.diffusers_version}, "
                f"transformers {prov.transformers_version}, python {prov.python_version}",
            ),
        ]
    return meta


def _model_rows(
    config: RunConfig, plan: RunPlan, pooled: dict[str, Any] | None, dataset_licence: str | None, prov
) -> list[tuple[str, str, str, str]]:
    """The "Models, data and licences" table: ``(role, model / data, revision, licence)``."""
    ev = config.evaluation.evaluator
    rows = [
        (
            "diffusion pipeline",
            config.diffusion.model_id,
            prov.diffusion_revision if prov else plan.revisions.diffusion,
            config.diffusion.licence,
        ),
        (
            "guide classifier",
            f"{config.classifier.kind}:{config.classifier.model_id}",
            prov.classifier_revision if prov else plan.revisions.classifier,
            config.classifier.licence,
        ),
    ]
    if ev is not None:
        rows.append(
            (
                "held-out evaluator",
                f"{ev.kind}:{ev.model_id}",
                (prov.evaluator_revision if prov else plan.revisions.evaluator) or "",
                ev.licence,
            )
        )
    if pooled and pooled.get("feature_extractor"):
        rows.append(("FID/KID features", pooled["feature_extractor"], "", pooled.get("feature_licence") or "unknown"))
    if pooled and pooled.get("reference"):
        rows.append(("FID reference images", pooled["reference"], "", dataset_licence or "see the dataset's terms"))
    elif dataset_licence:
        rows.append(("dataset (class names, reference images)", plan.dataset, "", dataset_licence))
    return rows


# ---------------------------------------------------------------------------------------------------------
# I/O: thumbnails, plot, page
# ---------------------------------------------------------------------------------------------------------


def _rel(store: ArtifactStore, target_uri: str, from_dir_uri: str) -> str:
    """Relative URL from a folder to a file, both inside the store."""
    to_p = store.to_path(target_uri).replace(os.sep, "/")
    from_p = store.to_path(from_dir_uri).replace(os.sep, "/")
    return posixpath.relpath(to_p, from_p)


def _thumbnail(data: bytes, ext: str, thumb_size: int) -> tuple[bytes, str]:
    """Small images unchanged (``ext``); larger ones downscaled to fit ``thumb_size`` as JPEG."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        if max(im.size) <= thumb_size:
            return data, ext
        im = im.convert("RGB")
        im.thumbnail((thumb_size, thumb_size), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=85)
        return buf.getvalue(), "jpg"


def write_run_report(
    store: ArtifactStore,
    config: RunConfig,
    plan: RunPlan,
    *,
    dataset_licence: str | None = None,
    max_images: int = 8,
    max_grid_classes: int = 200,
    thumb_size: int = 128,
    outcomes: dict[int, ClassRecord | None] | None = None,
) -> str:
    """Write the run's HTML report, its summary plots, class index and thumbnails under
    ``runs/{dataset}/{run_id}/report/``.

    Args:
        store: the artifact store (samples are read from it, the report is written into it).
        config: the run config (sampler, prompts, models, licences).
        plan: the run's plan (run id, keys, selected / processed / skipped classes).
        dataset_licence: terms of the dataset's images (``DatasetSpec.licence``).
        max_images: samples shown per class and variant (pairs on the same seeds).
        max_grid_classes: up to this many classes every class gets a grid in ``index.html`` (thumbnails
            copied into the report); above it only the :data:`EXTREMES` worst and best do, showing the
            samples in place like ``class.html`` (no request per image; every class has its page).
        thumb_size: larger samples are downscaled to this many pixels (longest side) for the thumbnails.
        outcomes: :func:`dct.results.read_class_outcomes` of ``plan.selected`` if already read (the flow
            reads each record once); else read here, in parallel.

    Returns:
        URI of ``index.html``.
    """
    ds, run_id = plan.dataset, plan.run_id
    report_dir = store.run_uri(ds, run_id, REPORT_DIR)
    try:  # written by the evaluation (PooledMetrics.to_json()); absent when it did not run
        pooled = store.read_json(store.run_uri(ds, run_id, "pooled.json"))
    except FileNotFoundError:
        pooled = None
    if outcomes is None:
        outcomes = read_class_outcomes(store, ds, plan.eval_key, plan.selected, run_id)
    # The metrics the pooled evaluation computed from features are in pooled.json, not in the shards' records.
    feature_fields = PooledMetrics.class_fields(pooled)
    outcomes = {
        c: r.model_copy(update=feature_fields[c]) if r is not None and c in feature_fields else r
        for c, r in outcomes.items()
    }
    todo = set(plan.todo)
    sections = [
        ClassSection(cid, rec, from_earlier_run=bool(rec and cid not in todo))
        for cid in plan.selected
        for rec in [outcomes.get(cid)]
    ]
    records = [s.record for s in sections if s.record is not None]
    with_samples = [s for s in sections if s.record and s.record.status != "failed" and s.record.samples_uri]
    small = len(with_samples) <= max_grid_classes
    if small:
        grid_ids = {s.class_id for s in with_samples}
    else:  # a large run: grids of the worst and best classes, linking the samples in place (no copies)
        worst, best = extreme_classes(records)
        grid_ids = {r.class_id for r in (*worst, *best) if r.samples_uri}
        seeds = list(config.evaluation.seeds)[:max_images]
        for s in sections:
            if s.class_id in grid_ids:
                r = s.record
                ext = r.sample_format or "png"

                def href(v: str, seed: int, r: ClassRecord = r, ext: str = ext) -> str:
                    return _rel(store, store.sample_uri(ds, r.eval_key, r.class_id, v, seed, ext), report_dir)

                s.images = {v: [GridImage(seed, href(v, seed), href(v, seed)) for seed in seeds] for v in VARIANTS}
    for s in sections:
        r = s.record
        if r is None or s.class_id not in grid_ids or not small:
            continue
        cid_ = r.class_id
        by_variant = {v: store.list_samples(ds, r.eval_key, cid_, v) for v in VARIANTS}
        seeds_by_v = {v: {int(posixpath.basename(u).split(".")[0]): u for u in uris} for v, uris in by_variant.items()}
        common = sorted(set.intersection(*(set(m) for m in seeds_by_v.values())))[:max_images]
        for v in VARIANTS:
            cells = []
            for seed in common:
                uri = seeds_by_v[v][seed]
                ext = posixpath.splitext(uri)[1].lstrip(".")
                data, text = _thumbnail(store.read_bytes(uri), ext, thumb_size)
                name = f"{cid_:05d}-{v}-{seed:06d}.{text}"
                thumb_uri = store.write_bytes(store.run_uri(ds, run_id, REPORT_DIR, THUMBS_DIR, name), data)
                cells.append(GridImage(seed, _rel(store, thumb_uri, report_dir), _rel(store, uri, report_dir)))
            s.images[v] = cells
    plot_href = summary_href = None
    if records and len(records) <= STATIC_TABLE_MAX:  # above, a point per class is a solid block
        png = accuracy_plot_png(records, title=f"{ds} · run {run_id}")
        plot_href = _rel(store, store.write_bytes(store.run_uri(ds, run_id, REPORT_DIR, PLOT_FILE), png), report_dir)
    if records:
        png = uplift_plot_png(records, title=f"{ds} · run {run_id}: per-class uplift")
        summary_uri = store.write_bytes(store.run_uri(ds, run_id, REPORT_DIR, SUMMARY_PLOT_FILE), png)
        summary_href = _rel(store, summary_uri, report_dir)
    scatter_href = None
    if records and (png := gain_coverage_plot_png(records, title=f"{ds} · run {run_id}")) is not None:
        scatter_uri = store.write_bytes(store.run_uri(ds, run_id, REPORT_DIR, SCATTER_PLOT_FILE), png)
        scatter_href = _rel(store, scatter_uri, report_dir)
    # Paths only (no request): where each class's samples are, relative to the report folder.
    prefixes = {
        s.class_id: _rel(store, store.samples_uri(ds, s.record.eval_key, s.class_id), report_dir) for s in with_samples
    }
    index = class_index(
        plan=plan, sections=sections, sample_prefixes=prefixes, max_images=max_images, seeds=config.evaluation.seeds
    )
    store.write_bytes(store.run_uri(ds, run_id, REPORT_DIR, INDEX_JS_FILE), class_index_js(index).encode("utf-8"))
    store.write_bytes(store.run_uri(ds, run_id, REPORT_DIR, DETAIL_FILE), render_detail_html().encode("utf-8"))
    page = render_report_html(
        extra_sections=read_report_sections(store, ds, run_id),
        config=config,
        plan=plan,
        sections=sections,
        pooled=pooled,
        plot_href=plot_href,
        dataset_licence=dataset_licence,
        summary_href=summary_href,
        index_href=INDEX_JS_FILE,
        scatter_href=scatter_href,
    )
    uri = store.write_bytes(store.run_uri(ds, run_id, REPORT_DIR, INDEX_FILE), page.encode("utf-8"))
    logger.info("report of run %s: %s", run_id, uri)
    return uri


def read_report_sections(store: ArtifactStore, dataset: str, run_id: str) -> list[tuple[str, str]]:
    """``(name, fragment)`` of the sections stored under the run's ``report/sections/`` (one listing), by name."""
    uris = store.list_files(store.run_uri(dataset, run_id, REPORT_DIR, SECTIONS_DIR))
    out = []
    for uri in uris:
        base = posixpath.basename(uri)
        if base.endswith(".html"):
            out.append((base[: -len(".html")], store.read_bytes(uri).decode("utf-8")))
    return out


def add_report_section(store: ArtifactStore, dataset: str, run_id: str, name: str, fragment: str) -> str | None:
    """Store section ``name`` of a run's report and show it in the run's existing ``index.html``.

    The fragment is kept under ``report/sections/{name}.html`` (a later re-render of the report includes it)
    and spliced into ``index.html`` in place; running again replaces only this section. Links in the
    fragment are relative to the report folder.

    Args:
        name: the section's name, one storage component (``augment``).
        fragment: trusted HTML; the caller escapes every value it puts in.

    Returns:
        URI of the updated ``index.html``, or None when the run has no report yet (the section is stored
        and appears when the report is written).
    """
    section_uri = store.run_uri(dataset, run_id, REPORT_DIR, SECTIONS_DIR, f"{name}.html")
    store.write_bytes(section_uri, fragment.encode("utf-8"))
    index_uri = store.run_uri(dataset, run_id, REPORT_DIR, INDEX_FILE)
    try:
        page = store.read_bytes(index_uri).decode("utf-8")
    except FileNotFoundError:
        logger.info("run %s has no report yet: section %r stored for when it is written", run_id, name)
        return None
    return store.write_bytes(index_uri, splice_section(page, name, fragment).encode("utf-8"))
