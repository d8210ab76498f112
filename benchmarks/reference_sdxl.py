"""The reference-style DCT epoch of :mod:`benchmarks.reference`, carried over to SDXL-style pipelines, for
timing only.

The authors' code has no SDXL path. This is their loop with SDXL's inputs, carried over the way diffusers'
own SDXL textual-inversion trainer carries the SD trainer over: the placeholder is a row of BOTH embedding
tables, both tables are the optimiser's parameters; the prompt is encoded per image through both encoders
(penultimate hidden states concatenated; the second encoder's pooled embedding plus ``add_time_ids`` as the
UNet's added conditioning), the negative is zeros (the SDXL pipeline's ``force_zeros_for_empty_prompt``).
Everything else is pinned exactly as in :mod:`benchmarks.reference`: batch 1 × accumulation, fp16 UNet/VAE
on CUDA with UNet gradient checkpointing, whole-table gradient masking and AdamW, clip before backward,
per-image host syncs, SDPA attention, the same sampler and ``grad_steps``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from benchmarks.reference import reference_weight_dtype
from dct.config import RunConfig
from dct.method.sampling import initial_latents, make_scheduler, vae_scale_factor


@dataclass
class ReferenceSDXLState:
    pipe: object
    classifier: torch.nn.Module
    token_ids: list[int]  # per text encoder
    optimizer: torch.optim.Optimizer
    weight_dtype: torch.dtype
    device: torch.device
    cond_ids: list[list[torch.Tensor]]  # per image, per text encoder


def setup_reference_sdxl(pipe, classifier, config: RunConfig, prompts: Sequence[str], *, device) -> ReferenceSDXLState:
    from diffusers.models.attention_processor import AttnProcessor2_0

    device = torch.device(device)
    token = config.token_string(0)
    pairs = [(pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)]
    token_ids, tables = [], []
    for tok, te in pairs:
        if tok.add_tokens(token) == 1:
            te.resize_token_embeddings(len(tok), mean_resizing=False)
        token_id = int(tok.convert_tokens_to_ids(token))
        init_id = tok.encode(config.token.initializer_token, add_special_tokens=False)[0]
        emb = te.get_input_embeddings()
        with torch.no_grad():
            emb.weight[token_id] = emb.weight[init_id]
        emb.weight.requires_grad_(True)
        te.to(device=device, dtype=torch.float32)
        token_ids.append(token_id)
        tables.append(emb.weight)
    opt = config.optimizer
    optimizer = torch.optim.AdamW(tables, lr=opt.lr, betas=opt.betas, weight_decay=opt.weight_decay, eps=opt.eps)
    weight_dtype = reference_weight_dtype(device)
    pipe.unet.to(device=device, dtype=weight_dtype)
    pipe.vae.to(device=device, dtype=weight_dtype)
    classifier.to(device=device, dtype=torch.float32)
    pipe.unet.set_attn_processor(AttnProcessor2_0())
    pipe.unet.enable_gradient_checkpointing()
    pipe.unet.train()

    def ids(tok, text: str) -> torch.Tensor:
        return tok(text, padding="max_length", max_length=tok.model_max_length, return_tensors="pt").input_ids

    return ReferenceSDXLState(
        pipe=pipe,
        classifier=classifier,
        token_ids=token_ids,
        optimizer=optimizer,
        weight_dtype=weight_dtype,
        device=device,
        cond_ids=[[ids(tok, p) for tok, _ in pairs] for p in prompts],
    )


def _text_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def reference_sdxl_epoch(state: ReferenceSDXLState, config: RunConfig, seeds: Sequence[int], target: int) -> float:
    pipe, device, wdt = state.pipe, state.device, state.weight_dtype
    sampler, n = config.sampler, len(seeds)
    encoders = [pipe.text_encoder, pipe.text_encoder_2]
    tables = [te.get_input_embeddings().weight for te in encoders]
    factor = vae_scale_factor(pipe.vae)
    height = sampler.height or pipe.unet.config.sample_size * factor
    width = sampler.width or height
    shape = (pipe.unet.config.in_channels, height // factor, width // factor)
    masks = [torch.arange(t.shape[0]) != i for t, i in zip(tables, state.token_ids, strict=True)]
    do_cfg = sampler.guidance_scale > 1.0
    time_ids = torch.tensor([[height, width, 0, 0, height, width]], device=device, dtype=wdt)
    total = 0.0
    for i, seed in enumerate(seeds):
        with _text_autocast(device):
            hidden, pooled = [], None
            for te, ids in zip(encoders, state.cond_ids[i], strict=True):
                out = te(ids.to(device), output_hidden_states=True)
                hidden.append(out.hidden_states[-2])
                pooled = out[0] if out[0].ndim == 2 else pooled
            cond = torch.cat(hidden, dim=-1)
        ehs, text_embeds, tids = cond.to(wdt), pooled.to(wdt), time_ids
        if do_cfg:
            ehs = torch.cat([torch.zeros_like(ehs), ehs])
            text_embeds = torch.cat([torch.zeros_like(text_embeds), text_embeds])
            tids = torch.cat([time_ids, time_ids])
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
                added = {"text_embeds": text_embeds, "time_ids": tids}
                noise = pipe.unet(model_in, t, encoder_hidden_states=ehs, added_cond_kwargs=added).sample
                if do_cfg:
                    nu, nc = noise.chunk(2)
                    noise = nu + sampler.guidance_scale * (nc - nu)
                latents = scheduler.step(noise, t, latents).prev_sample
        image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
        image = (image / 2 + 0.5).clamp(0, 1)
        logits = state.classifier(image.float())
        loss = F.cross_entropy(logits, torch.tensor([target], device=device)) / n
        _pred = int(logits.argmax().item())
        total += float(loss.detach().item())
        torch.nn.utils.clip_grad_norm_(tables, config.optimizer.max_grad_norm or 1.0)  # before backward
        loss.backward()
        for table, mask in zip(tables, masks, strict=True):
            table.grad.data[mask, :] = table.grad.data[mask, :].fill_(0)
    state.optimizer.step()
    state.optimizer.zero_grad()
    return total
