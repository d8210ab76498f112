"""The DCT optimisation of one class token (Schwartz et al., "Discriminative Class Tokens", ICCV 2023).

Per epoch: ``images_per_epoch`` (prompt, seed) pairs — fixed pairs, the same every epoch, as in the authors'
code (``training.seed_schedule = "fixed"``), or new noise seeds every epoch (``"fresh"``) — are rendered
with classifier-free guidance, gradients only through the last ``grad_steps`` UNet evaluations, decoded,
classified, and the mean cross-entropy to the target class is back-propagated to the token vector alone.
Then clip, then one AdamW step. Stopping as in the reference: accuracy > threshold, or ``patience``
updates without a better epoch loss; the best-loss vector is returned.

Optionally (``training.restarts``, off by default): an attempt whose best-loss epoch classifies fewer than
``restart_below`` of its images right has stalled in a local minimum of the token; the optimisation starts
again from the initial vector on the next block of seeds, and the attempt with the best such accuracy is kept.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F

from dct.config import RunConfig, epoch_prompts
from dct.method.sampling import autocast, encode_text, expand_unconditional, iter_batches, render, unconditional
from dct.method.tokens import (
    TokenVector,
    add_placeholder_tokens,
    bind_token_vectors,
    from_rows,
    get_token_vector,
    set_token_vector,
    text_encoders,
    to_rows,
)
from dct.models.interface import ImageClassifier

logger = logging.getLogger(__name__)

StopReason = Literal["accuracy", "patience", "max_epochs", "diverged"]


@dataclass
class TokenResult:
    """The outcome of optimising one class token.

    ``vector`` is the best-loss vector, fp32 on the CPU, in the token file's form
    (:data:`dct.method.tokens.TokenVector`: ``(D,)`` for one text encoder and one vector, ``(n, D)`` for
    ``token.num_vectors = n``, ``{"clip_l": (n, D1), "clip_g": (n, D2)}`` for two text encoders);
    ``losses``/``accuracies`` are per epoch (the loss and guide accuracy of the vector *before* that
    epoch's update).
    """

    token: str
    class_id: int
    class_name: str
    vector: TokenVector
    initial_vector: TokenVector
    losses: list[float] = field(default_factory=list)
    accuracies: list[float] = field(default_factory=list)
    best_epoch: int = -1
    stop_reason: StopReason = "max_epochs"
    seconds: float = 0.0
    message: str = ""
    attempt: int = 0  # which attempt this is (0 = the first; see TrainingConfig.restarts)
    attempts: int = 1  # attempts run for the class (the kept one is ``attempt``)
    seeds: tuple[int, ...] = ()  # the optimisation seeds the kept attempt rendered (every epoch's, when fresh)

    @property
    def epochs(self) -> int:
        return len(self.losses)

    @property
    def best_loss(self) -> float:
        return self.losses[self.best_epoch] if self.best_epoch >= 0 else math.nan

    @property
    def best_accuracy(self) -> float:
        """Guide accuracy of the best-loss epoch (0 if no epoch finished)."""
        return self.accuracies[self.best_epoch] if self.best_epoch >= 0 else 0.0


def _lr_at(config: RunConfig, base_lr: float, update: int) -> float:
    if config.optimizer.lr_schedule == "cosine":
        return base_lr * 0.5 * (1 + math.cos(math.pi * update / config.training.max_epochs))
    return base_lr


def epoch_loss_and_grad(
    pipe,
    classifier: ImageClassifier,
    vectors: Sequence[torch.nn.Parameter],
    token_ids: Sequence[Sequence[int]],
    prompts: Sequence[str],
    seeds: Sequence[int],
    target: int,
    config: RunConfig,
    uncond_one: tuple[torch.Tensor, torch.Tensor | None] | None,
    *,
    device: torch.device | str,
    dtype: torch.dtype,
) -> tuple[float, torch.Tensor]:
    """Forward + backward of one epoch, micro-batched; gradients accumulate into each vector's ``.grad``.

    Args:
        vectors: one ``(n, D_i)`` parameter per text encoder of ``pipe`` (row j is sub-token j).
        token_ids: per text encoder, the ids of the token's ``n`` sub-tokens.
        uncond_one: :func:`dct.method.sampling.unconditional` of the pipeline (batch 1), or None
            without classifier-free guidance.

    Each micro-batch's summed cross-entropy is divided by the epoch size, so any micro-batch size gives
    the gradient of the same mean loss.

    Returns:
        ``(mean loss, logits (N, C) fp32 CPU)``.
    """
    n = len(prompts)
    total = 0.0
    all_logits = []
    targets_all = torch.full((n,), target, dtype=torch.long)
    encoders = [te for _, te in text_encoders(pipe)]
    uncond, uncond_pooled = uncond_one if uncond_one is not None else (None, None)
    for sl in iter_batches(n, config.training.micro_batch_size):
        with autocast(device, dtype), contextlib.ExitStack() as stack:
            for text_encoder, vector, ids in zip(encoders, vectors, token_ids, strict=True):
                stack.enter_context(bind_token_vectors(text_encoder, dict(zip(ids, vector, strict=True))))
            cond, pooled = encode_text(pipe, prompts[sl])
            un, un_pooled = expand_unconditional(uncond, uncond_pooled, cond.shape[0])
            images = render(
                pipe,
                cond,
                un,
                seeds[sl],
                config.sampler,
                grad_steps=config.training.grad_steps,
                device=device,
                pooled=pooled,
                uncond_pooled=un_pooled,
            )
            logits = classifier(images)
        loss = F.cross_entropy(logits.float(), targets_all[sl].to(logits.device), reduction="sum") / n
        loss.backward()
        total += float(loss.detach())
        all_logits.append(logits.detach().float().cpu())
    return total, torch.cat(all_logits)


def optimize_token(
    pipe,
    classifier: ImageClassifier,
    *,
    class_id: int,
    class_name: str,
    config: RunConfig,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    progress: bool | None = None,
) -> TokenResult:
    """Learn the discriminative token of one class.

    The pipeline and classifier must already be on ``device`` and frozen; only a new fp32 parameter (the
    token vector) is optimised. The placeholder ``config.token_string(class_id)`` is added to the pipeline
    if missing, and on return its embedding row holds the best vector, so the pipeline can generate with it.

    Args:
        pipe: a Stable-Diffusion-style pipeline (tokenizer, text_encoder, unet, vae, scheduler).
        classifier: differentiable classifier, images ``(B, 3, H, W)`` in [0, 1] → logits ``(B, C)``.
        class_id: 0-based target class (the classifier's label id).
        class_name: name appended to the prompts.
        config: the run configuration (sampler, token, optimiser, training, prompts).
        dtype: compute dtype for autocast; None = the UNet's weight dtype (fp32 on CPU). The token
            itself is always fp32.
        progress: show a progress bar; None = only when stderr is a terminal.

    Returns:
        A :class:`TokenResult`. A non-finite loss or gradient ends with ``stop_reason="diverged"`` and the
        best finite vector so far (the initial one if none) — never an exception and never a NaN token.

    Raises:
        ValueError: ``class_id`` outside the classifier's classes.
    """
    if not 0 <= class_id < classifier.num_classes:
        raise ValueError(f"class_id {class_id!r} is outside the classifier's classes 0..{classifier.num_classes - 1}")
    t0 = time.perf_counter()
    train = config.training
    dtype = dtype or pipe.unet.dtype
    token = config.token_string(class_id)
    num_vectors = config.token.num_vectors
    token_ids, initial_rows = [], []
    for tokenizer, text_encoder in text_encoders(pipe):
        ids = add_placeholder_tokens(tokenizer, text_encoder, token, config.token.initializer_token, num_vectors)
        init_id = tokenizer.encode(config.token.initializer_token, add_special_tokens=False)[0]
        token_ids.append(ids)
        # Every sub-token starts from the initializer's row (as diffusers' textual-inversion trainer).
        initial_rows.append(get_token_vector(text_encoder, init_id).expand(num_vectors, -1).clone())
    initial = from_rows(initial_rows)
    # The prompts name the token once; encoding expands it to its sub-tokens (dct.method.tokens.expand_prompt).
    prompts = epoch_prompts(config.prompts.templates, token, class_name, train.images_per_epoch)
    with torch.no_grad(), autocast(device, dtype):
        # The unconditional embedding does not depend on the token: computed once per class, not per step.
        uncond_one = unconditional(pipe) if config.sampler.guidance_scale != 1.0 else None

    result = None
    for attempt in range(train.restarts + 1):
        current = TokenResult(token, class_id, class_name, initial, initial, attempt=attempt)
        _run_attempt(
            current,
            pipe,
            classifier,
            token_ids,
            prompts,
            attempt,
            uncond_one,
            config,
            device=device,
            dtype=dtype,
            progress=progress,
        )
        if result is None or current.best_accuracy > result.best_accuracy:
            result = current  # a later attempt is kept only if its best epoch classifies more images right
        if current.stop_reason == "diverged" or current.best_accuracy >= train.restart_below:
            break
        if attempt < train.restarts:
            logger.info(
                "%s (%s): attempt %d stalled (best-loss epoch accuracy %.2f < %.2f); restarting on seeds %s",
                token,
                class_name,
                attempt,
                current.best_accuracy,
                train.restart_below,
                seed_span(train.attempt_seeds(attempt + 1)),
            )
    result.attempts = attempt + 1
    best = to_rows(result.vector, len(token_ids))
    for (_, text_encoder), ids, block in zip(text_encoders(pipe), token_ids, best, strict=True):
        for token_id, row in zip(ids, block, strict=True):
            set_token_vector(text_encoder, token_id, row)
    result.seconds = time.perf_counter() - t0
    logger.info(
        "%s (%s): %s after %d epochs (attempt %d of %d), best loss %.4f at epoch %d, %.1fs",
        token,
        class_name,
        result.stop_reason,
        result.epochs,
        result.attempt + 1,
        result.attempts,
        result.best_loss,
        result.best_epoch,
        result.seconds,
    )
    return result


def seed_span(seeds: Sequence[int]) -> str:
    return f"{seeds[0]}-{seeds[-1]}"


def _run_attempt(
    result: TokenResult,
    pipe,
    classifier: ImageClassifier,
    token_ids: Sequence[Sequence[int]],
    prompts: Sequence[str],
    attempt: int,
    uncond_one: tuple[torch.Tensor, torch.Tensor | None] | None,
    config: RunConfig,
    *,
    device: torch.device | str,
    dtype: torch.dtype,
    progress: bool | None,
) -> None:
    """One optimisation from the initial vector on the attempt's seeds (``TrainingConfig.epoch_seeds``: the same
    every epoch, or fresh ones); fills ``result`` (losses, best vector, stop, the seeds it rendered)."""
    train, opt_cfg = config.training, config.optimizer
    token, class_id = result.token, result.class_id
    used: dict[int, None] = {}
    initial_rows = to_rows(result.initial_vector, len(token_ids))
    # One fp32 parameter (n, D_i) per text encoder: SDXL's two blocks are optimised jointly, nothing else is.
    vectors = [torch.nn.Parameter(rows.clone().to(device)) for rows in initial_rows]
    # lr_scale "token_norm": each block's lr scales with the norm of its own initial vector (one row).
    groups = [
        {"params": [v], "base_lr": opt_cfg.lr * (float(rows[0].norm()) if opt_cfg.lr_scale == "token_norm" else 1.0)}
        for v, rows in zip(vectors, initial_rows, strict=True)
    ]
    for group in groups:
        group["lr"] = group["base_lr"]
    optimizer = torch.optim.AdamW(groups, betas=opt_cfg.betas, weight_decay=opt_cfg.weight_decay, eps=opt_cfg.eps)
    best_loss, since_best = math.inf, 0
    bar = _progress_bar(train.max_epochs, f"{token} {result.class_name}", progress)
    try:
        for epoch in range(train.max_epochs):
            optimizer.zero_grad(set_to_none=True)
            seeds = list(train.epoch_seeds(attempt, epoch))
            used.update(dict.fromkeys(seeds))
            result.seeds = tuple(used)
            loss, logits = epoch_loss_and_grad(
                pipe,
                classifier,
                vectors,
                token_ids,
                prompts,
                seeds,
                class_id,
                config,
                uncond_one,
                device=device,
                dtype=dtype,
            )
            accuracy = float((logits.argmax(dim=1) == class_id).float().mean())
            grad_ok = all(v.grad is not None and bool(torch.isfinite(v.grad).all()) for v in vectors)
            if not math.isfinite(loss) or not grad_ok:
                result.stop_reason = "diverged"
                result.message = (
                    f"non-finite {'loss' if not math.isfinite(loss) else 'gradient'} at epoch {epoch} "
                    f"(compute dtype {str(dtype).removeprefix('torch.')}); fp16 is known to overflow with "
                    "SD 2.1 — use bfloat16 or float32. Kept the best finite vector."
                )
                logger.warning("%s: %s", token, result.message)
                break
            result.losses.append(loss)
            result.accuracies.append(accuracy)
            if loss < best_loss:
                best_loss, since_best = loss, 0
                result.best_epoch = epoch
                result.vector = from_rows(vectors)  # the vectors that produced this loss
            else:
                since_best += 1
            _report(bar, epoch, loss, accuracy, token)
            if accuracy > train.accuracy_threshold:
                result.stop_reason = "accuracy"
                break
            if since_best >= train.patience:
                result.stop_reason = "patience"
                break
            if opt_cfg.max_grad_norm is not None:
                # after backward, as intended; one norm over all the token's parameters (as one vector)
                torch.nn.utils.clip_grad_norm_(vectors, opt_cfg.max_grad_norm)
            for group in optimizer.param_groups:
                group["lr"] = _lr_at(config, group["base_lr"], epoch)
            optimizer.step()
        else:
            result.stop_reason = "max_epochs"
    finally:
        if bar is not None:
            bar.close()


def _progress_bar(total: int, desc: str, progress: bool | None):
    if progress is None:
        progress = sys.stderr.isatty()
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="epoch", leave=False)


def _report(bar, epoch: int, loss: float, accuracy: float, token: str) -> None:
    if bar is not None:
        bar.set_postfix(loss=f"{loss:.4f}", acc=f"{accuracy:.2f}")
        bar.update(1)
    else:
        logger.debug("%s epoch %d: loss %.4f accuracy %.2f", token, epoch, loss, accuracy)


