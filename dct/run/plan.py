"""Preflight and planning of a dataset run: cheap checks first, then "what is left to do", in shards.

Everything here runs on the CPU parent before any GPU work: the dataset, the class selection, the
store (probe write + read-back), the models (cached or reachable; revisions resolved for the keys),
then the classes that are not finished for these keys, capped and split into shards.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict

from dct.artifacts.store import ArtifactStore, StoreUnavailableError, validate_component
from dct.config import DatasetSpec, RunConfig, RunOverrides, StorageConfig, eval_key, token_key
from dct.models.datasets import get_dataset, select_classes

logger = logging.getLogger(__name__)

# Stated per-image cost of one optimisation image at the reference settings (SD at 512², 30 PNDM steps
# + CFG, backward through the last steps) on one H100 in bf16: an estimate, used for the plan and for the
# deployment-mode shard timeout.
GPU_SECONDS_PER_TRAINING_IMAGE = 2.0
# The cost the plan states, by (device type, dataset); None = any dataset. Each names what it is.
SECONDS_PER_TRAINING_IMAGE: dict[tuple[str, str | None], tuple[float, str]] = {
    ("cuda", None): (GPU_SECONDS_PER_TRAINING_IMAGE, "an H100 estimate for SD at 512²"),
}
# A small local pipeline on a CPU (the toy's and the fashion world's, or a user's of that size): docs/toy.md, a toy
# class takes a median 35 s for up to 40 updates × 16 images on an idle 2-core Xeon, i.e. 0.055 s per training
# image with the toy's UNet (4,343,000 bytes of weights, 8×8 latents); another small UNet is scaled by its weight
# bytes × latent area. A UNet of more than SMALL_UNET_MAX_BYTES (real SD's is ~3.4 GB) gets no CPU estimate.
TOY_CPU_SECONDS_PER_TRAINING_IMAGE = 0.055
TOY_UNET_BYTES = 4_343_000
TOY_LATENT_AREA = 8 * 8
SMALL_UNET_MAX_BYTES = 200_000_000


def small_pipeline_cpu_cost(model_id: str) -> float | None:
    """CPU seconds per training image of a small local pipeline (scaled from the toy's measurement), or None
    for a hub model or a UNet too large for the scaling to mean anything."""
    import json
    from pathlib import Path

    from dct.models.hub import is_local_path

    if not is_local_path(model_id):
        return None
    unet = Path(model_id).expanduser() / "unet"
    weights = unet / "diffusion_pytorch_model.safetensors"
    try:
        size = weights.stat().st_size
        sample = json.loads((unet / "config.json").read_text()).get("sample_size")
    except (OSError, ValueError):
        return None
    if not isinstance(sample, int) or size > SMALL_UNET_MAX_BYTES:
        return None
    return TOY_CPU_SECONDS_PER_TRAINING_IMAGE * (size / TOY_UNET_BYTES) * (sample * sample / TOY_LATENT_AREA)


@dataclass(frozen=True)
class Revisions:
    diffusion: str
    classifier: str
    evaluator: str | None


class ShardPlan(BaseModel):
    """What the parent decided, carried to every shard (local or a `dct-shard/gpu` run): the exact run
    configuration and the keys it planned under. A shard never rebuilds the configuration from the dataset
    name; it checks that the models it loaded give these keys (docs/design.md, "One run plan")."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    config: RunConfig
    token_key: str
    eval_key: str
    revisions: Revisions


@dataclass
class RunPlan:
    """The outcome of preflight + planning (small and JSON-friendly: flows pass it around).

    ``config`` is THE run configuration (dataset + overrides + token settings), built once here; the flow,
    every shard and the published run record use it as it is. ``source`` is what the user named the dataset
    by (a registry name, or a dataset file's absolute path), kept in the run record so that ``--run RUN_ID``
    finds the class names again.
    """

    dataset: str
    run_id: str
    store_root: str
    token_key: str
    eval_key: str
    selected: list[int]
    todo: list[int]
    skipped: list[int]
    shards: list[list[int]]
    revisions: Revisions
    estimate: dict[str, float] = field(default_factory=dict)
    device: str = "cuda"
    config: RunConfig | None = None
    source: str | None = None

    def shard_plan(self) -> ShardPlan:
        if self.config is None:
            raise ValueError(f"plan of run {self.run_id!r} carries no run configuration; build it with plan_run")
        return ShardPlan(
            config=self.config, token_key=self.token_key, eval_key=self.eval_key, revisions=self.revisions
        )

    def summary_lines(self) -> list[str]:
        e = self.estimate
        return [
            f"dataset {self.dataset}: {len(self.selected)} classes selected, {len(self.todo)} to do, "
            f"{len(self.skipped)} already finished (skipped)",
            f"store {self.store_root}  token_key {self.token_key}  eval_key {self.eval_key}",
            f"shards: {len(self.shards)} × ≤{max((len(s) for s in self.shards), default=0)} classes: "
            + ", ".join(_span(s) for s in self.shards[:8])
            + (" …" if len(self.shards) > 8 else ""),
            f"work (upper bound): {e.get('training_images', 0):,.0f} training images "
            f"({e.get('unet_evaluations', 0):,.0f} UNet evaluations), "
            f"{e.get('eval_images', 0):,.0f} evaluation images; "
            + _cost_text(self.device, e),
        ]


def _span(ids: list[int]) -> str:
    if len(ids) > 1 and ids == list(range(ids[0], ids[-1] + 1)):
        return f"{ids[0]}..{ids[-1]}"
    return ",".join(map(str, ids))


def dataset_source(dataset: str) -> str:
    """What names a dataset for a later command: the registry name, or the dataset file's absolute path."""
    from pathlib import Path

    from dct.models.datasets import is_dataset_file

    return str(Path(dataset).expanduser().resolve()) if is_dataset_file(dataset) else dataset


def build_config(
    dataset: str, overrides: RunOverrides | None = None, store: str | None = None
) -> tuple[DatasetSpec, RunConfig]:
    """The dataset's spec and its run config with overrides applied (re-validated): the one place a run's
    configuration is made from a dataset (registry name or file) and :class:`RunOverrides`."""
    spec = get_dataset(dataset)
    config = spec.run_config(storage=StorageConfig(root=store))
    if overrides is not None:
        config = overrides.apply(config)
    return spec, config


def resolve_revisions(config: RunConfig) -> Revisions:
    """Resolved revisions of the configured models without loading the diffusion weights.

    The pipeline's revision comes from its snapshot directory (hub commit SHA) or a content hash of the
    local directory; a classifier's from its files, or — for kinds without files of their own (toy) —
    by loading it on the CPU (small next to the pipeline).

    Raises:
        ModelNotAvailableError: a model is neither cached nor reachable (names ``dct models pull``).
    """
    from dct.models.classifiers import classifier_revision, load_classifier
    from dct.models.hub import snapshot_revision
    from dct.models.pipelines import resolve_pipeline_dir

    def revision_of(cfg) -> str:
        return classifier_revision(cfg) or load_classifier(cfg, "cpu").resolved_revision

    diffusion = snapshot_revision(resolve_pipeline_dir(config.diffusion))
    ev = config.evaluation.evaluator
    return Revisions(diffusion, revision_of(config.classifier), revision_of(ev) if ev else None)


def preflight_store(artifact_store: ArtifactStore, run_id: str) -> None:
    """The store's write probe (:meth:`ArtifactStore.preflight`) with errors that say what to fix.

    Raises:
        StoreUnavailableError: endpoint unreachable, or no S3 credentials found at all.
        PermissionError: the credentials may not write (read-only bucket, wrong policy).
        FileNotFoundError: the bucket does not exist (buckets are never created by the product).
    """
    root = artifact_store.root
    try:
        artifact_store.preflight(run_id)
    except StoreUnavailableError as exc:
        if type(exc.__cause__).__name__ == "NoCredentialsError":
            raise StoreUnavailableError(
                f"no S3 credentials found for store {root!r}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                "(or AWS_PROFILE / a role) in the environment of this process; in Prefect, fill them from a "
                "Secret block into the work pool's environment, never into flow parameters"
            ) from None
        raise
    except PermissionError as exc:
        raise PermissionError(
            f"store {root!r} is not writable with these credentials ({' '.join(str(exc).split()) or 'denied'}): "
            "grant s3:PutObject and s3:GetObject on the prefix (or write access to the directory), or choose "
            "another --store / DCT_STORE"
        ) from None
    except FileNotFoundError as exc:
        raise FileNotFoundError(
            f"store {root!r} cannot be written: {' '.join(str(exc).split())}; create the bucket first (the "
            "product never creates buckets) or fix the --store / DCT_STORE URI"
        ) from None
    except (NotADirectoryError, FileExistsError) as exc:
        raise ValueError(
            f"store {root!r} is not a directory ({exc.strerror}); choose another --store / DCT_STORE"
        ) from None


def check_models_available(config: RunConfig, dataset: str | None = None) -> None:
    """Every configured model is cached, local or downloadable, and is not a pickle — without loading weights.

    Args:
        dataset: what the user named the dataset by (registry name or file), for the ``dct models pull`` hint.

    Raises:
        ModelNotAvailableError (a ValueError): not cached and the hub unreachable / HF_HUB_OFFLINE=1.
        ValueError / FileNotFoundError: an unknown classifier kind, a pickle checkpoint, a missing directory.
    """
    from dct.models.classifiers import fetch_classifier_files
    from dct.models.hub import ModelNotAvailableError
    from dct.models.pipelines import resolve_pipeline_dir

    try:
        resolve_pipeline_dir(config.diffusion)
        for cfg in (config.classifier, config.evaluation.evaluator):
            if cfg is not None:
                fetch_classifier_files(cfg)
    except ModelNotAvailableError as exc:
        text = str(exc).replace("--dataset <name>", f"--dataset {dataset or config.dataset}")
        raise ModelNotAvailableError(text, exc.model_id) from None


def _cost_text(device: str, e: dict[str, float]) -> str:
    kind = device.split(":")[0].split(" ")[0]
    cost = SECONDS_PER_TRAINING_IMAGE.get((kind, None))
    if kind == "cpu" and e.get("cpu_seconds_per_training_image"):
        cost = (
            e["cpu_seconds_per_training_image"],
            "a small local pipeline, scaled from the toy's measurement on an idle 2-core CPU",
        )
    if cost is None:
        return f"on {device}: no time estimate for this model there (real diffusion models want a GPU)"
    seconds, basis = cost
    hours = e.get("training_images", 0) * seconds / 3600
    when = f"{hours * 60:.0f} min" if hours < 1 else f"{hours:.2f} h"
    return f"≈ {when} on {device} at {seconds:g} s per training image ({basis}; runs stopping early cost less)"


def estimate_work(config: RunConfig, n_classes: int) -> dict[str, float]:
    """Upper bound of the work for ``n_classes`` (every class running ``max_epochs`` in every attempt, restarts
    included); ``gpu_hours_upper`` at the H100 estimate (the deployment-mode shard timeout uses it);
    ``cpu_seconds_per_training_image`` for a small local pipeline (0: none, :func:`small_pipeline_cpu_cost`)."""
    t, s = config.training, config.sampler
    unet_evals_per_image = (s.num_inference_steps + (1 if s.scheduler == "pndm" else 0)) * (
        2 if s.guidance_scale != 1.0 else 1
    )
    training_images = n_classes * (t.restarts + 1) * t.max_epochs * t.images_per_epoch
    eval_images = n_classes * 2 * config.evaluation.num_samples
    return {
        "classes": float(n_classes),
        "cpu_seconds_per_training_image": small_pipeline_cpu_cost(config.diffusion.model_id) or 0.0,
        "training_images": float(training_images),
        "unet_evaluations": float((training_images + eval_images) * unet_evals_per_image),
        "eval_images": float(eval_images),
        "gpu_hours_upper": training_images * GPU_SECONDS_PER_TRAINING_IMAGE / 3600,
    }


def make_shards(class_ids: list[int], shard_size: int) -> list[list[int]]:
    if shard_size <= 0:
        raise ValueError(f"shard_size={shard_size!r} must be a positive integer")
    return [class_ids[i : i + shard_size] for i in range(0, len(class_ids), shard_size)]


def plan_run(
    *,
    dataset: str,
    classes: str | int | list[str | int] = "all",
    store: str | None = None,
    force: bool = False,
    shard_size: int = 16,
    max_classes: int | None = None,
    overrides: RunOverrides | None = None,
    run_id: str,
    artifact_store: ArtifactStore | None = None,
    device: str | None = None,
) -> RunPlan:
    """Preflight (fails fast, before any model is loaded on a GPU) and plan.

    ``artifact_store``: an already open store for ``store`` (its request counter then includes the
    plan's; the scale benchmark counts them), else one is opened here.
    ``device`` is where the classes will run (``cpu``, ``cuda:0 (…)``, or the GPU workers; None = this
    machine's 'auto' device): the plan's cost estimate names it and uses that device's cost per image.
    ``dct run`` calls this before Prefect starts and hands the plan to the flow; a deployment run calls it
    inside the flow. Either way it runs once per run, cheapest check first.

    Raises:
        ValueError / FileNotFoundError: bad dataset, classes or numbers (message names the value).
        StoreUnavailableError / OSError: the store is unreachable or not writable.
        ModelNotAvailableError: a model is not cached and the hub is unreachable.
    """
    validate_component(run_id, "run_id")  # it names files under the store root
    if shard_size <= 0:
        raise ValueError(f"shard_size={shard_size!r} must be a positive integer")
    if max_classes is not None and max_classes <= 0:
        raise ValueError(f"max_classes={max_classes!r} must be a positive integer or None")
    spec, config = build_config(dataset, overrides, store)
    selected = select_classes(spec, classes)
    from dct.evaluation.features import check_reference

    check_reference(spec.reference_images)  # before the store is opened: a bad reference leaves no trace
    artifact_store = artifact_store or ArtifactStore.from_config(config.storage)
    preflight_store(artifact_store, run_id)
    check_models_available(config, dataset)
    revisions = resolve_revisions(config)
    tkey = token_key(config, revisions.diffusion, revisions.classifier)
    ekey = eval_key(config, tkey, revisions.evaluator)
    finished = set() if force else artifact_store.finished_class_ids(config.dataset, ekey, selected)
    todo = [c for c in selected if c not in finished]
    if max_classes is not None:
        todo = todo[:max_classes]
    return RunPlan(
        dataset=config.dataset,
        run_id=run_id,
        store_root=artifact_store.root,
        token_key=tkey,
        eval_key=ekey,
        selected=selected,
        todo=todo,
        skipped=[c for c in selected if c in finished],
        shards=make_shards(todo, shard_size),
        revisions=revisions,
        estimate=estimate_work(config, len(todo)),
        device=device or _this_machine(),
        config=config,
        source=dataset_source(dataset),
    )


def _this_machine() -> str:
    from dct.models.loading import describe_device

    return describe_device("auto")


def failed_fraction(n_failed: int, n_attempted: int) -> float:
    return n_failed / n_attempted if n_attempted else 0.0
