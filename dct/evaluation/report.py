"""A static HTML report per run: what the images look like, how accurate they are, and what made them.

Layout, under the run's folder (``runs/{dataset}/{run_id}/report/``)::

    index.html        per class: baseline vs DCT grid on the same seeds, with guide/evaluator accuracies;
                      the pooled FID/KID; run metadata; models and their licences
    accuracy.png      summary plot: top-1 accuracy per class, baseline vs DCT (guide, evaluator)
    thumbs/{class_id:05d}-{variant}-{seed:06d}.{png|jpg}

Links: every thumbnail is a COPY inside ``report/`` (small images byte-for-byte, larger ones downscaled
to ``thumb_size`` JPEG), so the report folder alone is self-contained: it renders from the store, from a
static-website bucket, or after ``aws s3 cp --recursive .../report ./report``. Each thumbnail also links
to its full-size sample by a RELATIVE path into the store layout (``../../../../samples/...``), which
resolves inside the store or a downloaded copy of the whole store. No absolute path or store URI is
written into the HTML, so moving the store does not break it.

Compute (:func:`accuracy_plot_png`, :func:`render_report_html`) is separate from I/O (:func:`write_run_report`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the report reads a plan; it never makes one
    from dct.run.plan import RunPlan

import datetime as dt
import html
import io
import logging
import os
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from dct.artifacts.store import VARIANTS, ArtifactStore
from dct.config import RunConfig, epoch_prompts
from dct.results import ClassRecord, read_class_outcome

logger = logging.getLogger(__name__)

REPORT_DIR = "report"
INDEX_FILE = "index.html"
PLOT_FILE = "accuracy.png"
THUMBS_DIR = "thumbs"
DISPLAY_PX = 112  # on-screen size of a grid cell; small images are upscaled without smoothing
BAR_CHART_MAX_CLASSES = 40  # above this, the plot is a baseline-vs-DCT scatter instead of bars


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
    return getattr(r, f"{who}_top{k}_{variant}") if r is not None else None


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
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def _fmt(x: float | None, digits: int = 2) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _fmt_metric(x: float | None) -> str:
    if x is None:
        return "not computed"
    return f"{x:.4g}"


def _prompt(config: RunConfig, word: str, class_name: str) -> str:
    return epoch_prompts(config.prompts.templates, word, class_name, 1)[0]


def render_report_html(
    *,
    config: RunConfig,
    plan: RunPlan,
    sections: Sequence[ClassSection],
    pooled: dict[str, Any] | None,
    plot_href: str | None,
    dataset_licence: str | None = None,
    generated_at: dt.datetime | None = None,
    probe_href: str | None = None,
) -> str:
    """The report's HTML (one self-contained page; links relative to the report folder).

    Args:
        sections: one per selected class, in class-id order.
        pooled: ``PooledMetrics.to_json()``, or None.
        probe_href: the bias probe's page (docs/probe.md), linked when the run has one.
    """
    e = html.escape
    generated_at = generated_at or dt.datetime.now(dt.UTC)
    records = [s.record for s in sections if s.record is not None]
    prov = next((r.provenance for r in records), None)
    has_eval = any(r.evaluator_top1_dct is not None for r in records)

    def mean(who: str, variant: str) -> str:
        vals = [v for r in records if r.status != "failed" and (v := _acc(r, who, 1, variant)) is not None]
        return _fmt(sum(vals) / len(vals)) if vals else "–"

    out: list[str] = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>DCT report — {e(plan.dataset)} — {e(plan.run_id)}</title>",
        "<style>",
        "body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:24px;color:#1b1f24;max-width:1400px}",
        "h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd}",
        "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}",
        "th{background:#f3f4f6}.num{text-align:right;font-variant-numeric:tabular-nums}",
        ".cls{margin:18px 0;padding:10px 12px;border:1px solid #e3e3e3;border-radius:6px}",
        ".cls h3{margin:0 0 6px;font-size:15px}.acc{font-size:13px;margin:4px 0 8px}",
        ".row{display:flex;align-items:center;gap:4px;margin:3px 0}",
        f".row .lbl{{width:70px;font-size:12px;font-weight:600}}.row img{{width:{DISPLAY_PX}px;height:{DISPLAY_PX}px;",
        "object-fit:contain;background:#eee;image-rendering:pixelated;border-radius:2px}",
        ".up{color:#2b8a3e;font-weight:600}.down{color:#c92a2a;font-weight:600}.muted{color:#666;font-size:12px}",
        ".bad{color:#c92a2a}code{font-size:12px}",
        "</style></head><body>",
        f"<h1>DCT run <code>{e(plan.run_id)}</code> — dataset <code>{e(plan.dataset)}</code></h1>",
        f'<p class="muted">generated {e(generated_at.strftime("%Y-%m-%d %H:%M UTC"))} · '
        f"{len(plan.selected)} classes selected, {len(plan.todo)} processed in this run, "
        f"{len(plan.skipped)} finished by earlier runs · token_key <code>{e(plan.token_key)}</code> · "
        f"eval_key <code>{e(plan.eval_key)}</code></p>",
        *([f'<p><a href="{e(probe_href)}">Bias probe: attributes the tokens shifted</a></p>'] if probe_href else []),
        "<h2>Summary</h2>",
        "<table><tr><th></th><th>baseline prompt</th><th>DCT token</th></tr>",
        f'<tr><td>guide top-1 (mean over classes)</td><td class="num">{mean("guide", "baseline")}</td>'
        f'<td class="num">{mean("guide", "dct")}</td></tr>',
    ]
    if has_eval:
        out.append(
            f'<tr><td>held-out evaluator top-1</td><td class="num">{mean("evaluator", "baseline")}</td>'
            f'<td class="num">{mean("evaluator", "dct")}</td></tr>'
        )
    pv = (pooled or {}).get("variants") or {}
    if pooled:
        for metric, key in (("FID", "fid"), ("KID", "kid")):
            cells = []
            for v in VARIANTS:
                m = pv.get(v) or {}
                val = m.get(key)
                std = m.get("kid_std") if key == "kid" else None
                n = m.get("num_samples")
                text = _fmt_metric(val) + (f" ± {std:.2g}" if std is not None and val is not None else "")
                cells.append(
                    f'<td class="num">{e(text)} <span class="muted">(n={n if n is not None else "–"})</span></td>'
                )
            out.append(f"<tr><td>{metric} vs reference (pooled; lower is better)</td>{''.join(cells)}</tr>")
    out.append("</table>")
    if pooled:
        ext = pooled.get("feature_extractor")
        nref = pooled.get("num_reference")
        out.append(
            f'<p class="muted">features: <code>{e(str(ext))}</code> · reference images: {e(str(nref))}'
            + (f" · FID needs ≥ {pooled['min_fid_samples']} images per set" if pooled.get("min_fid_samples") else "")
            + (f" · KID subset size {pooled.get('kid_subset_size')}" if pooled.get("kid_subset_size") else "")
            + "</p>"
        )
        for note in pooled.get("notes") or []:
            out.append(f'<p class="muted">note: {e(str(note))}</p>')
    else:
        out.append('<p class="muted">pooled FID/KID: not computed for this run.</p>')
    if plot_href:
        out.append(
            f'<p><img src="{e(plot_href)}" alt="top-1 accuracy per class, baseline vs DCT" style="max-width:100%"></p>'
        )

    # Per-class table
    out += ["<h2>Per class</h2>", "<table><tr><th>id</th><th>class</th><th>status</th>"]
    hdr = ["guide top-1", "guide top-5"] + (["evaluator top-1", "evaluator top-5"] if has_eval else [])
    out.append("".join(f"<th>{h}<br>baseline → DCT</th>" for h in hdr) + "<th>epochs</th></tr>")
    for s in sections:
        r = s.record
        name = r.class_name if r else ""
        status = (r.status + (" (earlier run)" if s.from_earlier_run else "")) if r else "no record"
        cells = []
        for who in ("guide", "evaluator") if has_eval else ("guide",):
            for k in (1, 5):
                b, d = _acc(r, who, k, "baseline"), _acc(r, who, k, "dct")
                cls = (
                    "up"
                    if b is not None and d is not None and d > b
                    else "down"
                    if b is not None and d is not None and d < b
                    else ""
                )
                cells.append(f'<td class="num"><span class="{cls}">{_fmt(b)} → {_fmt(d)}</span></td>')
        bad = ' class="bad"' if r is None or r.status == "failed" else ""
        epochs = r.epochs if r and r.epochs is not None else "–"
        out.append(
            f'<tr><td class="num"><a href="#c{s.class_id}">{s.class_id}</a></td><td>{e(name)}</td>'
            f'<td{bad}>{e(status)}</td>{"".join(cells)}<td class="num">{epochs}</td></tr>'
        )
    out.append("</table>")

    # Grids
    out.append("<h2>Samples: baseline prompt vs DCT token, same seeds</h2>")
    out.append(
        f'<p class="muted">each column shares a noise seed; sampler {e(config.sampler.scheduler)}, '
        f"{config.sampler.num_inference_steps} steps, CFG {config.sampler.guidance_scale:g} (as configured); "
        f"evaluation seeds {config.evaluation.seeds[0]}–{config.evaluation.seeds[-1]}, disjoint from the "
        "optimisation seeds; click an image for the full-size sample.</p>"
    )
    for s in sections:
        r = s.record
        if r is None or not s.images:
            continue
        out.append(
            f'<div class="cls" id="c{s.class_id}"><h3>{s.class_id} · {e(r.class_name)} '
            f'<span class="muted">{e(r.status)} · token <code>{e(r.token)}</code></span></h3>'
        )
        acc = [
            f"guide top-1 {_fmt(r.guide_top1_baseline)} → <b>{_fmt(r.guide_top1_dct)}</b> "
            f"(top-5 {_fmt(r.guide_top5_baseline)} → {_fmt(r.guide_top5_dct)})"
        ]
        if r.evaluator_top1_dct is not None:
            acc.append(
                f"evaluator top-1 {_fmt(r.evaluator_top1_baseline)} → <b>{_fmt(r.evaluator_top1_dct)}</b> "
                f"(top-5 {_fmt(r.evaluator_top5_baseline)} → {_fmt(r.evaluator_top5_dct)})"
            )
        out.append(
            f'<div class="acc">{" · ".join(acc)} <span class="muted">(n={r.num_samples} per variant)</span></div>'
        )
        for v, label, word in (("baseline", "baseline", config.prompts.baseline_word), ("dct", "DCT", r.token)):
            prompt = _prompt(config, word, r.class_name)
            cells = "".join(
                f'<a href="{e(img.full_href)}"><img src="{e(img.thumb_href)}" loading="lazy" '
                f'alt="{e(v)} seed {img.seed}" title="{e(prompt)} — seed {img.seed}"></a>'
                for img in s.images.get(v, [])
            )
            out.append(f'<div class="row"><span class="lbl" title="{e(prompt)}">{label}</span>{cells}</div>')
        out.append("</div>")

    # Metadata and licences
    out.append("<h2>Run metadata</h2><table>")
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
    out += [f"<tr><th>{e(k)}</th><td><code>{e(str(v))}</code></td></tr>" for k, v in meta]
    out.append("</table>")

    out.append(
        "<h2>Models, data and licences</h2><table><tr><th>role</th><th>model / data</th><th>revision</th>"
        "<th>licence</th></tr>"
    )
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
    out += [
        f"<tr><td>{e(a)}</td><td><code>{e(str(b))}</code></td><td><code>{e(str(c))}</code></td><td>{e(str(d))}</td></tr>"
        for a, b, c, d in rows
    ]
    out.append("</table>")
    if "openrail" in config.diffusion.licence.lower():
        out.append(
            '<p class="muted">The diffusion model\'s OpenRAIL-M use restrictions carry over to the learned '
            "tokens and to every image generated with them.</p>"
        )
    out.append("</body></html>")
    return "\n".join(out)


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
) -> str:
    """Write the run's HTML report, its summary plot and thumbnails under ``runs/{dataset}/{run_id}/report/``.

    Args:
        store: the artifact store (samples are read from it, the report is written into it).
        config: the run config (sampler, prompts, models, licences).
        plan: the run's plan (run id, keys, selected / processed / skipped classes).
        dataset_licence: terms of the dataset's images (``DatasetSpec.licence``).
        max_images: samples shown per class and variant (pairs on the same seeds).
        max_grid_classes: classes with a grid (the first ones by class id); the table lists all.
        thumb_size: larger samples are downscaled to this many pixels (longest side) for the thumbnails.

    Returns:
        URI of ``index.html``.
    """
    ds, run_id = plan.dataset, plan.run_id
    report_dir = store.run_uri(ds, run_id, REPORT_DIR)
    try:  # written by the evaluation (PooledMetrics.to_json()); absent when it did not run
        pooled = store.read_json(store.run_uri(ds, run_id, "pooled.json"))
    except FileNotFoundError:
        pooled = None
    todo = set(plan.todo)
    sections: list[ClassSection] = []
    for cid in plan.selected:
        rec = read_class_outcome(store, ds, plan.eval_key, cid, run_id)
        sections.append(ClassSection(cid, rec, from_earlier_run=bool(rec and cid not in todo)))
    grids = 0
    for s in sections:
        r = s.record
        if r is None or r.status == "failed" or not r.samples_uri or grids >= max_grid_classes:
            continue
        grids += 1
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
    records = [s.record for s in sections if s.record is not None]
    plot_href = None
    if records:
        png = accuracy_plot_png(records, title=f"{ds} · run {run_id}")
        plot_href = _rel(store, store.write_bytes(store.run_uri(ds, run_id, REPORT_DIR, PLOT_FILE), png), report_dir)
    probe_uri = store.probe_page_uri(ds, run_id)  # written before the report when the flow ran the probe
    page = render_report_html(
        config=config,
        plan=plan,
        sections=sections,
        pooled=pooled,
        plot_href=plot_href,
        dataset_licence=dataset_licence,
        probe_href=_rel(store, probe_uri, report_dir) if store.exists(probe_uri) else None,
    )
    uri = store.write_bytes(store.run_uri(ds, run_id, REPORT_DIR, INDEX_FILE), page.encode("utf-8"))
    logger.info("report of run %s: %s", run_id, uri)
    return uri
