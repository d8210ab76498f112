from __future__ import annotations

import logging
import re
import warnings

import pytest
import torch

from dct.config import ClassifierConfig
from dct.models.classifiers import load_classifier
from dct.toy import models, shapes


def test_weights_are_small_safetensors():
    files = [p for p in models.WEIGHTS_DIR.rglob("*") if p.is_file()]
    weights = [p for p in files if p.suffix in {".bin", ".pt", ".pth", ".ckpt", ".safetensors"}]
    assert weights and all(p.suffix == ".safetensors" for p in weights)
    assert sum(p.stat().st_size for p in files) <= 20 * 2**20


def test_pipeline_loads_offline_without_safety_checker_warnings(caplog, monkeypatch):
    from diffusers import StableDiffusionPipeline

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        pipe = StableDiffusionPipeline.from_pretrained(models.PIPELINE_DIR, dtype=torch.float32)
    messages = [str(w.message) for w in caught] + [r.getMessage() for r in caplog.records]
    assert not [m for m in messages if "safety" in m.lower()], messages
    assert pipe.safety_checker is None
    assert pipe.unet.config.sample_size * 2 ** (len(pipe.vae.config.block_out_channels) - 1) == shapes.IMAGE_SIZE
    assert pipe.scheduler.config.timestep_spacing == "trailing"


@pytest.mark.parametrize("name", ["guide", "evaluator"])
def test_toy_classifiers_load_classify_and_expose_features(name):
    loaded = load_classifier(ClassifierConfig(kind="toy", model_id=name))
    assert re.fullmatch(r"[0-9a-f]{16}", loaded.resolved_revision)
    clf = loaded.classifier
    images, labels, _ = shapes.sample(200, seed=4242)
    with torch.no_grad():
        logits = clf(images)
        feats = clf.features(images[:8])
    assert logits.shape == (200, shapes.NUM_CLASSES)
    assert feats.ndim == 2 and feats.shape[0] == 8
    assert (logits.argmax(dim=1) == labels).float().mean() >= 0.9


def test_guide_and_evaluator_are_different_architectures():
    g = load_classifier(ClassifierConfig(kind="toy", model_id="guide")).classifier.model
    e = load_classifier(ClassifierConfig(kind="toy", model_id="evaluator")).classifier.model
    assert type(g) is not type(e)


def test_unknown_toy_classifier_is_a_clear_error():
    with pytest.raises(ValueError, match="guide"):
        load_classifier(ClassifierConfig(kind="toy", model_id="/nonexistent/x.safetensors"))


def test_tokenizer_keeps_caption_words_whole_and_any_text_tokenizable():
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(models.PIPELINE_DIR / "tokenizer")
    for word in ["photo", "ember", "finch", "triangle", "background"]:
        assert tok.tokenize(word) == [f"{word}</w>"]
    assert tok("zebra quokka").input_ids[0] == tok.bos_token_id
