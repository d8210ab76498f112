"""The `dct-synthesize-shard` flow: load the models ONCE, then render each class of the shard in turn."""

from __future__ import annotations

from prefect import flow

from dct.config import RunOverrides
from dct.synthesis.config import SynthesisConfig
from flows.shard import shard_run_name
from tasks.classes import load_shard_models
from tasks.synthesize import synthesize_classes

SYNTH_SHARD_DEPLOYMENT = "dct-synthesize-shard/gpu"


@flow(name="dct-synthesize-shard", flow_run_name=shard_run_name("dct-synthesize-shard"))
def dct_synthesize_shard(
    dataset: str,
    class_ids: list[int],
    run_id: str,
    plan: dict,
    synthesis: SynthesisConfig,
    overrides: RunOverrides | None = None,
    device: str = "auto",
) -> list[dict]:
    """Render a shard of classes with the models loaded once (the part of each class is written last)."""
    from dct.models.loading import resolve_device
    from dct.run.plan import build_config
    from dct.synthesis.synthesize import check_loaded_revisions, plan_from_json

    synth_plan = plan_from_json(plan)
    spec, config = build_config(dataset, overrides, synth_plan.store_root)
    models = load_shard_models(config, str(resolve_device(device)))
    check_loaded_revisions(synth_plan, models)
    return synthesize_classes(synth_plan, config, synthesis, models, class_ids, list(spec.class_names))
