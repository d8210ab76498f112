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
    DiffusionConfig,
    EvaluationConfig,
    OptimizerConfig,
    PromptConfig,
    SamplerConfig,
    TrainingConfig,
)
from dct.datasets import DatasetSpec, register_dataset
from dct.toy.captions import SPECIES_NAMES
from dct.toy.models import PIPELINE_DIR

LICENCE = "Apache-2.0"  # trained here from procedural data; same licence as the project

# The paper's templates without the article that the placeholder token replaces (the toy captions
# say "a photo of a ember finch"; the DCT prompt is "A photo of <tok> ember finch").
TEMPLATES: tuple[str, ...] = ("A photo of {}", "a high resolution realistic image of {}", "A close-up photo of {}")
# Reference set for FID: the procedural generator itself (dct.toy.shapes.reference_images).
REFERENCE_IMAGES = "toy:shapes"

SAMPLER = SamplerConfig(scheduler="ddim", num_inference_steps=5, timestep_spacing="trailing", guidance_scale=5.0)
# lr 0.08 × the token norm (was 0.05; full evaluation, docs/toy.md): blue triangle's slow run, its loss still
# falling at update 40 (4.5 -> 2.3), went 0.52 -> 0.97; no class lower beyond run-to-run spread.
OPTIMIZER = OptimizerConfig(lr=0.08, lr_scale="token_norm", lr_schedule="cosine")
# accuracy_threshold=1.0: never "strictly above", i.e. no early stop on accuracy. Stopping at 5 of 6 right
# (measured) left held-out accuracy at 0.68–0.81 where the ceiling is 1.0. Patience and the best-loss token
# end easy classes in ~25 updates; hard ones (triangles, rings: the initial loss is ~4-6) need the 40.
# grad_steps=4 (t = 799, 599, 399, 199; measured, 64 held-out seeds, evaluator): grad_steps=3 gave blue triangle
# 0.36 -> 0.98 and blue ring 0.51 -> 0.98 over grad_steps=1, whose gradient at t=199 can refine a shape but
# hardly change it; on the shipped world 3 still left one of three triangle runs stuck (red 0.09, blue 0.27:
# the loss crept 4.7 -> 3.2 in 60 updates), which 4 lifts to 0.97 / 0.95 (a triangle's corners are decided
# at t=799).
# images_per_epoch=16 (measured on the optimisation seeds where 8 images failed, evaluator accuracy): red
# ring 0.00 / 0.00 -> 0.89 / 0.75, blue triangle 0.30 / 0.11 -> 0.67 / 0.98, blue ring 0.17 / 0.02 ->
# 1.00 / 0.48; with 8, a class whose name never draws it depends on one of 8 images showing a trace of it.
# grad_steps=5 or lr 0.1 / 0.2 instead helped triangles a little and rings not at all.
# restarts=2: an attempt whose best epoch gets fewer than half of its 16 images right has stalled in a local
# minimum (measured: the gradient keeps one direction, cosine ≈ 1 between updates, the token only grows, the
# loss moves 4.8 -> 4.6 in 40 updates; a norm cap does not free it). On the next 16 seeds the same class
# learns (red triangle 0.06 -> 0.92, blue triangle 0.17 -> 0.95, 64 held-out seeds).
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


@register_dataset("toy")
def toy_dataset() -> DatasetSpec:
    return DatasetSpec(
        name="toy",
        description=(
            "Embedded toy world: 10 coloured shapes (5 red, 5 blue) at 32x32, a tiny SD-style pipeline whose "
            "class names ('ember finch', ...) only name the colour group, and two small classifiers."
        ),
        class_names=SPECIES_NAMES,
        classifier=ClassifierConfig(kind="toy", model_id="guide", licence=LICENCE),
        evaluator=ClassifierConfig(kind="toy", model_id="evaluator", licence=LICENCE),
        diffusion=DiffusionConfig(model_id=str(PIPELINE_DIR), dtype="float32", licence=LICENCE),
        prompts=PromptConfig(templates=TEMPLATES, baseline_word="a"),
        sampler=SAMPLER,
        optimizer=OPTIMIZER,
        training=TRAINING,
        evaluation=EVALUATION,
        reference_images=REFERENCE_IMAGES,
    )
