"""Bad input is refused with ONE actionable line naming the value, a non-zero exit code,
before any model is loaded, and with nothing previously written changed.

Each case runs ``dct.cli.main`` in-process (the exit code it returns is the process's exit code), with a
tripwire on every third-party weight loader (diffusers pipelines and models, transformers models and tokenizers,
timm, ``Module.load_state_dict``, ``torch.load``: tests/tripwire.py)
and a snapshot (path, size, mtime, bytes) of a pre-populated store and working directory before and after.
Flow-parameter cases call the `dct` flow under the Prefect test harness; two cases run the real `dct`
console script where the process environment is the point. docs/reliability.md holds the table.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from tripwire import ModelLoaded

from dct.cli import main


def snapshot(*roots: Path) -> dict[str, tuple[int, int, str]]:
    out = {}
    for root in roots:
        for p in sorted(root.rglob("*")):
            if p.is_file():
                st = p.stat()
                out[str(p)] = (st.st_size, st.st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
    return out


# ------------------------------------------------------------------------------------------ the world


def _variant(tiny_world: Path, name: str, text: str) -> str:
    path = tiny_world.parent / name
    path.write_text(text)
    return str(path)


@pytest.fixture(scope="module")
def files(tiny_world):
    """Dataset files with one defect each, beside the tiny world's (so ./guide and ./pipeline resolve)."""
    good = tiny_world.read_text()
    pickled = tiny_world.parent / "pickled-guide"
    pickled.mkdir(exist_ok=True)
    shutil.copy(tiny_world.parent / "guide" / "config.json", pickled / "config.json")
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04\x95 not really a pickle")  # never opened
    return {
        "good": str(tiny_world),
        "malformed_toml": _variant(tiny_world, "bad-syntax.toml", good.replace("[training]", "[training")),
        "malformed_yaml": _variant(tiny_world, "bad-syntax.yaml", "name: tiny\nclass_names: [a, b\nclassifier: {"),
        "unknown_field": _variant(tiny_world, "typo.toml", good.replace("max_epochs =", "max_epoch =")),
        "zero_images": _variant(tiny_world, "zero.toml", good.replace("images_per_epoch = 3", "images_per_epoch = 0")),
        "unknown_kind": _variant(tiny_world, "kind.toml", good.replace('kind = "local"', 'kind = "onnx"')),
        "unknown_preset": _variant(
            tiny_world,
            "preset.toml",
            'diffusion = "sd99"\n' + good[: good.index("[diffusion]")] + good[good.index("[sampler]") :],
        ),
        "bad_dtype": _variant(tiny_world, "dtype.toml", good.replace('dtype = "float32"', 'dtype = "float8"')),
        "escaping_name": _variant(tiny_world, "escape.toml", good.replace('name = "tiny"', 'name = "../../etc"')),
        "pickle": _variant(
            tiny_world, "pickle.toml", good.replace('model_id = "./guide"', 'model_id = "./pickled-guide"')
        ),
        "missing_guide": _variant(
            tiny_world, "gone.toml", good.replace('model_id = "./guide"', 'model_id = "./no-such-dir"')
        ),
    }


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """A store with earlier results in it, and the working directory (dct optimize writes ./tokens)."""
    from dct.artifacts.store import ArtifactStore

    store = ArtifactStore.from_config(store=str(tmp_path / "store"))
    store.write_bytes(store.token_uri("tiny", "tk00000000000001", 0), b"earlier token bytes")
    store.write_json(store.record_uri("tiny", "ek00000000000001", 0), {"earlier": "record"})
    store.write_bytes(store.results_file_uri("classes", "tiny", "2026-01-01", "run-earlier"), b"PAR1 earlier PAR1")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / "notes.txt").write_text("user file")
    monkeypatch.chdir(cwd)
    return tmp_path


# ------------------------------------------------------------------------------------------ the table


@dataclass
class Case:
    argv: list[str]
    expect: list[str]  # substrings of the one error line (the offending value, and what to do)
    env: dict[str, str] = field(default_factory=dict)
    needs: str = ""  # "moto" or "no-cuda"


def cli_cases(f: dict[str, str]) -> dict[str, Case]:
    tiny = f["good"]
    return {
        "unknown dataset": Case(
            ["run", "--dataset", "imagenet-22k"], ["'imagenet-22k'", "registered datasets:", "inet"]
        ),
        "unknown dataset (optimize)": Case(
            ["optimize", "--dataset", "nope", "--class", "0"], ["'nope'", "dataset file"]
        ),
        "missing dataset file": Case(["run", "--dataset", "/nonexistent/mine.toml"], ["mine.toml", "does not exist"]),
        "class id out of range": Case(
            ["run", "--dataset", tiny, "--classes", "7"], ["class id 7", "valid ids are 0-3"]
        ),
        "negative class id": Case(["run", "--dataset", tiny, "--classes=-1"], ["class id -1", "valid ids are 0-3"]),
        "reversed class range": Case(["run", "--dataset", tiny, "--classes", "3-1"], ["'3-1'", "start > end"]),
        "unknown class name": Case(
            ["run", "--dataset", tiny, "--classes", "purple cow"], ["'purple cow'", "dct datasets show"]
        ),
        "several classes to optimize": Case(["optimize", "--dataset", tiny, "--class", "0-1"], ["'0-1'", "dct run"]),
        "zero epochs": Case(["run", "--max-epochs", "0"], ["--max-epochs", "0 must be a positive integer"]),
        "negative shard size": Case(["run", "--shard-size", "-3"], ["--shard-size", "-3 must be a positive integer"]),
        "not a number": Case(["run", "--num-samples", "many"], ["--num-samples", "'many' is not an integer"]),
        "fraction out of range": Case(["run", "--max-failed-fraction", "1.5"], ["1.5", "within [0, 1]"]),
        "unknown option": Case(["run", "--epochs", "3"], ["unrecognized arguments: --epochs 3", "--help"]),
        "unknown device": Case(["run", "--device", "tpu"], ["'tpu'", "auto, cpu, cuda"]),
        "CUDA device without CUDA": Case(["run", "--device", "cuda:0"], ["'cuda:0'", "--device cpu"], needs="no-cuda"),
        "malformed TOML": Case(
            ["run", "--dataset", f["malformed_toml"]], ["malformed dataset file", "bad-syntax.toml"]
        ),
        "malformed YAML": Case(
            ["run", "--dataset", f["malformed_yaml"]], ["malformed dataset file", "bad-syntax.yaml"]
        ),
        "unknown config field": Case(["run", "--dataset", f["unknown_field"]], ["training.max_epoch", "not permitted"]),
        "zero in a dataset file": Case(
            ["run", "--dataset", f["zero_images"]], ["training.images_per_epoch", "greater than 0"]
        ),
        "unknown classifier kind": Case(["run", "--dataset", f["unknown_kind"]], ["'onnx'", "valid kinds:", "timm"]),
        "unknown classifier kind (flag)": Case(
            ["optimize", "--dataset", tiny, "--class", "0", "--classifier-kind", "onnx"], ["'onnx'", "valid kinds:"]
        ),
        "unknown diffusion preset": Case(["run", "--dataset", f["unknown_preset"]], ["'sd99'", "valid:", "sd14"]),
        "unknown dtype": Case(["run", "--dataset", f["bad_dtype"]], ["dtype.toml", "diffusion.dtype", "'bfloat16'"]),
        "dataset name escaping the store": Case(
            ["run", "--dataset", f["escaping_name"]], ["escape.toml", "name:", "pattern"]
        ),
        "pickle checkpoint": Case(
            ["run", "--dataset", f["pickle"]], ["refusing pickle", "pytorch_model.bin", "safetensors"]
        ),
        "missing model directory": Case(
            ["optimize", "--dataset", f["missing_guide"], "--class", "0"], ["no-such-dir", "does not exist"]
        ),
        "--out is inside a file": Case(
            ["optimize", "--dataset", tiny, "--class", "0", "--out", "notes.txt/x.safetensors"],
            ["notes.txt", "is a file"],
        ),
        "--out names a bucket but no file": Case(
            ["optimize", "--dataset", tiny, "--class", "0", "--out", "s3://bucket"], ["'s3://bucket'", "names no file"]
        ),
        "--out in a missing bucket": Case(
            ["optimize", "--dataset", tiny, "--class", "0", "--out", "s3://{missing}/t/x.safetensors"],
            ["{missing}", "does not exist", "create it"],
            needs="moto",
        ),
        "generate --out in a missing bucket": Case(
            ["generate", "--dataset", tiny, "--class", "0", "--token", "t.safetensors", "--out", "s3://{missing}/s"],
            ["{missing}", "does not exist", "create it"],
            needs="moto",
        ),
        "augment-eval --out in a missing bucket": Case(
            ["augment-eval", "--out", "s3://{missing}/augment"], ["{missing}", "does not exist", "create it"],
            needs="moto",
        ),
        "non-S3 store URL": Case(
            ["run", "--dataset", tiny, "--store", "ftp://host/dct"], ["'ftp://host/dct'", "s3://bucket/prefix"]
        ),
        "S3 URL without bucket": Case(["run", "--dataset", tiny, "--store", "s3://"], ["'s3://'", "s3://BUCKET"]),
        "bad DCT_STORE": Case(
            ["run", "--dataset", tiny], ["'gs://bucket/dct'", "protocol 'gs'"], env={"DCT_STORE": "gs://bucket/dct"}
        ),
        "unreachable store": Case(
            ["run", "--dataset", tiny, "--store", "s3://dct-bucket/x"],
            ["unreachable", "http://127.0.0.1:9", "AWS_ENDPOINT_URL_S3"],
            env={"AWS_ENDPOINT_URL_S3": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"},
        ),
        "missing bucket": Case(
            ["run", "--dataset", tiny, "--store", "s3://{missing}/x"], ["{missing}", "create the bucket"], needs="moto"
        ),
        "missing credentials": Case(
            ["run", "--dataset", tiny, "--store", "s3://{bucket}/x"],
            ["no S3 credentials", "AWS_ACCESS_KEY_ID", "Secret block"],
            needs="moto-nocreds",
        ),
        "read-only bucket": Case(
            ["run", "--dataset", tiny, "--store", "s3://{readonly}/x"], ["not writable", "s3:PutObject"], needs="moto"
        ),
    }


CASE_NAMES = list(
    cli_cases(
        {
            k: ""
            for k in (
                "good",
                "malformed_toml",
                "malformed_yaml",
                "unknown_field",
                "zero_images",
                "unknown_kind",
                "unknown_preset",
                "bad_dtype",
                "escaping_name",
                "pickle",
                "missing_guide",
            )
        }
    )
)


@pytest.fixture
def buckets(request):
    """For the moto cases: a bucket with an earlier object, a read-only one (policy denies PutObject)."""
    import boto3

    endpoint = request.getfixturevalue("aws_env")
    s3 = boto3.client("s3", endpoint_url=endpoint)
    names = {k: f"dct-{k}-{uuid.uuid4().hex[:8]}" for k in ("bucket", "readonly", "missing")}
    for key in ("bucket", "readonly"):
        s3.create_bucket(Bucket=names[key])
        s3.put_object(Bucket=names[key], Key="x/tokens/earlier.safetensors", Body=b"earlier")
    s3.put_bucket_policy(
        Bucket=names["readonly"],
        Policy=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Deny",
                        "Principal": "*",
                        "Action": "s3:PutObject",
                        "Resource": f"arn:aws:s3:::{names['readonly']}/*",
                    }
                ],
            }
        ),
    )

    def objects():
        return {
            (b, o["Key"], o["ETag"], o["Size"])
            for b in (names["bucket"], names["readonly"])
            for o in s3.list_objects_v2(Bucket=b).get("Contents", [])
        }

    return names, objects


def _prepare(name: str, files, workspace, request, monkeypatch) -> tuple[Case, list[str], object]:
    """The case's argv (moto bucket names filled in, the workspace's store) and environment; S3 object lister."""
    case = cli_cases(files)[name]
    if case.needs == "no-cuda" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")  # skip-ok: the case needs a machine without CUDA; CI has none
    argv, s3_objects = list(case.argv), None
    if case.needs.startswith("moto"):
        import s3fs

        names, s3_objects = request.getfixturevalue("buckets")
        argv = [a.format(**names) for a in argv]
        case.expect = [e.format(**names) for e in case.expect]
        s3fs.S3FileSystem.clear_instance_cache()  # as in a fresh process: no client with other credentials
        if case.needs == "moto-nocreds":
            for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
                monkeypatch.delenv(var)
            monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-role lookup on a CI box
    for var, value in case.env.items():
        monkeypatch.setenv(var, value)
    if "--store" not in argv and argv[0] == "run" and "DCT_STORE" not in case.env:
        argv += ["--store", str(workspace / "store")]
    return case, argv, s3_objects


@pytest.mark.parametrize("name", CASE_NAMES)
def test_bad_cli_input_is_one_line_exit_2_early_and_harmless(
    name, files, workspace, tripwire, monkeypatch, capsys, request
):
    """Early is structural, not a stopwatch: the tripwire proves that no model was read, and
    test_bad_input_never_imports_prefect that Prefect never started."""
    case, argv, s3_objects = _prepare(name, files, workspace, request, monkeypatch)
    before, objects_before = snapshot(workspace), s3_objects() if s3_objects else None

    try:
        code = main(argv)
    except SystemExit as exc:  # argparse usage errors exit from inside parse_args
        code = exc.code
    out, err = capsys.readouterr()

    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, f"{name}: exit code {code}"
    assert len(lines) == 1, f"{name}: expected one line on stderr, got:\n{err}"
    assert lines[0].startswith("dct") and "error:" in lines[0]
    for text in case.expect:
        assert text in lines[0], f"{name}: {text!r} not in {lines[0]!r}"
    assert "Traceback" not in out + err
    assert snapshot(workspace) == before, f"{name}: files changed"
    if s3_objects:
        assert s3_objects() == objects_before, f"{name}: objects changed"


# Runs every case in ONE fresh interpreter (this test process imported Prefect long ago), reporting after each
# the exit code and every prefect module in sys.modules: a case that imported Prefect would show it from then on.
NO_PREFECT_CHILD = """
import json, os, sys
from dct.cli import main
results = []
for case in json.loads(sys.stdin.read()):
    saved = dict(os.environ)
    os.environ.update(case["env"])
    for var in case["unset"]:
        os.environ.pop(var, None)
    if "s3fs" in sys.modules:
        sys.modules["s3fs"].S3FileSystem.clear_instance_cache()
    try:
        code = main(case["argv"])
    except SystemExit as exc:
        code = exc.code
    os.environ.clear()
    os.environ.update(saved)
    prefect = sorted(m for m in sys.modules if m == "prefect" or m.startswith("prefect."))
    results.append({"name": case["name"], "code": code, "prefect": prefect[:5]})
print("RESULTS " + json.dumps(results))
"""


def test_bad_input_never_imports_prefect(files, workspace, request, monkeypatch):
    """README: bad input fails "before Prefect starts". In a fresh process, no case imports prefect at all."""
    cases = []
    for name in CASE_NAMES:
        with monkeypatch.context() as m:
            try:
                case, argv, _ = _prepare(name, files, workspace, request, m)
            except pytest.skip.Exception:
                continue
            unset = ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"] if case.needs == "moto-nocreds" else []
            env = dict(case.env) | ({"AWS_EC2_METADATA_DISABLED": "true"} if unset else {})
            cases.append({"name": name, "argv": argv, "env": env, "unset": unset})
    proc = subprocess.run(
        [sys.executable, "-c", NO_PREFECT_CHILD],
        input=json.dumps(cases),
        capture_output=True,
        text=True,
        timeout=600,
        cwd=workspace / "cwd",
        env={k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.split("RESULTS ", 1)[1])
    assert [r["name"] for r in results] == [c["name"] for c in cases]
    assert {r["name"]: r["code"] for r in results} == {c["name"]: 2 for c in cases}
    assert {r["name"]: r["prefect"] for r in results if r["prefect"]} == {}


@pytest.mark.parametrize("defect, value", [("bad_dtype", "'float8'"), ("escaping_name", "'../../etc'")])
def test_dataset_file_field_errors_name_the_value(files, defect, value):
    from dct.models.datasets import get_dataset

    with pytest.raises(ValueError) as info:
        get_dataset(files[defect])
    assert value in str(info.value)


def test_tripwire_catches_a_model_load(files, workspace, tripwire):
    """The control: the same tripwire fires on valid input, so the cases above prove 'nothing was loaded'."""
    with pytest.raises(ModelLoaded):
        main(["optimize", "--dataset", files["good"], "--class", "0"])


# ------------------------------------------------------------------------------------------ real processes


def _dct(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("dct")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=120, env={**os.environ, **env})


@pytest.mark.slow
def test_uncached_model_offline_real_process(tmp_path):
    """HF_HUB_OFFLINE=1 + an empty cache: the real `dct` process exits 2 naming the model and `dct models pull`."""
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "DCT_STORE": str(tmp_path / "store")}
    proc = _dct("run", "--dataset", "inet", "--classes", "0", "--dry-run", env=env)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and "is not in the local Hugging Face cache" in lines[0], proc.stderr
    assert "dct models pull --dataset inet" in lines[0]
    assert not (tmp_path / "hf").exists() or not any((tmp_path / "hf").rglob("*.safetensors"))


# ------------------------------------------------------------------------------------------ flow parameters


def _flow(tiny_world, store, **kw):
    from flows.dct_flow import dct

    return dct(dataset=str(tiny_world), store=str(store), return_state=True, **kw)


@pytest.mark.parametrize(
    "params, expect",
    [
        ({"classes": [0, 9]}, "class id 9 is out of range"),
        ({"shard_size": 0}, "shard_size=0 must be a positive integer"),
        ({"max_classes": -1}, "max_classes=-1 must be a positive integer"),
        ({"max_failed_fraction": -0.1}, "max_failed_fraction=-0.1 must be within [0, 1]"),
        ({"overrides": {"max_epoch": 3}}, "max_epoch"),
        ({"run_id": "../../outside"}, "run_id '../../outside' is not a safe storage name"),
    ],
    ids=[
        "class out of range",
        "zero shard size",
        "negative max_classes",
        "negative fraction",
        "unknown override field",
        "escaping run id",
    ],
)
@pytest.mark.slow
def test_bad_flow_parameters_fail_the_run_before_any_shard(
    prefect_harness, tiny_world, workspace, tripwire, params, expect
):
    from flows_fixtures import flow_runs_of

    params = {"run_id": f"bad-{uuid.uuid4().hex[:8]}", **params}
    before = snapshot(workspace)
    state = _flow(tiny_world, workspace / "store", **params)
    assert state.is_failed()
    with pytest.raises(Exception) as info:
        state.result()
    assert expect in str(info.value)
    assert snapshot(workspace) == before  # failed in preflight: no probe, nothing written
    shards = [r.name for r in flow_runs_of(params["run_id"]) if r.name.startswith("dct-shard")]
    assert shards == []  # and no shard child run of THIS run was created


def _pipe() -> str:
    from dct.toy.models import PIPELINE_DIR

    return str(PIPELINE_DIR)


LOADS = {
    "vae": lambda: __import__("diffusers").AutoencoderKL.from_pretrained(_pipe(), subfolder="vae"),
    "unet": lambda: __import__("diffusers").UNet2DConditionModel.from_pretrained(_pipe(), subfolder="unet"),
    "sd-pipeline": lambda: __import__("diffusers").StableDiffusionPipeline.from_pretrained(_pipe()),
    "text-encoder": lambda: __import__("transformers").CLIPTextModel.from_pretrained(_pipe(), subfolder="text_encoder"),
    "tokenizer": lambda: __import__("transformers").CLIPTokenizer.from_pretrained(_pipe(), subfolder="tokenizer"),
    "timm": lambda: __import__("timm").create_model("resnet18"),
    "state-dict": lambda: torch.nn.Linear(2, 2).load_state_dict({}),
    "torch-load": lambda: torch.load(io.BytesIO(b"")),
}


@pytest.mark.parametrize("load", list(LOADS))
def test_the_tripwire_fires_on_every_way_weights_are_read(tripwire, load):
    """The tripwire's own coverage: each loader a code path could reach, single diffusers models included (on
    the shipped toy pipeline's folders, which would load without it)."""
    with pytest.raises(ModelLoaded):
        LOADS[load]()
