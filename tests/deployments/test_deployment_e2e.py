"""End to end against a real Prefect server (SQLite, loopback), real workers and a real S3 server (moto).

From a clean checkout: the setup script creates the pools and deployments; one worker on the cpu pool
and two on the gpu pool (limit 2 = "two GPUs"); `prefect deployment run dct/optimize-all ... --watch`
exits 0 and fills the bucket; an identical second run optimises nothing but still publishes a run row;
a run with a failing class exits non-zero. Every process started here is stopped here.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from pathlib import Path

import pytest
from procs import Processes, free_port, http_ok, wait_for

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, moto_endpoint):
    import boto3

    base = tmp_path_factory.mktemp("cluster")
    bucket = "dct-e2e"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "AWS_", "DCT_"))} | {
        "PREFECT_HOME": str(base / "prefect-home"),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_WORKER_PREFETCH_SECONDS": "1",
        "AWS_ACCESS_KEY_ID": "e2e-key-id",
        "AWS_SECRET_ACCESS_KEY": "e2e-secret-key",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL_S3": moto_endpoint,
        "AWS_CONFIG_FILE": str(base / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(base / "no-aws-credentials"),
        "DCT_STORE": f"s3://{bucket}/prod",
        "DCT_CODE_DIR": str(ROOT),
        "HF_HUB_OFFLINE": "1",
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
    }
    boto3.client(
        "s3",
        endpoint_url=moto_endpoint,
        aws_access_key_id="e2e-key-id",
        aws_secret_access_key="e2e-secret-key",
        region_name="us-east-1",
    ).create_bucket(Bucket=bucket)
    procs = Processes(base, env)
    try:
        procs.start("server", ["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)])
        wait_for(
            lambda: http_ok(f"http://127.0.0.1:{port}/api/health"),
            120,
            "the Prefect server",
        )
        setup = procs.run(["bash", "deployments/setup.sh", "--gpus", "2"], timeout=300, cwd=ROOT)
        assert setup.returncode == 0, setup.stdout + setup.stderr
        procs.start("worker-cpu", ["prefect", "worker", "start", "--pool", "cpu", "--name", "cpu-0"], cwd=base)
        for i in range(2):
            procs.start(
                f"worker-gpu-{i}",
                ["prefect", "worker", "start", "--pool", "gpu", "--limit", "1", "--name", f"gpu-{i}"],
                cwd=base,
            )
        yield procs, bucket
    finally:
        procs.stop_all()


def _deployment_run(procs: Processes, params: dict) -> tuple[int, str]:
    """`prefect deployment run dct/optimize-all --watch` to the end: (exit code, output)."""
    watch = _watch(procs, params)
    try:
        out = watch.communicate(timeout=480)[0]
        return watch.returncode, out
    finally:
        if watch.poll() is None:
            watch.kill()


def _logs(procs: Processes) -> str:
    return "\n".join(f"--- {n}\n{procs.log(n)[-3000:]}" for n in ("worker-cpu", "worker-gpu-0", "worker-gpu-1"))


def test_deployment_runs_end_to_end(cluster, tiny_world_files):
    procs, bucket = cluster
    import s3fs

    fs = s3fs.S3FileSystem(
        key="e2e-key-id", secret="e2e-secret-key", client_kwargs={"endpoint_url": procs.env["AWS_ENDPOINT_URL_S3"]}
    )
    good, bad = tiny_world_files
    run_id = f"e2e-{uuid.uuid4().hex[:8]}"
    params = {"dataset": str(good), "classes": [0, 1], "shard_size": 1, "run_id": run_id}

    # The deployment has no default dataset and an inactive nightly schedule per dataset.
    inspect = procs.run(["prefect", "deployment", "inspect", "dct/optimize-all", "--output", "json"], timeout=60)
    assert inspect.returncode == 0, inspect.stderr
    info = json.loads(inspect.stdout)
    assert "dataset" not in (info.get("parameters") or {})
    assert info["schedules"] and all(not s["active"] for s in info["schedules"])
    assert {s["schedule"]["cron"] for s in info["schedules"]} >= {"0 2 * * *"}
    assert (
        info["pull_steps"][0]["prefect.deployments.steps.set_working_directory"]["directory"] == "{{ $DCT_CODE_DIR }}"
    )

    # The two shards in flight together, one on each gpu worker (limit 1 each, pool limit 2) — not left to how
    # long a shard takes on this machine: the first shard's process is held (SIGSTOP) until the OTHER worker has
    # started the second shard. A fan-out that waited for one shard before submitting the next would time out here.
    watch = _watch(procs, params)
    try:
        wait_for(lambda: _running_shard(procs) is not None, 600, "a shard process", interval=0.3)
        first, held = _running_shard(procs)
        other = "worker-gpu-1" if first == "worker-gpu-0" else "worker-gpu-0"
        for p in held:
            p.suspend()
        try:
            wait_for(lambda: bool(_descendants(procs, other)), 300, f"the second shard on {other}", interval=0.3)
        finally:
            for p in held:
                p.resume()
        out = watch.communicate(timeout=480)[0]
        code = watch.returncode
    finally:
        if watch.poll() is None:
            watch.kill()
    assert code == 0, out + _logs(procs)
    root = f"{bucket}/prod"
    assert len(fs.glob(f"{root}/tokens/tiny/*/*.safetensors")) == 2
    assert len(fs.glob(f"{root}/records/tiny/*/*.json")) == 2
    assert fs.glob(f"{root}/samples/tiny/*/*/dct/*.png")
    assert fs.glob(f"{root}/results/classes/dataset=tiny/*/*.parquet")

    # The server's record agrees: this run's two shard runs, one attempt each, each taken by a worker (Pending)
    # before the other had finished.
    shards = _shard_runs_of(procs, run_id)
    assert [(s["class_ids"], s["attempt"], s["state"]) for s in shards] == [
        ([0], 0, "COMPLETED"), ([1], 0, "COMPLETED")
    ], shards
    (s0, e0), (s1, e1) = ((s["taken"], s["end"]) for s in shards)
    assert max(s0, s1) < min(e0, e1), f"shards were not in flight together: {shards}"

    # Same parameters again (a new run): nothing to optimise, still a published run row.
    tokens_before = {p: fs.info(p)["LastModified"] for p in fs.glob(f"{root}/tokens/tiny/*/*.safetensors")}
    code, out = _deployment_run(procs, params | {"run_id": f"e2e-{uuid.uuid4().hex[:8]}"})
    assert code == 0, out + _logs(procs)
    fs.invalidate_cache()
    assert {p: fs.info(p)["LastModified"] for p in fs.glob(f"{root}/tokens/tiny/*/*.safetensors")} == tokens_before
    assert len(fs.glob(f"{root}/results/runs/dataset=tiny/*/*.parquet")) == 2

    # A class that fails (its prompt does not fit the text encoder): --watch exits non-zero.
    code, out = _deployment_run(procs, {"dataset": str(bad), "classes": [0, 1], "shard_size": 2})
    assert code != 0, out


def test_synthesize_all_deployment_fills_the_bucket(cluster, tiny_world_files):
    """`prefect deployment run dct/synthesize-all --param dataset=… --param per_class=32` completes on the workers:
    the image folder, the manifest parts, metadata.parquet and the card are in the bucket."""
    import subprocess

    import pyarrow.parquet as pq
    import s3fs

    procs, bucket = cluster
    good, _ = tiny_world_files
    fs = s3fs.S3FileSystem(
        key="e2e-key-id", secret="e2e-secret-key", client_kwargs={"endpoint_url": procs.env["AWS_ENDPOINT_URL_S3"]}
    )
    # The tokens of test_deployment_runs_end_to_end (same overrides = same token_key); optimize_missing makes
    # the test stand alone: without them it optimises the two classes first (dct-shard/gpu).
    args = [
        "prefect", "deployment", "run", "dct/synthesize-all", "--param", f"dataset={good}", "--param", "per_class=32",
        "--param", "classes=[0, 1]", "--param", 'overrides={"max_epochs": 8, "num_samples": 32}',
        "--param", "optimize_missing=true", "--param", "shard_size=1", "--watch", "--watch-timeout", "420",
    ]
    run = subprocess.run(args, env=procs.env, capture_output=True, text=True, timeout=480)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:] + _logs(procs)
    fs.invalidate_cache()
    (root,) = fs.glob(f"{bucket}/prod/synthetic/tiny/*")
    assert len(fs.glob(f"{root}/train/00000-red-circle/*.png")) == 32
    assert len(fs.glob(f"{root}/train/00001-blue-square/*.png")) == 32
    assert sorted(fs.ls(f"{root}/parts")) == [f"{root}/parts/00000.parquet", f"{root}/parts/00001.parquet"]
    with fs.open(f"{root}/metadata.parquet", "rb") as f:
        table = pq.read_table(f)
    assert table.num_rows == 64 and set(table.column("class_id").to_pylist()) == {0, 1}
    assert "test-only" in fs.cat_file(f"{root}/README.md").decode()
    # The two shards ran on the gpu pool as runs of dct-synthesize-shard/gpu.
    states = _query_shard_runs(
        procs,
        "    s = c.read_deployment_by_name('dct-synthesize-shard/gpu')\n"
        "    print(json.dumps([r.state.type.value for r in c.read_flow_runs() if r.deployment_id == s.id]))\n",
    )
    assert states == ["COMPLETED", "COMPLETED"], states


def _query_shard_runs(procs: Processes, body: str):
    """Run ``body`` against the server (``c`` = sync client, ``d`` = the dct-shard/gpu deployment); it prints one
    JSON value, returned parsed."""
    code = (
        "import json; from prefect.client.orchestration import get_client\n"
        "with get_client(sync_client=True) as c:\n"
        "    d = c.read_deployment_by_name('dct-shard/gpu')\n" + body
    )
    out = procs.run([sys.executable, "-c", code], timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


SHARD_RUNS_OF = """
import json, sys
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

run_id = sys.argv[1]
with get_client(sync_client=True) as c:
    parent_deployment = c.read_deployment_by_name("dct/optimize-all")
    runs = []
    while True:  # every page: the server answers at most 200 rows per request
        page = c.read_flow_runs(limit=200, offset=len(runs))
        runs += page
        if len(page) < 200:
            break
    parents = [
        r.id for r in runs if r.deployment_id == parent_deployment.id and (r.parameters or {}).get("run_id") == run_id
    ]
    assert len(parents) == 1, f"{len(parents)} parent runs with run_id {run_id}"
    children = c.read_flow_runs(
        flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=parents)), limit=200
    )
    out = []
    for r in children:
        pending = [s.timestamp.timestamp() for s in c.read_flow_run_states(r.id) if s.type.value == "PENDING"]
        out.append({
            "name": r.name,
            # flows/fanout.py submits attempt a of shard i with idempotency key "{run_id}:shard-{i}:attempt-{a}"
            "attempt": int(r.idempotency_key.rsplit(":attempt-", 1)[1]),
            "class_ids": r.parameters.get("class_ids"),
            "state": r.state.type.value if r.state else None,
            "taken": min(pending) if pending else None,
            "end": r.end_time.timestamp() if r.end_time else None,
        })
    print(json.dumps(sorted(out, key=lambda x: (x["attempt"], x["class_ids"]))))
"""


def _shard_runs_of(procs: Processes, run_id: str) -> list[dict]:
    """The shard runs of ONE parent run (found by its run_id parameter; children by parent flow run), by attempt:
    name, attempt (from the fan-out's idempotency key), class_ids, final state, when a worker took it (first
    Pending) and when it ended."""
    out = procs.run([sys.executable, "-c", SHARD_RUNS_OF, run_id], timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def tiny_world_files(tmp_path_factory):
    from tiny import TINY_CLASSES, save_tiny_world

    good = save_tiny_world(tmp_path_factory.mktemp("world"))
    long_name = " ".join(["photo"] * 40)  # longer than the tiny text encoder's 32-token context
    names = ", ".join(f'"{n}"' for n in (TINY_CLASSES[0], long_name, *TINY_CLASSES[2:]))
    text = good.read_text().replace('name = "tiny"', 'name = "tinybad"')
    text = "\n".join(f"class_names = [{names}]" if ln.startswith("class_names") else ln for ln in text.splitlines())
    bad = good.with_name("tinybad.toml")
    bad.write_text(text + "\n")
    return good, bad


def _descendants(procs: Processes, worker: str) -> list:
    import psutil

    return psutil.Process(procs.procs[worker].pid).children(recursive=True)


def _running_shard(procs: Processes) -> tuple[str, list] | None:
    for worker in ("worker-gpu-0", "worker-gpu-1"):
        if worker in procs.procs and (kids := _descendants(procs, worker)):
            return worker, kids
    return None


def _watch(procs: Processes, params: dict):
    import subprocess

    return subprocess.Popen(
        [
            "prefect",
            "deployment",
            "run",
            "dct/optimize-all",
            "--params",
            json.dumps(params),
            "--watch",
            "--watch-timeout",
            "420",
        ],
        env=procs.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_shard_killed_mid_class_is_resubmitted_with_its_unfinished_classes(cluster, tiny_world_files):
    """SIGKILL of the shard's flow process (Prefect marks it Crashed): the parent resubmits only the classes
    without a record; every class ends exactly once in the run, the finished one is not redone."""
    import signal

    import s3fs

    procs, bucket = cluster
    good, _ = tiny_world_files
    store = f"s3://{bucket}/crash"
    fs = s3fs.S3FileSystem(
        key="e2e-key-id", secret="e2e-secret-key", client_kwargs={"endpoint_url": procs.env["AWS_ENDPOINT_URL_S3"]}
    )
    # Enough work per class that class 3 is surely still running when the kill comes.
    slow = {"max_epochs": 20, "images_per_epoch": 6, "num_samples": 48}
    run_id = f"e2e-crash-{uuid.uuid4().hex[:8]}"
    params = {
        "dataset": str(good), "classes": [2, 3], "shard_size": 2, "store": store, "overrides": slow, "run_id": run_id
    }
    watch = _watch(procs, params)
    try:

        def first_class_recorded() -> bool:
            fs.invalidate_cache()
            return bool(fs.glob(f"{bucket}/crash/records/tiny/*/00002.json"))

        wait_for(first_class_recorded, 600, "class 2's record", interval=0.3)
        token2 = fs.glob(f"{bucket}/crash/tokens/tiny/*/00002.safetensors")[0]
        modified = fs.info(token2)["LastModified"]
        shard = _running_shard(procs)
        assert shard is not None, "no shard process found"
        for p in shard[1]:
            p.suspend()  # frozen first, so "class 3 is not finished" below stays true until the kill
        fs.invalidate_cache()
        assert not fs.glob(f"{bucket}/crash/records/tiny/*/00003.json"), "class 3 finished before the kill"
        for p in shard[1]:
            p.send_signal(signal.SIGKILL)  # the flow process dies in the middle of class 3
        out = watch.communicate(timeout=480)[0]
        assert watch.returncode == 0, out[-3000:] + _logs(procs)
    finally:
        if watch.poll() is None:
            watch.kill()
    fs.invalidate_cache()
    assert fs.info(token2)["LastModified"] == modified  # class 2 was not redone
    rows = _read_classes(fs, f"{bucket}/crash")
    assert sorted(rows["class_id"]) == [2, 3] and set(rows["status"]) <= {"done", "diverged"}
    # Exactly one resubmission, with exactly the unfinished class, of THIS run's shard.
    shards = _shard_runs_of(procs, run_id)
    assert [(s["attempt"], s["class_ids"], s["state"]) for s in shards] == [
        (0, [2, 3], "CRASHED"), (1, [3], "COMPLETED")
    ], shards
    # The names tell the attempts apart in the UI: the fan-out's names survive the shard flow's own template.
    assert [s["name"] for s in shards] == ["dct-shard-tiny-00002-00003-a0", "dct-shard-tiny-00003-00003-a1"], shards


def test_lost_worker_is_caught_by_the_shard_timeout(cluster, tiny_world_files):
    """SIGKILL of a worker with its flow process (a lost node): nobody reports the child, which stays Running;
    the parent's shard timeout cancels it and resubmits its classes to the remaining worker."""
    import signal

    import s3fs

    procs, bucket = cluster
    good, _ = tiny_world_files
    fs = s3fs.S3FileSystem(
        key="e2e-key-id", secret="e2e-secret-key", client_kwargs={"endpoint_url": procs.env["AWS_ENDPOINT_URL_S3"]}
    )
    run_id = f"e2e-lost-{uuid.uuid4().hex[:8]}"
    params = {
        "dataset": str(good), "classes": [0], "store": f"s3://{bucket}/lost", "shard_timeout_minutes": 1.0,
        "run_id": run_id,
    }
    watch = _watch(procs, params)
    try:
        wait_for(lambda: _running_shard(procs) is not None, 600, "a shard process", interval=0.3)
        worker, kids = _running_shard(procs)
        import psutil

        for p in [psutil.Process(procs.procs[worker].pid), *kids]:
            p.send_signal(signal.SIGKILL)
        procs.procs.pop(worker)
        out = watch.communicate(timeout=480)[0]
        assert watch.returncode == 0, out[-3000:] + _logs(procs)
    finally:
        if watch.poll() is None:
            watch.kill()
    fs.invalidate_cache()
    assert len(fs.glob(f"{bucket}/lost/records/tiny/*/00000.json")) == 1
    # The lost attempt was cancelled by the parent's timeout, and its class resubmitted exactly once.
    shards = _shard_runs_of(procs, run_id)
    assert [(s["attempt"], s["class_ids"]) for s in shards] == [(0, [0]), (1, [0])], shards
    assert shards[0]["state"] in ("CANCELLED", "CANCELLING") and shards[1]["state"] == "COMPLETED", shards


def _read_classes(fs, root: str):
    import pyarrow.dataset as pads

    return (
        pads.dataset(f"{root}/results/classes", filesystem=fs, format="parquet", partitioning="hive")
        .to_table()
        .to_pandas()
    )
