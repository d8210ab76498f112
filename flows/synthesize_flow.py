"""The synthesis flow: plan → (optimise missing tokens) → shards → finalise. Deployed as `dct/synthesize-all`.

Prefect names a deployment ``<flow name>/<deployment name>``, so this flow is registered under the product's
flow name ``dct`` (beside the optimisation flow's ``dct/optimize-all``); its runs are named
``dct-synthesize-<dataset>-<per_class>`` (docs/synthesis.md, "Flow and deployment").
"""

from __future__ import annotations

from typing import Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from dct.config import RunOverrides, SamplerConfig
from dct.models.datasets import dataset_label
from dct.synthesis.config import FilterConfig, SynthesisConfig
from dct.synthesis.synthesize import SynthesisPlan
from flows.synthesize_shard import SYNTH_SHARD_DEPLOYMENT, dct_synthesize_shard
from tasks.synthesize import finalize_synthetic_set, plan_synthetic_set


def _run_name() -> str:
    p = flow_run.parameters
    return f"dct-synthesize-{dataset_label(str(p.get('dataset')))}-{p.get('per_class')}"[:100]


@flow(name="dct", flow_run_name=_run_name)
def dct_synthesize(
    dataset: str,
    per_class: int,
    classes: str | int | list[str | int] = "all",
    store: str | None = None,
    image_seed: int | None = None,
    templates: list[str] | None = None,
    sampler: SamplerConfig | None = None,
    filter: FilterConfig | None = None,
    baseline: bool = False,
    webdataset: bool = False,
    image_format: Literal["png", "jpeg"] = "png",
    batch_size: int | None = None,
    overrides: RunOverrides | None = None,
    run: str | list[str] | None = None,
    bundle: str | None = None,
    optimize_missing: bool = False,
    shard_size: int = 16,
    device: str = "auto",
    mode: Literal["local", "deployment"] = "local",
    shard_timeout_minutes: float = 60.0,
    run_id: str | None = None,
    plan: SynthesisPlan | None = None,
) -> dict:
    """Synthesize a training set per class from the dataset's learned tokens; resumable, sharded, keyed."""
    from dct.models.datasets import get_dataset
    from dct.results import new_run_id
    from dct.run.handle import resolve_settings
    from dct.synthesis.synthesize import plan_to_json

    logger = get_run_logger()
    run_id = run_id or new_run_id()
    synthesis = SynthesisConfig(
        **{
            k: v
            for k, v in dict(
                per_class=per_class, seed=image_seed, templates=tuple(templates) if templates else None,
                sampler=sampler, filter=filter, baseline=baseline, webdataset=webdataset, image_format=image_format,
                batch_size=batch_size,
            ).items()
            if v is not None
        }
    )
    if plan is None or optimize_missing:  # `dct synthesize` plans before Prefect starts and passes its plan
        settings = resolve_settings(dataset=dataset, overrides=overrides, store=store, run=run)
        args = (dataset, synthesis, classes, store, bundle, shard_size, run_id, settings)
        plan = plan or plan_synthetic_set(*args)
        if optimize_missing and plan.missing_tokens and not bundle:
            from flows.dct_flow import dct

            logger.info("optimising the %d classes without a token first", len(plan.missing_tokens))
            dct(
                dataset=settings.source, classes=plan.missing_tokens, store=plan.store_root, overrides=overrides,
                shard_size=shard_size, device=device, mode=mode, max_failed_fraction=1.0,
            )
            plan = plan_synthetic_set(*args)
    for line in plan.summary_lines():
        logger.info(line)
    # The one plan: its run configuration goes to every shard as it is; names only for the shards' classes.
    config, spec = plan.shard_config(), get_dataset(plan.source or dataset)
    names = {c: spec.class_names[c] for c in plan.todo}
    shard_params = {"plan": plan_to_json(plan), "synthesis": synthesis.model_dump(mode="json"), "device": device}
    if mode == "deployment" and plan.shards:
        from dct.artifacts.store import ArtifactStore
        from flows.fanout import run_shards_on_workers

        artifact_store = ArtifactStore.from_config(config.storage)

        def unfinished(class_ids: list[int]) -> list[int]:
            done = artifact_store.synthetic_finished_class_ids(plan.dataset, plan.synth_key)
            return [c for c in class_ids if c not in done]

        reasons = run_shards_on_workers(
            plan.shards, run_id=run_id, shard_params=shard_params, dataset_label=plan.dataset,
            shard_timeout_s=60 * shard_timeout_minutes, unfinished=unfinished, deployment=SYNTH_SHARD_DEPLOYMENT,
            class_names=names,
        )
        for class_id, reason in sorted(reasons.items()):
            logger.error("class %d not synthesized: %s", class_id, reason)
    else:
        for shard in plan.shards:
            dct_synthesize_shard(class_ids=shard, class_names=[names[c] for c in shard], run_id=run_id, **shard_params)
    summary = finalize_synthetic_set(plan, config, list(spec.class_names))
    unfinished_ids = sorted(set(plan.todo) - set(_finished(config, plan)))
    create_markdown_artifact(
        "\n".join(
            [
                f"# Synthetic set {plan.synth_key} — {plan.dataset}",
                f"- {summary['classes']} classes, {summary['kept']} kept of {summary['generated']} generated",
                f"- without a token (skipped): {plan.missing_tokens or 'none'}; unfinished: {unfinished_ids or 'none'}",
                f"- image folder: `{summary['root_uri']}/train`; manifest: `{summary['metadata_uri']}`",
            ]
        ),
        key=f"dct-synthesize-{plan.dataset}".lower().replace("_", "-"),
        description=f"synthetic set of run {run_id}",
    )
    if unfinished_ids:
        raise RuntimeError(f"classes {unfinished_ids} were not synthesized; re-run to complete only those")
    return {
        "run_id": run_id, "dataset": plan.dataset, "synth_key": plan.synth_key, "token_key": plan.token_key,
        "missing_tokens": plan.missing_tokens, "finished_before": plan.finished, "synthesized": plan.todo,
        **{k: summary[k] for k in ("root_uri", "metadata_uri", "card_uri", "classes", "kept", "generated")},
    }


def _finished(config, plan) -> set[int]:
    from dct.artifacts.store import ArtifactStore

    return ArtifactStore.from_config(config.storage).synthetic_finished_class_ids(plan.dataset, plan.synth_key)
