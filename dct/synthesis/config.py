"""What a synthetic training set is made with: one frozen pydantic model, and the key that names it.

The canonical JSON of everything that decides the images (the token's ``token_key``, the effective
templates and sampler, the seed block, the filter, the arms, the judges' revisions) hashes to a
``synth_key`` (docs/synthesis.md, "Keys"); changed settings write a new set beside the old one.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt, model_validator

from dct.config import PromptConfig, RunConfig, SamplerConfig, short_hash

# Bump by hand when the way images are made or laid out changes for the same settings.
SYNTHESIS_VERSION = 1


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class FilterConfig(_Frozen):
    """Keep an image only if the judge(s) give its class at least ``min_probability``."""

    by: Literal["guide", "evaluator", "both"] = Field(
        default="guide", description="whose softmax probability of the class decides ('both': each must pass)"
    )
    min_probability: float = Field(default=0.5, gt=0.0, le=1.0, description="keep if p(class) >= this")
    max_factor: float = Field(
        default=3.0, ge=1.0, description="generate at most ceil(max_factor × per_class) images per class"
    )


class SynthesisConfig(_Frozen):
    """One synthetic training set of a dataset's class tokens (None fields = the dataset's own setting)."""

    per_class: PositiveInt = Field(description="kept images per class (the quota)")
    seed: NonNegativeInt = Field(
        default=1_000_000,
        description="image j of a class uses noise seed `seed + j`; the block must miss every optimisation "
        "and evaluation seed",
    )
    templates: tuple[str, ...] | None = Field(
        default=None, min_length=1, description="prompt templates, each with one '{}' for the token; None = dataset's"
    )
    sampler: SamplerConfig | None = Field(
        default=None, description="sampler for synthesis (may differ from training's); None = dataset's"
    )
    filter: FilterConfig | None = Field(default=None, description="probability filter; None = keep every image")
    baseline: bool = Field(
        default=False, description="also render the baseline arm: the same prompts and seeds with the baseline word"
    )
    image_format: Literal["png", "jpeg"] = Field(default="png", description="how images are stored")
    webdataset: bool = Field(default=False, description="also write WebDataset tar shards of the kept DCT images")
    shard_max_bytes: PositiveInt = Field(
        default=1_000_000_000, description="upper bound of one WebDataset tar shard, bytes"
    )
    batch_size: PositiveInt = Field(
        default=16, description="images per denoising batch (results do not depend on it; not in the key)"
    )

    @model_validator(mode="after")
    def _templates_have_slot(self) -> SynthesisConfig:
        if self.templates is not None:
            PromptConfig(templates=self.templates)  # the one template rule: exactly one '{}' each
        return self

    @property
    def max_images(self) -> int:
        """Most DCT images generated per class: the quota, or the filter's cap."""
        if self.filter is None:
            return self.per_class
        return math.ceil(self.filter.max_factor * self.per_class)

    @property
    def seeds(self) -> range:
        """Every seed a class may use (the cap's worth)."""
        return range(self.seed, self.seed + self.max_images)

    def effective_templates(self, config: RunConfig) -> tuple[str, ...]:
        return self.templates if self.templates is not None else config.prompts.templates

    def effective_sampler(self, config: RunConfig) -> SamplerConfig:
        return self.sampler if self.sampler is not None else config.sampler


def check_synthesis(synthesis: SynthesisConfig, config: RunConfig) -> None:
    """Refuse settings that would make a wrong set, before any model is loaded.

    Raises:
        ValueError: the seed block overlaps the optimisation or evaluation seeds (the images would repeat
            noise the token was trained or judged on), or an evaluator filter on a dataset without one.
    """
    block = synthesis.seeds
    for what, seeds in (("optimisation", config.training.all_seeds), ("evaluation", config.evaluation.seeds)):
        clash = sorted(set(seeds) & set(block))
        if clash:
            raise ValueError(
                f"synthesis seeds {block.start}..{block.stop - 1} overlap the {what} seeds "
                f"{min(seeds)}..{max(seeds)} (e.g. {clash[0]}); choose a seed past {max(seeds)} "
                "(--seed / synthesis.seed)"
            )
    f = synthesis.filter
    if f is not None and f.by in ("evaluator", "both") and config.evaluation.evaluator is None:
        raise ValueError(
            f"filter by {f.by!r} needs an evaluator, but dataset {config.dataset!r} has none; filter by 'guide'"
        )


def synth_key(
    synthesis: SynthesisConfig,
    config: RunConfig,
    tkey: str,
    classifier_revision: str,
    evaluator_revision: str | None,
) -> str:
    """Hash of everything that decides a synthetic set (docs/synthesis.md, "Keys").

    ``batch_size`` is left out (results do not depend on it); templates and sampler enter with their
    effective values, so naming the dataset's own settings explicitly gives the same key.
    """
    return short_hash(
        {
            "synthesis_version": SYNTHESIS_VERSION,
            "dataset": config.dataset,
            "token_key": tkey,
            "synthesis": synthesis.model_dump(mode="json", exclude={"batch_size", "templates", "sampler"}),
            "templates": list(synthesis.effective_templates(config)),
            "sampler": synthesis.effective_sampler(config).model_dump(mode="json"),
            "baseline_word": config.prompts.baseline_word if synthesis.baseline else None,
            "classifier": {"model_id": config.classifier.model_id, "revision": classifier_revision},
            "evaluator": None
            if config.evaluation.evaluator is None
            else {"model_id": config.evaluation.evaluator.model_id, "revision": evaluator_revision},
        }
    )
