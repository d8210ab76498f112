"""One class, end to end: optimise (or reuse) the token → sample baseline and DCT → score → record.

This is the unit of work a shard repeats with models loaded ONCE (:func:`load_models`). It is plain
library code (no Prefect) so a notebook or another orchestrator can drive it; the record is written
last, which is what makes a class "finished" (DESIGN, "Storage contract").
"""

from __future__ import annotations

import datetime as dt
import io
import logging
import time
from dataclasses import dataclass

import torch

from dct.bundle import load_stored_token
from dct.classifiers import ImageClassifier, load_classifier
from dct.config import RunConfig, eval_key, token_key
from dct.optimize import TokenResult, build_token_metadata, fill_template, optimize_token
from dct.results import ClassRecord, Provenance, library_versions, write_class_record
from dct.sampling import generate
from dct.store import ArtifactStore
from dct.tokens import add_placeholder_token, set_token_vector, token_file_bytes

logger = logging.getLogger(__name__)

MAX_ERROR_CHARS = 2000


@dataclass
class Models:
    """Everything a shard loads once: the pipeline, the guide and the optional held-out evaluator."""

    pipe: object
    pipe_revision: str
    classifier: ImageClassifier
    classifier_revision: str
    evaluator: ImageClassifier | None
    evaluator_revision: str | None
    device: torch.device
    dtype: torch.dtype

    def keys(self, config: RunConfig) -> tuple[str, str]:
        """``(token_key, eval_key)`` for this config and these resolved model revisions."""
        tkey = token_key(config, self.pipe_revision, self.classifier_revision)
        return tkey, eval_key(config, tkey, self.evaluator_revision)

    def provenance(self, config: RunConfig) -> Provenance:
        ev = config.evaluation.evaluator
        device = str(self.device)
        if self.device.type == "cuda":
            device += f" ({torch.cuda.get_device_name(self.device)})"
        return Provenance(
            diffusion_model_id=config.diffusion.model_id,
            diffusion_revision=self.pipe_revision,
            diffusion_licence=config.diffusion.licence,
            classifier_model_id=f"{config.classifier.kind}:{config.classifier.model_id}",
            classifier_revision=self.classifier_revision,
            classifier_licence=config.classifier.licence,
            evaluator_model_id=f"{ev.kind}:{ev.model_id}" if ev else None,
            evaluator_revision=self.evaluator_revision,
            evaluator_licence=ev.licence if ev else None,
            dct_version=library_versions().get("dct_version", "unknown"),
            **{k: v for k, v in library_versions().items() if k != "dct_version"},
            device=device,
            dtype=str(self.dtype).removeprefix("torch."),
        )


def resolve_device(name: str) -> torch.device:
    """'auto' → cuda if available, else cpu; explicit names are checked.

    Raises:
        ValueError: an unknown device name, or CUDA requested where there is none.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available here; use --device cpu")
    return device


def load_models(config: RunConfig, device: torch.device | str) -> Models:
    """Load the pipeline, the guide and the evaluator (if configured) once, frozen, on ``device``."""
    from dct.classifiers import ModelNotAvailableError
    from dct.pipelines import load_pipeline

    device = torch.device(device)
    try:
        loaded = load_pipeline(config.diffusion, device)
        guide = load_classifier(config.classifier, device)
        ev = load_classifier(config.evaluation.evaluator, device) if config.evaluation.evaluator else None
    except ModelNotAvailableError as exc:
        raise exc.for_dataset(config.dataset) from None  # the error then names `dct models pull --dataset X`
    return Models(
        pipe=loaded.pipe,
        pipe_revision=loaded.resolved_revision,
        classifier=guide.classifier,
        classifier_revision=guide.resolved_revision,
        evaluator=ev.classifier if ev else None,
        evaluator_revision=ev.resolved_revision if ev else None,
        device=device,
        dtype=loaded.dtype,
    )


@torch.no_grad()
def topk_accuracy(
    classifier: ImageClassifier, images: torch.Tensor, class_id: int, batch_size: int
) -> tuple[float, float]:
    """Top-1 and top-5 accuracy of ``classifier`` on images ``(B, 3, H, W)`` in [0, 1] for ``class_id``."""
    device = next(classifier.parameters()).device
    hits1 = hits5 = 0
    for start in range(0, images.shape[0], batch_size):
        logits = classifier(images[start : start + batch_size].to(device))
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices.cpu()
        hits1 += int((top[:, 0] == class_id).sum())
        hits5 += int((top == class_id).any(dim=1).sum())
    n = images.shape[0]
    return hits1 / n, hits5 / n


def encode_image(image: torch.Tensor, fmt: str) -> bytes:
    """One image ``(3, H, W)`` in [0, 1] → PNG/JPEG bytes."""
    from PIL import Image

    array = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(array).save(
        buf, format="JPEG" if fmt == "jpeg" else "PNG", **({"quality": 95} if fmt == "jpeg" else {})
    )
    return buf.getvalue()


def eval_prompts(config: RunConfig, word: str, class_name: str) -> list[str]:
    """Evaluation prompt j = template ``j mod n`` with ``word`` (the token, or the baseline word)."""
    templates = config.prompts.templates
    return [
        fill_template(templates[j % len(templates)], word, class_name) for j in range(config.evaluation.num_samples)
    ]


def _reusable_token(
    store: ArtifactStore, config: RunConfig, class_id: int, tkey: str, width: int
) -> tuple[torch.Tensor, dict[str, str]] | None:
    """The stored token for these keys if it is intact and provably theirs; None → (re-)optimise."""
    if not store.has_token(config.dataset, tkey, class_id):
        return None
    try:
        _, vector, meta = load_stored_token(store, config.dataset, tkey, class_id, config.token_string(class_id))
    except ValueError as exc:
        logger.warning("class %d: %s; re-optimising", class_id, exc)
        return None
    if meta.get("token_key") != tkey:  # a file without our metadata is not provably ours
        logger.warning("class %d: stored token lacks token_key %s in its metadata; re-optimising", class_id, tkey)
        return None
    # Well-formed and ours, but unusable (a hand edit, a bug elsewhere): never load it into the pipeline.
    if vector.shape != (width,) or not bool(torch.isfinite(vector).all()):
        logger.warning(
            "class %d: stored token has shape %s (expected (%d,)) or non-finite values; re-optimising",
            class_id,
            tuple(vector.shape),
            width,
        )
        return None
    return vector, meta


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
    width = pipe.text_encoder.get_input_embeddings().weight.shape[1]
    reused = None if force else _reusable_token(store, config, class_id, tkey, width)
    if reused is not None:
        vector, meta = reused
        token_id = add_placeholder_token(pipe.tokenizer, pipe.text_encoder, token, config.token.initializer_token)
        set_token_vector(pipe.text_encoder, token_id, vector)
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
        token_uri = store.write_token(config.dataset, tkey, class_id, token_file_bytes(token, result.vector, metadata))
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
    images = {
        variant: generate(
            pipe,
            eval_prompts(config, word, class_name),
            seeds,
            config.sampler,
            device=models.device,
            dtype=models.dtype,
            batch_size=ev.batch_size,
        )
        for variant, word in (("baseline", config.prompts.baseline_word), ("dct", token))
    }
    if ev.sample_format != "none":
        for variant, imgs in images.items():
            for seed, img in zip(seeds, imgs, strict=True):
                store.write_sample(
                    config.dataset,
                    ekey,
                    class_id,
                    variant,
                    seed,
                    encode_image(img, ev.sample_format),
                    ext=ev.sample_format,
                )
    scores: dict[str, float | None] = {}
    for who, clf in (("guide", models.classifier), ("evaluator", models.evaluator)):
        for variant, imgs in images.items():
            top1, top5 = topk_accuracy(clf, imgs, class_id, ev.batch_size) if clf is not None else (None, None)
            scores[f"{who}_top1_{variant}"], scores[f"{who}_top5_{variant}"] = top1, top5

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
        samples_uri=store.samples_uri(config.dataset, ekey, class_id) if ev.sample_format != "none" else None,
        sample_format=ev.sample_format,
        num_samples=ev.num_samples,
        **scores,
        provenance=models.provenance(config),
        started_at=started,
        finished_at=dt.datetime.now(dt.UTC),
    )
    write_class_record(store, record)  # LAST: its existence marks the class finished
    return record


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
) -> ClassRecord:
    """Write and return a ``failed`` record with the error text; the next run retries the class."""
    tkey, ekey = models.keys(config)
    text = (error if isinstance(error, str) else f"{type(error).__name__}: {error}")[:MAX_ERROR_CHARS]
    record = ClassRecord(
        run_id=run_id,
        dataset=config.dataset,
        class_id=class_id,
        class_name=class_name,
        token=config.token_string(class_id),
        token_key=tkey,
        eval_key=ekey,
        status="failed",
        error=text,
        provenance=models.provenance(config),
        started_at=started,
        finished_at=dt.datetime.now(dt.UTC),
    )
    write_class_record(store, record)
    return record
