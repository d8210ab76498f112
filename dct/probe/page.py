"""The probe's static HTML page (``runs/{dataset}/{run_id}/report/probe.html``), linked from the run report.

First the findings, apart by what the intervention test said (confirmed first, then not confirmed, then not
testable), with what backs them. Dataset-wide: the attributes that shift significantly in the most classes.
Per class: the top shifts, each with the seeds that moved most in the shift's direction, baseline and DCT side
by side. Images link to the
stored samples by RELATIVE paths into the store layout, as the report's full-size links do, so the page
works from the store or a downloaded copy of it.
"""

from __future__ import annotations

import html
import posixpath

import numpy as np

from dct.artifacts.store import ArtifactStore
from dct.probe.intervention import CONFIRMED, NOT_CONFIRMED, NOT_TESTABLE
from dct.probe.samples import ProbeResult

IMAGES_PER_SHIFT = 4
SHIFTS_PER_CLASS = 3
DISPLAY_PX = 96

_CSS = """body{font-family:system-ui,sans-serif;margin:1.5em;max-width:75em}table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:.2em .5em;text-align:left}td.num{text-align:right;font-variant-numeric:tabular-nums}
img{image-rendering:pixelated;width:PXpx;height:PXpx;margin:1px}.pair{display:inline-block;margin-right:.6em;text-align:center}
.ns{color:#888}""".replace("PX", str(DISPLAY_PX))


def _rel(store: ArtifactStore, target_uri: str, page_uri: str) -> str:
    return posixpath.relpath(
        store.to_path(target_uri).replace("\\", "/"), posixpath.dirname(store.to_path(page_uri).replace("\\", "/"))
    )


def backing_line(num_runs: int, num_seeds: int) -> str:
    """What backs the probe's findings; with one run, that run-to-run variation is not covered and how to add it."""
    if num_runs == 1:
        return (
            f"backed by 1 optimisation run x {num_seeds} seeds: the intervals cover the seeds, not run-to-run "
            "variation of the token; add runs (`dct run ... --seed N`, another N each) and pass each with --run"
        )
    return f"backed by {num_runs} optimisation runs x {num_seeds} seeds (intervals over runs and seeds)"


def _num(value, fmt: str = ".3f") -> str:
    return "—" if value is None else format(value, fmt)


_HEADINGS = {
    CONFIRMED: "Confirmed by intervention: moving the attribute alone moves the guide's probability of the class",
    NOT_CONFIRMED: "Not confirmed: moving the attribute alone does not move the guide's probability enough",
    NOT_TESTABLE: "Not testable by intervention (no editor for the attribute, e.g. a classifier's label)",
}


def _findings(rows: list[dict]) -> list[str]:
    """The significant shifts, grouped by the intervention's verdict (confirmed first), with what backs them."""
    e = html.escape
    r0 = rows[0]
    out = ["<h2>Findings</h2>", f"<p>{e(backing_line(r0['num_runs'], r0['num_seeds']))}.</p>"]
    if r0.get("min_effect") is None:
        return [*out, "<p>No intervention test ran (no guide given): the shifts below are untested.</p>"]
    out.append(
        "<p>Each significant shift with an attribute editor was tested on the run's guide: the baseline images "
        "moved by the shift (forward) and the DCT images moved back (backward), scored by the guide, paired by "
        f"seed; confirmed = the interval of the change in P(class) lies above {r0['min_effect']:g}. "
        "'reached' = the share of the requested move the edits achieved; 'room' = the attribute's spread over "
        "the baseline images (how much the generator varies it).</p>"
    )
    for verdict, heading in _HEADINGS.items():
        group = [r for r in rows if r["significant"] and r.get("intervention") == verdict]
        if not group:
            continue
        out.append(f"<h3>{e(heading)} ({len(group)})</h3>")
        out.append(
            "<table><tr><th>class</th><th>attribute</th><th>shift [CI]</th><th>Δ P(class) [CI]</th>"
            "<th>forward</th><th>backward</th><th>reached</th><th>room</th></tr>"
        )
        for r in group:
            ci = (
                f"{r['intervention_effect']:+.3f} [{r['intervention_ci_low']:+.3f}, {r['intervention_ci_high']:+.3f}]"
                if r.get("intervention_effect") is not None
                else "—"
            )
            out.append(
                f"<tr><td><a href='#c{r['class_id']}'>{r['class_id']} · {e(r['class_name'])}</a></td>"
                f"<td>{e(r['attribute'])}</td>"
                f"<td class='num'>{r['shift']:+.3f} [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]</td>"
                f"<td class='num'>{ci}</td><td class='num'>{_num(r.get('intervention_forward'), '+.3f')}</td>"
                f"<td class='num'>{_num(r.get('intervention_backward'), '+.3f')}</td>"
                f"<td class='num'>{_num(r.get('edit_reached'), '.0%')}</td>"
                f"<td class='num'>{_num(r.get('baseline_spread'))}</td></tr>"
            )
        out.append("</table>")
    return out


def render_probe_page(store: ArtifactStore, result: ProbeResult, page_uri: str, *, max_classes: int = 200) -> str:
    """The page's HTML. Args: ``page_uri`` is where it will be written (links are relative to it)."""
    e = html.escape
    rows = result.table.to_pylist()
    r0 = rows[0]
    classes = sorted({r["class_id"] for r in rows})
    out = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>DCT probe — {e(r0['dataset'])} · {e(r0['run_id'])}</title><style>{_CSS}</style></head><body>",
        f"<h1>What the tokens shifted — {e(r0['dataset'])}, run {e(r0['run_id'])}</h1>",
        f"<p>{len(classes)} classes, {r0['num_runs']} optimisation run(s) × {r0['num_seeds']} seeds, paired by seed. "
        f"Shift = DCT − baseline in the attribute's own units; interval: {r0['confidence']:.0%} bootstrap over "
        f"seeds (and runs); significant = |shift| beyond {r0['min_shift'] or 0:g} with Benjamini–Hochberg "
        f"q ≤ {r0['fdr']:g} over all {len(rows)} tests and the interval wholly beyond ±{r0['min_shift'] or 0:g}. "
        "Ranked by absolute shift, not by effect size d (the seed fixes much of an image, so "
        "small shifts can have large d). <a href='index.html'>Run report</a>.</p>",
        *_findings(rows),
        "<h2>Dataset-wide: attributes that shift most often</h2>",
        "<table><tr><th>attribute</th><th>unit</th><th>classes shifted</th><th>up</th><th>down</th>"
        "<th>median |shift| when significant</th></tr>",
    ]
    by_attr: dict[str, list[dict]] = {}
    for r in rows:
        by_attr.setdefault(r["attribute"], []).append(r)
    ranked = sorted(by_attr.items(), key=lambda kv: (-sum(r["significant"] for r in kv[1]), kv[0]))
    for name, rs in ranked:
        sig = [r for r in rs if r["significant"]]
        med = f"{np.median([abs(r['shift']) for r in sig]):.3f}" if sig else "—"
        out.append(
            f"<tr><td>{e(name)}</td><td>{e(rs[0]['unit'])}</td><td class='num'>{len(sig)} / {len(rs)}</td>"
            f"<td class='num'>{sum(r['shift'] > 0 for r in sig)}</td><td class='num'>{sum(r['shift'] < 0 for r in sig)}"
            f"</td><td class='num'>{med}</td></tr>"
        )
    out.append("</table><h2>Per class: top shifts, baseline (left) vs DCT (right) on the same seed</h2>")
    for cid in classes[:max_classes]:
        crs = [r for r in rows if r["class_id"] == cid]
        out.append(f"<h3 id='c{cid}'>{cid} · {e(crs[0]['class_name'])}</h3>")
        out.append(
            "<table><tr><th>rank</th><th>attribute</th><th>baseline</th><th>DCT</th><th>shift [CI]</th><th>d</th>"
            "<th>q</th><th>intervention</th><th>room (baseline sd)</th></tr>"
        )
        for r in crs[: max(SHIFTS_PER_CLASS, 5)]:
            cls = "" if r["significant"] else " class='ns'"
            out.append(
                f"<tr{cls}><td class='num'>{r['rank']}</td><td>{e(r['attribute'])}</td>"
                f"<td class='num'>{r['baseline_mean']:.3f}</td><td class='num'>{r['dct_mean']:.3f}</td>"
                f"<td class='num'>{r['shift']:+.3f} [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]</td>"
                f"<td class='num'>{r['effect_size']:.2f}</td><td class='num'>{r['q_value']:.2g}</td>"
                f"<td>{e(r.get('intervention') or '—')}</td><td class='num'>{_num(r.get('baseline_spread'))}</td></tr>"
            )
        out.append("</table>")
        first = result.samples[cid][0]
        for r in [r for r in crs if r["significant"]][:SHIFTS_PER_CLASS]:
            diff = result.values[cid][r["attribute"]][0]  # the first run's per-seed differences
            order = np.argsort(-np.sign(r["shift"]) * diff)[:IMAGES_PER_SHIFT]
            out.append(f"<p><b>{e(r['attribute'])}</b> ({r['shift']:+.3f}): seeds that moved most</p><p>")
            for i in order:
                seed = first.seeds[i]
                cells = "".join(
                    f"<a href='{e(_rel(store, first.uris[v][i], page_uri))}'>"
                    f"<img src='{e(_rel(store, first.uris[v][i], page_uri))}' alt='{v} seed {seed}'></a>"
                    for v in ("baseline", "dct")
                )
                out.append(f"<span class='pair'>{cells}<br>seed {seed}: {diff[i]:+.3f}</span>")
            out.append("</p>")
    if len(classes) > max_classes:
        out.append(f"<p>{len(classes) - max_classes} more classes are in the probe table.</p>")
    out.append("</body></html>")
    return "\n".join(out)
