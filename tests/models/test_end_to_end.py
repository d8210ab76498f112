"""A user-defined dataset file (tests/models/data/tiny_shapes.toml) drives one optimisation end to end:
dataset file -> class selection -> pipeline + classifier + evaluator loaders -> dct.optimize."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from hub_models import save_tiny_timm, save_tiny_vit

from dct.config import token_key
from dct.models.classifiers import load_classifier
from dct.models.datasets import get_dataset, select_classes
from dct.models.pipelines import load_pipeline

DATA = Path(__file__).parent / "data"


def test_custom_dataset_file_optimises_one_class_on_tiny_models(tmp_path):
    from tiny import tiny_pipeline

    from dct.method.optimize import optimize_token
    from dct.method.sampling import generate

    shutil.copy(DATA / "tiny_shapes.toml", tmp_path)
    tiny_pipeline(tmp_path / "build").save_pretrained(tmp_path / "tiny-sd", safe_serialization=True)
    save_tiny_vit(tmp_path / "tiny-vit-mae")
    save_tiny_timm(tmp_path / "tiny-timm")

    spec = get_dataset(str(tmp_path / "tiny_shapes.toml"))
    (class_id,) = select_classes(spec, "square")
    config = spec.run_config()
    pipe = load_pipeline(spec.diffusion, "cpu")
    guide = load_classifier(spec.classifier, "cpu")
    evaluator = load_classifier(config.evaluation.evaluator, "cpu")
    key = token_key(config, pipe.resolved_revision, guide.resolved_revision)
    assert len(key) == 16

    rows_before = pipe.pipe.text_encoder.get_input_embeddings().weight.detach().clone()
    result = optimize_token(
        pipe.pipe,
        guide.classifier,
        class_id=class_id,
        class_name=spec.class_names[class_id],
        config=config,
        device="cpu",
        progress=False,
    )
    assert result.token == "<dct-tiny-shapes-00001>" and result.class_name == "square"
    assert 1 <= result.epochs <= config.training.max_epochs
    assert torch.isfinite(result.vector).all() and all(map(torch.isfinite, map(torch.tensor, result.losses)))
    rows_after = pipe.pipe.text_encoder.get_input_embeddings().weight.detach()
    assert torch.equal(rows_after[: rows_before.shape[0]], rows_before)  # no existing row moved

    images = generate(
        pipe.pipe,
        [f"A photo of {result.token} square"] * 2,
        list(config.evaluation.seeds),
        config.sampler,
        device="cpu",
    )
    assert images.shape == (2, 3, 16, 16)
    with torch.no_grad():
        assert evaluator.classifier(images).shape == (2, spec.num_classes)
