"""The intervention test: a significant shift is `confirmed` only when moving that attribute alone moves the
guide's probability of the class the token's way; what backs a finding is said; confirmed findings rank first.

The guides here are small fixed functions of the image (one looks at the background, one at the object only),
so which attribute each one follows is known; the probe, the editors and the statistics are the real ones.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from dct.artifacts.store import ArtifactStore
from dct.probe.attributes import AttributeExtractor, border_brightness, resolve_attributes
from dct.probe.probe import probe_records, run_records, summary_lines
from dct.results import PROBE_SCHEMA, read_results

SHIFTED = 9  # the conftest's write_run brightens this class's DCT backgrounds by 0.1; class 4 is unchanged


def _guide(score) -> callable:
    """A 10-class guide whose probability of class 9 is a steep logistic function of ``score(images)``."""

    def probs(images: torch.Tensor) -> torch.Tensor:
        p = torch.sigmoid(25 * (score(images) - 0.45))
        out = ((1 - p) / 9).unsqueeze(1).repeat(1, 10)
        out[:, SHIFTED] = p
        return out

    return probs


background_guide = _guide(border_brightness)  # follows the background: the planted shift's attribute
object_guide = _guide(lambda x: (x[:, :, 12:20, 12:20] * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1).mean((1, 2)) + 0.1)  # noqa: E501


def _probe(write_run, guide, runs: int = 1, attributes=("brightness", "border_brightness")):
    store = root = None
    records = []
    for _ in range(runs):
        root, run_id = write_run({4: 0.0, SHIFTED: 0.1})
        store = ArtifactStore(root)
        records.append(run_records(store, "toy", run_id))
    extractors = resolve_attributes(list(attributes))
    return probe_records(store, records, extractors, num_bootstrap=300, guide=guide)


def _rows(result) -> dict[tuple[int, str], dict]:
    return {(r["class_id"], r["attribute"]): r for r in result.table.to_pylist()}


def test_shift_the_guide_follows_is_confirmed(write_run):
    rows = _rows(_probe(write_run, background_guide))
    bg = rows[(SHIFTED, "border_brightness")]
    assert bg["significant"] and bg["intervention"] == "confirmed"
    assert bg["intervention_forward"] > 0.05 and bg["intervention_backward"] > 0.05
    assert bg["intervention_ci_low"] > bg["min_effect"] == 0.05
    assert bg["edit_reached"] == pytest.approx(1.0, abs=0.05)
    # Rows that are not significant are not tested: their intervention columns stay null.
    assert all(r["intervention"] is None for (cid, _), r in rows.items() if cid == 4)


def test_shift_the_guide_ignores_is_not_confirmed_and_ranks_below_a_confirmed_one(write_run):
    rows = _rows(_probe(write_run, object_guide))
    bg, whole = rows[(SHIFTED, "border_brightness")], rows[(SHIFTED, "brightness")]
    assert bg["significant"] and whole["significant"] and abs(bg["shift"]) > abs(whole["shift"])
    # The object guide does not look at the background: moving the background alone changes nothing.
    assert bg["intervention"] == "not confirmed" and abs(bg["intervention_effect"]) < 0.01
    # Whole-image brightness reaches the object, which this guide does read.
    assert whole["intervention"] == "confirmed"
    assert whole["rank"] == 1 and bg["rank"] == 2  # confirmed first, although its shift is the smaller


def test_attribute_without_an_editor_is_not_testable(write_run):
    source = AttributeExtractor("detector", ("detector:background",), "a label's probability, 0-1", border_brightness)
    root, run_id = write_run({SHIFTED: 0.1})
    store = ArtifactStore(root)
    records = [run_records(store, "toy", run_id)]
    result = probe_records(store, records, [source], num_bootstrap=300, guide=background_guide)
    (row,) = result.table.to_pylist()
    assert row["significant"] and row["intervention"] == "not testable" and row["intervention_effect"] is None


def test_summary_says_what_backs_the_findings(write_run):
    one = "\n".join(summary_lines(_probe(write_run, background_guide).table))
    assert "backed by 1 optimisation run x 32 seeds" in one and "not run-to-run variation" in one
    assert "dct run ... --seed N" in one
    assert "confirmed: border_brightness +0.100" in one
    two = "\n".join(summary_lines(_probe(write_run, background_guide, runs=2).table))
    assert "backed by 2 optimisation runs x 32 seeds" in two and "not run-to-run" not in two
    rows = _probe(write_run, background_guide, runs=2).table.to_pylist()
    assert {(r["num_runs"], r["num_seeds"]) for r in rows} == {(2, 32)}


def test_baseline_spread_is_the_room_to_move(write_run):
    rows = _rows(_probe(write_run, background_guide))
    # The planted backgrounds' level is uniform on 0.2-0.6 (sd 0.115); the object does not vary.
    assert rows[(4, "border_brightness")]["baseline_spread"] == pytest.approx(0.115, abs=0.03)
    assert rows[(4, "brightness")]["baseline_spread"] < rows[(4, "border_brightness")]["baseline_spread"]


def test_version_2_probe_files_still_read(write_run, tmp_path):
    result = _probe(write_run, background_guide)
    store = ArtifactStore(str(tmp_path / "old"))
    new_columns = [
        "baseline_spread", "intervention", "intervention_effect", "intervention_ci_low", "intervention_ci_high",
        "intervention_forward", "intervention_backward", "edit_reached", "min_effect",
    ]
    old = result.table.drop(new_columns)
    old = old.set_column(old.schema.get_field_index("schema_version"), "schema_version",
                         pa.array([2] * len(old), pa.int16()))
    row = old.slice(0, 1).to_pylist()[0]
    uri = f"{store.root}/results/probe/dataset=toy/run_date={row['run_date']}/part-{row['run_id']}-0.parquet"
    store.fs.makedirs(store.to_path(uri).rsplit("/", 1)[0], exist_ok=True)
    with store.fs.open(store.to_path(uri), "wb") as f:
        pq.write_table(old.drop(["dataset", "run_date"]), f)
    df = read_results(store.root, "probe")
    assert list(df.columns) == PROBE_SCHEMA.names and len(df) == len(old)
    assert df["intervention"].isna().all() and df["min_effect"].isna().all() and set(df["schema_version"]) == {2}


def test_page_shows_confirmed_findings_first_and_apart(write_run):
    from dct.probe.probe import write_probe

    result = _probe(write_run, object_guide)
    root = result.samples[SHIFTED][0].record.samples_uri.split("/samples/")[0]
    store = ArtifactStore(root)
    _, page_uri = write_probe(store, result)
    page = store.read_bytes(page_uri).decode()
    confirmed, unconfirmed = page.index("<h3>Confirmed by intervention"), page.index("<h3>Not confirmed")
    assert confirmed < unconfirmed < page.index("Dataset-wide")
    assert "backed by 1 optimisation run x 32 seeds" in page
    between = page[confirmed:unconfirmed]
    assert "<td>brightness</td>" in between and "border_brightness" not in between


def test_an_effect_whose_interval_reaches_into_the_margin_is_not_confirmed():
    """Half the seeds follow the background strongly, half not at all: the mean effect (0.06) passes the
    margin, its interval does not — not confirmed."""
    from dct.probe.editors import ATTRIBUTE_EDITORS
    from dct.probe.intervention import intervene
    from tests.probe.conftest import planted_images

    seeds = range(32)
    images = planted_images(seeds, 0.0)
    images[1::2, :, 10:22, 10:22] = torch.tensor([0.9, 0.1, 0.1]).view(3, 1, 1)  # red objects: these follow

    def probability(x: torch.Tensor) -> torch.Tensor:
        follows = (x[:, 0, 16, 16] > 0.5).float()
        return (0.1 + 1.2 * follows * border_brightness(x)).clamp(0, 1)

    editor = ATTRIBUTE_EDITORS["border_brightness"]
    moved, _ = editor(images, 0.1)
    res = intervene([images], [moved], editor, 0.1, probability, num_bootstrap=2000)
    assert res.effect == pytest.approx(0.06, abs=0.005)
    assert res.ci_low < 0.05 < res.ci_high
    assert res.verdict == "not confirmed"


def test_an_edit_asked_for_is_tested_on_a_class_that_did_not_shift(write_run, capsys):
    """--edit asks this run's guide about an edit another guide's tokens made: class 4 did not shift at all."""
    from dct.cli import main
    from dct.probe.intervention import RequestedEdit

    root, run_id = write_run({4: 0.0, SHIFTED: 0.1})
    store = ArtifactStore(root)
    records = [run_records(store, "toy", run_id)]
    extractors = resolve_attributes(["border_brightness"])
    edit = RequestedEdit("border_brightness", 0.2, class_id=4)
    rows = _rows(probe_records(store, records, extractors, num_bootstrap=300, guide=background_guide, edits=[edit]))
    asked = rows[(4, "border_brightness")]
    assert not asked["significant"] and asked["intervention_amount"] == 0.2
    # The background guide scores class 9, not class 4: raising the background does not raise P(class 4).
    assert asked["intervention"] == "not confirmed"
    assert rows[(SHIFTED, "border_brightness")]["intervention_amount"] == pytest.approx(0.1, abs=0.01)  # its shift
    # From the command line: bad edits end with one line before any image is read.
    for bad, says in (("4:border_brightness=0", "non-zero amount"), ("guide:x=0.1", "has no editor"),
                      ("7:border_brightness=0.1", "not among the probed classes")):
        assert main(["probe", "--run", run_id, "--store", root, "--edit", bad]) == 2
        err = capsys.readouterr().err.strip()
        assert says in err and err.count("\n") == 0, err
