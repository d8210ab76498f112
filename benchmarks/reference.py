"""A reference-style DCT epoch: the authors' training loop (idansc/discriminative_class_tokens, run.py,
``train``) re-expressed on our models, for timing only.

Pinned choices, each as the reference makes it (so the comparison cannot be tilted either way):

- batch 1 × gradient accumulation over ``images_per_epoch`` images (reference ``batch_size=1``,
  ``gradient_accumulation_steps=5``); accelerate divides each micro-batch loss by the accumulation count;
- per image: the prompt AND the unconditional prompt are encoded again (the reference re-encodes ``""``
  for every image, with grad enabled), noise drawn, a full sampler run, VAE decode, classifier;
- conditioning UNPADDED at batch 1: the reference tokenises each prompt with ``padding="do_not_pad"`` and
  pads the batch of one to its own length, and pads ``""`` to that same length, so the UNet cross-attends
  over L ≈ 10 text positions, not 77 (ours pads to 77, as diffusers pipelines do; docs/design.md);
- precision: on CUDA the UNet and VAE weights are fp16 (``mixed_precision="fp16"`` casts them), the text
  encoder runs fp32 weights under fp16 autocast (accelerate wraps the prepared model), the classifier
  fp32; on CPU everything is fp32 (accelerate's fp16 mixed precision is CUDA-only);
- recomputation: UNet gradient checkpointing ON (``unet.enable_gradient_checkpointing()`` + ``train()``);
  the text encoder's checkpointing is requested but inactive there (it stays in eval mode) — same here;
- the token is a row of the embedding table: the whole table gets a dense gradient, the rows other
  than the token are zeroed after every backward, and AdamW steps the whole table (weight decay on it);
- ``clip_grad_norm_`` over the table runs BEFORE each backward, i.e. on the gradients accumulated from the
  earlier images of the epoch. On CUDA those are SCALED by accelerate's fp16 ``GradScaler`` (initial scale
  2**16), so each clip cuts the earlier images' scaled sum to norm 1 before the next image is added
  whenever its unscaled norm exceeds 2**-16 (≈ 1.5e-5), and after unscaling the update is then essentially
  the last image's gradient: modelled here with the same
  ``torch.amp.GradScaler`` (scale → backward, clip before, unscale + step + update at the end of the epoch;
  an inf/NaN gradient skips the step, as the scaler does). On CPU (no scaler: fp16 mixed precision is
  CUDA-only) the clip acts on the unscaled partial sum and is a no-op while its norm stays below 1;
- per image ``loss.item()`` and ``argmax().item()`` (host syncs);
- attention: the same SDPA processor as ours (``AttnProcessor2_0``; the reference ran torch 2.0 with
  diffusers' default, which is SDPA); the same thread count as ours (set by the caller);
- gradients through the last ``grad_steps`` UNet evaluations (the reference's ``grad_update_step``;
  2 with PNDM), the same sampler and scheduler as ours;
- NOT timed (once per class, or pure I/O): model loading (the reference reloads per class — see
  ``benchmarks.throughput``), saving a JPEG per image, saving the whole pipeline on improvement.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dct.config import RunConfig
from dct.method.sampling import initial_latents, make_scheduler, vae_scale_factor


@dataclass
class ReferenceState:
    """What the reference sets up once per class: placeholder row, table optimiser, dtypes."""

    pipe: object
    classifier: torch.nn.Module
    token_id: int
    optimizer: torch.optim.Optimizer
    weight_dtype: torch.dtype
    device: torch.device
    uncond_ids: list[torch.Tensor]
    cond_ids: list[torch.Tensor]
    scaler: torch.amp.GradScaler | None


def reference_weight_dtype(device: torch.device | str) -> torch.dtype:
    """fp16 on CUDA (the reference's ``mixed_precision="fp16"``), fp32 elsewhere."""
    return torch.float16 if torch.device(device).type == "cuda" else torch.float32


def setup_reference(
    pipe, classifier, config: RunConfig, prompts: Sequence[str], *, device, grad_scale: float | None = None
) -> ReferenceState:
    """Prepare ``pipe`` (a private copy) the way the reference does: token row, checkpointing, dtypes.

    ``grad_scale``: None = as the reference (an fp16 GradScaler starting at 2**16 on CUDA, none on CPU); a
    number forces a scaler with that initial scale (also on CPU, where ``torch.amp.GradScaler`` works the
    same way), so its effect can be checked without a GPU on models whose gradients are tiny.
    """
    from diffusers.models.attention_processor import AttnProcessor2_0

    device = torch.device(device)
    tok, te = pipe.tokenizer, pipe.text_encoder
    token = config.token_string(0)
    if tok.add_tokens(token) == 1:
        te.resize_token_embeddings(len(tok), mean_resizing=False)
    token_id = int(tok.convert_tokens_to_ids(token))
    init_id = tok.encode(config.token.initializer_token, add_special_tokens=False)[0]
    emb = te.get_input_embeddings()
    with torch.no_grad():
        emb.weight[token_id] = emb.weight[init_id]
    emb.weight.requires_grad_(True)  # the whole table is the parameter (reference)
    opt = config.optimizer
    optimizer = torch.optim.AdamW(
        emb.parameters(), lr=opt.lr, betas=opt.betas, weight_decay=opt.weight_decay, eps=opt.eps
    )
    weight_dtype = reference_weight_dtype(device)
    pipe.unet.to(device=device, dtype=weight_dtype)
    pipe.vae.to(device=device, dtype=weight_dtype)
    te.to(device=device, dtype=torch.float32)
    classifier.to(device=device, dtype=torch.float32)
    pipe.unet.set_attn_processor(AttnProcessor2_0())
    pipe.unet.enable_gradient_checkpointing()
    pipe.unet.train()  # the reference: "Keep unet in train mode to enable gradient checkpointing"
    max_len = tok.model_max_length
    # Reference tokenisation: the prompt unpadded (a batch of one padded to its own length), "" padded to it.
    cond_ids = [
        tok(p, padding="do_not_pad", truncation=True, max_length=max_len, return_tensors="pt").input_ids
        for p in prompts
    ]
    uncond_ids = [
        tok([""], padding="max_length", max_length=c.shape[-1], return_tensors="pt").input_ids for c in cond_ids
    ]
    # accelerate's mixed_precision="fp16" wraps backward/step in a GradScaler (its default init scale 2**16).
    if grad_scale is None and device.type == "cuda":
        grad_scale = 2.0**16
    scaler = torch.amp.GradScaler(device.type, init_scale=grad_scale) if grad_scale is not None else None

    return ReferenceState(
        pipe=pipe,
        classifier=classifier,
        token_id=token_id,
        optimizer=optimizer,
        weight_dtype=weight_dtype,
        device=device,
        uncond_ids=uncond_ids,
        cond_ids=cond_ids,
        scaler=scaler,
    )


def _text_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def reference_epoch(state: ReferenceState, config: RunConfig, seeds: Sequence[int], target: int) -> float:
    """One reference-style epoch (batch 1 × accumulation, then one AdamW step); returns the summed loss."""
    total = reference_accumulate(state, config, seeds, target)
    reference_step(state)
    return total


def reference_step(state: ReferenceState) -> None:
    """The end of a reference epoch: (unscale and) step AdamW on the whole table, then zero the gradients."""
    if state.scaler is not None:
        state.scaler.step(state.optimizer)  # unscales, skips the step on inf/NaN
        state.scaler.update()
    else:
        state.optimizer.step()
    state.optimizer.zero_grad()


def reference_accumulate(state: ReferenceState, config: RunConfig, seeds: Sequence[int], target: int) -> float:
    """The per-image part of a reference epoch: forward, clip (before backward), (scaled) backward, row mask.

    Leaves the accumulated (scaled, on a scaler) gradients in the table; returns the summed loss.
    """
    pipe, device, wdt = state.pipe, state.device, state.weight_dtype
    sampler, n = config.sampler, len(seeds)
    emb = pipe.text_encoder.get_input_embeddings()
    height = sampler.height or pipe.unet.config.sample_size * vae_scale_factor(pipe.vae)
    width = sampler.width or height
    factor = vae_scale_factor(pipe.vae)
    shape = (pipe.unet.config.in_channels, height // factor, width // factor)
    mask = torch.arange(emb.weight.shape[0]) != state.token_id  # built per step in the reference
    do_cfg = sampler.guidance_scale > 1.0
    total = 0.0
    for i, seed in enumerate(seeds):
        with _text_autocast(device):
            cond = pipe.text_encoder(state.cond_ids[i].to(device))[0]
            if do_cfg:
                uncond = pipe.text_encoder(state.uncond_ids[i].to(device))[0]
                cond = torch.cat([uncond, cond])
        ehs = cond.to(wdt)
        scheduler = make_scheduler(pipe.scheduler, sampler)
        latents = (initial_latents([seed], shape, device=device, dtype=torch.float32) * scheduler.init_noise_sigma).to(
            wdt
        )
        scheduler.set_timesteps(sampler.num_inference_steps, device=device)
        grad_from = len(scheduler.timesteps) - config.training.grad_steps
        for j, t in enumerate(scheduler.timesteps):
            with torch.set_grad_enabled(j >= grad_from):
                model_in = torch.cat([latents] * 2) if do_cfg else latents
                model_in = scheduler.scale_model_input(model_in, t)
                noise = pipe.unet(model_in, t, encoder_hidden_states=ehs).sample
                if do_cfg:
                    nu, nc = noise.chunk(2)
                    noise = nu + sampler.guidance_scale * (nc - nu)
                latents = scheduler.step(noise, t, latents).prev_sample
        image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
        image = (image / 2 + 0.5).clamp(0, 1)
        logits = state.classifier(image.float())
        loss = F.cross_entropy(logits, torch.tensor([target], device=device)) / n  # accelerate's 1/accum
        _pred = int(logits.argmax().item())
        total += float(loss.detach().item())
        # Before backward, as the reference: clips what the earlier images accumulated (scaled on CUDA).
        torch.nn.utils.clip_grad_norm_(emb.parameters(), config.optimizer.max_grad_norm or 1.0)
        (state.scaler.scale(loss) if state.scaler is not None else loss).backward()
        emb.weight.grad.data[mask, :] = emb.weight.grad.data[mask, :].fill_(0)
    return total
