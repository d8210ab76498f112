"""One class, end to end: optimise (or reuse) the token → sample baseline and DCT → score → record.

This is the unit of work a shard repeats with models loaded ONCE (:func:`load_models`). It is plain
library code (no Prefect) so a notebook or another orchestrator can drive it; the record is written
last, which is what makes a class "finished" (docs/design.md, "Storage contract").
"""

from __future__ import annotations

import datetime as dt
import logging
import time

import torch

from dct.artifacts.images import decode_image, encode_image
from dct.artifacts.store import ArtifactStore
from dct.artifacts.token_file import build_token_metadata, load_stored_token, token_file_bytes
from dct.class_metrics import column
from dct.config import RunConfig, baseline_prompts, epoch_prompts
from dct.evaluation.accuracy import topk_accuracy
from dct.evaluation.features import (
    build_feature_extractor,
    check_fid_features,
    features_of_encoded,
    sample_set_stamp,
    write_class_features,
)
from dct.method.optimize import TokenResult, optimize_token
from dct.method.sampling import generate
from dct.method.tokens import TokenVector, install_token, token_widths
from dct.models.loading import Models, load_models
from dct.results import ClassRecord, Provenance, build_provenance, failed_class_record, write_class_record
from dct.run.plan import ShardPlan

logger = logging.getLogger(__name__)


def _reusable_token(
    store: ArtifactStore, config: RunConfig, class_id: int, tkey: str, width: tuple[int, ...]
) -> tuple[TokenVector, dict[str, str], bytes] | None:
    """The stored token for these keys (vector, metadata, the file's bytes) if it is intact and provably
    theirs; None → (re-)optimise."""
    if not store.has_token(config.dataset, tkey, class_id):
        return None
    try:
        data = store.read_token(config.dataset, tkey, class_id)
        # A file without our token_key in its metadata is not provably ours; a hand-edited vector of the
        # wrong width or with non-finite values must never be loaded into the pipeline.
        _, vector, meta = load_stored_token(
            store,
            config.dataset,
            tkey,
            class_id,
            config.token_string(class_id),
            width=width,
            num_vectors=config.token.num_vectors,
            require=("token_key",),
            data=data,
        )
    except ValueError as exc:
        logger.warning("class %d: %s; re-optimising", class_id, exc)
        return None
    return vector, meta, data


def _optimize_with_oom_retry(
    pipe, models: Models, config: RunConfig, class_id: int, class_name: str, progress: bool | None
) -> TokenResult:
    """:func:`optimize_token`; on CUDA out-of-memory, retried ONCE with ``micro_batch_size=1``.

    ``micro_batch_size`` is not part of ``token_key`` (any micro-batch size gives the gradient of the same
    mean loss), so the retry writes under the same keys. The config is never mutated: the retry uses a copy.

    Raises:
        RuntimeError: out of memory again with one image per forward/backward (what to change is in the text).
    """

    def attempt(cfg: RunConfig) -> TokenResult:
        return optimize_token(
            pipe,
            models.classifier,
            class_id=class_id,
            class_name=class_name,
            config=cfg,
            device=models.device,
            dtype=models.dtype,
            progress=progress,
        )

    try:
        return attempt(config)
    except torch.OutOfMemoryError as exc:
        # Keep only the text: the exception's traceback pins the failed attempt's activations in memory.
        first = _first_line(exc)
    _free_accelerator_memory()
    if config.training.micro_batch_size == 1:
        raise _oom_error(config, class_id, first)
    logger.warning(
        "class %d: out of memory with micro_batch_size=%s (%s); retrying once with micro_batch_size=1",
        class_id,
        config.training.micro_batch_size,
        first,
    )
    retry = config.model_copy(update={"training": config.training.model_copy(update={"micro_batch_size": 1})})
    try:
        return attempt(retry)
    except torch.OutOfMemoryError as exc:
        again = _first_line(exc)
    _free_accelerator_memory()
    raise _oom_error(config, class_id, again)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _free_accelerator_memory() -> None:
    """Drop the failed attempt's cached blocks so the retry (or the next class) starts from a clean pool."""
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _oom_error(config: RunConfig, class_id: int, first_line: str) -> RuntimeError:
    s = config.sampler
    size = f"{s.height}x{s.width}" if s.height and s.width else "native"
    return RuntimeError(
        f"out of memory optimising class {class_id} even with micro_batch_size=1 (one image per "
        f"forward/backward, grad_steps={config.training.grad_steps}, resolution {size}; {first_line}); a smaller "
        "micro-batch is impossible: use a GPU with more memory, lower grad_steps or the sampler's height/width"
        + (", or diffusion dtype bfloat16" if config.diffusion.dtype == "float32" else "")
        + "; the class is recorded failed and the next run retries it"
    )


def process_class(
    store: ArtifactStore,
    config: RunConfig,
    models: Models,
    *,
    class_id: int,
    class_name: str,
    run_id: str,
    force: bool = False,
    progress: bool | None = None,
) -> ClassRecord:
    """Optimise (or reuse) one class token, sample and score both variants, write everything; record last.

    Args:
        store: where artifacts go.
        config: the run configuration.
        models: loaded once per shard (:func:`load_models`).
        force: re-optimise even if a valid token for these keys exists.

    Returns:
        The written :class:`ClassRecord` (status ``done``, or ``diverged`` when the loss went non-finite).

    Raises:
        RuntimeError: CUDA out of memory even after one retry with ``micro_batch_size=1`` (the shard
            records the class as failed with this text).
    """
    started = dt.datetime.now(dt.UTC)
    tkey, ekey = models.keys(config)
    token = config.token_string(class_id)
    pipe = models.pipe

    t0 = time.perf_counter()
    reused = None if force else _reusable_token(store, config, class_id, tkey, token_widths(pipe))
    if reused is not None:
        vector, meta, token_data = reused
        install_token(pipe, token, vector, config.token.initializer_token)
        stop_reason, epochs = meta.get("stop_reason"), int(meta.get("epochs", "0"))
        best_loss = float(meta.get("best_loss", "nan"))
        best_epoch, best_acc = None, None
        token_uri = store.token_uri(config.dataset, tkey, class_id)
        logger.info("class %d: reusing token %s (token_key %s)", class_id, token, tkey)
    else:
        result = _optimize_with_oom_retry(pipe, models, config, class_id, class_name, progress)
        metadata = build_token_metadata(
            config,
            result,
            token_key=tkey,
            diffusion_revision=models.pipe_revision,
            classifier_revision=models.classifier_revision,
        )
        token_data = token_file_bytes(token, result.vector, metadata)
        token_uri = store.write_token(config.dataset, tkey, class_id, token_data)
        stop_reason, epochs, best_loss, best_epoch = (
            result.stop_reason,
            result.epochs,
            result.best_loss,
            result.best_epoch,
        )
        best_acc = result.accuracies[result.best_epoch] if result.best_epoch >= 0 else None
    optimize_seconds = time.perf_counter() - t0

    t1 = time.perf_counter()
    ev = config.evaluation
    seeds = list(ev.seeds)
    templates = config.prompts.templates
    images = {
        variant: generate(
            pipe,
            prompts,
            seeds,
            config.sampler,
            device=models.device,
            dtype=models.dtype,
            batch_size=ev.batch_size,
        )
        for variant, prompts in (
            ("baseline", baseline_prompts(templates, config.prompts.baseline_word, class_name, ev.num_samples)),
            ("dct", epoch_prompts(templates, token, class_name, ev.num_samples)),
        )
    }
    encoded: dict[str, list[bytes]] = {}
    if ev.sample_format != "none":
        for variant in list(images):
            encoded[variant] = [encode_image(img, ev.sample_format) for img in images[variant]]
            for seed, data in zip(seeds, encoded[variant], strict=True):
                store.write_sample(config.dataset, ekey, class_id, variant, seed, data, ext=ev.sample_format)
            # Score what is stored (8-bit, or JPEG): the table's accuracies are those of the published samples,
            # which anyone can recompute from the store (FID/KID are computed from them too).
            images[variant] = torch.stack([decode_image(data) for data in encoded[variant]])
    if encoded and models.feature_extractor is not None:  # FID/KID features here, on this device
        feats = features_of_encoded(models.feature_extractor, encoded, ev.batch_size)
        stamp = sample_set_stamp(run_id, started)
        write_class_features(store, config.dataset, ekey, class_id, models.feature_extractor, feats, stamp=stamp)
    scores: dict[str, float | None] = {}
    for who, clf in (("guide", models.classifier), ("evaluator", models.evaluator)):
        for variant, imgs in images.items():
            top1, top5 = topk_accuracy(clf, imgs, class_id, ev.batch_size) if clf is not None else (None, None)
            scores[column(f"{who}_top1", variant)], scores[column(f"{who}_top5", variant)] = top1, top5

    record = ClassRecord(
        run_id=run_id,
        dataset=config.dataset,
        class_id=class_id,
        class_name=class_name,
        token=token,
        token_key=tkey,
        eval_key=ekey,
        status="diverged" if stop_reason == "diverged" else "done",
        stop_reason=stop_reason,
        epochs=epochs,
        best_epoch=best_epoch,
        best_loss=best_loss if best_loss == best_loss else None,
        best_epoch_accuracy=best_acc,
        optimize_seconds=optimize_seconds,
        evaluate_seconds=time.perf_counter() - t1,
        token_reused=reused is not None,
        token_uri=token_uri,
        token_file_base64=ClassRecord.token_file_field(token_data),  # the bundle is built from this copy
        samples_uri=store.samples_uri(config.dataset, ekey, class_id) if ev.sample_format != "none" else None,
        sample_format=ev.sample_format,
        num_samples=ev.num_samples,
        **scores,
        provenance=provenance(config, models),
        started_at=started,
        finished_at=dt.datetime.now(dt.UTC),
    )
    write_class_record(store, record)  # LAST: its existence marks the class finished
    return record


def plan_key_mismatch(plan: ShardPlan, models: Models) -> str | None:
    """Why this shard must not write under the plan's keys, or None when its models give exactly those keys.

    A worker whose model snapshot differs from the parent's (another hub revision, a local directory that
    differs by one byte) would write tokens and records under other keys, and the parent would find "no
    record" for classes that were done (docs/design.md, "One run plan").
    """
    tkey, ekey = models.keys(plan.config)
    if (tkey, ekey) == (plan.token_key, plan.eval_key):
        return None
    loaded = {"diffusion": models.pipe_revision, "classifier": models.classifier_revision,
              "evaluator": models.evaluator_revision}
    differ = [
        f"the {role} model here is revision {loaded[role]!r}, the plan's is {getattr(plan.revisions, role)!r}"
        for role in loaded
        if loaded[role] != getattr(plan.revisions, role)
    ]
    return (
        f"the models loaded on this worker give token_key {tkey} and eval_key {ekey}, the plan's are "
        f"{plan.token_key} and {plan.eval_key} ({'; '.join(differ) or 'same revisions, other settings'}); nothing "
        "was written under other keys: give every worker the parent's model snapshot (`dct models pull`) and re-run"
    )


def load_shard_models(config: RunConfig, device: torch.device | str, store: ArtifactStore) -> Models:
    """:func:`load_models` plus the FID/KID feature extractor (on the shard's device), all loaded once.

    The extractor is None where no pooled metrics will be computed (``fid_features='none'``, no
    evaluator for ``'evaluator'``, or no stored samples).

    Raises:
        FeatureWeightsMissingError: ``fid_features='inception'`` and no Inception weights on this worker.
    """
    models = load_models(config, device)
    if config.evaluation.sample_format != "none" and check_fid_features(config, store) is None:
        models.feature_extractor = build_feature_extractor(
            config, store, models.device, evaluator=models.evaluator, evaluator_revision=models.evaluator_revision
        ).eval()
    return models


def provenance(config: RunConfig, models: Models) -> Provenance:
    """The provenance of a record a shard writes: its loaded models' revisions, its device and dtype."""
    return build_provenance(
        config,
        diffusion_revision=models.pipe_revision,
        classifier_revision=models.classifier_revision,
        evaluator_revision=models.evaluator_revision,
        device=models.device_description,
        dtype=str(models.dtype).removeprefix("torch."),
    )


def failed_record(
    store: ArtifactStore,
    config: RunConfig,
    models: Models,
    *,
    class_id: int,
    class_name: str,
    run_id: str,
    error: BaseException | str,
    started: dt.datetime,
    keys: tuple[str, str] | None = None,
) -> ClassRecord:
    """Write and return a ``failed`` record with the error text; the next run retries the class.

    ``keys``: ``(token_key, eval_key)`` to record it under (the plan's, where the loaded models give others);
    default the loaded models' keys.
    """
    tkey, ekey = keys or models.keys(config)
    record = failed_class_record(
        config,
        run_id=run_id,
        class_id=class_id,
        class_name=class_name,
        token_key=tkey,
        eval_key=ekey,
        error=error,
        provenance=provenance(config, models),
        started=started,
    )
    write_class_record(store, record)
    return record
