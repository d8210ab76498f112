"""The augmentation experiment in the run report: ``augment.html`` and a section of the run's ``index.html``.

``dct augment-eval`` attaches its results to the run whose tokens it used, under that run's report folder
(``runs/{dataset}/{run_id}/report/``)::

    augment.parquet   the experiment's rows (:func:`dct.synthesis.augment.results_table`)
    augment.png       top-1 vs k, a line per arm (:func:`dct.synthesis.augment.plot_png`)
    augment.html      the plot, mean ± std top-1 per arm and k over seeds, and the per-class table
    sections/augment.html   the section ``index.html`` shows (plot, summary table, link to augment.html)

Every number on both pages is computed from the rows of the Parquet table written beside them. Links are
plain file names in the report folder, so the pages work from a local store, an S3 bucket website or a
downloaded copy of the report folder.
"""

from __future__ import annotations

import html
import io
import logging
from collections.abc import Mapping, Sequence

from dct.artifacts.store import REPORT_DIR, ArtifactStore
from dct.evaluation.report import INDEX_FILE, add_report_section
from dct.synthesis.augment import ARMS, summary_frame

logger = logging.getLogger(__name__)

SECTION = "augment"
TABLE_FILE = "augment.parquet"
PLOT_FILE = "augment.png"
PAGE_FILE = "augment.html"

_CSS = """body{font-family:system-ui,sans-serif;margin:1.5em;max-width:90em}table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:.2em .5em;text-align:left}td.num{text-align:right;font-variant-numeric:tabular-nums}
.muted{color:#666;font-size:12px}"""


def _arms(rows: Sequence[Mapping]) -> list[str]:
    present = {r["arm"] for r in rows}
    return [a for a in ARMS if a in present]


def summary_table_html(rows: Sequence[Mapping]) -> str:
    """Mean ± std over seeds of the overall top-1: a row per k, a column per arm (blank where not trained)."""
    e = html.escape
    s = summary_frame(rows)
    arms = _arms(rows)
    out = ["<table class='augment-summary'><tr><th>k</th>" + "".join(f"<th>{e(a)}</th>" for a in arms) + "</tr>"]
    for k in sorted(set(s.k)):
        cells = []
        for a in arms:
            r = s[(s.k == k) & (s.arm == a)]
            if not len(r):
                cells.append("<td></td>")
                continue
            mean, std, n = float(r["mean"].iloc[0]), r["std"].iloc[0], int(r["count"].iloc[0])
            spread = f" ± {float(std):.3f}" if n > 1 else ""
            cells.append(f"<td class='num'>{mean:.3f}{spread} <span class='muted'>(n={n})</span></td>")
        out.append(f"<tr><td class='num'>{int(k)}</td>{''.join(cells)}</tr>")
    out.append("</table>")
    return "\n".join(out)


def per_class_table_html(rows: Sequence[Mapping], class_names: Sequence[str]) -> str:
    """Top-1 per class (mean over seeds): a row per class, a column per (k, arm)."""
    import pandas as pd

    e = html.escape
    df = pd.DataFrame([r for r in rows if r["class_id"] is not None])
    per = df.groupby(["class_id", "k", "arm"])["accuracy"].mean()
    arms = _arms(rows)
    columns = [(k, a) for k in sorted(set(df.k)) for a in arms if (k, a) in set(zip(df.k, df.arm, strict=True))]
    out = [
        "<table class='augment-per-class'><tr><th>class</th>"
        + "".join(f"<th>k={int(k)} {e(a)}</th>" for k, a in columns)
        + "</tr>"
    ]
    for cid in sorted(set(df.class_id)):
        name = class_names[int(cid)] if int(cid) < len(class_names) else ""
        cells = "".join(
            f"<td class='num'>{per[(cid, k, a)]:.2f}</td>" if (cid, k, a) in per.index else "<td></td>"
            for k, a in columns
        )
        out.append(f"<tr><td>{int(cid)} {e(name)}</td>{cells}</tr>")
    out.append("</table>")
    return "\n".join(out)


def _about(rows: Sequence[Mapping]) -> str:
    e = html.escape
    r0 = rows[0]
    seeds = len({r["seed"] for r in rows})
    return (
        f"Top-1 on held-out real images of a downstream <code>{e(str(r0['downstream_model']))}</code> trained from "
        f"scratch on k real images per class (arm <code>real</code>) plus synthetic ones; mean ± std over {seeds} "
        f"training seed(s).{_cas_note(rows)} Synthetic sets <code>{e(str(r0['synth_key']))}</code> "
        "(with the baseline arm) and "
        f"<code>{e(str(r0['filtered_synth_key']))}</code> (guide-filtered). Data: <a href='{PAGE_FILE}'>"
        f"{PAGE_FILE}</a> · <a href='{TABLE_FILE}'>{TABLE_FILE}</a>."
    )


def _cas_note(rows: Sequence[Mapping]) -> str:
    """What k = 0 means, when the experiment has it."""
    matched = [r for r in rows if r["arm"] == "real_matched" and r["class_id"] is None]
    if not matched:
        return ""
    classes = len({r["class_id"] for r in rows if r["class_id"] is not None}) or 1
    return (
        " k = 0: each synthetic arm alone, no real image (the Classification Accuracy Score); its reference "
        f"<code>real_matched</code> is real only with {int(matched[0]['real_images']) // classes} real images per "
        "class, as many as the DCT arm's synthetic ones."
    )


def render_augment_section(rows: Sequence[Mapping]) -> str:
    """The fragment ``index.html`` shows: heading, what was measured, the plot, the summary table."""
    return "\n".join(
        [
            f"<h2 id='{SECTION}'>Augmentation experiment (dct augment-eval)</h2>",
            f"<p class='muted'>{_about(rows)} Per class: <a href='{PAGE_FILE}'>{PAGE_FILE}</a>.</p>",
            f"<p><img src='{PLOT_FILE}' alt='downstream top-1 vs real images per class, one line per arm' "
            "style='max-width:100%'></p>",
            summary_table_html(rows),
        ]
    )


def render_augment_page(rows: Sequence[Mapping], class_names: Sequence[str], dataset: str, run_id: str) -> str:
    """``augment.html``: the plot, the summary table and the per-class table of one experiment."""
    e = html.escape
    return "\n".join(
        [
            "<!doctype html><html><head><meta charset='utf-8'>",
            f"<title>DCT augmentation — {e(dataset)} · {e(run_id)}</title><style>{_CSS}</style></head><body>",
            f"<h1>Augmentation experiment — {e(dataset)}, run {e(run_id)}</h1>",
            f"<p>{_about(rows)} <a href='{INDEX_FILE}'>Run report</a>.</p>",
            f"<p><img src='{PLOT_FILE}' alt='downstream top-1 vs real images per class, one line per arm'></p>",
            "<h2>Top-1, mean ± std over seeds</h2>",
            summary_table_html(rows),
            "<h2>Per class (mean over seeds)</h2>",
            per_class_table_html(rows, class_names),
            "</body></html>",
        ]
    )


def write_augment_results(
    store: ArtifactStore, dataset: str, run_id: str, table, png: bytes, class_names: Sequence[str]
) -> dict[str, str | None]:
    """Write the experiment beside the run's report and add its section to the run's ``index.html``.

    Args:
        table: :func:`dct.synthesis.augment.results_table` (the pages are rendered from its rows).
        png: :func:`dct.synthesis.augment.plot_png`.

    Returns:
        ``{"table", "plot", "page", "index"}`` URIs (``index`` None when the run has no report yet).
    """
    import pyarrow.parquet as pq

    rows = table.to_pylist()
    if not rows:
        raise ValueError(f"no augmentation rows to write for run {run_id!r}; the experiment trained nothing")
    buf = io.BytesIO()
    pq.write_table(table, buf)
    out: dict[str, str | None] = {
        "table": store.write_bytes(store.run_uri(dataset, run_id, REPORT_DIR, TABLE_FILE), buf.getvalue()),
        "plot": store.write_bytes(store.run_uri(dataset, run_id, REPORT_DIR, PLOT_FILE), png),
    }
    page = render_augment_page(rows, class_names, dataset, run_id)
    out["page"] = store.write_bytes(store.run_uri(dataset, run_id, REPORT_DIR, PAGE_FILE), page.encode("utf-8"))
    out["index"] = add_report_section(store, dataset, run_id, SECTION, render_augment_section(rows))
    logger.info("augmentation experiment of run %s: %s", run_id, out["page"])
    return out
