"""The augmentation section in a run report, on a local and an S3 store: escaped, relative, re-rendered."""

from __future__ import annotations

import html

from dct.synthesis.augment import results_table

NAMES = ["red <circle>", "blue & square", "green 'triangle'", 'small "dog"']


def _rows():
    rows = []
    for seed, base in ((0, 0.5), (1, 0.7)):
        for k, arm, acc in ((1, "real", base), (1, "dct", base + 0.1), (4, "real", 0.9)):
            rows.append({"arm": arm, "k": k, "seed": seed, "class_id": None, "accuracy": acc, "seconds": 1.0})
            rows += [
                {"arm": arm, "k": k, "seed": seed, "class_id": c, "accuracy": acc, "seconds": None} for c in range(4)
            ]
    return rows


def test_the_section_is_in_the_index_with_relative_links_and_escaped_names(store, synth_world):
    from dct.evaluation.report import INDEX_FILE, read_report_sections, render_report_html, write_run_report
    from dct.run.plan import Revisions, RunPlan, build_config
    from dct.synthesis.augment_page import write_augment_results

    _, config = build_config(str(synth_world), None, store.root)
    plan = RunPlan(
        dataset=config.dataset, run_id="20250101T000000Z-00000001", store_root=store.root, token_key="tk",
        eval_key="ek", selected=[0], todo=[], skipped=[0], shards=[], revisions=Revisions("r", "r", None),
    )
    write_run_report(store, config, plan, outcomes={})
    info = {"downstream_model": "m<x>", "dataset": config.dataset, "synth_key": "s1", "filtered_synth_key": "s2",
            "token_key": "tk", "run_id": plan.run_id}
    uris = write_augment_results(store, config.dataset, plan.run_id, results_table(_rows(), info), b"png", NAMES)
    index = store.read_bytes(uris["index"]).decode()
    page = store.read_bytes(uris["page"]).decode()
    assert uris["index"] == store.run_uri(config.dataset, plan.run_id, "report", INDEX_FILE)
    assert "0.600 ± 0.141 <span class='muted'>(n=2)</span>" in index  # k=1 real over seeds 0.5, 0.7
    assert "0.700 ± 0.141" in page and "0.900 ± 0.000" in page
    assert "m&lt;x&gt;" in index and "m<x>" not in index
    for name in NAMES:
        assert html.escape(name) in page
    assert "red <circle>" not in page
    section = index[index.index("<!-- dct:section augment -->") : index.index("<!-- /dct:section augment -->")]
    for text in (section, page):  # links stay inside the report folder: no store root, scheme or absolute path
        assert store.root not in text and "s3://" not in text and "file://" not in text
    assert store.read_bytes(store.run_uri(config.dataset, plan.run_id, "report", "augment.png")) == b"png"
    # Rendering the report again (re-publishing) keeps the section.
    sections = read_report_sections(store, config.dataset, plan.run_id)
    again = render_report_html(config=config, plan=plan, sections=[], pooled=None, plot_href=None,
                               extra_sections=sections)
    assert "0.600 ± 0.141" in again and again.count("<!-- dct:section augment -->") == 1


def test_a_section_is_replaced_in_place_and_added_to_an_index_written_before_sections():
    """docs/synthesis.md: a second run replaces the section; an index written before sections existed gets it."""
    from dct.evaluation.report import splice_section

    old_index = "<html><body><h1>run</h1>\n<h2>Summary</h2><p>numbers</p></body></html>"
    once = splice_section(old_index, "augment", "<p>first</p>")
    assert once.index("<p>first</p>") < once.index("<h2>Summary</h2>")
    twice = splice_section(once, "augment", "<p>second</p>")
    assert twice.count("<!-- dct:section augment -->") == 1 and "<p>first</p>" not in twice
    assert "<p>second</p>" in twice and twice.index("<p>second</p>") < twice.index("<h2>Summary</h2>")
    assert twice.replace("<p>second</p>", "<p>first</p>") == once  # nothing else moved
