"""The command matrix: every `dct` command × every world × store, run as real subprocesses the way a new user
runs them (`python -m dct.cli ...`).

A cell ends EITHER with exit code 0 and the outputs its command documents (files, Parquet rows, image counts,
token shapes: checked here, not just the exit code) OR, where the cell is a documented refusal, with exit
code 2 and a one-line refusal as the last line on stderr. No cell may print a traceback.

Worlds: the built-in toy and fashion worlds (only their cheap cells: a full run takes minutes), a tiny SD dataset
file, a tiny SDXL one, and a tiny multi-vector one (the SD file with a ``[token]`` section, ``num_vectors = 2``).
Stores: a local folder for every world; an S3 bucket on a real S3 server (moto) for SD and SDXL. In the S3
column EVERY location a cell passes (store, token file, bundle, image folders, --out) is an ``s3://`` URI.

Speed (docs: the default suite stays under 30 minutes on an idle 2-core machine):
- one `dct run` per (world, store) — 2 classes, 1 epoch, 2 samples — made on first use and shared by the
  cells after it; the cells never change what it wrote (cells that write elsewhere use fresh stores/folders,
  cells that add to the run's report take turns);
- one Prefect server for the module: a tiny `dct run` took 21 s against it and 31 s starting its own
  temporary API (idle 2-core machine), and every `dct run`/`dct synthesize` cell starts a flow;
- the selected cells' commands run two at a time in background threads (the machine has 2 cores); each
  test then waits for its own cell and checks it, so every cell is still its own test with its own id
  (``synthesize-bundle-folder/sdxl/s3``) and `-k` runs only what it selects (plus the run it needs).
"""

from __future__ import annotations

import io
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Generator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from procs import Processes, free_port, http_ok, wait_for
from tiny import TINY_CLASSES, save_tiny_world

pytestmark = [pytest.mark.matrix, pytest.mark.slow]

CELL_TIMEOUT_S = 900  # one command; a tiny `dct run` takes ~20-40 s
WORKERS = 2
BUCKET = "dct-matrix"
DATASET = "tiny"  # the name in every tiny dataset file
RUN_CLASSES = (0, 1)
NUM_SAMPLES = 2  # evaluation images per class and variant in the tiny worlds (save_tiny_world)
# Updates per class. Not 1: with one update the best-loss token is the one evaluated at epoch 0, the initializer
# itself, so every class has the SAME vector and no image could show that a command took the wrong class's
# token. Three take < 1 s per class and end with distinct tokens (the run cell checks that they differ).
MAX_EPOCHS = 3
SIZE = (16, 16)  # the tiny pipelines' images

# What a class token loads as (:func:`dct.artifacts.token_file.read_token_bytes`), per world.
TOKEN_SHAPES = {
    "sd": {"": (32,)},
    "mv": {"": (2, 32)},
    "sdxl": {"clip_l": (1, 32), "clip_g": (1, 40)},
}
TWO_VECTOR_SHAPES = {"sd": {"": (2, 32)}, "sdxl": {"clip_l": (2, 32), "clip_g": (2, 40)}}

BUILT_IN = ("toy", "fashion")  # the shipped worlds: their dataset is their name
WORLDS = (*BUILT_IN, "sd", "sdxl", "mv")
COMBOS = (("sd", "local"), ("sdxl", "local"), ("mv", "local"), ("sd", "s3"), ("sdxl", "s3"))


# ---------------------------------------------------------------------------------------- a command's result


@dataclass
class Result:
    """One finished `dct` command."""

    args: list[str]
    rc: int | None  # None: killed after CELL_TIMEOUT_S
    stdout: str
    stderr: str
    seconds: float

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    @property
    def last_line(self) -> str:
        for text in (self.stderr, self.stdout) if self.rc != 0 else (self.stdout, self.stderr):
            lines = [ln for ln in text.splitlines() if ln.strip()]
            if lines:
                return lines[-1].strip()
        return "(no output)"

    def describe(self, tail: int = 30) -> str:
        """The command, its exit code and the last ``tail`` lines of its output (stdout, then stderr)."""
        lines = self.output.splitlines()[-tail:]
        return (
            f"$ python -m dct.cli {shlex.join(self.args)}\n"
            f"(exit code {self.rc}, {self.seconds:.0f} s; last {len(lines)} lines of output:)\n" + "\n".join(lines)
        )

    def line_after(self, label: str) -> str:
        """The value printed after ``label`` (``"  rows:    s3://..."`` -> ``"s3://..."``)."""
        for ln in self.stdout.splitlines():
            if ln.strip().startswith(label):
                return ln.strip()[len(label) :].strip()
        raise AssertionError(f"no line starting with {label!r} in the output")


def expect_ok(res: Result) -> None:
    """Exit code 0 and no traceback; else the failure shows the command and its last 30 lines."""
    if res.rc != 0 or "Traceback" in res.output:
        what = "a traceback" if "Traceback" in res.output else f"exit code {res.rc}"
        pytest.fail(f"expected exit code 0, got {what}: {res.last_line}\n{res.describe()}", pytrace=False)


def expect_refusal(res: Result, message: str) -> None:
    """Exit code 2, no traceback, and the last stderr line is one `dct ...: error: ...` line naming ``message``."""
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    last = lines[-1] if lines else ""
    if res.rc != 2 or "Traceback" in res.output or not last.startswith("dct") or message not in last:
        pytest.fail(
            f"expected a one-line refusal naming {message!r} with exit code 2, got exit code {res.rc}: "
            f"{res.last_line}\n{res.describe()}",
            pytrace=False,
        )


@contextmanager
def explained(res: Result):
    """A failed output check shows what was wrong, then the command and its last 30 lines of output."""
    try:
        yield
        return
    except (AssertionError, OSError, KeyError, ValueError) as exc:
        text = str(exc)
        message = f"outputs: {type(exc).__name__}: {text.splitlines()[0] if text else ''}\n{text}\n{res.describe()}"
    pytest.fail(message, pytrace=False)  # outside the except: no "during handling ..." chain in the report


class PrerequisiteFailed(Exception):
    """The `dct run` (or `dct optimize`) that a cell takes its inputs from did not succeed."""


# ---------------------------------------------------------------------------------------- reading outputs


def _fs(uri: str):
    """A filesystem and path for a local path or ``s3://`` URI, with no listing cache (other processes write)."""
    if uri.startswith("s3://"):
        import s3fs

        fs = s3fs.S3FileSystem(
            endpoint_url=os.environ["AWS_ENDPOINT_URL_S3"], skip_instance_cache=True, use_listings_cache=False
        )
        return fs, uri[len("s3://") :]
    from fsspec.implementations.local import LocalFileSystem

    return LocalFileSystem(), uri


def files_under(uri: str) -> list[str]:
    """Paths of the files under a folder, relative to it, sorted ([] if there is none)."""
    fs, path = _fs(uri)
    path = path.rstrip("/")
    if not fs.exists(path):
        return []
    return sorted(p[len(path) + 1 :] for p in fs.find(path))


def read(uri: str) -> bytes:
    fs, path = _fs(uri)
    with fs.open(path, "rb") as f:
        return f.read()


def exists(uri: str) -> bool:
    fs, path = _fs(uri)
    return fs.exists(path)


def join(uri: str, *parts: str) -> str:
    return "/".join([uri.rstrip("/"), *parts])


def parquet(uri: str) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(io.BytesIO(read(uri))).to_pylist()


def image(uri: str):
    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(read(uri))).convert("RGB"))


def token_shapes(vector) -> dict[str, tuple[int, ...]]:
    """``{"": shape}`` for one text encoder, ``{"clip_l": ..., "clip_g": ...}`` for two."""
    if isinstance(vector, dict):
        return {k: tuple(v.shape) for k, v in vector.items()}
    return {"": tuple(vector.shape)}


def _flat(vector):
    """One tensor of a token's vector(s), for comparing tokens."""
    import torch

    return torch.cat([v.flatten() for v in vector.values()]) if isinstance(vector, dict) else vector.flatten()


def read_token(uri: str):
    from dct.artifacts.token_file import read_token_bytes

    return read_token_bytes(read(uri))


def results(store: str, table: str, **kw):
    """A results table as a notebook reads it (:func:`dct.results.read_results`)."""
    from dct.results import read_results

    return read_results(store, table=table, **kw)


# ---------------------------------------------------------------------------------------- the matrix


@dataclass
class World:
    """One (world, store) column: its dataset argument, store, and the shared run made on first use."""

    matrix: Matrix
    world: str
    store_kind: str
    dataset: str = ""
    store: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock)
    report_lock: threading.Lock = field(default_factory=threading.Lock)  # cells that add to the run's report
    _done: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.world if self.world in BUILT_IN else DATASET

    @property
    def class_names(self) -> tuple[str, ...]:
        if self.world in BUILT_IN:
            from dct.models.datasets import get_dataset

            return get_dataset(self.world).class_names
        return TINY_CLASSES

    def loc(self, *parts: str) -> str:
        """A location for a cell's outputs: a local folder or an S3 prefix (never inside the run's store)."""
        if self.store_kind == "s3":
            return join(f"s3://{BUCKET}/{self.world}", *parts)
        return str(self.matrix.base.joinpath(f"{self.world}-{self.store_kind}", *parts))

    def _once(self, key: str, make: Callable[[], Result]) -> Result:
        with self._lock:
            if key not in self._done:
                self._done[key] = make()
            return self._done[key]

    # ---- the shared run

    def run(self) -> Result:
        """`dct run` of classes 0-1 into this column's store (once)."""
        return self._once(
            "run",
            lambda: self.matrix.dct(["run", "--dataset", self.dataset, "--classes", "0-1", "--store", self.store]),
        )

    def run_id(self) -> str:
        res = self.run()
        if res.rc != 0 or "Traceback" in res.output:
            raise PrerequisiteFailed(f"the `dct run` this cell uses failed: {res.last_line}\n{res.describe()}")
        try:
            return json.loads(res.stdout.strip().splitlines()[-1])["run_id"]
        except (ValueError, KeyError, IndexError):
            raise PrerequisiteFailed(
                f"the `dct run` this cell uses printed no JSON line last\n{res.describe()}"
            ) from None

    def run_rows(self):
        rows = results(self.store, "classes", dataset=DATASET, run_id=self.run_id())
        return rows.sort_values("class_id").reset_index(drop=True)

    def token_key(self) -> str:
        (key,) = set(self.run_rows()["token_key"])
        return key

    def bundle_folder(self) -> str:
        return join(self.store, "runs", DATASET, self.run_id(), "bundle")

    def samples_uri(self, class_id: int) -> str:
        rows = self.run_rows()
        return rows[rows.class_id == class_id]["samples_uri"].iloc[0]

    # ---- `dct optimize` (the toy's token for `generate --token`)

    def optimize(self) -> Result:
        out = self.loc("optimize", "tok1.safetensors")
        extra = ["--max-epochs", "1"] if self.world in BUILT_IN else []
        return self._once(
            "optimize",
            lambda: self.matrix.dct(["optimize", "--dataset", self.dataset, "--class", "1", "--out", out, *extra]),
        )

    def optimized_token(self) -> str:
        res = self.optimize()
        if res.rc != 0:
            raise PrerequisiteFailed(f"the `dct optimize` this cell uses failed: {res.last_line}\n{res.describe()}")
        return self.loc("optimize", "tok1.safetensors")

    # ---- real image folders for augment-eval (class-id folders of classes 0 and 1)

    def real_folders(self) -> tuple[str, str]:
        self._once("real", self._write_real_folders)
        return self.loc("real", "train"), self.loc("real", "test")

    def _write_real_folders(self) -> Result:
        from PIL import Image

        from dct.synthesis.layout import class_folder

        # Written locally (the S3 column uploads them with s3fs, as a user would with any S3 client).
        local = Path(self.loc("real")) if self.store_kind == "local" else self.matrix.base / f"real-{self.world}"
        for split, n in (("train", 2), ("test", 2)):
            for c in RUN_CLASSES:
                folder = local / split / class_folder(c, TINY_CLASSES[c])
                folder.mkdir(parents=True, exist_ok=True)
                for i in range(n):
                    colour = (255 * (c == 0), 80 * i, 255 * (c == 1))
                    Image.new("RGB", SIZE, colour).save(folder / f"{i}.png")
        if self.store_kind == "s3":
            fs, path = _fs(self.loc("real"))
            fs.put(str(local) + "/", path, recursive=True)
        return Result([], 0, "", "", 0.0)


@dataclass
class Cell:
    name: str
    world: str
    store: str
    body: Callable[[World], Generator]

    @property
    def id(self) -> str:
        return f"{self.name}/{self.world}/{self.store}"


CELLS: list[Cell] = []


def cell(name: str, combos):
    """Register a cell for each (world, store). Its body yields the command (argument list, or a callable
    returning a shared Result), receives the Result and checks the outputs."""

    def register(body):
        for world, store in combos:
            CELLS.append(Cell(name, world, store, body))
        return body

    return register


class Matrix:
    """Runs the selected cells' commands in background threads (prerequisites first) and hands each test its
    cell's result to check."""

    def __init__(self, base: Path, env: dict[str, str], selected: list[Cell]) -> None:
        self.base, self.env = base, env
        self.worlds: dict[tuple[str, str], World] = {}
        self._procs: set[subprocess.Popen] = set()
        self._procs_lock = threading.Lock()
        self._closing = False
        self._jobs: dict[str, Future] = {}
        self._pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="matrix")
        # The runs first: every other cell waits for its column's run (FIFO: a waiting cell never holds up
        # the run it waits for, which started before it).
        for c in sorted(selected, key=lambda c: c.name not in ("run", "optimize-out")):
            self._jobs[c.id] = self._pool.submit(self._start, c)

    def world(self, world: str, store: str) -> World:
        key = (world, store)
        if key not in self.worlds:
            w = World(self, world, store)
            w.dataset = world if world in BUILT_IN else str(self.base / "worlds" / world / f"{DATASET}.toml")
            w.store = w.loc("store") if store == "s3" else str(self.base / f"{world}-{store}" / "store")
            self.worlds[key] = w
        return self.worlds[key]

    def _start(self, c: Cell):
        body = c.body(self.world(c.world, c.store))
        what = next(body)
        if callable(what):
            return body, what()
        return body, self.dct(what, report=c.name in REPORT_CELLS and self.world(c.world, c.store))

    def check(self, c: Cell) -> None:
        """Wait for the cell's command, then run the cell's checks."""
        job = self._jobs[c.id]
        if isinstance(job.exception(timeout=4 * CELL_TIMEOUT_S), PrerequisiteFailed):
            pytest.fail(str(job.exception()), pytrace=False)
        body, res = job.result()
        try:
            body.send(res)
        except StopIteration:
            return
        raise AssertionError(f"cell {c.id} yielded twice")

    def dct(self, args: list[str], report: World | bool = False) -> Result:
        """``python -m dct.cli ARGS`` in a fresh working folder (`report`: holding the run's report lock)."""
        if report:
            with report.report_lock:
                return self.dct(args)
        cwd = self.base / "cwd" / f"{time.monotonic_ns()}"
        cwd.mkdir(parents=True)
        t0 = time.monotonic()
        with self._procs_lock:
            if self._closing:
                return Result(args, None, "", "not started: the matrix is closing", 0.0)
            proc = subprocess.Popen(
                [sys.executable, "-m", "dct.cli", *args], cwd=cwd, env=self.env, text=True,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
            )
            self._procs.add(proc)
        try:
            out, err = proc.communicate(timeout=CELL_TIMEOUT_S)
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            _kill(proc)
            out, err = proc.communicate()
            rc, err = None, err + f"\n(killed after {CELL_TIMEOUT_S} s)"
        finally:
            with self._procs_lock:
                self._procs.discard(proc)
        return Result(args, rc, out, err, time.monotonic() - t0)

    def close(self) -> None:
        with self._procs_lock:
            self._closing = True
            procs = list(self._procs)
        self._pool.shutdown(wait=False, cancel_futures=True)
        for proc in procs:
            _kill(proc)
        self._pool.shutdown(wait=True)


def _kill(proc: subprocess.Popen) -> None:
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def matrix(request, tmp_path_factory, moto_endpoint):
    import boto3

    base = tmp_path_factory.mktemp("matrix")
    aws = {
        "AWS_ACCESS_KEY_ID": "matrix-key-id",
        "AWS_SECRET_ACCESS_KEY": "matrix-secret-key",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL_S3": moto_endpoint,
        "AWS_CONFIG_FILE": str(base / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(base / "no-aws-credentials"),
    }
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "DCT_", "AWS_"))} | aws | {
        "PREFECT_HOME": str(base / "prefect-home"),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
        "HF_HUB_OFFLINE": "1",
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
    }
    selected = [item.callspec.params["c"] for item in request.session.items
                if item.module is request.module and hasattr(item, "callspec")]
    for world in sorted({c.world for c in selected} - set(BUILT_IN)):
        path = save_tiny_world(base / "worlds" / world, sdxl=world == "sdxl", max_epochs=MAX_EPOCHS,
                               num_samples=NUM_SAMPLES)
        if world == "mv":
            path.write_text(path.read_text() + "[token]\nnum_vectors = 2\n")
    procs = Processes(base, env)
    with pytest.MonkeyPatch.context() as mp:
        for k, v in aws.items():  # this process reads the S3 outputs too
            mp.setenv(k, v)
        boto3.client("s3", endpoint_url=moto_endpoint).create_bucket(Bucket=BUCKET)
        m = None
        try:
            procs.start("prefect-server", ["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)])
            wait_for(lambda: http_ok(f"http://127.0.0.1:{port}/api/health"), 180, "the Prefect server")
            m = Matrix(base, env, selected)
            yield m
        finally:
            if m is not None:
                m.close()
            procs.stop_all()


# ---------------------------------------------------------------------------------------- shared checks


def check_token(w: World, uri: str, class_id: int, shapes: dict | None = None) -> None:
    token, vector, meta = read_token(uri)
    assert token == f"<dct-{w.name}-{class_id:05d}>", token
    assert meta["class_id"] == str(class_id) and meta["dataset"] == w.name, meta
    if w.world in TOKEN_SHAPES or shapes:
        assert token_shapes(vector) == (shapes or TOKEN_SHAPES[w.world]), token_shapes(vector)


def check_pngs(folder: str, names: list[str], size: tuple[int, int] | None = SIZE) -> None:
    found = files_under(folder)
    assert found == sorted(names), f"{folder} holds {found or 'nothing'}, expected {sorted(names)}"
    for name in names:
        assert read(join(folder, name))[:8] == b"\x89PNG\r\n\x1a\n", name
        if size is not None:
            assert image(join(folder, name)).shape[:2] == size, (name, image(join(folder, name)).shape)


def check_same_as_run_samples(res: Result, w: World, folder: str, class_id: int, variants=("dct",)) -> None:
    """`dct generate` makes images exactly as evaluation does (same sampler, prompts, seeds): with the run's
    token of ``class_id``, image j equals the run's stored evaluation sample j, pixel for pixel."""
    import numpy as np

    assert f"class {class_id} ({TINY_CLASSES[class_id]}): token <dct-{DATASET}-{class_id:05d}>" in res.stdout, (
        "the output names another class or token"
    )
    samples = w.samples_uri(class_id)
    seeds = sorted(files_under(join(samples, "dct")))
    assert len(seeds) == NUM_SAMPLES, seeds
    for variant in variants:
        for j, name in enumerate(seeds):
            ours, theirs = image(join(folder, f"{variant}-{j:02d}.png")), image(join(samples, variant, name))
            assert np.array_equal(ours, theirs), f"{variant}-{j:02d}.png differs from the run's sample {name}"


def check_synthetic_set(res: Result, w: World, *, per_class: int = 2, arms=("dct",), filtered: bool = False) -> list:
    """The set the command printed: its card, metadata rows of classes 0-1 made with the run's tokens, and
    ``per_class`` kept images per class and arm (the DCT arm: at most, when ``filtered``) under their folders."""
    classes = RUN_CLASSES
    rows_uri = res.line_after("rows:")
    root = rows_uri.rsplit("/", 1)[0]
    assert rows_uri.endswith("/metadata.parquet"), rows_uri
    assert exists(join(root, "README.md")), f"no dataset card (README.md) beside {rows_uri}"
    rows = parquet(rows_uri)
    assert {r["class_id"] for r in rows} == set(classes), sorted({r["class_id"] for r in rows})
    assert {r["arm"] for r in rows} == set(arms)
    for arm in arms:
        for c in classes:
            kept = [r for r in rows if r["arm"] == arm and r["class_id"] == c and r["kept"]]
            if not (filtered and arm == "dct"):
                assert len(kept) == per_class, (arm, c, len(kept))
            for r in kept:
                assert exists(join(root, r["path"])), r["path"]
                assert r["token"] == f"<dct-{w.name}-{c:05d}>" and (r["width"], r["height"]) == SIZE, r
    if w.world not in BUILT_IN:
        assert {r["token_key"] for r in rows} == {w.token_key()}, "the set was not made with the run's tokens"
    train = files_under(join(root, "train"))
    kept_dct = [r for r in rows if r["arm"] == "dct" and r["kept"]]
    assert sorted(train) == sorted(r["path"][len("train/") :] for r in kept_dct), train
    return rows


def check_augment(res: Result, w: World, out: str, run_id: str | None) -> None:
    assert exists(join(out, "augment.parquet")), f"no augment.parquet in {out}"
    rows = parquet(join(out, "augment.parquet"))
    assert read(join(out, "augment.png"))[:8] == b"\x89PNG\r\n\x1a\n"
    assert {"real", "baseline", "dct"} <= {r["arm"] for r in rows}, {r["arm"] for r in rows}
    assert {r["k"] for r in rows} == {1} and {r["seed"] for r in rows} == {0}
    assert {r["class_id"] for r in rows} - {None} <= set(RUN_CLASSES)
    assert {r["token_key"] for r in rows} == {w.token_key()} and {r["dataset"] for r in rows} == {DATASET}
    if run_id is not None:
        assert {r["run_id"] for r in rows} == {run_id}, {r["run_id"] for r in rows}
        report = join(w.store, "runs", DATASET, run_id, "report")
        assert exists(join(report, "augment.html")) and exists(join(report, "augment.parquet"))
        assert "augment.html" in read(join(report, "index.html")).decode()


def check_probe(res: Result, w: World, run_id: str) -> None:
    report = join(w.store, "runs", DATASET, run_id, "report")
    assert res.line_after("page:").endswith(f"/runs/{DATASET}/{run_id}/report/probe.html"), res.line_after("page:")
    assert exists(join(report, "probe.html")), f"no probe.html in {report}"
    assert "probe.html" in read(join(report, "index.html")).decode()
    rows = results(w.store, "probe", run_id=run_id)
    assert len(rows) and set(rows["class_id"]) == set(RUN_CLASSES), rows
    assert set(rows["dataset"]) == {DATASET}


# ---------------------------------------------------------------------------------------- the cells

REPORT_CELLS = {"probe-run", "probe-dataset", "augment-eval", "augment-eval-run"}


@cell("datasets-show", [(w, "local") for w in WORLDS])
def _datasets_show(w: World):
    res = yield ["datasets", "show", w.dataset, "--json"]
    expect_ok(res)
    with explained(res):
        out = json.loads(res.stdout)
        assert out["name"] == w.name and out["num_classes"] == len(w.class_names), out
        assert [(c["id"], c["name"]) for c in out["classes"]] == list(enumerate(w.class_names)), out["classes"]
        if w.world not in BUILT_IN:
            assert out["diffusion"]["model_id"].endswith("pipeline"), out["diffusion"]


@cell("run", COMBOS)
def _run(w: World):
    res = yield w.run
    expect_ok(res)
    with explained(res):
        last = json.loads(res.stdout.strip().splitlines()[-1])
        assert last["status"] == "done", last
        run_id = last["run_id"]
        assert f"classes: {len(RUN_CLASSES)} done, 0 diverged, 0 failed" in res.stdout
        rows = w.run_rows()
        assert list(rows["class_id"]) == list(RUN_CLASSES) and set(rows["status"]) == {"done"}, rows
        vectors = {}
        for _, r in rows.iterrows():
            name = f"{r['class_id']:05d}.safetensors"
            assert r["token_uri"] == join(w.store, "tokens", DATASET, r["token_key"], name), r["token_uri"]
            check_token(w, r["token_uri"], r["class_id"])
            token, vector, meta = read_token(r["token_uri"])
            assert meta["token_key"] == r["token_key"] and token == r["token"]
            vectors[token] = vector
            samples = files_under(r["samples_uri"])
            assert len(samples) == 2 * NUM_SAMPLES and {s.split("/")[0] for s in samples} == {"baseline", "dct"}
            assert exists(join(w.store, "records", DATASET, r["eval_key"], f"{r['class_id']:05d}.json"))
        runs = results(w.store, "runs", run_id=run_id)
        assert len(runs) == 1 and runs["status"].iloc[0] == "done", runs
        assert runs["bundle_uri"].iloc[0] == join(w.bundle_folder(), "tokens.safetensors")
        from dct.artifacts.bundle import bundle_vector, read_bundle

        tokens, bundled, manifest = read_bundle(read(runs["bundle_uri"].iloc[0]))
        assert sorted(tokens) == sorted(vectors), f"the bundle holds {tokens}, the run's classes {sorted(vectors)}"
        assert manifest.run_id == run_id, manifest.run_id
        for i, token in enumerate(tokens):
            assert token_shapes(bundle_vector(bundled, i)) == token_shapes(vectors[token])
        first, second = (_flat(v) for v in vectors.values())
        assert not (first == second).all(), (
            "the classes' tokens are equal: the other cells could not tell them apart (raise MAX_EPOCHS)"
        )
        assert exists(join(w.store, "runs", DATASET, run_id, "report", "index.html"))


@cell("run-dry-run", [("toy", "local"), ("fashion", "local"), *COMBOS])
def _run_dry_run(w: World):
    store = w.loc("dry-run-store")
    res = yield ["run", "--dataset", w.dataset, "--classes", "0-1", "--store", store, "--dry-run"]
    expect_ok(res)
    with explained(res):
        assert res.stdout.strip().splitlines()[-1] == "dry run: nothing was optimised"
        written = [f for f in files_under(store) if not f.startswith("_dct/")]
        assert written == [], written  # nothing but the store's own preflight marker


@cell("run-dry-run-num-vectors", [("sd", "local")])
def _run_dry_run_num_vectors(w: World):
    store = w.loc("dry-run-nv-store")
    res = yield ["run", "--dataset", w.dataset, "--classes", "0-1", "--store", store, "--num-vectors", "2",
                 "--dry-run"]
    expect_ok(res)
    with explained(res):
        assert res.stdout.strip().splitlines()[-1] == "dry run: nothing was optimised"


@cell("optimize-out", [("toy", "local"), ("fashion", "local"), *COMBOS])
def _optimize_out(w: World):
    res = yield w.optimize
    expect_ok(res)
    with explained(res):
        out = w.loc("optimize", "tok1.safetensors")
        assert exists(out), f"no token file at {out}; the output says {res.line_after('token file:')!r}"
        assert f"token file: {out}" in res.stdout
        check_token(w, out, 1)


@cell("optimize-num-vectors", [("sd", "local"), ("sdxl", "local")])
def _optimize_num_vectors(w: World):
    out = w.loc("optimize-nv", "tok0.safetensors")
    res = yield ["optimize", "--dataset", w.dataset, "--class", "0", "--num-vectors", "2", "--out", out]
    expect_ok(res)
    with explained(res):
        check_token(w, out, 0, TWO_VECTOR_SHAPES[w.world])


@cell("generate-token", [("toy", "local"), ("fashion", "local"), *COMBOS])
def _generate_token(w: World):
    token = w.optimized_token() if w.world in BUILT_IN else w.run_rows()["token_uri"].iloc[1]
    out = w.loc("generate-token")
    res = yield ["generate", "--dataset", w.dataset, "--class", "1", "--token", token, "--n", "2", "--baseline",
                 "--out", out]
    expect_ok(res)
    with explained(res):
        assert "wrote 4 PNGs" in res.stdout
        names = ["baseline-00.png", "baseline-01.png", "dct-00.png", "dct-01.png"]
        check_pngs(out, names, None if w.world in BUILT_IN else SIZE)
        if w.world not in BUILT_IN:
            check_same_as_run_samples(res, w, out, 1, ("dct", "baseline"))


def _generate_bundle(w: World, file: bool):
    bundle = join(w.bundle_folder(), "tokens.safetensors") if file else w.bundle_folder()
    out = w.loc("generate-bundle-file" if file else "generate-bundle-folder")
    res = yield ["generate", "--dataset", w.dataset, "--class", "1", "--bundle", bundle, "--n", "2", "--out", out]
    expect_ok(res)
    with explained(res):
        check_pngs(out, ["dct-00.png", "dct-01.png"])
        check_same_as_run_samples(res, w, out, 1)


cell("generate-bundle-folder", COMBOS)(lambda w: _generate_bundle(w, file=False))
cell("generate-bundle-file", COMBOS)(lambda w: _generate_bundle(w, file=True))


@cell("generate-run", COMBOS)
def _generate_run(w: World):
    out = w.loc("generate-run")
    res = yield ["generate", "--run", w.run_id(), "--class", "1", "--store", w.store, "--n", "2", "--out", out]
    expect_ok(res)
    with explained(res):
        check_pngs(out, ["dct-00.png", "dct-01.png"])
        check_same_as_run_samples(res, w, out, 1)


# Each synthesis cell has its own seed block, so its set (synth_key) is its own whatever order cells run in.
@cell("synthesize", COMBOS)
def _synthesize(w: World):
    w.run_id()  # the store's tokens are the run's
    res = yield ["synthesize", "--dataset", w.dataset, "--per-class", "2", "--classes", "0-1", "--store", w.store,
                 "--image-seed", "2000000"]
    expect_ok(res)
    with explained(res):
        check_synthetic_set(res, w)


def _synthesize_bundle(w: World, file: bool):
    bundle = join(w.bundle_folder(), "tokens.safetensors") if file else w.bundle_folder()
    # A fresh store: the bundle alone must be enough.
    store = w.loc("synthesize-bundle-file-store" if file else "synthesize-bundle-folder-store")
    res = yield ["synthesize", "--dataset", w.dataset, "--bundle", bundle, "--per-class", "2", "--store", store]
    expect_ok(res)
    with explained(res):
        check_synthetic_set(res, w)


cell("synthesize-bundle-folder", COMBOS)(lambda w: _synthesize_bundle(w, file=False))
cell("synthesize-bundle-file", COMBOS)(lambda w: _synthesize_bundle(w, file=True))


@cell("synthesize-run", COMBOS)
def _synthesize_run(w: World):
    res = yield ["synthesize", "--run", w.run_id(), "--per-class", "2", "--store", w.store, "--image-seed", "3000000"]
    expect_ok(res)
    with explained(res):
        rows = check_synthetic_set(res, w)
        check_same_as_generate(res, w, rows, class_id=1, seed=3000000)


def check_same_as_generate(res: Result, w: World, rows: list, *, class_id: int, seed: int) -> None:
    """A synthetic image is what `dct generate --run` renders for the same class, template and seed, pixel for
    pixel: synthesis installs the token as the method does (every text encoder, every vector), not otherwise."""
    import numpy as np

    out = w.loc(f"generate-for-synthesis-{seed}")
    gen = w.matrix.dct(["generate", "--run", w.run_id(), "--class", str(class_id), "--store", w.store, "--n", "2",
                        "--image-seed", str(seed), "--out", out])
    expect_ok(gen)
    root = res.line_after("rows:").rsplit("/", 1)[0]
    for j in range(2):
        (row,) = [r for r in rows if r["arm"] == "dct" and r["class_id"] == class_id and r["seed"] == seed + j]
        ours, generated = image(join(root, row["path"])), image(join(out, f"dct-{j:02d}.png"))
        assert np.array_equal(ours, generated), f"{row['path']} differs from `dct generate`'s dct-{j:02d}.png"


@cell("synthesize-baseline-filter-webdataset", COMBOS)
def _synthesize_filtered(w: World):
    res = yield ["synthesize", "--dataset", w.dataset, "--per-class", "2", "--classes", "0-1", "--store", w.store,
                 "--image-seed", "4000000", "--baseline", "--filter", "guide", "--webdataset"]
    expect_ok(res)
    with explained(res):
        rows = check_synthetic_set(res, w, arms=("dct", "baseline"), filtered=True)
        root = res.line_after("rows:").rsplit("/", 1)[0]
        for c in RUN_CLASSES:
            made = [r for r in rows if r["arm"] == "dct" and r["class_id"] == c]
            kept = [r for r in made if r["kept"]]
            assert len(kept) <= 2 and (len(kept) == 2 or len(made) == 6), (c, len(kept), len(made))  # cap 3 × 2
            for r in made:
                p = r["guide_probability"]
                what = f"{r['path']}: kept={r['kept']} ({r['filter_status']}) at guide probability {p}"
                assert (r["filter_status"] == "kept") == r["kept"], what
                assert r["kept"] == (p >= 0.5) or r["filter_status"] == "over_quota", f"threshold 0.5; {what}"
                if r["filter_status"] == "below_threshold":
                    assert r["path"].startswith("filtered/") and exists(join(root, r["path"])), r
        import tarfile

        members = []
        for shard in files_under(join(root, "webdataset")):
            assert shard.endswith(".tar"), shard
            with tarfile.open(fileobj=io.BytesIO(read(join(root, "webdataset", shard)))) as tar:
                members += [m.name for m in tar.getmembers() if m.name.endswith(".cls")]
        kept = [r for r in rows if r["arm"] == "dct" and r["kept"]]
        assert len(members) == len(kept), (members, len(kept))


AUGMENT = ["--shots", "1", "--synthetic-per-class", "2", "--seeds", "1", "--steps", "2", "--sanity-k", "0"]


@cell("augment-eval", COMBOS)
def _augment_eval(w: World):
    train, test = w.real_folders()
    out = w.loc("augment-eval")
    run_id = w.run_id()
    res = yield ["augment-eval", "--dataset", w.dataset, "--classes", "0-1", "--store", w.store, *AUGMENT,
                 "--real-train", train, "--real-test", test, "--out", out]
    expect_ok(res)
    with explained(res):
        check_augment(res, w, out, run_id)  # default: the latest run with these tokens


@cell("augment-eval-run", COMBOS)
def _augment_eval_run(w: World):
    train, test = w.real_folders()
    out = w.loc("augment-eval-run")
    run_id = w.run_id()
    res = yield ["augment-eval", "--run", run_id, "--store", w.store, *AUGMENT, "--real-train", train,
                 "--real-test", test, "--out", out]
    expect_ok(res)
    with explained(res):
        check_augment(res, w, out, run_id)


@cell("augment-eval-bundle", COMBOS)
def _augment_eval_bundle(w: World):
    train, test = w.real_folders()
    out = w.loc("augment-eval-bundle")
    res = yield ["augment-eval", "--dataset", w.dataset, "--bundle", w.bundle_folder(), "--store",
                 w.loc("augment-eval-bundle-store"), *AUGMENT, "--real-train", train, "--real-test", test,
                 "--out", out]
    expect_ok(res)
    with explained(res):
        check_augment(res, w, out, None)


PROBE = ["--bootstrap", "100"]


@cell("probe-run", COMBOS)
def _probe_run(w: World):
    res = yield ["probe", "--run", w.run_id(), "--store", w.store, *PROBE]
    expect_ok(res)
    with explained(res):
        check_probe(res, w, w.run_id())


@cell("probe-dataset", COMBOS)
def _probe_dataset(w: World):
    run_id = w.run_id()
    res = yield ["probe", "--dataset", w.dataset, "--store", w.store, *PROBE]
    expect_ok(res)
    with explained(res):
        check_probe(res, w, run_id)  # the dataset's latest (here: only) run


# ---- documented refusals: exit code 2, one line, nothing heavy loaded first


@cell("refuse-generate-class-not-in-run", [("sd", "local")])
def _refuse_generate_class(w: World):
    res = yield ["generate", "--run", w.run_id(), "--class", "3", "--store", w.store, "--out", w.loc("refused")]
    expect_refusal(res, "class 3")


@cell("refuse-generate-missing-bundle", [("sd", "s3")])
def _refuse_missing_bundle(w: World):
    res = yield ["generate", "--dataset", w.dataset, "--class", "1", "--bundle", w.loc("no-such-run", "bundle"),
                 "--out", w.loc("refused")]
    expect_refusal(res, "does not exist")


@cell("refuse-augment-eval-without-real-images", [("sd", "local")])
def _refuse_augment_without_images(w: World):
    res = yield ["augment-eval", "--dataset", w.dataset, "--classes", "0-1", "--store", w.store, *AUGMENT]
    expect_refusal(res, "needs --real-train and --real-test")


@cell("refuse-probe-unknown-run", [("sd", "s3")])
def _refuse_probe_unknown_run(w: World):
    res = yield ["probe", "--run", "20000101T000000Z-00000000", "--store", w.store, *PROBE]
    expect_refusal(res, "no run")


@pytest.mark.parametrize("c", [pytest.param(c, id=c.id) for c in CELLS])
def test_cell(c: Cell, matrix: Matrix):
    matrix.check(c)
