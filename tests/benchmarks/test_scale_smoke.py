"""The scale benchmark's code path on a local store: a run above the static-table size, end to end.

What it must show at any size: the parent's stages cost at most 3 store requests per class, pooled
metrics read no sample, publishing reads no token file (the records carry them), and the report's every
per-class link lands on a page (and a class) that exists.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

CLASSES = 600  # above the report's STATIC_TABLE_MAX and max_grid_classes


@pytest.fixture(scope="module")
def scale_run(tmp_path_factory):
    from benchmarks.scale import main

    keep = tmp_path_factory.mktemp("scale")
    (row,) = main(["--classes", str(CLASSES), "--samples", "2", "--keep", str(keep)])
    return row


def test_parent_costs_at_most_three_store_requests_per_class(scale_run):
    assert scale_run["requests_per_class"] <= 3.0, scale_run["requests"]
    assert not any(k.endswith(":samples") for k in scale_run["requests"]["pooled"])
    assert scale_run["requests"]["pooled"]["get:cache"] <= CLASSES + 1  # one feature file per class (+ reference)
    assert "get:tokens" not in scale_run["requests"]["publish"]  # the bundle's tokens come with the records
    assert scale_run["classes_done"] + scale_run["classes_failed"] + scale_run["classes_diverged"] == CLASSES
    assert scale_run["classes_failed"] == CLASSES // 100


def test_large_report_links_only_to_pages_and_classes_that_exist(scale_run):
    from dct.evaluation.report import DETAIL_FILE, INDEX_JS_FILE

    index = Path(scale_run["report_uri"])
    page = index.read_text()
    assert scale_run["index_html_bytes"] < 200_000  # no 600-row table inline
    assert f'<script src="{INDEX_JS_FILE}"></script>' in page and 'id="classtable"' in page
    js = (index.parent / INDEX_JS_FILE).read_text()
    ids = {int(m) for m in re.findall(r'"id":(\d+)', js)}
    assert ids == set(range(CLASSES))
    assert (index.parent / DETAIL_FILE).is_file()
    links = re.findall(r'href="([^"]+)"', page)
    detail = [h for h in links if h.startswith(DETAIL_FILE + "#c")]
    in_page = [h for h in links if h.startswith("#c")]
    assert len(detail) == CLASSES // 100  # the failures (no grid) link to their detail pages
    assert len(in_page) >= 20  # the worst and best link to their grids in the page
    for h in detail:
        assert int(h.split("#c")[1]) in ids
    anchors = set(re.findall(r'id="(c\d+)"', page))
    for h in links:
        if h.startswith("#c"):
            assert h[1:] in anchors, h
        elif not h.startswith(DETAIL_FILE):
            assert (index.parent / h).resolve().is_file(), h  # grid images: the samples in place
    # The detail page shows a class's samples from paths that exist in the store.
    prefix = re.search(r'"id":577,[^}]*"s":"([^"]+)"', js).group(1)
    assert (index.parent / prefix / "dct").is_dir()
