"""`dct generate` as a user runs it, on the embedded toy world (offline, CPU, seconds).

A real token from `dct optimize` goes in; PNGs of the pipeline's size come out, made by the dataset's own
sampler on its evaluation seeds; bad input ends in one line and exit code 2 before any model is loaded.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dct.cli import main

N = 3
CLASS_ID = 0  # "ember finch" (red circle)


@pytest.fixture(scope="module")
def token_file(tmp_path_factory) -> Path:
    """A token of class 0 learned by `dct optimize` with 3 updates.

    Not 1: the keep-best-loss rule returns the vector *before* an update, so a 1-epoch run gives back the
    initializer ("a") — the baseline itself.
    """
    torch.set_num_threads(1)
    path = tmp_path_factory.mktemp("tokens") / "toy-00000.safetensors"
    argv = ["optimize", "--dataset", "toy", "--class", str(CLASS_ID), "--max-epochs", "3", "--out", str(path)]
    assert main([*argv, "--device", "cpu", "--no-progress"]) == 0
    return path


@pytest.fixture(scope="module")
def toy():
    """The toy dataset's spec and config, and its pipeline loaded as the product loads it."""
    from dct.models.datasets import get_dataset
    from dct.models.pipelines import load_pipeline

    spec = get_dataset("toy")
    config = spec.run_config()
    return spec, config, load_pipeline(config.diffusion, "cpu").pipe


@pytest.fixture
def no_model_loads(monkeypatch):
    """Bad input must be refused before any pipeline is read (the weights loaders of diffusers)."""
    import diffusers

    def boom(*args, **kwargs):
        raise AssertionError("a model was loaded before the bad input was refused")

    for owner in (diffusers.DiffusionPipeline, diffusers.StableDiffusionPipeline):
        monkeypatch.setattr(owner, "from_pretrained", boom)


def generate(capsys, *args: str) -> tuple[int, str, str]:
    """`dct generate --dataset toy --device cpu ARGS` in-process: (exit code, stdout, stderr)."""
    try:
        rc = main(["generate", "--dataset", "toy", "--device", "cpu", *args])
    except SystemExit as exc:  # argparse usage errors exit from inside parse_args
        rc = exc.code
    out = capsys.readouterr()
    return rc, out.out, out.err


def pngs(folder: Path, variant: str) -> list[np.ndarray]:
    return [np.asarray(Image.open(p)) for p in sorted(folder.glob(f"{variant}-*.png"))]


def test_writes_n_images_of_the_pipeline_size_and_the_baseline_on_the_same_seeds(token_file, toy, tmp_path, capsys):
    from dct.artifacts.images import encode_image
    from dct.artifacts.token_file import load_token
    from dct.config import baseline_prompts, epoch_prompts
    from dct.method.sampling import generate as sample
    from dct.method.sampling import image_size
    from dct.method.tokens import add_placeholder_token, set_token_vector

    out = tmp_path / "out"
    rc, stdout, err = generate(
        capsys, "--class", "0", "--token", str(token_file), "--n", str(N), "--baseline", "--out", str(out)
    )
    assert rc == 0, err
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([f"dct-{j:02d}.png" for j in range(N)] + [f"baseline-{j:02d}.png" for j in range(N)])
    assert str(out) in stdout

    spec, config, pipe = toy
    height, width = image_size(pipe, config.sampler)
    dct_imgs, base_imgs = pngs(out, "dct"), pngs(out, "baseline")
    assert all(img.shape == (height, width, 3) and img.dtype == np.uint8 for img in dct_imgs + base_imgs)
    # Same noise and template per index, only the word differs: the learned token changes every image.
    for j, (a, b) in enumerate(zip(dct_imgs, base_imgs, strict=True)):
        assert not np.array_equal(a, b), f"image {j}: the token drew the same image as the baseline prompt"

    # Exactly evaluation's images: the dataset's sampler on its evaluation seeds, template j mod n.
    token, vector, _ = load_token(token_file)
    set_token_vector(pipe.text_encoder, add_placeholder_token(pipe.tokenizer, pipe.text_encoder, token, "a"), vector)
    seeds = list(config.evaluation.seeds[:N])
    name, templates = spec.class_names[CLASS_ID], config.prompts.templates
    for variant, prompts in (
        ("dct", epoch_prompts(templates, token, name, N)),
        ("baseline", baseline_prompts(templates, config.prompts.baseline_word, name, N)),
    ):
        expected = sample(pipe, prompts, seeds, config.sampler)
        for j, img in enumerate(expected):
            assert (out / f"{variant}-{j:02d}.png").read_bytes() == encode_image(img, "png"), (variant, j)


def test_same_seed_same_images_other_seed_other_images(token_file, tmp_path, capsys):
    runs = {}
    for label, seed in (("first", "7"), ("again", "7"), ("other", "8")):
        out = tmp_path / label
        rc, _, err = generate(
            capsys, "--class", "0", "--token", str(token_file), "--n", "2", "--image-seed", seed, "--out", str(out)
        )
        assert rc == 0, err
        runs[label] = [p.read_bytes() for p in sorted(out.glob("dct-*.png"))]
    assert len(runs["first"]) == 2
    assert runs["first"] == runs["again"]
    assert all(a != b for a, b in zip(runs["first"], runs["other"], strict=True))


def _bundle_bytes(token_file: Path, other_class: int) -> bytes:
    """A run bundle (dct.artifacts.bundle.build_bundle) with class 0's learned token and another class's vector."""
    from dct.artifacts.bundle import build_bundle
    from dct.artifacts.token_file import load_token
    from dct.results import ClassRecord, Provenance

    token, vector, meta = load_token(token_file)
    prov = Provenance(
        diffusion_model_id=meta["base_model"],
        diffusion_revision=meta["base_model_revision"],
        classifier_model_id=meta["classifier"],
        classifier_revision=meta["classifier_revision"],
        device="cpu",
        dtype="float32",
    )
    now = dt.datetime(2026, 11, 26, 10, 0, tzinfo=dt.UTC)
    records = [
        ClassRecord(
            run_id="run-1",
            dataset="toy",
            class_id=cid,
            class_name=f"class {cid}",
            token=f"<dct-toy-{cid:05d}>",
            token_key=meta["token_key"],
            eval_key="ek0001",
            status="done",
            provenance=prov,
            started_at=now,
            finished_at=now,
        )
        for cid in (CLASS_ID, other_class)
    ]
    vectors = {token: vector, f"<dct-toy-{other_class:05d}>": -vector}
    data, _ = build_bundle(records, vectors, "run-1")
    return data


@pytest.mark.parametrize("where", ["local", "s3"])
def test_bundle_gives_the_same_images_as_the_token_file(where, token_file, tmp_path, capsys, request, monkeypatch):
    from dct.artifacts.bundle import bundle_uri
    from dct.artifacts.store import open_store

    monkeypatch.delenv("DCT_STORE", raising=False)
    # s3: a real S3-compatible server (moto) over HTTP, from tests/conftest.py
    root = f"s3://{request.getfixturevalue('s3_bucket')}/team/dct" if where == "s3" else str(tmp_path / "store")
    store = open_store(root)
    uri = store.write_bytes(bundle_uri(store, "toy", "run-1"), _bundle_bytes(token_file, other_class=3))

    args = ("--class", "0", "--n", "2")
    rc, _, err = generate(capsys, *args, "--bundle", uri, "--out", str(tmp_path / "bundle"))
    assert rc == 0, err
    rc, _, err = generate(capsys, *args, "--token", str(token_file), "--out", str(tmp_path / "token"))
    assert rc == 0, err
    got = [p.read_bytes() for p in sorted((tmp_path / "bundle").iterdir())]
    assert got and got == [p.read_bytes() for p in sorted((tmp_path / "token").iterdir())]

    # The bundle's folder is enough, and a class the run did not finish is named with what the bundle holds.
    rc, _, err = generate(capsys, "--class", "5", "--bundle", uri.rsplit("/", 1)[0], "--out", str(tmp_path / "x"))
    assert rc == 2 and "class 5 is not in --bundle" in err and "it holds 0, 3" in err, err
    assert not (tmp_path / "x").exists()


def _token_copy(token_file: Path, folder: Path, **metadata: str) -> str:
    from dct.artifacts.token_file import load_token, save_token

    token, vector, meta = load_token(token_file)
    return str(save_token(folder / "edited.safetensors", token, vector, {**meta, **metadata}))


@pytest.mark.parametrize(
    ("case", "expect"),
    [
        ("wrong class", ["is the token of class_id '0', not '3'", "--class 0"]),
        ("wrong dataset", ["is the token of dataset 'cub', not 'toy'", "--dataset cub"]),
        ("missing file", ["no-such.safetensors", "does not exist"]),
        ("corrupt file", ["garbage.safetensors", "not a readable safetensors token file", "dct optimize"]),
        ("n below one", ["--n", "0 must be a positive integer"]),
        ("not a bundle", ["toy-00000.safetensors", "not a dct token bundle", "dct run"]),
    ],
)
def test_bad_input_is_one_line_exit_2_before_any_model_loads(
    case, expect, token_file, tmp_path, capsys, no_model_loads
):
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"this is not a safetensors file at all")
    source = {
        "wrong class": ["--class", "3", "--token", str(token_file)],
        "wrong dataset": ["--class", "0", "--token", _token_copy(token_file, tmp_path, dataset="cub")],
        "missing file": ["--class", "0", "--token", str(tmp_path / "no-such.safetensors")],
        "corrupt file": ["--class", "0", "--token", str(garbage)],
        "n below one": ["--class", "0", "--token", str(token_file), "--n", "0"],
        "not a bundle": ["--class", "0", "--bundle", str(token_file)],  # a token file is not a bundle
    }[case]
    out = tmp_path / "out" / "nested"
    rc, stdout, err = generate(capsys, *source, "--out", str(out))
    assert rc == 2, (stdout, err)
    assert len(err.strip().splitlines()) == 1, err
    for text in expect:
        assert text in err, err
    assert not (tmp_path / "out").exists()
