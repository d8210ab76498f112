"""Behaviour of the DCT optimisation loop on tiny random models (fp32, CPU)."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import pytest
import torch
from tiny import tiny_run_config

from dct.artifacts.token_file import build_token_metadata
from dct.config import SamplerConfig, epoch_prompts
from dct.method.optimize import epoch_loss_and_grad, optimize_token
from dct.method.sampling import unconditional
from dct.method.tokens import add_placeholder_token, get_token_vector


def _hardest_class(pipe, clf, config) -> int:
    """The class the untrained token is least likely to produce: a target with room to learn."""
    from dct.method.sampling import generate

    imgs = generate(pipe, ["a photo of a cat"] * 3, list(config.training.seeds), config.sampler)
    return int(torch.softmax(clf(imgs), dim=1).mean(0).argmin())


def _one_epoch(pipe, clf, config, class_id: int = 0) -> tuple[torch.nn.Parameter, float]:
    """Add the class token and run one epoch's forward + backward; returns (token parameter with .grad, loss)."""
    token = config.token_string(class_id)
    token_id = add_placeholder_token(pipe.tokenizer, pipe.text_encoder, token, "a")
    vec = torch.nn.Parameter(get_token_vector(pipe.text_encoder, token_id).unsqueeze(0))  # (1, D): one vector
    prompts = epoch_prompts(config.prompts.templates, token, "cat", config.training.images_per_epoch)
    with torch.no_grad():
        uncond = unconditional(pipe)
    loss, _ = epoch_loss_and_grad(
        pipe,
        clf,
        [vec],
        [[token_id]],
        prompts,
        list(config.training.seeds),
        class_id,
        config,
        uncond,
        device="cpu",
        dtype=torch.float32,
    )
    return vec, loss


def _saved_tensors(fn) -> tuple[int, int]:
    """How many tensors, and how many bytes, autograd keeps for backward while ``fn`` runs."""
    n, nbytes = 0, 0

    def pack(t):
        nonlocal n, nbytes
        n += 1
        nbytes += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return n, nbytes


def _epoch_saved(tmp_path, clf, *, grad_steps: int, sampler: SamplerConfig | None = None) -> tuple[int, int]:
    """(tensors, bytes) autograd keeps during one epoch on a fresh tiny pipeline (``sampler`` None = default)."""
    from tiny import tiny_pipeline

    config = tiny_run_config(grad_steps=grad_steps)
    if sampler is not None:
        config = config.model_copy(update={"sampler": sampler})
    pipe = tiny_pipeline(Path(tempfile.mkdtemp(dir=tmp_path)), scheduler=sampler.scheduler if sampler else "ddim")
    return _saved_tensors(lambda: _one_epoch(pipe, clf, config))


def test_only_the_token_row_changes(tiny_pipe, tiny_clf):
    config = tiny_run_config(max_epochs=3, accuracy_threshold=1.0)
    before = tiny_pipe.text_encoder.get_input_embeddings().weight.detach().clone()
    params_before = {n: p.detach().clone() for n, p in tiny_pipe.unet.named_parameters()}
    result = optimize_token(tiny_pipe, tiny_clf, class_id=1, class_name="cat", config=config)
    after = tiny_pipe.text_encoder.get_input_embeddings().weight.detach()
    token_id = tiny_pipe.tokenizer.convert_tokens_to_ids(result.token)
    assert result.epochs == 3
    # Every pre-existing row is bit-for-bit unchanged; the table only grew by the new row.
    assert after.shape[0] == before.shape[0] + 1
    assert torch.equal(after[: before.shape[0]], before)
    assert all(torch.equal(p, params_before[n]) for n, p in tiny_pipe.unet.named_parameters())
    # ... and the new row holds the learned (best) vector, which moved away from its initialisation.
    assert torch.equal(after[token_id], result.vector)
    assert not torch.equal(result.vector, result.initial_vector)


def test_gradient_nonzero_and_loss_falls(tiny_pipe, tiny_clf):
    config = tiny_run_config(max_epochs=8, accuracy_threshold=1.0, patience=50)
    target = _hardest_class(tiny_pipe, tiny_clf, config)
    vec, _ = _one_epoch(tiny_pipe, tiny_clf, config, target)
    assert vec.grad is not None and float(vec.grad.norm()) > 0

    result = optimize_token(tiny_pipe, tiny_clf, class_id=target, class_name="cat", config=config)
    assert result.losses[-1] < result.losses[0]
    assert result.best_loss < result.losses[0]


def test_same_seed_same_vector(tmp_path, tiny_clf):
    from tiny import tiny_pipeline

    config = tiny_run_config(max_epochs=2, accuracy_threshold=1.0)
    a = optimize_token(tiny_pipeline(tmp_path / "a"), tiny_clf, class_id=2, class_name="cat", config=config)
    b = optimize_token(tiny_pipeline(tmp_path / "b"), tiny_clf, class_id=2, class_name="cat", config=config)
    assert torch.equal(a.vector, b.vector)
    assert a.losses == b.losses


# Float32 reordering tolerance. Batch shapes change the order of the sums inside convolutions, norms and the
# accumulation over micro-batches, never what is summed. A reordered float32 sum of n terms differs by at most
# (n - 1) * u of the sum of the terms' magnitudes (u = 2**-24, Higham, "Accuracy and Stability of Numerical
# Algorithms", 2002, section 4.2); the longest reductions in these tiny models are the VAE's GroupNorm statistics
# over (16 / 4 groups) * 16 * 16 = 1024 values, so one reduction moves by < 1024 * u = 6.1e-5 relative. The
# errors of the many reductions do not add up coherently: measured on an AMD EPYC, 1 and 2 threads, the
# gradients differ by 0.5-1.3e-6 in norm, 100x inside the bound. A wrong gradient is far outside it: a
# micro-batch's loss divided by its own size instead of the epoch's differs by 1.2-1.3 in norm (tried).
FP32_REORDER_RTOL = 1e-4


@pytest.mark.parametrize("scheduler", ["ddim", "pndm"])
def test_batch_equals_micro_batches_and_accumulation(tmp_path, tiny_clf, scheduler):
    """One batch of 3, micro-batches of 2+1 and of 1 (= accumulation one image at a time) give the gradient
    of the same mean loss: equal up to float32 reordering, in norm (an element near 0 has no relative accuracy).

    Vectors after Adam updates are not compared: Adam divides by sqrt(v) + eps, so an element whose gradient
    is near eps turns a 1e-12 absolute difference into up to lr * 1e-4 (the old 1e-6 bound on the vectors after
    two updates failed on an AMD EPYC although the gradients agreed)."""
    from tiny import tiny_pipeline

    grads, losses = [], []
    for micro in (None, 2, 1):
        config = tiny_run_config(micro_batch_size=micro)
        config = config.model_copy(
            update={"sampler": SamplerConfig(scheduler=scheduler, num_inference_steps=4, guidance_scale=3.0)}
        )
        vec, loss = _one_epoch(tiny_pipeline(tmp_path / str(micro), scheduler=scheduler), tiny_clf, config)
        grads.append(vec.grad.clone())
        losses.append(loss)
    assert float(grads[0].norm()) > 0
    for micro, g, loss in zip((2, 1), grads[1:], losses[1:], strict=True):
        rel = float((g - grads[0]).norm() / grads[0].norm())
        assert rel <= FP32_REORDER_RTOL, f"micro_batch_size={micro}: gradient differs by {rel:.2e} in norm"
        assert math.isclose(loss, losses[0], rel_tol=FP32_REORDER_RTOL)


@pytest.mark.parametrize("scheduler", ["ddim", "pndm"])
def test_saved_tensors_independent_of_step_count(tmp_path, tiny_clf, scheduler):
    """With grad_steps=1 only the last UNet evaluation keeps activations: memory does not grow with steps."""
    counts = {
        steps: _epoch_saved(
            tmp_path,
            tiny_clf,
            grad_steps=1,
            sampler=SamplerConfig(scheduler=scheduler, num_inference_steps=steps, guidance_scale=3.0),
        )[0]
        for steps in (5, 20)
    }
    assert counts[5] == counts[20] > 0


def test_grad_steps_two_keeps_more_than_one(tmp_path, tiny_clf):
    """Sanity check of the counter above: two graded UNet evaluations save more tensors than one."""
    counts = {g: _epoch_saved(tmp_path, tiny_clf, grad_steps=g)[0] for g in (1, 2)}
    assert counts[2] > counts[1]


def test_more_grad_steps_do_not_keep_more_activations(tmp_path, tiny_clf):
    """Graph-building UNet evaluations before the last are checkpointed: the saved activations of an epoch are
    about the last evaluation's, whatever grad_steps is (the backward recomputes the earlier ones one by one)."""
    sampler = SamplerConfig(scheduler="ddim", num_inference_steps=4, guidance_scale=3.0)
    saved = {g: _epoch_saved(tmp_path, tiny_clf, grad_steps=g, sampler=sampler)[1] for g in (2, 4)}
    # From 2 on, both guidance halves of the last evaluation carry a graph; each further step adds only the
    # checkpoint's inputs. Without checkpointing this model kept 3.4 MB with 2 and 5.5 MB with 3.
    assert saved[4] <= 1.05 * saved[2]


def test_guidance_unconditional_branch_keeps_no_activations(tmp_path, tiny_clf):
    """With grad_steps=1 the unconditional half of the guided UNet batch depends on nothing learnable: the
    epoch keeps about the same activations with classifier-free guidance as without it (not twice the UNet's)."""
    saved = {
        scale: _epoch_saved(
            tmp_path,
            tiny_clf,
            grad_steps=1,
            sampler=SamplerConfig(scheduler="ddim", num_inference_steps=4, guidance_scale=scale),
        )[1]
        for scale in (1.0, 3.0)
    }
    assert saved[1.0] > 0
    # Guidance adds only the guidance combination's few latent-sized tensors.
    assert saved[3.0] <= 1.05 * saved[1.0]


class _ScriptedClassifier(torch.nn.Module):
    """Wraps a classifier and adds a per-epoch offset to the target logit (drives the stopping rules)."""

    def __init__(self, inner, target: int, offsets: list[float]) -> None:
        super().__init__()
        self.inner, self.target, self.offsets, self.calls = inner, target, offsets, 0
        self.num_classes = inner.num_classes

    def forward(self, images):
        logits = self.inner(images).clone()
        offset = self.offsets[min(self.calls, len(self.offsets) - 1)]
        self.calls += 1
        logits[:, self.target] = logits[:, self.target] + offset
        return logits


def test_stops_on_accuracy_threshold(tiny_pipe, tiny_clf):
    # Epochs 0-2: target pushed down (accuracy 0); epoch 3: target forced up (accuracy 1 > 0.7).
    clf = _ScriptedClassifier(tiny_clf, 1, [-50, -50, -50, +50])
    config = tiny_run_config(max_epochs=10)
    result = optimize_token(tiny_pipe, clf, class_id=1, class_name="cat", config=config)
    assert result.stop_reason == "accuracy"
    assert result.epochs == 4
    assert result.accuracies[-1] == 1.0 and max(result.accuracies[:3]) == 0.0


def test_stops_on_patience_and_returns_best_not_last(tiny_pipe, tiny_clf):
    # Epoch 1 is by far the best loss; afterwards every epoch is worse -> patience ends the run and the
    # returned vector is epoch 1's, not the last one.
    clf = _ScriptedClassifier(tiny_clf, 1, [0.0, 5.0, *([-5.0] * 20)])
    config = tiny_run_config(max_epochs=30, patience=3, accuracy_threshold=1.0)
    result = optimize_token(tiny_pipe, clf, class_id=1, class_name="cat", config=config)
    assert result.stop_reason == "patience"
    assert result.best_epoch == 1
    assert result.epochs == 1 + 1 + 3  # epochs 0,1 then 3 without improvement
    assert result.best_loss == min(result.losses)
    assert result.best_loss < result.losses[-1]


def test_stalled_attempt_restarts_on_the_next_seed_block(tiny_pipe, tiny_clf):
    # Attempt 0 (3 epochs): target pushed down, accuracy 0 < restart_below; attempt 1: forced up -> stops.
    clf = _ScriptedClassifier(tiny_clf, 1, [-50, -50, -50, +50])
    config = tiny_run_config(max_epochs=3, restarts=2, restart_below=0.5)
    result = optimize_token(tiny_pipe, clf, class_id=1, class_name="cat", config=config)
    assert (result.attempt, result.attempts, result.stop_reason) == (1, 2, "accuracy")
    assert result.seeds == (3, 4, 5) == config.training.attempt_seeds(1)
    assert clf.calls == 4  # no third attempt after a good one
    meta = build_token_metadata(config, result, token_key="k", diffusion_revision="d", classifier_revision="c")
    assert (meta["attempt"], meta["optimisation_seeds"]) == ("2 of 2", "3-5")


def test_no_restart_after_a_good_or_diverged_attempt(tiny_pipe, tiny_clf):
    config = tiny_run_config(max_epochs=3, restarts=2, restart_below=0.5)
    good = optimize_token(
        tiny_pipe, _ScriptedClassifier(tiny_clf, 1, [+50]), class_id=1, class_name="cat", config=config
    )
    assert (good.attempts, good.seeds) == (1, (0, 1, 2))
    nan = optimize_token(tiny_pipe, _NaNAfter(tiny_clf, 1), class_id=1, class_name="cat", config=config)
    assert (nan.attempts, nan.stop_reason) == (1, "diverged")


def test_kept_attempt_is_the_optimisation_on_its_own_seeds(tmp_path, tiny_clf):
    """With restarts, the kept token is exactly what a plain optimisation on that attempt's seed block learns,
    and it is the attempt whose best epoch classifies most images right."""
    from tiny import tiny_pipeline

    config = tiny_run_config(max_epochs=2, accuracy_threshold=1.0, restarts=1, restart_below=1.0)
    result = optimize_token(tiny_pipeline(tmp_path / "r"), tiny_clf, class_id=3, class_name="cat", config=config)
    alone = [
        optimize_token(
            tiny_pipeline(tmp_path / f"a{k}"),
            tiny_clf,
            class_id=3,
            class_name="cat",
            config=tiny_run_config(max_epochs=2, accuracy_threshold=1.0, seed=3 * k),
        )
        for k in range(2)
    ]
    assert result.attempts == (1 if alone[0].best_accuracy >= 1.0 else 2)
    kept = alone[result.attempt]
    assert torch.equal(result.vector, kept.vector) and result.losses == kept.losses
    assert result.best_accuracy == max(a.best_accuracy for a in alone[: result.attempts])


def test_vector_is_best_loss_vector(tiny_pipe, tiny_clf):
    """Re-evaluating the returned vector reproduces the best epoch loss exactly (fixed seeds and prompts)."""
    config = tiny_run_config(max_epochs=5, accuracy_threshold=1.0, patience=50)
    result = optimize_token(tiny_pipe, tiny_clf, class_id=3, class_name="cat", config=config)
    # optimize_token left the best vector in the token's row; one more epoch from it re-measures its loss.
    _, loss = _one_epoch(tiny_pipe, tiny_clf, config, class_id=3)
    assert math.isclose(loss, result.best_loss, rel_tol=1e-5)


class _NaNAfter(torch.nn.Module):
    def __init__(self, inner, good_calls: int) -> None:
        super().__init__()
        self.inner, self.good_calls, self.calls = inner, good_calls, 0
        self.num_classes = inner.num_classes

    def forward(self, images):
        self.calls += 1
        logits = self.inner(images)
        return logits * float("nan") if self.calls > self.good_calls else logits


@pytest.mark.parametrize("good_calls", [0, 2])
def test_nan_loss_ends_diverged_with_finite_token(tiny_pipe, tiny_clf, good_calls):
    config = tiny_run_config(max_epochs=6, accuracy_threshold=1.0)
    result = optimize_token(tiny_pipe, _NaNAfter(tiny_clf, good_calls), class_id=0, class_name="cat", config=config)
    assert result.stop_reason == "diverged"
    assert "non-finite" in result.message
    assert result.epochs == good_calls
    assert torch.isfinite(result.vector).all()
    if good_calls == 0:
        assert torch.equal(result.vector, result.initial_vector)


def test_nan_after_good_epochs_keeps_the_best_finite_vector(tmp_path, tiny_clf):
    """Epoch 1 has the best loss, epoch 2 a worse one, epoch 3 a NaN: the result is epoch 1's vector — not the
    initial one, not the last finite one — and it is what the pipeline holds."""
    from tiny import tiny_pipeline

    config = tiny_run_config(max_epochs=6, accuracy_threshold=1.0, patience=50)
    scripted = [0.0, 5.0, -5.0]  # target-logit offsets per epoch: epoch 1 is by far the best
    clean = optimize_token(
        tiny_pipeline(tmp_path / "clean"),
        _ScriptedClassifier(tiny_clf, 1, scripted),
        class_id=1,
        class_name="cat",
        config=config.model_copy(update={"training": config.training.model_copy(update={"max_epochs": 3})}),
    )
    assert clean.best_epoch == 1 and not torch.equal(clean.vector, clean.initial_vector)

    pipe = tiny_pipeline(tmp_path / "nan")
    nan = optimize_token(
        pipe, _NaNAfter(_ScriptedClassifier(tiny_clf, 1, scripted), 3), class_id=1, class_name="cat", config=config
    )
    assert nan.stop_reason == "diverged" and nan.epochs == 3 and nan.losses == clean.losses
    assert nan.best_epoch == 1 and torch.equal(nan.vector, clean.vector)
    row = get_token_vector(pipe.text_encoder, pipe.tokenizer.convert_tokens_to_ids(nan.token))
    assert torch.equal(row, nan.vector)


def test_class_id_out_of_range(tiny_pipe, tiny_clf):
    with pytest.raises(ValueError, match=r"class_id 7 is outside the classifier's classes 0..3"):
        optimize_token(tiny_pipe, tiny_clf, class_id=7, class_name="cat", config=tiny_run_config())


# The sampler schedules of the two cases below, written out (not derived from the code under test):
# DDIM, 4 steps, "trailing" spacing: one UNet evaluation per timestep. PNDM (skip_prk_steps), 4 steps,
# "leading" spacing + steps_offset 1: N+1 evaluations, 501 twice (the PLMS warm-up step).
SCHEDULES = {
    "ddim": (SamplerConfig(scheduler="ddim", num_inference_steps=4, guidance_scale=3.0, timestep_spacing="trailing"),
             [999, 749, 499, 249]),
    "pndm": (SamplerConfig(scheduler="pndm", num_inference_steps=4, guidance_scale=3.0), [751, 501, 501, 251, 1]),
}


@pytest.mark.parametrize("grad_steps", [1, 2])
@pytest.mark.parametrize("scheduler", ["ddim", "pndm"])
def test_gradients_flow_through_exactly_the_last_grad_steps_unet_evaluations(
    tmp_path, tiny_clf, scheduler, grad_steps
):
    """The timestep of every UNet call of one epoch's forward pass, and whether it built a graph to the token:
    only the last ``grad_steps`` evaluations do, every earlier one runs without gradients, and the schedule is
    complete. (Counting saved tensors would not notice the gradient moving to other steps.)"""
    from tiny import tiny_pipeline

    sampler, schedule = SCHEDULES[scheduler]
    config = tiny_run_config(grad_steps=grad_steps).model_copy(update={"sampler": sampler})
    pipe = tiny_pipeline(tmp_path, scheduler=scheduler)
    calls: list[tuple[int, bool, int]] = []  # (timestep, graph to the token, batch) of forward-pass calls

    def record(module, args, kwargs):
        if torch._C._current_graph_task_id() != -1:
            return  # the backward recomputing a checkpointed evaluation: not a call of the sampler
        t, context = args[1], kwargs["encoder_hidden_states"]
        calls.append((int(t), torch.is_grad_enabled() and context.requires_grad, args[0].shape[0]))

    handle = pipe.unet.register_forward_pre_hook(record, with_kwargs=True)
    try:
        vec, _ = _one_epoch(pipe, tiny_clf, config)
    finally:
        handle.remove()
    assert vec.grad is not None and float(vec.grad.norm()) > 0

    n = config.training.images_per_epoch
    graded = [t for t, grad, _ in calls if grad]
    assert graded == schedule[-grad_steps:], calls  # exactly the last grad_steps evaluations, in order
    # Every evaluation of the schedule ran once, guided (both halves): the earlier ones as one batch of 2n
    # without a graph; the first graph-building one as an unconditional batch of n without a graph and the
    # token's batch of n with one; any later graph-building one as one batch of 2n with a graph.
    expected = [(t, False, 2 * n) for t in schedule[:-grad_steps]]
    first, *rest = schedule[-grad_steps:]
    expected += [(first, False, n), (first, True, n)] + [(t, True, 2 * n) for t in rest]
    assert calls == expected, calls


def test_fresh_seeds_render_new_noise_every_epoch(tiny_pipe, tiny_clf):
    """With a learning rate too small to move the token, an epoch's loss depends on its noise alone: 'fixed' gives
    the same loss every epoch; 'fresh' gives epoch e the loss of a 'fixed' run on seeds seed + e * images_per_epoch."""
    still = {"max_epochs": 3, "patience": 10, "accuracy_threshold": 1.0, "restarts": 0}

    def losses(**training) -> list[float]:
        config = tiny_run_config(**{**still, **training})
        config = config.model_copy(update={"optimizer": config.optimizer.model_copy(update={"lr": 1e-30})})
        return optimize_token(tiny_pipe, tiny_clf, class_id=1, class_name="cat", config=config).losses

    fixed = losses(seed_schedule="fixed", seed=4)
    assert fixed == pytest.approx([fixed[0]] * 3, rel=1e-6)
    fresh = losses(seed_schedule="fresh", seed=4)
    by_block = [losses(seed_schedule="fixed", seed=4 + 3 * e, max_epochs=1)[0] for e in range(3)]
    assert fresh == pytest.approx(by_block, rel=1e-6)
    assert len({round(x, 6) for x in fresh}) == 3
