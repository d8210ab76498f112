"""The mutant runner: every guarantee the docs make must have a test that fails when the guarantee is broken.

``tests/guarantees.toml`` lists each promise of the docs (README "Failure behaviour", docs/reliability.md,
docs/storage.md, docs/synthesis.md, docs/probe.md, docs/deployments.md, docs/evaluation.md): its id, the
sentence quoted from the doc, the tests that prove it, and at least one *mutant* — a small text replacement in
the product code that breaks exactly that promise. For each mutant this runner copies the tracked tree into a temporary
directory, applies the replacement, runs only the mutant's tests there, and reports whether they failed
(killed: the tests are evidence) or passed (survived: the tests would not notice the bug).

    python -m tests.mutants              # every mutant, 2 at a time
    python -m tests.mutants --only ID    # one guarantee (or one mutant, by name); repeatable
    python -m tests.mutants --list       # the registry, no test run
    python -m tests.mutants --check      # only the mechanical checks below (seconds)
    python -m tests.mutants -j 4         # parallel runs
    python -m tests.mutants --baseline   # first run every registry test on the unmutated copy

Exits non-zero when a mutant survives, an anchor is missing or not unique (the registry must move with the
code), a test named in the registry does not exist, a doc's promise marker (``<!-- guarantee: ID -->``) has
no registry entry or an entry no marker, or an entry's quoted sentence is no longer in its doc.

How to add a guarantee: README "Guarantees" and docs/reliability.md, "Adding a guarantee".
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REGISTRY = ROOT / "tests" / "guarantees.toml"
# The documents whose promises the registry must cover, each promise marked in the text.
DOCS = (
    "README.md",
    "docs/reliability.md",
    "docs/storage.md",
    "docs/synthesis.md",
    "docs/probe.md",
    "docs/deployments.md",
    "docs/evaluation.md",
    "docs/models.md",
    "docs/worlds.md",
)
MARKER = re.compile(r"<!--\s*guarantee:\s*([a-z0-9][a-z0-9-]*)\s*-->")
ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]*$")
MUTANT_TIMEOUT_S = 900


@dataclass(frozen=True)
class Mutant:
    guarantee: str
    name: str
    file: str
    anchor: str
    replace: str
    tests: tuple[str, ...]


@dataclass
class Guarantee:
    id: str
    doc: str
    promise: str
    tests: tuple[str, ...]
    mutants: list[Mutant] = field(default_factory=list)
    note: str = ""


def load_registry(path: Path = REGISTRY) -> list[Guarantee]:
    """The registry's entries; raises ValueError naming the entry and field on a malformed one."""
    data = tomllib.loads(path.read_text())
    out = []
    for i, entry in enumerate(data.get("guarantee", [])):
        where = f"{path.name} entry {i} ({entry.get('id', '?')!r})"
        for key in ("id", "doc", "promise", "tests", "mutant"):
            if key not in entry:
                raise ValueError(f"{where}: missing {key!r}")
        unknown = set(entry) - {"id", "doc", "promise", "tests", "mutant", "note"}
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {sorted(unknown)}")
        g = Guarantee(entry["id"], entry["doc"], entry["promise"], tuple(entry["tests"]), note=entry.get("note", ""))
        for m in entry["mutant"]:
            missing = {"name", "file", "anchor", "replace"} - set(m)
            if missing:
                raise ValueError(f"{where}: a mutant lacks {sorted(missing)}")
            unknown = set(m) - {"name", "file", "anchor", "replace", "tests"}
            if unknown:
                raise ValueError(f"{where}: mutant {m.get('name')!r} has unknown field(s) {sorted(unknown)}")
            g.mutants.append(
                Mutant(g.id, m["name"], m["file"], m["anchor"], m["replace"], tuple(m.get("tests", g.tests)))
            )
        out.append(g)
    return out


def _squash(text: str) -> str:
    return " ".join(text.split())


def _test_exists(node: str, root: Path) -> bool:
    """A node id ``path::test[param]`` names a file that defines that test function."""
    path, _, rest = node.partition("::")
    file = root / path
    if not file.is_file():
        return False
    if not rest:
        return True
    name = rest.split("::")[-1].split("[")[0]
    return re.search(rf"^\s*(async\s+)?def {re.escape(name)}\(", file.read_text(), re.M) is not None


def check_registry(guarantees: list[Guarantee], root: Path = ROOT) -> list[str]:
    """Every mechanical check; returns the problems (empty: all good)."""
    problems: list[str] = []
    ids = [g.id for g in guarantees]
    for dup in sorted({i for i in ids if ids.count(i) > 1}):
        problems.append(f"guarantee id {dup!r} appears more than once")
    names = [m.name for g in guarantees for m in g.mutants]
    for dup in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"mutant name {dup!r} appears more than once")
    marked: dict[str, set[str]] = {}
    texts: dict[str, str] = {}
    for doc in DOCS:
        text = (root / doc).read_text()
        texts[doc] = _squash(text)
        marked[doc] = set(MARKER.findall(text))
    for g in guarantees:
        if not ID_RE.match(g.id):
            problems.append(f"{g.id!r}: ids are lower-case words joined by '-'")
        if g.doc not in DOCS:
            problems.append(f"{g.id}: doc {g.doc!r} is not one of {DOCS}")
            continue
        if g.id not in marked[g.doc]:
            problems.append(f"{g.id}: no <!-- guarantee: {g.id} --> marker in {g.doc}")
        if _squash(g.promise) not in texts[g.doc]:
            problems.append(f"{g.id}: the quoted promise is no longer in {g.doc}: {g.promise[:80]!r}…")
        if not g.mutants:
            problems.append(f"{g.id}: no mutant (a promise without a mutant has no evidence that its test can fail)")
        for node in {*g.tests, *(t for m in g.mutants for t in m.tests)}:
            if not _test_exists(node, root):
                problems.append(f"{g.id}: test {node!r} does not exist")
        for m in g.mutants:
            file = root / m.file
            if not file.is_file():
                problems.append(f"{g.id}/{m.name}: file {m.file!r} does not exist")
                continue
            count = file.read_text().count(m.anchor)
            if count != 1:
                problems.append(f"{g.id}/{m.name}: anchor found {count} times in {m.file} (must be exactly once)")
            if m.anchor == m.replace:
                problems.append(f"{g.id}/{m.name}: the replacement equals the anchor")
            if not m.tests:
                problems.append(f"{g.id}/{m.name}: no tests to run")
    registered = {(g.doc, g.id) for g in guarantees}
    for doc, found in marked.items():
        for gid in sorted(found):
            if (doc, gid) not in registered:
                problems.append(f"{doc}: promise marker {gid!r} has no entry in {REGISTRY.name}")
    return problems


def tracked_files(root: Path = ROOT) -> list[str]:
    """What a clean copy holds: tracked files plus untracked ones git does not ignore (new, uncommitted work)."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root, capture_output=True, check=True,
    ).stdout.decode()
    return [p for p in out.split("\0") if p and (root / p).is_file()]


def make_copy(dest: Path, files: list[str], root: Path = ROOT) -> None:
    for rel in files:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / rel, target)


@dataclass
class Outcome:
    mutant: Mutant
    status: str  # killed | survived | error
    seconds: float
    detail: str = ""


def run_tests(copy: Path, tests: tuple[str, ...], timeout_s: float) -> tuple[int | None, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}
    env["PYTHONPATH"] = str(copy)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    cmd = [sys.executable, "-m", "pytest", *tests, "-x", "-q", "-p", "no:cacheprovider"]
    try:
        proc = subprocess.run(cmd, cwd=copy, env=env, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        return None, out
    return proc.returncode, proc.stdout + proc.stderr


def run_mutant(m: Mutant, files: list[str], timeout_s: float = MUTANT_TIMEOUT_S) -> Outcome:
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"dct-mutant-{m.name}-") as tmp:
        copy = Path(tmp) / "tree"
        make_copy(copy, files)
        target = copy / m.file
        text = target.read_text()
        if text.count(m.anchor) != 1:
            return Outcome(m, "error", time.perf_counter() - t0, f"anchor found {text.count(m.anchor)} times")
        target.write_text(text.replace(m.anchor, m.replace))
        rc, out = run_tests(copy, m.tests, timeout_s)
    seconds = time.perf_counter() - t0
    last = next((line for line in reversed(out.strip().splitlines()) if line.strip()), "")
    if rc is None:
        return Outcome(m, "error", seconds, f"timed out after {timeout_s:.0f} s")
    if rc == 0:
        return Outcome(m, "survived", seconds, last)
    if rc in (1, 2):  # 1: a test failed; 2: collection failed (the mutant broke an import: weak evidence)
        failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", out, re.M)
        how = "" if rc == 1 else "collection error: "
        return Outcome(m, "killed", seconds, how + (failed[0] if failed else last)[:160])
    return Outcome(m, "error", seconds, f"pytest exit code {rc}: {last}")  # 4: no such test, 5: none collected


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.mutants", description=__doc__.split("\n\n")[0])
    p.add_argument("--only", action="append", default=[], metavar="ID", help="a guarantee id or mutant name")
    p.add_argument("--list", action="store_true", help="print the registry and exit")
    p.add_argument("--check", action="store_true", help="only the mechanical checks (no test runs)")
    p.add_argument("--baseline", action="store_true", help="first run the selected tests on an unmutated copy")
    p.add_argument("-j", "--jobs", type=int, default=2, help="mutants run at once (default 2)")
    p.add_argument("--timeout", type=float, default=MUTANT_TIMEOUT_S, help="seconds per mutant's test run")
    args = p.parse_args(argv)

    guarantees = load_registry()
    problems = check_registry(guarantees)
    mutants = [m for g in guarantees for m in g.mutants]
    if args.only:
        unknown = set(args.only) - {g.id for g in guarantees} - {m.name for m in mutants}
        if unknown:
            print(f"--only: unknown guarantee or mutant {sorted(unknown)}", file=sys.stderr)
            return 2
        mutants = [m for m in mutants if m.guarantee in args.only or m.name in args.only]
    if args.list:
        for g in guarantees:
            print(f"{g.id}  ({g.doc})\n  {_squash(g.promise)[:150]}")
            for m in g.mutants:
                print(f"  mutant {m.name}: {m.file}  tests: {' '.join(m.tests)}")
        print(f"{len(guarantees)} guarantees, {sum(len(g.mutants) for g in guarantees)} mutants")
        return 1 if problems else 0
    for problem in problems:
        print(f"REGISTRY  {problem}")
    if args.check:
        print(f"{len(guarantees)} guarantees, {len(mutants)} mutants: " + ("OK" if not problems else "PROBLEMS"))
        return 1 if problems else 0

    files = tracked_files()
    t0 = time.perf_counter()
    if args.baseline:
        tests = tuple(dict.fromkeys(t for m in mutants for t in m.tests))
        with tempfile.TemporaryDirectory(prefix="dct-mutant-baseline-") as tmp:
            make_copy(Path(tmp) / "tree", files)
            rc, out = run_tests(Path(tmp) / "tree", tests, args.timeout * 4)
        print(f"BASELINE  {len(tests)} tests on the unmutated copy: {'pass' if rc == 0 else 'FAIL'} "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
        if rc != 0:
            print(out[-3000:])
            return 1
    outcomes: list[Outcome] = []
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = [pool.submit(run_mutant, m, files, args.timeout) for m in mutants]
        for fut in as_completed(futures):
            o = fut.result()
            outcomes.append(o)
            name = f"{o.mutant.guarantee}/{o.mutant.name}"
            print(f"{o.status.upper():8}  {name}  {o.seconds:6.1f} s  {o.detail}", flush=True)
    wall = time.perf_counter() - t0
    counts = {s: sum(o.status == s for o in outcomes) for s in ("killed", "survived", "error")}
    print(
        f"{len(outcomes)} mutants: {counts['killed']} killed, {counts['survived']} survived, {counts['error']} errors; "
        f"{len(problems)} registry problems; {wall:.0f} s wall (-j {args.jobs})"
    )
    return 0 if not problems and counts["survived"] == 0 and counts["error"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
