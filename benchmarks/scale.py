"""The parent's bookkeeping at 100 / 1,000 / 10,000 classes: plan, records, pooled metrics, report, publish.

    python -m benchmarks.scale --classes 100,1000,10000                     # a local store (temp dir)
    python -m benchmarks.scale --classes 100,1000 --s3 --latency-ms 20      # moto S3 behind a 20 ms proxy
    python -m benchmarks.scale --classes 10000 --keep /tmp/scale            # keep the store (open the report)

No diffusion work: a synthetic dataset of N classes (``base = "toy"``, N class names) and, for each
class, what a shard writes — token file, samples (``--samples`` per variant), the FID feature file and
the record (``done``; every 50th ``diverged``, every 100th ``failed``) — written with the project's own
writers (``write_token``, ``write_sample``, ``write_class_features``, ``write_class_record``). Setup is not
timed. Then the parent's stages are timed one by one, exactly as the ``dct`` flow calls them in
deployment mode:

- ``plan``: ``plan_run`` on the empty store (preflight probe, model revisions, one listing of records);
- ``records``: ``read_class_outcomes`` of the selection (each record read once, shared by the stages);
- ``pooled``: ``pooled_metrics(features_only=True)``: one feature file per class, no image, no network;
- ``report``: ``write_run_report`` (summary plots, class index, detail page, worst/best grids);
- ``publish``: ``publish_run`` (class table, token bundle from the token copies the records carry — with
  ``--no-token-copies``, records as written before they carried one, so one token read per class —, run record).

Store requests are counted per stage by the store itself (``ArtifactStore.requests``: operation ×
top-level folder) and, on S3, also as HTTP requests at the latency proxy (what the network really saw,
s3fs's own extra calls and retries included). The S3 mode starts a moto server and the latency proxy
(``tests/faults/proxy.py --delay-ms``) as subprocesses, so their CPU is not the parent's — but they run on
the same cores, so each stage's CPU is reported twice: the parent's (``CPU ms/class``, all its threads) and
the server's and proxy's (``server CPU ms/class``). Where their sum per class is near the wall
time × cores, the machine's CPU bounds the stage, not the latency. The S3 setup writes straight to moto
(no latency), the timed stages go through the proxy.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
PROXY = REPO / "tests" / "faults" / "proxy.py"
STAGES = ("plan", "records", "pooled", "report", "publish")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f}s")


class S3Harness:
    """A moto S3 server and a per-request latency proxy in front of it, as subprocesses."""

    def __init__(self, latency_ms: float, log_dir: Path) -> None:
        self.moto_port, self.proxy_port = _free_port(), _free_port()
        self.request_log = log_dir / "proxy-requests.log"
        self.procs = [
            subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.moto_port)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            ),
        ]
        _wait_port(self.moto_port)
        self.procs.append(
            subprocess.Popen(
                [
                    sys.executable, str(PROXY), "--upstream", f"127.0.0.1:{self.moto_port}",
                    "--port", str(self.proxy_port), "--delay-ms", str(latency_ms), "--log", str(self.request_log),
                ],
            )
        )
        _wait_port(self.proxy_port)
        os.environ.update(
            AWS_ACCESS_KEY_ID="benchmark", AWS_SECRET_ACCESS_KEY="benchmark", AWS_DEFAULT_REGION="us-east-1"
        )
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
            os.environ.pop(name, None)

    @property
    def direct(self) -> str:
        return f"http://127.0.0.1:{self.moto_port}"

    @property
    def proxied(self) -> str:
        return f"http://127.0.0.1:{self.proxy_port}"

    def http_requests(self) -> int:
        return sum(1 for _ in self.request_log.open()) if self.request_log.exists() else 0

    def cpu_s(self) -> float:
        """CPU seconds (user + system) the S3 server and the proxy have used so far."""
        import psutil

        return sum(t.user + t.system for t in (psutil.Process(p.pid).cpu_times() for p in self.procs))

    def make_bucket(self, name: str) -> None:
        import boto3

        boto3.client("s3", endpoint_url=self.direct).create_bucket(Bucket=name)

    def close(self) -> None:
        for p in reversed(self.procs):
            p.terminate()
            p.wait(timeout=10)


def write_dataset(directory: Path, n: int, samples: int) -> Path:
    """A dataset file of ``n`` classes on the toy world's models (``base = "toy"``), ``samples`` per variant."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "names.txt").write_text("".join(f"class {i:05d}\n" for i in range(n)))
    path = directory / f"scale{n}.toml"
    path.write_text(
        f'base = "toy"\nname = "scale{n}"\nclass_names_file = "names.txt"\n[evaluation]\nnum_samples = {samples}\n'
    )
    return path


def write_shard_outputs(
    store, config, plan, spec, *, samples: int, width: int = 32, copies: bool = True, threads: int = 16
) -> None:
    """What the shards would have written for every planned class, with the project's writers: ``width``-d
    tokens, and records that carry a copy of their token file (``copies``) as the shard's do."""
    from dct.artifacts.images import encode_image
    from dct.artifacts.token_file import token_file_bytes
    from dct.evaluation.features import (
        build_feature_extractor,
        reference_features,
        sample_set_stamp,
        write_class_features,
    )
    from dct.results import ClassRecord, build_provenance, failed_class_record, write_class_record

    extractor = build_feature_extractor(config, store, "cpu").eval()
    reference_features(store, config.dataset, spec.reference_images, extractor)  # cached once per dataset
    prov = build_provenance(
        config,
        diffusion_revision=plan.revisions.diffusion,
        classifier_revision=plan.revisions.classifier,
        evaluator_revision=plan.revisions.evaluator,
        device="cpu (synthetic)",
        dtype="float32",
    )
    ev = config.evaluation
    seeds = list(ev.seeds)
    assert len(seeds) == samples, (len(seeds), samples)
    sample_bytes = [encode_image(torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(s)), "png")
                    for s in seeds]
    def one(cid: int) -> None:
        g = torch.Generator().manual_seed(cid)
        started = dt.datetime.now(dt.UTC)
        token = config.token_string(cid)
        name = spec.class_names[cid]
        if cid % 100 == 99:
            write_class_record(
                store,
                failed_class_record(
                    config, run_id=plan.run_id, class_id=cid, class_name=name, token_key=plan.token_key,
                    eval_key=plan.eval_key, error="RuntimeError: synthetic failure", provenance=prov, started=started,
                ),
            )
            return
        meta = {"token_key": plan.token_key, "class_id": str(cid), "dataset": config.dataset}
        token_data = token_file_bytes(token, torch.randn(width, generator=g), meta)
        token_uri = store.write_token(config.dataset, plan.token_key, cid, token_data)
        for variant in ("baseline", "dct"):
            for seed, data in zip(seeds, sample_bytes, strict=True):
                store.write_sample(config.dataset, plan.eval_key, cid, variant, seed, data)
        feats = {v: torch.randn(len(seeds), extractor.num_features, generator=g) for v in ("baseline", "dct")}
        write_class_features(
            store, config.dataset, plan.eval_key, cid, extractor, feats, stamp=sample_set_stamp(plan.run_id, started)
        )
        base = float(torch.rand(1, generator=g))
        gain = float(torch.randn(1, generator=g)) * 0.2 + 0.15
        scores = {}
        for who in ("guide", "evaluator"):
            for k, bump in ((1, 0.0), (5, 0.2)):
                scores[f"{who}_top{k}_baseline"] = min(1.0, base + bump)
                scores[f"{who}_top{k}_dct"] = min(1.0, max(0.0, base + gain + bump))
        write_class_record(
            store,
            ClassRecord(
                run_id=plan.run_id, dataset=config.dataset, class_id=cid, class_name=name, token=token,
                token_key=plan.token_key, eval_key=plan.eval_key, status="diverged" if cid % 50 == 49 else "done",
                stop_reason="diverged" if cid % 50 == 49 else "accuracy", epochs=5, token_uri=token_uri,
                token_file_base64=ClassRecord.token_file_field(token_data) if copies else None,
                samples_uri=store.samples_uri(config.dataset, plan.eval_key, cid), sample_format="png",
                num_samples=len(seeds), provenance=prov, started_at=started, finished_at=dt.datetime.now(dt.UTC),
                **scores,
            ),
        )

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, plan.todo))


def run_scale(
    n: int,
    *,
    root: str,
    setup_root: str,
    workdir: Path,
    samples: int,
    harness: S3Harness | None,
    width: int = 32,
    copies: bool = True,
) -> dict:
    from dct.artifacts.store import ArtifactStore
    from dct.evaluation.metrics import pooled_metrics
    from dct.evaluation.report import write_run_report
    from dct.results import read_class_outcomes
    from dct.run.plan import build_config, plan_run
    from dct.run.publish import publish_run

    dataset = write_dataset(workdir / f"dataset-{n}", n, samples)
    run_id = f"scale-{n}"
    if harness is not None:
        os.environ["AWS_ENDPOINT_URL_S3"] = harness.proxied
    store = ArtifactStore.from_config(store=root)
    times: dict[str, float] = {}
    requests: dict[str, Counter] = {}
    http: dict[str, int] = {}
    cpu: dict[str, float] = {}
    server_cpu: dict[str, float] = {}

    def stage(name: str, fn):
        before, http_before = store.requests.copy(), harness.http_requests() if harness else 0
        server_before = harness.cpu_s() if harness else 0.0
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        times[name], cpu[name] = time.perf_counter() - t0, time.process_time() - c0
        requests[name] = store.requests - before
        if harness is not None:
            server_cpu[name] = harness.cpu_s() - server_before
            time.sleep(0.2)  # the proxy logs a request after forwarding it
            http[name] = harness.http_requests() - http_before
        return out

    started = dt.datetime.now(dt.UTC)
    plan = stage(
        "plan",
        lambda: plan_run(dataset=str(dataset), store=root, shard_size=16, run_id=run_id, artifact_store=store),
    )
    spec, config = build_config(str(dataset), None, plan.store_root)
    if harness is not None:  # setup straight to moto: only the parent's stages pay the latency
        os.environ["AWS_ENDPOINT_URL_S3"] = harness.direct
    t0 = time.perf_counter()
    setup_store = ArtifactStore.from_config(store=setup_root)
    write_shard_outputs(setup_store, config, plan, spec, samples=samples, width=width, copies=copies)
    setup_s = time.perf_counter() - t0
    if harness is not None:
        os.environ["AWS_ENDPOINT_URL_S3"] = harness.proxied

    outcomes = stage(
        "records", lambda: read_class_outcomes(store, plan.dataset, plan.eval_key, plan.selected, plan.run_id)
    )
    finished = [r for c in plan.selected if (r := outcomes.get(c)) is not None and r.finished]
    pooled = stage(
        "pooled",
        lambda: pooled_metrics(
            store, config, finished, reference_images=spec.reference_images, features_only=True,
            evaluator_revision=plan.revisions.evaluator,
        ),
    )
    store.write_json(store.run_uri(plan.dataset, plan.run_id, "pooled.json"), pooled.to_json())
    report_uri = stage("report", lambda: write_run_report(store, config, plan, outcomes=outcomes))
    outcome = stage(
        "publish",
        lambda: publish_run(
            store, config, plan, class_names=list(spec.class_names), started_at=started,
            pooled=pooled.record_fields(), report_uri=report_uri, outcomes=outcomes,
        ),
    )
    total_requests = sum(sum(c.values()) for c in requests.values())
    return {
        "classes": n,
        "store": "s3" if harness else "local",
        "token_width": width,
        "token_copies": copies,
        "setup_s": setup_s,
        "seconds": times,
        "total_s": sum(times.values()),
        "ms_per_class": 1000 * sum(times.values()) / n,
        "cpu_s": cpu,
        "cpu_ms_per_class": 1000 * sum(cpu.values()) / n,
        "server_cpu_s": server_cpu or None,
        "server_cpu_ms_per_class": (1000 * sum(server_cpu.values()) / n) if server_cpu else None,
        "requests": {k: dict(sorted((f"{op}:{kind}", v) for (op, kind), v in c.items())) for k, c in requests.items()},
        "requests_total": total_requests,
        "requests_per_class": total_requests / n,
        "http_requests": http or None,
        "http_per_class": (sum(http.values()) / n) if http else None,
        "report_uri": report_uri,
        "index_html_bytes": len(store.read_bytes(report_uri)),
        "fid_dct": pooled.variants["dct"].fid if pooled.variants else None,
        "status": outcome.run.status,
        "classes_done": outcome.run.classes_done,
        "classes_failed": outcome.run.classes_failed,
        "classes_diverged": outcome.run.classes_diverged,
    }


def _table(rows: list[dict]) -> str:
    head = (
        "| store | classes | plan s | records s | pooled s | report s | publish s | total s | ms/class "
        "| CPU ms/class | server CPU ms/class | store req/class | HTTP req/class | index.html |\n|---|"
        + "---:|" * 13
    )
    lines = [head]
    for r in rows:
        s = r["seconds"]
        http = f"{r['http_per_class']:.2f}" if r["http_per_class"] is not None else "–"
        server = f"{r['server_cpu_ms_per_class']:.1f}" if r["server_cpu_ms_per_class"] is not None else "–"
        lines.append(
            f"| {r['store']} | {r['classes']:,} | "
            + " | ".join(f"{s[k]:.2f}" for k in STAGES)
            + f" | {r['total_s']:.1f} | {r['ms_per_class']:.1f} | {r['cpu_ms_per_class']:.1f} | {server} "
            f"| {r['requests_per_class']:.2f} | {http} "
            f"| {r['index_html_bytes'] / 1024:.0f} KiB |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classes", default="100,1000,10000", help="comma-separated class counts")
    parser.add_argument("--s3", action="store_true", help="moto S3 server behind a latency proxy")
    parser.add_argument("--latency-ms", type=float, default=20.0, help="added per S3 request (with --s3)")
    parser.add_argument("--samples", type=int, default=4, help="samples per class and variant")
    parser.add_argument("--token-width", type=int, default=32, help="token width (the toy's 32; SD 1.x: 768)")
    parser.add_argument(
        "--no-token-copies",
        action="store_true",
        help="records without the copy of their token file (as written before records carried it): the bundle "
        "reads every token file",
    )
    parser.add_argument("--keep", type=Path, default=None, help="keep the stores under this folder")
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    counts = [int(c) for c in args.classes.split(",") if c.strip()]
    if not counts or min(counts) < 1:
        raise SystemExit(f"--classes {args.classes!r}: give positive class counts, e.g. 100,1000")
    if args.samples < 1:
        raise SystemExit(f"--samples {args.samples}: give at least 1")
    torch.set_num_threads(1)
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="dct-scale-"))
    workdir.mkdir(parents=True, exist_ok=True)
    harness = S3Harness(args.latency_ms, workdir) if args.s3 else None
    rows = []
    try:
        for n in counts:
            if harness is not None:
                bucket = f"scale-{n}-{int(time.time())}"
                harness.make_bucket(bucket)
                root = f"s3://{bucket}/dct"
            else:
                root = str(workdir / f"store-{n}")
            row = run_scale(
                n, root=root, setup_root=root, workdir=workdir, samples=args.samples, harness=harness,
                width=args.token_width, copies=not args.no_token_copies,
            )
            rows.append(row)
            print(json.dumps(row, indent=1, default=str), flush=True)
    finally:
        if harness is not None:
            harness.close()
    print(_table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1, default=str))
    return rows


if __name__ == "__main__":
    main()
