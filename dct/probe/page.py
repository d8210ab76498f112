"""The probe's static HTML page (``runs/{dataset}/{run_id}/report/probe.html``), linked from the run report.

Dataset-wide: the attributes that shift significantly in the most classes. Per class: the top shifts, each
with the seeds that moved most in the shift's direction, baseline and DCT side by side. Images link to the
stored samples by RELATIVE paths into the store layout, as the report's full-size links do, so the page
works from the store or a downloaded copy of it.
"""

from __future__ import annotations

import html
import posixpath

import numpy as np

from dct.artifacts.store import ArtifactStore
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
            "<th>q</th></tr>"
        )
        for r in crs[: max(SHIFTS_PER_CLASS, 5)]:
            cls = "" if r["significant"] else " class='ns'"
            out.append(
                f"<tr{cls}><td class='num'>{r['rank']}</td><td>{e(r['attribute'])}</td>"
                f"<td class='num'>{r['baseline_mean']:.3f}</td><td class='num'>{r['dct_mean']:.3f}</td>"
                f"<td class='num'>{r['shift']:+.3f} [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]</td>"
                f"<td class='num'>{r['effect_size']:.2f}</td><td class='num'>{r['q_value']:.2g}</td></tr>"
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
