"""Dataset registry: which classifier, diffusion model, class names and settings a dataset runs with.

Built-in datasets register a factory here; a user-defined dataset is one TOML/YAML file with the same
fields (no code changes).
"""

from __future__ import annotations

from collections.abc import Callable

from pydantic import BaseModel, ConfigDict, Field

from dct.config import (
    ClassifierConfig,
    DiffusionConfig,
    EvaluationConfig,
    OptimizerConfig,
    PromptConfig,
    RunConfig,
    SamplerConfig,
    StorageConfig,
    TokenConfig,
    TrainingConfig,
)


class DatasetSpec(BaseModel):
    """Everything a dataset decides. Method settings default to the paper's and may be overridden per dataset."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$", description="registry name, used in token strings and keys")
    description: str = ""
    class_names: tuple[str, ...] = Field(min_length=1, description="prompt name per class id (0-based, unique)")
    classifier: ClassifierConfig
    evaluator: ClassifierConfig | None = None
    diffusion: DiffusionConfig
    prompts: PromptConfig = PromptConfig()
    sampler: SamplerConfig = SamplerConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    training: TrainingConfig = TrainingConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    reference_images: str | None = Field(default=None, description="URI/dir of real images for FID, or None")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def run_config(self, storage: StorageConfig | None = None, token: TokenConfig | None = None) -> RunConfig:
        evaluation = self.evaluation
        if evaluation.evaluator is None and self.evaluator is not None:
            evaluation = evaluation.model_copy(update={"evaluator": self.evaluator})
        return RunConfig(
            dataset=self.name,
            diffusion=self.diffusion,
            sampler=self.sampler,
            classifier=self.classifier,
            token=token or TokenConfig(),
            optimizer=self.optimizer,
            training=self.training,
            prompts=self.prompts,
            evaluation=evaluation,
            storage=storage or StorageConfig(),
        )


DATASETS: dict[str, Callable[[], DatasetSpec]] = {}


def register_dataset(name: str) -> Callable[[Callable[[], DatasetSpec]], Callable[[], DatasetSpec]]:
    def deco(fn: Callable[[], DatasetSpec]) -> Callable[[], DatasetSpec]:
        DATASETS[name] = fn
        return fn

    return deco


def _register_builtin() -> None:
    import dct.toy.dataset  # noqa: F401


def get_dataset(name: str) -> DatasetSpec:
    """Look up a registered dataset by name.

    Raises:
        ValueError: unknown name (the message lists the registered ones).
    """
    _register_builtin()
    try:
        factory = DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; registered datasets: {', '.join(sorted(DATASETS))}") from None
    return factory()
