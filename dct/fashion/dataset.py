"""The ``fashion`` dataset: Fashion-MNIST's ten classes under made-up prompt names, the fashion world's models, and
the toy's method defaults (both worlds are 32×32, 5-step, 64-wide; docs/worlds.md says what was measured).
"""

from __future__ import annotations

from dct.config import ClassifierConfig, DatasetSpec, DiffusionConfig, PromptConfig
from dct.fashion import WEIGHTS_DIR
from dct.fashion.captions import CLASS_NAMES
from dct.toy.dataset import EVALUATION, OPTIMIZER, SAMPLER, TEMPLATES, TRAINING
from dct.toy.models import pipeline_dir

# Models trained here from Fashion-MNIST (MIT, Zalando SE 2017); the weights carry the project's licence.
LICENCE = "Apache-2.0 (trained here on Fashion-MNIST, MIT licence, Zalando SE 2017)"
# The FID/KID reference: the real test split, labelled by class (dct.evaluation.features, the "fashion" source).
REFERENCE_IMAGES = "fashion:test"
# 160 evaluation images per class and variant, not the toy's 64: a per-class FID in the evaluator's 128 feature
# dimensions needs at least 129 (docs/worlds.md); the real test split has 1,000 per class for the reference.
FASHION_EVALUATION = EVALUATION.model_copy(update={"num_samples": 160})


def fashion_dataset() -> DatasetSpec:
    return DatasetSpec(
        name="fashion",
        description=(
            "Embedded fashion world: Fashion-MNIST's 10 classes (real 28x28 photographs padded to 32x32) under "
            "prompt names that only name the coarse group (tops, footwear; Trouser and Bag alone), a tiny SD-style "
            "pipeline and two classifiers trained on disjoint halves of the train split; FID against the real "
            "test split."
        ),
        class_names=CLASS_NAMES,
        classifier=ClassifierConfig(kind="fashion", model_id="guide", licence=LICENCE),
        evaluator=ClassifierConfig(kind="fashion", model_id="evaluator", licence=LICENCE),
        diffusion=DiffusionConfig(model_id=str(pipeline_dir(WEIGHTS_DIR)), dtype="float32", licence=LICENCE),
        prompts=PromptConfig(templates=TEMPLATES, baseline_word="a"),
        sampler=SAMPLER,
        optimizer=OPTIMIZER,
        training=TRAINING,
        evaluation=FASHION_EVALUATION,
        reference_images=REFERENCE_IMAGES,
    )
