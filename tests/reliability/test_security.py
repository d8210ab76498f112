"""Secrets never leave the environment; user strings never leave the store root; the
code never deserialises untrusted code (YAML safe_load only, no trust_remote_code, no unsafe torch.load).

Credentials come only from the process environment (or, in deployments, a Prefect Secret block that the
work pool maps into the worker's environment): a tiny run against a real S3 server (moto) with canary
credentials, then EVERY output is scanned for them.
"""

from __future__ import annotations

import ast
import inspect
import io
import json
import logging
import re
from pathlib import Path

import pytest
import torch

from dct.cli import main

ROOT = Path(__file__).resolve().parents[2]
KEY_ID = "AKIADCTCANARY7Q3XW9Z"
SECRET = "dct-canary-secret/5f1e9a7c2b+Zq"
CANARIES = (KEY_ID, SECRET, SECRET.split("/")[1])


def _leaks(text: str | bytes) -> list[str]:
    if isinstance(text, bytes):
        return [c for c in CANARIES if c.encode() in text]
    return [c for c in CANARIES if c in text]


@pytest.mark.slow
def test_canary_credentials_appear_in_no_output(
    prefect_harness, tiny_world, aws_env, s3_bucket, monkeypatch, capfd, caplog
):
    """Every log record at every level, every object, and this run's whole record in the Prefect API."""
    import boto3
    import botocore.session
    import pyarrow.parquet as pq
    import s3fs

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    s3fs.S3FileSystem.clear_instance_cache()  # a fresh client: it must take THESE credentials
    assert botocore.session.get_session().get_credentials().secret_key == SECRET  # the run signs with them
    torch.set_num_threads(1)
    store = f"s3://{s3_bucket}/team/dct"
    # Every record of every logger that reaches the root, from DEBUG up (pytest's default capture level is the
    # root's WARNING: a logger.info(secret) would go unseen). `dct -v` asks for DEBUG as a user would.
    caplog.set_level(logging.DEBUG)

    code = main(
        [
            "-v",
            "run",
            "--dataset",
            str(tiny_world),
            "--classes",
            "0,1",
            "--store",
            store,
            "--max-epochs",
            "1",
            "--num-samples",
            "1",
            "--device",
            "cpu",
        ]
    )
    out, err = capfd.readouterr()
    assert code == 0, err[-3000:]
    run_id = json.loads(out.strip().splitlines()[-1])["run_id"]

    leaks: dict[str, list[str]] = {}
    # 1. every object in the bucket: raw bytes, and Parquet decoded (its pages may be compressed)
    s3 = boto3.client("s3", endpoint_url=aws_env)
    keys = [
        o["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=s3_bucket)
        for o in page.get("Contents", [])
    ]
    kinds = {k.rsplit(".", 1)[-1] for k in keys}
    assert {"safetensors", "json", "parquet", "png"} <= kinds, kinds  # the scan covered every kind of output
    for key in keys:
        body = s3.get_object(Bucket=s3_bucket, Key=key)["Body"].read()
        leaks[key] = _leaks(body)
        if key.endswith(".parquet"):
            leaks[key] += _leaks(json.dumps(pq.read_table(io.BytesIO(body)).to_pylist(), default=str))
    # 2. what the process printed and logged
    leaks["stdout+stderr"] = _leaks(out + err)
    # The capture really was at DEBUG: the store's debug line of every write is there (with its values).
    assert any(r.levelno == logging.DEBUG and r.name.startswith("dct.") for r in caplog.records)
    leaks["log records"] = _leaks(caplog.text + "\n".join(f"{r.name} {r.getMessage()}" for r in caplog.records))
    # 3. the Prefect API's record of THIS run (the harness's server is shared by the whole session): its flow
    # runs (the `dct` run and its shard runs), their task runs, logs and artifacts, every page of each
    dump = _prefect_dump(run_id)
    leaks["prefect"] = _leaks(dump)
    assert not {k: v for k, v in leaks.items() if v}, "credentials leaked"
    assert any(run_id in k for k in keys)


def _prefect_dump(run_id: str) -> str:
    from flows_fixtures import flow_runs_of, read_all_pages
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowRunFilter,
        FlowRunFilterId,
        LogFilter,
        LogFilterFlowRunId,
    )
    from prefect.client.schemas.sorting import ArtifactSort, LogSort, TaskRunSort
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)  # logs are shipped to the API in batches
    runs = flow_runs_of(run_id)
    ids = {r.id for r in runs}
    assert any(r.name.startswith("dct-shard-") for r in runs) and len(runs) >= 2, [r.name for r in runs]
    parts = []
    with get_client(sync_client=True) as client:
        by_id = FlowRunFilter(id=FlowRunFilterId(any_=list(ids)))
        tasks = read_all_pages(client.read_task_runs, flow_run_filter=by_id, sort=TaskRunSort.ID_DESC)
        logs = read_all_pages(
            client.read_logs,
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=list(ids))),
            sort=LogSort.TIMESTAMP_ASC,
        )
        artifacts = read_all_pages(
            client.read_artifacts,
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=list(ids))),
            sort=ArtifactSort.ID_DESC,
        )
        for row in [*runs, *tasks, *logs, *artifacts]:
            parts.append(row.model_dump_json())
        for r in runs:  # the state history of every run (messages of failed/retried states)
            parts += [s.model_dump_json() for s in client.read_flow_run_states(r.id)]
    # Not vacuous: both shards' classes ran as task runs, the flow's own log lines and artifacts are here.
    assert len(runs) >= 2 and len(tasks) >= 4 and len(artifacts) >= 2, (len(runs), len(tasks), len(artifacts))
    assert any("report:" in log.message for log in logs), [log.message for log in logs][:20]
    return "\n".join(parts)


def test_no_credential_fields_in_configs_or_flow_parameters():
    """There is nowhere to pass a secret: not in the configs, not in the flows' parameters."""
    from dct.config import RunConfig, RunOverrides, StorageConfig
    from flows.dct_flow import dct
    from flows.shard import dct_shard

    assert set(StorageConfig.model_fields) == {"root", "endpoint_url", "path_style"}
    secretish = re.compile(r"secret|password|passwd|credential|access_key|session_token|api_key", re.I)
    names = [*RunOverrides.model_fields, *RunConfig.model_fields, *StorageConfig.model_fields]
    for fl in (dct, dct_shard):
        names += list(inspect.signature(fl.fn).parameters)
    assert not [n for n in names if secretish.search(n)]


# ------------------------------------------------------------------------------------ escaping the root


@pytest.mark.parametrize(
    "name",
    ["../../etc", "/abs/olute", "a\x00b", "x" * 200, "Tiny", "tiny/../../x", "..", "C:\\x"],
    ids=["dotdot", "absolute", "nul", "very-long", "upper", "embedded", "parent", "drive"],
)
def test_dataset_name_cannot_escape_the_store(tiny_world, name):
    from dct.models.datasets import get_dataset

    path = tiny_world.parent / "named.toml"
    path.write_text(tiny_world.read_text().replace('name = "tiny"', f"name = {json.dumps(name)}"))
    with pytest.raises(ValueError, match=r"invalid dataset file .*name"):
        get_dataset(str(path))


@pytest.mark.parametrize(
    "bad",
    ["../../escape", "/etc/passwd", "a\x00b", "x" * 201, "..", "back\\slash"],
    ids=["dotdot", "absolute", "nul", "very-long", "parent", "backslash"],
)
def test_unsafe_class_names_are_refused(tiny_world, bad):
    from dct.models.datasets import get_dataset

    path = tiny_world.parent / "classes.toml"
    path.write_text(tiny_world.read_text().replace('"red circle"', json.dumps(bad)))
    with pytest.raises(ValueError, match="class name"):
        get_dataset(str(path))


def test_odd_but_allowed_class_names_never_become_paths(tiny_world, tmp_path):
    """Names are prompts, not paths: files are named by class id, so a strange name cannot steer a write."""
    from dct.artifacts.store import ArtifactStore
    from dct.config import RunOverrides
    from dct.models.loading import load_models
    from dct.run.plan import build_config
    from dct.run.runner import process_class

    odd = "..%2f$(pwn)~é"  # short: the tiny text encoder takes 32 tokens per prompt
    path = tiny_world.parent / "odd.toml"
    path.write_text(tiny_world.read_text().replace('"red circle"', json.dumps(odd)))
    torch.set_num_threads(1)
    work = tmp_path / "work"
    store_root = work / "store"
    spec, config = build_config(
        str(path), RunOverrides(max_epochs=1, images_per_epoch=2, num_samples=1), str(store_root)
    )
    assert spec.class_names[0] == odd
    models = load_models(config, "cpu")
    record = process_class(
        ArtifactStore.from_config(config.storage), config, models, class_id=0, class_name=odd, run_id="run-odd"
    )
    assert record.class_name == odd
    written = [p for p in work.rglob("*") if p.is_file()]
    assert written and all(p.is_relative_to(store_root) for p in written)
    assert not [p for p in written if "%2f" in str(p) or "pwn" in str(p)]
    assert not (Path.cwd() / "pwn").exists()


# ------------------------------------------------------------------------------------ source scan


def _is_const(node: ast.AST | None, value: bool) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


YAML_UNSAFE = ("Loader", "UnsafeLoader", "FullLoader", "unsafe_load", "full_load", "full_load_all", "unsafe_load_all")
UNPICKLERS = re.compile(r"(pickle|cPickle|_pickle|dill|joblib|marshal|cloudpickle)\.(loads?|Unpickler)")


def _import_aliases(tree: ast.AST) -> dict[str, str]:
    """Local name -> what it stands for: ``import torch as t`` gives t -> torch, ``from pickle import loads``
    gives loads -> pickle.loads (so an alias cannot hide a call from the scan)."""
    names: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.asname: a.name for a in node.names if a.asname}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names |= {a.asname or a.name: f"{node.module}.{a.name}" for a in node.names if a.name != "*"}
    return names


def _qualified(node: ast.expr, aliases: dict[str, str]) -> str:
    head, dot, rest = ast.unparse(node).partition(".")
    return aliases.get(head, head) + dot + rest


def unsafe_calls(source: str, filename: str = "<src>") -> list[str]:
    """Deserialisation that can run code, one ``file:line: what`` per finding: yaml.load & co. and yaml's unsafe
    loaders, trust_remote_code, torch.load without weights_only=True, weights_only=False anywhere,
    pickle/dill/joblib/marshal loads, numpy allow_pickle, from_pretrained(use_safetensors=False). Names are
    resolved through the module's imports (``import torch as t; t.load``, ``from pickle import loads``)."""
    tree = ast.parse(source, filename)
    aliases = _import_aliases(tree)
    found = []
    for node in ast.walk(tree):
        where = f"{filename}:{getattr(node, 'lineno', 0)}:"
        if isinstance(node, (ast.Attribute, ast.Name)):
            name = _qualified(node, aliases)
            last = name.rsplit(".", 1)[-1]
            if last in YAML_UNSAFE and (isinstance(node, ast.Attribute) or name.startswith("yaml.")):
                found.append(f"{where} yaml.{last}")
        if not isinstance(node, ast.Call):
            continue
        func = _qualified(node.func, aliases)
        kw = {k.arg: k.value for k in node.keywords if k.arg}
        if func in ("yaml.load", "yaml.load_all"):
            found.append(f"{where} {func} (use yaml.safe_load)")
        if "trust_remote_code" in kw and not _is_const(kw["trust_remote_code"], False):
            found.append(f"{where} trust_remote_code")
        is_torch_load = func in ("torch.load", "torch.serialization.load") or (func == "load" and "weights_only" in kw)
        if is_torch_load and not _is_const(kw.get("weights_only"), True):
            found.append(f"{where} torch.load without weights_only=True")
        elif "weights_only" in kw and not _is_const(kw["weights_only"], True):
            found.append(f"{where} weights_only not True")
        if UNPICKLERS.fullmatch(func):
            found.append(f"{where} {func} (unpickling)")
        if "allow_pickle" in kw and not _is_const(kw["allow_pickle"], False):
            found.append(f"{where} allow_pickle")
        if "use_safetensors" in kw and _is_const(kw["use_safetensors"], False):
            found.append(f"{where} use_safetensors=False")
    return found


def test_no_unsafe_deserialisation_in_the_product():
    files = [p for d in ("dct", "flows", "tasks") for p in sorted((ROOT / d).rglob("*.py"))]
    assert len(files) > 20
    found = [hit for p in files for hit in unsafe_calls(p.read_text(encoding="utf-8"), str(p.relative_to(ROOT)))]
    assert not found, "\n".join(found)


def test_the_scan_catches_what_it_should():
    """Every unsafe form, also behind an alias, is found exactly once; every safe look-alike is not."""
    bad = """
import yaml, torch, pickle, numpy as np
import torch as t
from pickle import loads
from yaml import FullLoader, unsafe_load as ul
yaml.load(text, Loader=yaml.FullLoader)
yaml.unsafe_load(text)
yaml.load(text, Loader=FullLoader)
ul(text)
torch.load(path)
torch.load(path, weights_only=False)
t.load(path)
pickle.loads(data)
loads(data)
np.load(path, allow_pickle=True)
AutoModel.from_pretrained(p, trust_remote_code=True)
AutoModel.from_pretrained(p, trust_remote_code=flag)
Pipe.from_pretrained(p, use_safetensors=False)
ViT.from_pretrained(p, weights_only=False)
pickle.Unpickler(f).load()
"""
    expected = [
        "<src>:6: yaml.load (use yaml.safe_load)",
        "<src>:6: yaml.FullLoader",
        "<src>:7: yaml.unsafe_load",
        "<src>:8: yaml.load (use yaml.safe_load)",
        "<src>:8: yaml.FullLoader",
        "<src>:9: yaml.unsafe_load",
        "<src>:10: torch.load without weights_only=True",
        "<src>:11: torch.load without weights_only=True",
        "<src>:12: torch.load without weights_only=True",
        "<src>:13: pickle.loads (unpickling)",
        "<src>:14: pickle.loads (unpickling)",
        "<src>:15: allow_pickle",
        "<src>:16: trust_remote_code",
        "<src>:17: trust_remote_code",
        "<src>:18: use_safetensors=False",
        "<src>:19: weights_only not True",
        "<src>:20: pickle.Unpickler (unpickling)",
    ]
    assert sorted(unsafe_calls(bad)) == sorted(expected)
    good = """
import yaml, torch, numpy as np
import torch as t
from json import loads
yaml.safe_load(text)
torch.load(buf, map_location="cpu", weights_only=True)
t.load(buf, weights_only=True)
loads(text)
np.load(path)
AutoModel.from_pretrained(p, trust_remote_code=False)
ViT.from_pretrained(p, weights_only=True)
model.load_state_dict(state)
"""
    assert unsafe_calls(good) == []
