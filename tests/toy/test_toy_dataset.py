from __future__ import annotations

from pathlib import Path

from dct.models.datasets import get_dataset
from dct.toy import shapes


def test_toy_dataset_is_registered_and_consistent():
    spec = get_dataset("toy")
    config = spec.run_config()
    assert spec.num_classes == shapes.NUM_CLASSES
    pipeline_dir = Path(spec.diffusion.model_id)
    assert pipeline_dir.is_absolute() and (pipeline_dir / "model_index.json").is_file()
    assert spec.classifier.kind == spec.evaluator.kind == "toy"
    assert spec.classifier.model_id != spec.evaluator.model_id
    assert config.sampler.scheduler == "ddim" and config.sampler.timestep_spacing == "trailing"
    assert config.optimizer.lr_scale == "token_norm"
    assert not set(config.training.seeds) & set(config.evaluation.seeds)
    assert config.evaluation.num_samples >= 64


def test_class_names_under_specify_the_fine_class():
    spec = get_dataset("toy")
    for name in spec.class_names:
        assert not any(s in name for s in shapes.SHAPES)
