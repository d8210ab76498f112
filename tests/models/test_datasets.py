"""Dataset registry, shipped label lists, class selection, and user-defined dataset files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from hub_models import put_in_hf_cache, write_inat_config

from dct.models.datasets import get_dataset, inat_class_names, load_dataset_file, select_classes
from dct.models.hub import ModelNotAvailableError
from dct.models.labels import imagenet_labels, inat_prompt_name

DATA = Path(__file__).parent / "data"


def test_imagenet_labels_are_the_standard_order_with_disambiguated_short_names():
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    assert [s for s, _ in imagenet_labels()] == [info.index_to_label_name(i) for i in range(1000)]
    assert [d for _, d in imagenet_labels()] == [info.index_to_description(i) for i in range(1000)]
    spec = get_dataset("inet")
    names = spec.class_names
    assert spec.num_classes == 1000 and len({n.lower() for n in names}) == 1000
    assert names[0] == "tench" and names[281] == "tabby" and names[282] == "tiger cat"  # first comma name
    assert (names[134], names[517]) == ("crane (bird)", "crane (machine)")
    assert (names[638], names[639]) == ("maillot (leotard)", "maillot (swimsuit)")
    assert spec.classifier.model_id == "google/vit-large-patch16-224"
    assert spec.classifier.preprocess.resize == 256 and spec.diffusion.model_id == "CompVis/stable-diffusion-v1-4"


def test_cub_names_follow_the_reference_rule():
    spec = get_dataset("cub")
    assert spec.num_classes == 200
    assert spec.class_names[0] == "Black footed Albatross" and spec.class_names[199] == "Common Yellowthroat"
    assert spec.classifier.kind == "vit-mae"


def test_inat_names_come_from_the_cached_classifier_config(tmp_path, hf_cache):
    with pytest.raises(ModelNotAvailableError, match="dct models pull --dataset inat"):
        get_dataset("inat")
    put_in_hf_cache(write_inat_config(tmp_path / "cfg"), hf_cache, "vesteinn/vit-mae-inat21")
    names = inat_class_names()
    assert len(names) == 10_000 and names[3] == "Genus3 species3"
    assert get_dataset("inat").num_classes == 10_000
    assert inat_prompt_name("00000_Animalia_Annelida_Clitellata_Haplotaxida_Lumbricidae_Lumbricus_terrestris") == (
        "Lumbricus terrestris"
    )


@pytest.mark.parametrize(
    ("classes", "expected"),
    [
        ("all", list(range(200))),
        (5, [5]),
        ("5", [5]),
        ("0-3", [0, 1, 2, 3]),
        ("1,7,3-4", [1, 7, 3, 4]),
        ([2, "0-1", 2], [2, 0, 1]),
        ("common yellowthroat", [199]),
        (["Black footed Albatross", 10], [0, 10]),
    ],
)
def test_select_classes(classes, expected):
    assert select_classes(get_dataset("cub"), classes) == expected


@pytest.mark.parametrize(
    ("classes", "message"),
    [
        (200, r"class id 200 is out of range; valid ids are 0-199 for dataset 'cub'"),
        ("-1", r"class id -1 is out of range; valid ids are 0-199"),
        ("190-205", r"class range '190-205' is out of range; valid ids are 0-199"),
        ("9-3", r"start > end"),
        ("dodo", r"unknown class name 'dodo' in dataset 'cub'.*valid ids are 0-199"),
        ([], r"no classes selected"),
    ],
)
def test_select_classes_errors_name_the_valid_range(classes, message):
    with pytest.raises(ValueError, match=message):
        select_classes(get_dataset("cub"), classes)


def test_unknown_dataset_lists_the_registered_ones():
    registered = r"unknown dataset 'imagenet'; registered datasets: .*cub, fashion, inat, inet"
    with pytest.raises(ValueError, match=registered):
        get_dataset("imagenet")


def test_dataset_file_toml_and_yaml_give_the_same_spec(tmp_path):
    import tomllib

    import yaml

    spec = load_dataset_file(DATA / "tiny_shapes.toml")
    assert spec.name == "tiny-shapes" and spec.class_names[1] == "square"
    assert spec.classifier.model_id == str((DATA / "tiny-vit-mae").resolve())  # relative to the file
    assert spec.run_config().evaluation.evaluator.kind == "timm"
    data = tomllib.loads((DATA / "tiny_shapes.toml").read_text())
    (tmp_path / "tiny_shapes.yaml").write_text(yaml.safe_dump(data))
    shutil.copytree(DATA, tmp_path / "data")
    from_yaml = get_dataset(str(tmp_path / "tiny_shapes.yaml"))
    assert from_yaml.class_names == spec.class_names and from_yaml.sampler == spec.sampler


def test_dataset_file_extends_a_builtin_and_uses_presets(tmp_path):
    f = tmp_path / "inet-fid.toml"
    f.write_text('base = "inet"\nreference_images = "s3://bucket/imagenet/val"\ndiffusion = "sd21-base"\n')
    spec = load_dataset_file(f)
    assert spec.name == "inet" and spec.num_classes == 1000
    assert spec.reference_images == "s3://bucket/imagenet/val"
    assert spec.diffusion.model_id == "stabilityai/stable-diffusion-2-1-base"


def test_dataset_file_names_the_sdxl_presets(tmp_path):
    f = tmp_path / "inet-xl.toml"
    f.write_text('base = "inet"\ndiffusion = "sdxl-base"\n')
    spec = load_dataset_file(f)
    assert spec.diffusion.model_id == "stabilityai/stable-diffusion-xl-base-1.0"
    assert spec.diffusion.licence == "CreativeML Open RAIL++-M"
    # sdxl-turbo brings its sampler (1 step, no CFG, 512x512) and grad_steps 1; the file's own keys win
    f.write_text('base = "inet"\ndiffusion = "sdxl-turbo"\n[sampler]\nnum_inference_steps = 2\n')
    spec = load_dataset_file(f)
    config = spec.run_config()
    assert spec.diffusion.model_id == "stabilityai/sdxl-turbo"
    assert "Non-Commercial" in spec.diffusion.licence
    s = config.sampler
    assert (s.scheduler, s.num_inference_steps, s.guidance_scale, s.height, s.width, s.timestep_spacing) == (
        "euler", 2, 1.0, 512, 512, "trailing"
    )
    assert config.training.grad_steps == 1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name = [", r"malformed dataset file"),
        (
            'name = "x"\nclass_names = ["a"]\n',
            r"invalid dataset file .*classifier: Field required.*diffusion: Field required",
        ),
        (
            'name = "x"\nclass_names = ["a", "A"]\ndiffusion = "sd14"\n[classifier]\nkind = "hf"\nmodel_id = "m"\n',
            r"class name 'A' is used by class ids 0 and 1",
        ),
        (
            'name = "x"\nclass_names = ["a/b"]\ndiffusion = "sd14"\n[classifier]\nkind = "hf"\nmodel_id = "m"\n',
            r"not safe as a path component",
        ),
        (
            'name = "../x"\nclass_names = ["a"]\ndiffusion = "sd14"\n[classifier]\nkind = "hf"\nmodel_id = "m"\n',
            r"name: String should match pattern",
        ),
        (
            'name = "x"\nclass_names = ["a"]\ndiffusion = "sd3"\n[classifier]\nkind = "hf"\nmodel_id = "m"\n',
            r"unknown diffusion preset 'sd3'",
        ),
    ],
)
def test_malformed_dataset_files_fail_in_one_line(tmp_path, text, message):
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(ValueError, match=message) as info:
        load_dataset_file(f)
    assert "\n" not in str(info.value)


def test_yaml_dataset_files_are_data_only(tmp_path):
    f = tmp_path / "evil.yaml"
    f.write_text("name: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(ValueError, match="malformed dataset file"):
        load_dataset_file(f)


def test_models_of_a_dataset_include_the_evaluator():
    spec = get_dataset("inet")
    ids = [m.model_id for m in spec.models()]
    assert ids == ["CompVis/stable-diffusion-v1-4", "google/vit-large-patch16-224", "convnext_base.fb_in22k_ft_in1k"]
    assert json.loads(spec.model_dump_json())["classifier"]["licence"] == "Apache-2.0"


def test_a_file_can_extend_inat_with_its_own_names_without_the_cache(tmp_path, hf_cache):
    names = tmp_path / "inat21.txt"
    names.write_text("\n".join(f"Genus{i} species{i}" for i in range(10_000)))
    f = tmp_path / "inat-named.toml"
    f.write_text('base = "inat"\nclass_names_file = "inat21.txt"\n')
    spec = load_dataset_file(f)
    assert spec.num_classes == 10_000 and spec.classifier.model_id == "vesteinn/vit-mae-inat21"


def test_placeholder_labels_in_the_inat_config_are_refused(tmp_path, hf_cache):
    import json as _json

    cfg = tmp_path / "cfg"
    cfg.mkdir()
    (cfg / "config.json").write_text(_json.dumps({"id2label": {str(i): f"LABEL_{i}" for i in range(10_000)}}))
    put_in_hf_cache(cfg, hf_cache, "vesteinn/vit-mae-inat21")
    with pytest.raises(ValueError, match="placeholder labels"):
        inat_class_names()


@pytest.mark.parametrize("name", ["inet", "cub", "inat"])
def test_real_model_datasets_backpropagate_like_the_reference_code(name):
    """The authors' code runs PNDM over N + 1 timesteps with gradients from index N - 1 on: the last TWO UNet
    evaluations carry gradients. The real-model presets reproduce that; grad_steps=1 (the paper's text) stays
    one override away and changes the token key."""
    from dct.config import RunOverrides, token_key
    from dct.models.datasets import _inat_with_names

    spec = _inat_with_names(tuple(f"species {i}" for i in range(10_000))) if name == "inat" else get_dataset(name)
    config = spec.run_config()
    assert (config.sampler.scheduler, config.sampler.num_inference_steps) == ("pndm", 30)
    assert config.training.grad_steps == 2
    paper = RunOverrides(grad_steps=1).apply(config)
    assert paper.training.grad_steps == 1
    assert token_key(paper, "d", "c") != token_key(config, "d", "c")


def test_held_out_evaluators_are_another_family_with_their_licence():
    """inet and inat are judged by a ConvNet that was not optimised against (the guides are ViTs); cub has none
    (docs/models.md, "Held-out evaluators") and says so."""
    from dct.models.datasets import _inat_with_names

    inat = _inat_with_names(tuple(f"species {i}" for i in range(10_000))).run_config().evaluation.evaluator
    assert (inat.kind, inat.model_id) == ("timm", "hf-hub:timm/convnext_large_mlp.laion2b_ft_augreg_inat21")
    assert "non-commercial" in inat.licence and inat.revision is None  # resolved at run time, into eval_key
    inet = get_dataset("inet").run_config().evaluation.evaluator
    assert inet.kind == "timm" and inet.model_id.startswith("convnext")
    assert get_dataset("cub").run_config().evaluation.evaluator is None


def test_a_relative_reference_folder_is_relative_to_the_dataset_file_and_checked_before_any_work(tmp_path):
    """docs/models.md: ``reference_images = "./reference"`` means the folder beside the dataset file, wherever the
    command runs; a reference folder that is not there stops `dct run` before the store is touched."""
    import os

    from dct.run.plan import plan_run

    (tmp_path / "worlds" / "reference").mkdir(parents=True)
    f = tmp_path / "worlds" / "mine.toml"
    f.write_text('base = "toy"\nname = "mine"\nreference_images = "./reference"\n')
    here = os.getcwd()
    try:
        os.chdir(tmp_path)  # another working directory than the file's
        spec = load_dataset_file(f)
    finally:
        os.chdir(here)
    assert spec.reference_images == str((tmp_path / "worlds" / "reference").resolve())
    f.write_text('base = "toy"\nname = "mine"\nreference_images = "./missing"\n')
    store = tmp_path / "store"
    with pytest.raises(FileNotFoundError, match=r"reference_images '.*/worlds/missing' is not a directory"):
        plan_run(dataset=str(f), classes="0", store=str(store), run_id="r1")
    assert not store.exists()
