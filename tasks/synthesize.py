"""Synthesis tasks: plan the set, render a shard's classes with the models loaded once, finalise."""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial

from prefect import task
from prefect.cache_policies import NO_CACHE

from dct.artifacts.store import ArtifactStore
from dct.commands.stopping import note_finished
from dct.config import RunConfig
from dct.models.loading import Models
from dct.run.handle import RunSettings
from dct.synthesis.config import SynthesisConfig
from dct.synthesis.synthesize import (
    SynthesisPlan,
    finalize_synthesis,
    plan_synthesis,
    synthesize_shard,
)


@task(name="plan-synthetic-set", cache_policy=NO_CACHE)
def plan_synthetic_set(
    dataset: str,
    synthesis: SynthesisConfig,
    classes,
    store: str | None,
    bundle: str | None,
    shard_size: int,
    run_id: str,
    settings: RunSettings,
) -> SynthesisPlan:
    """Validate settings, store and models; list the classes with a token and without a finished part."""
    return plan_synthesis(
        dataset=dataset, synthesis=synthesis, classes=classes, store=store, bundle=bundle, shard_size=shard_size,
        probe_name=run_id, settings=settings,
    )


@task(name="synthesize-classes", cache_policy=NO_CACHE)
def synthesize_classes(
    plan: SynthesisPlan, config: RunConfig, synthesis: SynthesisConfig, models: Models, class_ids: list[int],
    class_names: Mapping[int, str],
) -> list[dict]:
    """Render, score and write the sets of these classes; each class's manifest part is written last."""
    store = ArtifactStore.from_config(config.storage)
    done = synthesize_shard(
        store, plan, config, synthesis, models, class_ids, class_names,
        on_class_done=partial(note_finished, "synthesize"),
    )
    return [{"class_id": d.class_id, "generated": d.generated, "kept": d.kept, "baseline": d.baseline} for d in done]


@task(name="finalize-synthetic-set", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=[2, 10, 30])
def finalize_synthetic_set(plan: SynthesisPlan, config: RunConfig, class_names: list[str]) -> dict:
    """Combine the parts into metadata.parquet; write the dataset card and synthesis.json (only if changed)."""
    return finalize_synthesis(ArtifactStore.from_config(config.storage), plan, class_names)
