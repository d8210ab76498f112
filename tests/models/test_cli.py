"""`dct datasets` / `dct models pull` as a user runs them: offline, one-line errors, exit code 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from hub_models import put_in_hf_cache, write_inat_config


def dct(*args: str, hf_home, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    return subprocess.run(
        [sys.executable, "-m", "dct.cli", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=120
    )


@pytest.fixture
def hf_home(tmp_path):
    home = tmp_path / "hf-home"
    (home / "hub").mkdir(parents=True)
    return home


def run_main(capsys, *args: str) -> tuple[int, str, str]:
    """The CLI in-process (fast); the hub is 'down' through the hf_cache fixture."""
    from dct.cli import main

    rc = main(list(args))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_datasets_lists_the_registry_offline(hf_cache, capsys):
    rc, out, err = run_main(capsys, "datasets")
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["name", "classes", "classifier", "held-out", "evaluator", "diffusion", "model"]
    rows = {ln.split()[0]: ln for ln in lines[1:]}
    assert "1000" in rows["inet"] and "google/vit-large-patch16-224" in rows["inet"]
    assert "200" in rows["cub"] and "vesteinn/vit-mae-cub" in rows["cub"]
    assert "10000" in rows["inat"] and "dct models pull --dataset inat" in rows["inat"]
    assert all("CompVis/stable-diffusion-v1-4" in rows[n] for n in ("inet", "cub", "inat"))
    # Each dataset says whether accuracy has a held-out judge, and which.
    assert "convnext_base.fb_in22k_ft_in1k" in rows["inet"]
    assert "hf-hub:timm/convnext_large_mlp.laion2b_ft_augreg_inat21" in rows["inat"]
    assert rows["cub"].split()[3] == "none"


def test_show_inat_json_from_the_cached_config_only(tmp_path, hf_home):
    put_in_hf_cache(write_inat_config(tmp_path / "cfg"), hf_home / "hub", "vesteinn/vit-mae-inat21")
    r = dct("datasets", "show", "inat", "--classes", "0-4", "--json", hf_home=hf_home)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["classes"] == [{"id": i, "name": f"Genus{i} species{i}"} for i in range(5)]
    assert out["num_classes"] == 10_000 and out["classifier"]["kind"] == "vit-mae"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["datasets", "show", "imagenet"], "unknown dataset 'imagenet'; registered datasets:"),
        (["datasets", "show", "inet", "--classes", "1000"], "class id 1000 is out of range; valid ids are 0-999"),
        (["datasets", "show", "cub", "--classes", "dodo"], "unknown class name 'dodo' in dataset 'cub'"),
        (["datasets", "show", "inat"], "not in the local Hugging Face cache; run `dct models pull --dataset inat`"),
        (
            ["models", "pull", "--dataset", "inet"],
            "cannot download 'CompVis/stable-diffusion-v1-4': the hub is unreachable",
        ),
        (["datasets", "show", "missing.toml"], "dataset file"),
    ],
)
def test_bad_inputs_end_in_one_line_and_exit_2(hf_cache, capsys, args, message):
    rc, out, err = run_main(capsys, *args)
    assert rc == 2, (out, err)
    assert message in err
    assert len(err.strip().splitlines()) == 1, err


def test_dataset_file_errors_unknown_kind_and_pickles(tmp_path, hf_cache, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("name = [\n")
    rc, _, err = run_main(capsys, "datasets", "show", str(bad))
    assert rc == 2 and "malformed dataset file" in err

    keras = tmp_path / "keras.toml"
    keras.write_text(
        'name = "k"\nclass_names = ["a"]\ndiffusion = "sd14"\n[classifier]\nkind = "keras"\nmodel_id = "m"\n'
    )
    rc, _, err = run_main(capsys, "datasets", "show", str(keras))
    assert rc == 2 and "unknown classifier kind 'keras'; valid kinds:" in err

    (tmp_path / "pickled").mkdir()
    torch.save({}, tmp_path / "pickled" / "model.pt")
    pickled = tmp_path / "pickled.toml"
    pickled.write_text(
        'name = "p"\nclass_names = ["a"]\n[diffusion]\nmodel_id = "./pickled"\n'
        '[classifier]\nkind = "local"\nmodel_id = "./pickled"\n'
    )
    for args in (["models", "pull", "--dataset", str(pickled)], ["datasets", "show", str(pickled)]):
        rc, _, err = run_main(capsys, *args)
        assert rc == 2 and "refusing pickle checkpoint" in err
        assert len(err.strip().splitlines()) == 1, err


def test_models_pull_fetches_and_prints_revisions(tmp_path, hf_cache, capsys):
    """The pull path on a dataset whose models are all 'cached' hub ids (the hub itself is down)."""
    from hub_models import save_tiny_timm, save_tiny_vit

    put_in_hf_cache(save_tiny_vit(tmp_path / "vit"), hf_cache, "org/tiny-vit", sha="d" * 40)
    put_in_hf_cache(save_tiny_timm(tmp_path / "timm"), hf_cache, "timm/tiny.test", sha="e" * 40)
    from tiny import tiny_pipeline

    tiny_pipeline(tmp_path / "b").save_pretrained(tmp_path / "sd", safe_serialization=True)
    put_in_hf_cache(tmp_path / "sd", hf_cache, "org/tiny-sd", sha="f" * 40)
    f = tmp_path / "hubbed.toml"
    f.write_text(
        'name = "hubbed"\nclass_names = ["a", "b", "c", "d", "e"]\n[diffusion]\nmodel_id = "org/tiny-sd"\n'
        '[classifier]\nkind = "hf"\nmodel_id = "org/tiny-vit"\n'
        '[evaluator]\nkind = "timm"\nmodel_id = "hf-hub:timm/tiny.test"\n'
    )
    rc, out, err = run_main(capsys, "models", "pull", "--dataset", str(f))
    assert rc == 0, err
    assert f"diffusion   org/tiny-sd @ {'f' * 40}" in out
    assert f"classifier  hf:org/tiny-vit @ {'d' * 40}" in out
    assert f"evaluator   timm:hf-hub:timm/tiny.test @ {'e' * 40}" in out


def test_pull_checks_shipped_labels_against_the_model_label_map(tmp_path):
    """Punctuation variants of ImageNet labels pass; a shifted class order fails loudly."""
    from dct.commands.models import _check_labels
    from dct.models.datasets import get_dataset
    from dct.models.labels import imagenet_labels

    spec = get_dataset("inet")
    cfg = tmp_path / "config.json"
    cfg.write_text(
        json.dumps({"id2label": {str(i): lab.replace("'", "") for i, (_, lab) in enumerate(imagenet_labels())}})
    )
    _check_labels(spec, tmp_path)
    cfg.write_text(json.dumps({"id2label": {str(i): imagenet_labels()[(i + 1) % 1000][1] for i in range(1000)}}))
    with pytest.raises(ValueError, match="a different class order"):
        _check_labels(spec, tmp_path)
