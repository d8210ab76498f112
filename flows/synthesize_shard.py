"""The `dct-synthesize-shard` flow: load the models ONCE, then render each class of the shard in turn."""

from __future__ import annotations

from prefect import flow

from dct.synthesis.config import SynthesisConfig
from flows.shard import shard_run_name
from tasks.classes import load_shard_models
from tasks.synthesize import synthesize_classes

SYNTH_SHARD_DEPLOYMENT = "dct-synthesize-shard/gpu"


@flow(name="dct-synthesize-shard", flow_run_name=shard_run_name("dct-synthesize-shard"))
def dct_synthesize_shard(
    plan: dict,
    class_ids: list[int],
    class_names: list[str],
    run_id: str,
    synthesis: SynthesisConfig,
    device: str = "auto",
) -> list[dict]:
    """Render a shard of classes with the models loaded once (the part of each class is written last)."""
    from dct.models.loading import resolve_device
    from dct.synthesis.synthesize import check_loaded_revisions, plan_from_json

    if len(class_names) != len(class_ids):
        raise ValueError(f"class_names has {len(class_names)} names for {len(class_ids)} class_ids; pass one each")
    synth_plan = plan_from_json(plan)
    config = synth_plan.shard_config()
    models = load_shard_models(config, str(resolve_device(device)))
    check_loaded_revisions(synth_plan, models)
    names = dict(zip(class_ids, class_names, strict=True))
    return synthesize_classes(synth_plan, config, synthesis, models, class_ids, names)
