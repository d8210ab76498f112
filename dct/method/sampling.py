"""The one denoising loop, used by optimisation (gradients through the last steps) and by evaluation.

Text → classifier-free-guided denoising → VAE decode. ``grad_steps`` counts the final UNet evaluations
that carry gradients; the earlier ones run under ``torch.no_grad`` so their activations are never kept
(memory is independent of the number of steps). With PNDM and ``skip_prk_steps`` the timestep list has
N+1 entries, so the reference code's "last step" is really the last two UNet evaluations (docs/design.md,
"Reference behaviour").

SDXL-style pipelines (two text encoders) go through the same loop: their prompt embeddings are the two
encoders' penultimate hidden states side by side, and the UNet's added conditioning (the second encoder's
pooled embedding and ``add_time_ids`` for size and crop) is built here as ``StableDiffusionXLPipeline``
builds it (docs/design.md, "SDXL and multi-vector tokens").
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Sequence

import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
)
from torch.utils.checkpoint import checkpoint

from dct.config import SamplerConfig
from dct.method.tokens import expand_prompt, text_encoders

SCHEDULERS = {
    "pndm": PNDMScheduler,
    "ddim": DDIMScheduler,
    "euler": EulerDiscreteScheduler,
    "dpm": DPMSolverMultistepScheduler,
}


def make_scheduler(pipeline_scheduler, sampler: SamplerConfig):
    """A fresh scheduler of the configured kind, built from the pipeline's scheduler config.

    Returns a new object every call: PNDM, DPM and Euler keep per-trajectory state, so sharing one
    across batches or micro-batches would leak state between them.
    """
    overrides = {}
    if sampler.timestep_spacing is not None:
        overrides["timestep_spacing"] = sampler.timestep_spacing
    if sampler.scheduler == "pipeline":
        return type(pipeline_scheduler).from_config(pipeline_scheduler.config, **overrides)
    cls = SCHEDULERS[sampler.scheduler]
    if cls is PNDMScheduler:
        overrides.setdefault("skip_prk_steps", True)  # as Stable Diffusion's own PNDM config
    return cls.from_config(pipeline_scheduler.config, **overrides)


def vae_scale_factor(vae) -> int:
    return 2 ** (len(vae.config.block_out_channels) - 1)


def image_size(pipe, sampler: SamplerConfig) -> tuple[int, int]:
    """(height, width) in pixels: the configured size, else the UNet's native size."""
    native = pipe.unet.config.sample_size * vae_scale_factor(pipe.vae)
    return sampler.height or native, sampler.width or native


def encode_prompts(tokenizer, text_encoder, prompts: Sequence[str], *, penultimate: bool = False):
    """Text-encoder hidden states ``(B, L, D)`` for ``prompts`` (padded to the model's max length).

    Multi-vector tokens are expanded first (:func:`dct.method.tokens.expand_prompt`).

    Args:
        penultimate: return ``(penultimate hidden states, the encoder's first output)`` — what SDXL uses
            (the first output of a ``CLIPTextModelWithProjection`` is its pooled, projected embedding).

    Raises:
        ValueError: a prompt longer than the text encoder's context (it would be silently cut).
    """
    limit = tokenizer.model_max_length
    prompts = [expand_prompt(tokenizer, p) for p in prompts]
    ids = tokenizer(list(prompts), padding="max_length", max_length=limit, truncation=False).input_ids
    for prompt, row in zip(prompts, ids, strict=True):
        if len(row) > limit:
            raise ValueError(
                f"prompt {prompt!r} is {len(row)} tokens, longer than the text encoder's {limit}; "
                "shorten the class name or the template (or use fewer token.num_vectors)"
            )
    ids = torch.tensor(ids)
    device = text_encoder.get_input_embeddings().weight.device
    if penultimate:
        out = text_encoder(ids.to(device), output_hidden_states=True)
        return out.hidden_states[-2], out[0]
    return text_encoder(ids.to(device))[0]


def encode_text(pipe, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(prompt embeddings (B, L, D), pooled (B, P) or None)`` for any supported pipeline.

    One text encoder (SD): its last hidden states, no pooled embedding. Two (SDXL): both encoders'
    penultimate hidden states concatenated on the feature axis, and the second encoder's pooled embedding,
    as ``StableDiffusionXLPipeline.encode_prompt`` (without ``clip_skip``).
    """
    pairs = text_encoders(pipe)
    if len(pairs) == 1:
        return encode_prompts(*pairs[0], prompts), None
    hidden, pooled = [], None
    for tokenizer, text_encoder in pairs:
        states, first = encode_prompts(tokenizer, text_encoder, prompts, penultimate=True)
        hidden.append(states)
        if pooled is None and first.ndim == 2:  # the pipeline's rule: the first 2-D output is the pooled one
            pooled = first
    return torch.cat(hidden, dim=-1), pooled


def unconditional(pipe, batch: int = 1) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The unconditional (negative) embeddings of classifier-free guidance, as the pipeline makes them.

    SD: the empty prompt. SDXL with ``force_zeros_for_empty_prompt`` (its default): zeros for both the
    prompt embeddings and the pooled embedding; otherwise the empty prompt through both encoders.
    """
    hidden, pooled = encode_text(pipe, [""] * batch)
    if pooled is not None and getattr(pipe.config, "force_zeros_for_empty_prompt", False):
        return torch.zeros_like(hidden), torch.zeros_like(pooled)
    return hidden, pooled


def add_time_ids(height: int, width: int, batch: int, *, device, dtype: torch.dtype) -> torch.Tensor:
    """SDXL's size/crop conditioning ``(B, 6)``: original size, crop top-left (0, 0), target size — the
    pipeline's defaults with original = target = the image size."""
    ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=dtype, device=device)
    return ids.repeat(batch, 1)


def initial_latents(
    seeds: Sequence[int], shape: tuple[int, int, int], *, device: torch.device | str, dtype: torch.dtype
) -> torch.Tensor:
    """Initial noise ``(B, C, h, w)``: image i from its own ``torch.Generator`` seeded with ``seeds[i]``.

    Drawn on the CPU in fp32 so the same seed gives the same noise on any device and in any batch
    composition (batch of 3 == three micro-batches of 1).
    """
    noise = [torch.randn(shape, generator=torch.Generator("cpu").manual_seed(int(s))) for s in seeds]
    return torch.stack(noise).to(device=device, dtype=dtype)


def denoise(
    unet,
    scheduler,
    latents: torch.Tensor,
    cond: torch.Tensor,
    uncond: torch.Tensor | None,
    *,
    num_inference_steps: int,
    guidance_scale: float,
    grad_steps: int,
    start_step: int = 0,
    added_cond: dict[str, torch.Tensor] | None = None,
    added_uncond: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Run the sampler from ``latents`` (already scaled by ``init_noise_sigma``).

    Args:
        unet: a diffusers ``UNet2DConditionModel``.
        scheduler: a fresh scheduler (see :func:`make_scheduler`); ``set_timesteps`` is called here.
        latents: ``(B, C, h, w)`` initial noise.
        cond: ``(B, L, D)`` prompt embeddings (may require grad).
        uncond: ``(B, L, D)`` unconditional embeddings, or None when ``guidance_scale == 1``.
        grad_steps: how many of the final UNet evaluations build a graph (0 = none).
        start_step: skip the first ``start_step`` timesteps: ``latents`` are an image already noised to
            ``timesteps[start_step]`` (SDEdit-style redrawing; 0 = start from pure noise).

    Returns:
        Final latents ``(B, C, h, w)``; they carry a graph to ``cond`` iff ``grad_steps > 0``.
    """
    scheduler.set_timesteps(num_inference_steps, device=latents.device)
    timesteps = scheduler.timesteps
    grad_from_step = len(timesteps) - grad_steps
    use_cfg = uncond is not None and guidance_scale != 1.0
    context = torch.cat([uncond, cond]) if use_cfg else cond
    added = _cat_added(added_uncond, added_cond) if use_cfg else added_cond
    last = len(timesteps) - 1
    for step, t in enumerate(timesteps):
        if step < start_step:
            continue
        grad = torch.is_grad_enabled() and step >= grad_from_step
        # Graph-building evaluations before the last are checkpointed: the backward reaches them only after
        # the last one's activations are freed, so recomputing them one at a time keeps the epoch's peak at
        # one UNet evaluation's activations whatever grad_steps is (cost: one forward per such step).
        call = functools.partial(checkpoint, unet, use_reentrant=False) if grad and step < last else unet
        with torch.set_grad_enabled(grad):
            if use_cfg and grad and not latents.requires_grad and not uncond.requires_grad:
                # First graph-building step: the unconditional branch depends on neither the latents'
                # history nor the token, so its UNet evaluation keeps no activations (half of this
                # step's saved tensors). Mathematically the same gradient as the joint batch.
                model_in = scheduler.scale_model_input(latents, t)
                with torch.no_grad():
                    noise_uncond = unet(
                        model_in, t, encoder_hidden_states=uncond.to(model_in.dtype), added_cond_kwargs=added_uncond
                    ).sample
                noise_cond = call(
                    model_in, t, encoder_hidden_states=cond.to(model_in.dtype), added_cond_kwargs=added_cond
                ).sample
                noise = noise_uncond + guidance_scale * (noise_cond - noise_uncond)
            else:
                model_in = torch.cat([latents, latents]) if use_cfg else latents
                model_in = scheduler.scale_model_input(model_in, t)
                noise = call(
                    model_in, t, encoder_hidden_states=context.to(model_in.dtype), added_cond_kwargs=added
                ).sample
                if use_cfg:
                    noise_uncond, noise_cond = noise.chunk(2)
                    noise = noise_uncond + guidance_scale * (noise_cond - noise_uncond)
            latents = scheduler.step(noise, t, latents).prev_sample
    return latents


def _cat_added(
    uncond: dict[str, torch.Tensor] | None, cond: dict[str, torch.Tensor] | None
) -> dict[str, torch.Tensor] | None:
    """The added conditioning of the joint [uncond, cond] batch (same order as the embeddings)."""
    if cond is None:
        return None
    return {k: torch.cat([uncond[k], cond[k]]) for k in cond}


def decode_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    """VAE-decode latents ``(B, C, h, w)`` to images ``(B, 3, H, W)`` float in [0, 1] (differentiable).

    A float32 VAE decodes in float32 even under fp16/bf16 autocast: the loader keeps the SDXL VAE in
    float32 under fp16 because it overflows there (docs/models.md).
    """
    if next(vae.parameters()).dtype == torch.float32 and torch.is_autocast_enabled(latents.device.type):
        with torch.autocast(device_type=latents.device.type, enabled=False):
            return decode_latents(vae, latents.float())
    images = vae.decode(latents / vae.config.scaling_factor).sample
    return (images.float() / 2 + 0.5).clamp(0, 1)


def autocast(device: torch.device | str, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """bf16/fp16 autocast on accelerators; nothing in fp32 or on CPU (fp32 is the CPU path)."""
    device_type = torch.device(device).type
    if dtype == torch.float32 or device_type == "cpu":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, dtype=dtype)


def render(
    pipe,
    cond: torch.Tensor,
    uncond: torch.Tensor | None,
    seeds: Sequence[int],
    sampler: SamplerConfig,
    *,
    grad_steps: int,
    device: torch.device | str,
    pooled: torch.Tensor | None = None,
    uncond_pooled: torch.Tensor | None = None,
) -> torch.Tensor:
    """Prompt embeddings + seeds → images ``(B, 3, H, W)`` in [0, 1]; the shared core of train and eval.

    ``pooled`` / ``uncond_pooled`` (SDXL, from :func:`encode_text` / :func:`unconditional`) become the
    UNet's added conditioning together with :func:`add_time_ids` of the image size.
    """
    height, width = image_size(pipe, sampler)
    factor = vae_scale_factor(pipe.vae)
    shape = (pipe.unet.config.in_channels, height // factor, width // factor)
    scheduler = make_scheduler(pipe.scheduler, sampler)
    latents = initial_latents(seeds, shape, device=device, dtype=torch.float32) * scheduler.init_noise_sigma
    added_cond = added_uncond = None
    if pooled is not None:
        time_ids = add_time_ids(height, width, len(seeds), device=cond.device, dtype=cond.dtype)
        added_cond = {"text_embeds": pooled, "time_ids": time_ids}
        if uncond_pooled is not None:
            added_uncond = {"text_embeds": uncond_pooled, "time_ids": time_ids}
    latents = denoise(
        pipe.unet,
        scheduler,
        latents,
        cond,
        uncond,
        num_inference_steps=sampler.num_inference_steps,
        guidance_scale=sampler.guidance_scale,
        grad_steps=grad_steps,
        added_cond=added_cond,
        added_uncond=added_uncond,
    )
    if not (torch.is_grad_enabled() and latents.requires_grad):
        return decode_latents(pipe.vae, latents)
    # With gradients, the VAE decoder's full-resolution activations are the largest saved tensors of the
    # epoch (more than the UNet's at 8x fewer pixels). Checkpoint the decode image by image: only the
    # latents are kept, and the backward recomputes one image's decoder at a time: that part of the peak
    # is one image's (as with the reference's batch of one), for one extra decoder forward per image.
    return torch.cat(
        [checkpoint(decode_latents, pipe.vae, latents[i : i + 1], use_reentrant=False) for i in range(len(latents))]
    )


def expand_unconditional(
    uncond: torch.Tensor | None, uncond_pooled: torch.Tensor | None, batch: int
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The once-computed unconditional embeddings (batch 1) as a batch of ``batch`` (views, no copies)."""
    return (
        uncond.expand(batch, -1, -1) if uncond is not None else None,
        uncond_pooled.expand(batch, -1) if uncond_pooled is not None else None,
    )


def iter_batches(n: int, size: int | None) -> Iterator[slice]:
    size = size or n
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


@torch.no_grad()
def generate(
    pipe,
    prompts: Sequence[str],
    seeds: Sequence[int],
    sampler: SamplerConfig,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    batch_size: int | None = None,
) -> torch.Tensor:
    """Generate one image per (prompt, seed) pair with exactly the configured sampler settings.

    Args:
        pipe: a Stable-Diffusion-style pipeline (tokenizer, text_encoder, unet, vae, scheduler), or an
            SDXL-style one (also tokenizer_2, text_encoder_2).
        prompts: one prompt per image.
        seeds: one noise seed per image (``len(seeds) == len(prompts)``).
        batch_size: images per batch (None = all at once); results do not depend on it.

    Returns:
        Images ``(B, 3, H, W)`` float in [0, 1] on the CPU.

    Raises:
        ValueError: prompts and seeds differ in length.
    """
    if len(prompts) != len(seeds):
        raise ValueError(f"got {len(prompts)} prompts but {len(seeds)} seeds; pass one seed per prompt")
    use_cfg = sampler.guidance_scale != 1.0
    out = []
    with autocast(device, dtype):
        uncond_one, uncond_pooled_one = unconditional(pipe) if use_cfg else (None, None)
        for sl in iter_batches(len(prompts), batch_size):
            cond, pooled = encode_text(pipe, prompts[sl])
            uncond, uncond_pooled = expand_unconditional(uncond_one, uncond_pooled_one, cond.shape[0])
            images = render(
                pipe, cond, uncond, seeds[sl], sampler, grad_steps=0, device=device,
                pooled=pooled, uncond_pooled=uncond_pooled,
            )
            out.append(images.float().cpu())
    return torch.cat(out)
