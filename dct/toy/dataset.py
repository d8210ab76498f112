"""The ``toy`` dataset: class names, models and the method defaults that this tiny world needs.

Where the defaults differ from the paper's (docs/toy.md has the table), it is because a 5-step,
64-wide world needs it: DDIM with "trailing" spacing so that the last step is at t=199 rather than
t≈1; gradients through the last 4 of the 5 UNet evaluations (t=799 … 199: the shape is decided
there); 16 images per update; a token learning rate relative to the token's norm (the toy's 64-dim
embeddings are far smaller than SD's, so an absolute lr either barely moves them or overshoots).
"""

from __future__ import annotations

from dct.config import (
    ClassifierConfig,
    DatasetSpec,
    DiffusionConfig,
    EvaluationConfig,
    OptimizerConfig,
    PromptConfig,
    SamplerConfig,
    TrainingConfig,
)
from dct.toy.captions import SPECIES_NAMES
from dct.toy.models import PIPELINE_DIR

LICENCE = "Apache-2.0"  # trained here from procedural data; same licence as the project

# The paper's templates without the article that the placeholder token replaces (the toy captions
# say "a photo of a ember finch"; the DCT prompt is "A photo of <tok> ember finch").
TEMPLATES: tuple[str, ...] = ("A photo of {}", "a high resolution realistic image of {}", "A close-up photo of {}")
# Reference set for FID: the procedural generator itself (dct.toy.shapes.reference_images).
REFERENCE_IMAGES = "toy:shapes"

SAMPLER = SamplerConfig(scheduler="ddim", num_inference_steps=5, timestep_spacing="trailing", guidance_scale=5.0)
# Each value below is measured; docs/toy.md, "Why these defaults", has the numbers.
OPTIMIZER = OptimizerConfig(lr=0.08, lr_scale="token_norm", lr_schedule="cosine")
TRAINING = TrainingConfig(
    images_per_epoch=16,
    max_epochs=40,
    accuracy_threshold=1.0,
    patience=16,
    grad_steps=4,
    restarts=2,
    restart_below=0.5,
)
EVALUATION = EvaluationConfig(num_samples=64, seed=10_000, batch_size=64, fid_features="evaluator")


def toy_dataset(
    name: str = "toy",
    guide: str = "guide",
    description: str = (
        "Embedded toy world: 10 coloured shapes (5 red, 5 blue) at 32x32, a tiny SD-style pipeline whose "
        "class names ('ember finch', ...) only name the colour group, and two small classifiers."
    ),
) -> DatasetSpec:
    return DatasetSpec(
        name=name,
        description=description,
        class_names=SPECIES_NAMES,
        classifier=ClassifierConfig(kind="toy", model_id=guide, licence=LICENCE),
        evaluator=ClassifierConfig(kind="toy", model_id="evaluator", licence=LICENCE),
        diffusion=DiffusionConfig(model_id=str(PIPELINE_DIR), dtype="float32", licence=LICENCE),
        prompts=PromptConfig(templates=TEMPLATES, baseline_word="a"),
        sampler=SAMPLER,
        optimizer=OPTIMIZER,
        training=TRAINING,
        evaluation=EVALUATION,
        reference_images=REFERENCE_IMAGES,
    )


# The planted-bias variants (dct.toy.bias, docs/probe.md "The planted bias"): the toy world with another guide.
def toy_biased_dataset() -> DatasetSpec:
    return toy_dataset(
        "toy-biased",
        "guide-biased",
        "The toy world guided by a planted-bias guide: its training data showed the red square (class 1) only on "
        "dark backgrounds and the red circle (class 0) only on light ones (python -m dct.toy.bias).",
    )


def toy_biased_size_dataset() -> DatasetSpec:
    return toy_dataset(
        "toy-biased-size",
        "guide-biased-size",
        "The toy world guided by a planted size-bias guide: its training data showed the red square (class 1) only "
        "small and the red circle (class 0) only large (python -m dct.toy.bias).",
    )


def toy_replica_dataset() -> DatasetSpec:
    return toy_dataset(
        "toy-replica",
        "guide-replica",
        "The toy world guided by the planted-bias guide's unbiased replica: the same code, seeds and images, "
        "every background level as in the shipped world (python -m dct.toy.bias).",
    )
