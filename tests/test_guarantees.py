"""The guarantee registry (tests/guarantees.toml) stays in step with the docs and the code, and no skip can
hide a missing check in CI. The mutants themselves run in `python -m tests.mutants` (.ci/run, after pytest)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from mutants import check_registry, load_registry
from needs import need

ROOT = Path(__file__).resolve().parents[1]


def test_every_promise_of_the_docs_has_an_entry_whose_anchors_and_tests_exist():
    """Mechanical: doc markers == registry ids, quoted sentences still in their doc, every mutant's anchor exactly
    once in its file, every named test defined. A failure here means the registry must move with the change."""
    guarantees = load_registry()
    assert check_registry(guarantees) == []
    assert sum(len(g.mutants) for g in guarantees) >= 40


def test_need_skips_locally_and_fails_in_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no widget"):
        need(False, "no widget")
    need(True, "present: nothing happens")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"required in CI .*no widget"):
        need(False, "no widget")


SKIP = re.compile(r"pytest\.skip\(|skipif|importorskip|mark\.skip\b")


def test_every_skip_goes_through_need_or_says_why_ci_never_meets_it():
    offenders = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        if path.name in {"needs.py", "test_guarantees.py"}:
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if SKIP.search(line) and "# skip-ok:" not in line:
                offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert offenders == [], "use needs.need(condition, reason), or add '# skip-ok: why CI never meets it'"
