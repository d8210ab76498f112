"""Retrain a whole world from scratch: ``python -m dct.toy.train [--out DIR]``, ``python -m dct.fashion.train``.

Stages (each timed and printed): the world's training images -> VAE (then frozen) -> guide and evaluator
classifiers (on clean images and VAE reconstructions, so generated-looking images cannot fool them trivially;
on the same images or on disjoint halves, as the world's :class:`~dct.worlds.TrainRecipe` says) -> text encoder
and UNet trained jointly on the world's captions -> save the pipeline with ``save_pretrained`` -> the guide
fine-tuned on images the trained world itself redraws (see :func:`redraw`), so that it judges the generator's
own rendering of a class (the evaluator is never shown generated images).
Deterministic for a given thread count (CPU results vary slightly with the number of threads).
"""

from __future__ import annotations

import argparse
import copy
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dct.toy import models
from dct.worlds import Split, World, get_world

logger = logging.getLogger(__name__)

# Timesteps the configured sampler visits (DDIM, 5 steps, trailing): half of every diffusion batch is
# drawn near them, so a short training run spends its capacity where sampling happens.
SAMPLER_TIMESTEPS = (999, 799, 599, 399, 199)


def _lr(step: int, total: int, base: float, warmup: int = 100) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train_vae(images: torch.Tensor, steps: int, batch: int, gen: torch.Generator):
    vae = models.build_vae()
    opt = torch.optim.AdamW(vae.parameters(), lr=2e-3, weight_decay=0.0)
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = _lr(step, steps, 2e-3)
        idx = torch.randint(len(images), (batch,), generator=gen)
        x = images[idx] * 2 - 1
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen)
        rec = vae.decode(z).sample
        # Nearly a plain autoencoder (tiny KL weight, as in SD's VAE): sharp reconstructions matter most.
        loss = F.mse_loss(rec, x) + 0.5 * F.l1_loss(rec, x) + 1e-6 * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == steps - 1:
            logger.info("vae step %d/%d loss %.4f", step, steps, loss.item())
    vae.requires_grad_(False).eval()
    return vae


@torch.no_grad()
def encode(vae, images: torch.Tensor, batch: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    means, stds = [], []
    for i in range(0, len(images), batch):
        post = vae.encode(images[i : i + batch] * 2 - 1).latent_dist
        means.append(post.mean)
        stds.append(post.std)
    return torch.cat(means), torch.cat(stds)


@torch.no_grad()
def decode(vae, latents: torch.Tensor, batch: int = 500) -> torch.Tensor:
    out = [vae.decode(latents[i : i + batch]).sample for i in range(0, len(latents), batch)]
    return (torch.cat(out) / 2 + 0.5).clamp(0, 1)


def train_classifier(
    name: str,
    num_classes: int,
    clean: torch.Tensor,
    recon: torch.Tensor,
    labels: torch.Tensor,
    steps: int,
    batch: int,
    gen: torch.Generator,
    recon_share: float,
):
    """Train one classifier (the guide's or the evaluator's architecture, ``name``) on a mix of clean images and
    their VAE reconstructions (+ flips, noise)."""
    spec = models.CLASSIFIER_SPECS[name]
    net = models.build_classifier_model(spec, num_classes)
    from dct.models.preprocess import DifferentiablePreprocess

    prep = DifferentiablePreprocess(spec["preprocess"])
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=5e-4)
    net.train()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = _lr(step, steps, 3e-3, warmup=50)
        idx = torch.randint(len(labels), (batch,), generator=gen)
        use_recon = (torch.rand(batch, generator=gen) < recon_share).view(-1, 1, 1, 1)
        x = torch.where(use_recon, recon[idx], clean[idx])
        flip = torch.rand(batch, generator=gen) < 0.5
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        x = (x + 0.03 * torch.rand(batch, 1, 1, 1, generator=gen) * torch.randn(x.shape, generator=gen)).clamp(0, 1)
        loss = F.cross_entropy(net(prep(x)), labels[idx], label_smoothing=0.05)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == steps - 1:
            logger.info("%s step %d/%d loss %.4f", name, step, steps, loss.item())
    net.eval().requires_grad_(False)
    return net, prep


@torch.no_grad()
def accuracy(net, prep, images: torch.Tensor, labels: torch.Tensor) -> float:
    pred = torch.cat([net(prep(images[i : i + 500])).argmax(dim=1) for i in range(0, len(images), 500)])
    return (pred == labels).float().mean().item()


def train_diffusion(
    world: World,
    tokenizer,
    means,
    stds,
    attrs,
    steps: int,
    batch: int,
    gen: torch.Generator,
    seed: int,
    checkpoint=None,
    checkpoint_every: int = 0,
):
    text_encoder = models.build_text_encoder(tokenizer)
    unet = models.build_unet()
    sched = models.build_scheduler()
    alphas = sched.alphas_cumprod
    params = [*unet.parameters(), *text_encoder.parameters()]
    opt = torch.optim.AdamW(params, lr=1.5e-3, weight_decay=1e-2)
    ema_unet, ema_text = copy.deepcopy(unet).requires_grad_(False), copy.deepcopy(text_encoder).requires_grad_(False)
    rng = np.random.default_rng(seed)
    centres = torch.tensor(SAMPLER_TIMESTEPS)
    unet.train()
    text_encoder.train()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = _lr(step, steps, 1.5e-3)
        idx = torch.randint(len(means), (batch,), generator=gen)
        z0 = means[idx] + stds[idx] * torch.randn(means[idx].shape, generator=gen)
        t_uniform = torch.randint(0, 1000, (batch,), generator=gen)
        t_near = (
            centres[torch.randint(len(centres), (batch,), generator=gen)]
            + torch.randint(-20, 21, (batch,), generator=gen)
        ).clamp(0, 999)
        t = torch.where(torch.rand(batch, generator=gen) < 0.5, t_near, t_uniform)
        noise = torch.randn(z0.shape, generator=gen)
        a = alphas[t].view(-1, 1, 1, 1)
        zt = a.sqrt() * z0 + (1 - a).sqrt() * noise
        texts = [world.caption(attrs[i], rng) for i in idx.tolist()]
        ids = tokenizer(
            texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
        ).input_ids
        cond = text_encoder(ids)[0]
        pred = unet(zt, t, encoder_hidden_states=cond).sample
        loss = F.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(0.998, (1 + step) / (10 + step))
        with torch.no_grad():
            for ema, live in ((ema_unet, unet), (ema_text, text_encoder)):
                for pe, pl in zip(ema.parameters(), live.parameters(), strict=True):
                    pe.lerp_(pl, 1 - decay)
        if step % 50 == 0 or step == steps - 1:
            logger.info("diffusion step %d/%d loss %.4f", step, steps, loss.item())
        if checkpoint is not None and checkpoint_every and (step + 1) % checkpoint_every == 0 and step + 1 < steps:
            checkpoint(ema_text, ema_unet, step + 1)
    return ema_text.eval(), ema_unet.eval()


@torch.no_grad()
def redraw(
    world: World, pipe, images: torch.Tensor, attrs, start: int, gen: torch.Generator, rng, batch: int = 500
) -> torch.Tensor:
    """Generated-looking images of known class: each image encoded, noised to the sampler's ``start``-th
    timestep and denoised by the world's own UNet with a descriptive caption (SDEdit). The generator's way of
    drawing a class (rounded corners, blobs) with the label of the image it started from."""
    from dct.method.sampling import decode_latents, denoise, encode_prompts, make_scheduler

    sampler = world.dataset().sampler

    out = []
    for i in range(0, len(images), batch):
        x = images[i : i + batch]
        sched = make_scheduler(pipe.scheduler, sampler)
        sched.set_timesteps(sampler.num_inference_steps)
        z0 = pipe.vae.encode(x * 2 - 1).latent_dist.mean * pipe.vae.config.scaling_factor
        z = sched.add_noise(z0, torch.randn(z0.shape, generator=gen), sched.timesteps[start : start + 1].repeat(len(x)))
        texts = [world.caption(a, rng, kind="descriptive") for a in attrs[i : i + batch]]
        z = denoise(
            pipe.unet,
            sched,
            z,
            encode_prompts(pipe.tokenizer, pipe.text_encoder, texts),
            encode_prompts(pipe.tokenizer, pipe.text_encoder, [""] * len(x)),
            num_inference_steps=sampler.num_inference_steps,
            guidance_scale=sampler.guidance_scale,
            grad_steps=0,
            start_step=start,
        )
        out.append(decode_latents(pipe.vae, z))
    return torch.cat(out)


def finetune_guide_on_redrawn(
    world: World,
    pipe,
    net,
    prep,
    images: torch.Tensor,
    labels: torch.Tensor,
    attrs,
    *,
    steps: int,
    seed: int,
    num_redrawn: int = 4000,
    start: int = 2,
    share: float = 0.5,
    lr: float = 1e-3,
    batch: int = 128,
) -> None:
    """Fine-tune the guide (in place) on ``share`` redrawn images (:func:`redraw` from t=599) and the rest clean
    renders and VAE reconstructions, as in its first training. Own random streams (``seed``), so the earlier
    stages draw the same numbers whether or not this stage runs."""
    gen, rng = torch.Generator().manual_seed(seed), np.random.default_rng(seed)
    num_redrawn = min(num_redrawn, len(images))
    pool = redraw(world, pipe, images[:num_redrawn], attrs[:num_redrawn], start, gen, rng)
    pool_labels = labels[:num_redrawn]
    recon = decode(pipe.vae, encode(pipe.vae, images)[0])
    net.train().requires_grad_(True)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=5e-4)
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = _lr(step, steps, lr, warmup=20)
        use_pool = torch.rand(batch, generator=gen) < share
        pi = torch.randint(num_redrawn, (batch,), generator=gen)
        ri = torch.randint(len(images), (batch,), generator=gen)
        use_recon = (torch.rand(batch, generator=gen) < 0.8).view(-1, 1, 1, 1)
        x = torch.where(use_pool.view(-1, 1, 1, 1), pool[pi], torch.where(use_recon, recon[ri], images[ri]))
        y = torch.where(use_pool, pool_labels[pi], labels[ri])
        flip = torch.rand(batch, generator=gen) < 0.5
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        loss = F.cross_entropy(net(prep(x)), y, label_smoothing=0.05)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == steps - 1:
            logger.info("guide on redrawn images step %d/%d loss %.4f", step, steps, loss.item())
    net.eval().requires_grad_(False)


def parser(world: World) -> argparse.ArgumentParser:
    r = world.recipe
    p = argparse.ArgumentParser(
        prog=f"python -m dct.{world.name}.train", description=f"Retrain the {world.name} world from scratch."
    )
    p.add_argument("--out", type=Path, default=world.weights_dir, help="weights directory (default: the shipped one)")
    p.add_argument("--num-images", type=int, default=r.num_images, help="VAE and diffusion training images")
    p.add_argument("--vae-steps", type=int, default=r.vae_steps)
    p.add_argument("--guide-steps", type=int, default=r.guide_steps)
    p.add_argument("--classifier-steps", type=int, default=r.evaluator_steps, help="evaluator training steps")
    p.add_argument("--diffusion-steps", type=int, default=r.diffusion_steps)
    p.add_argument("--guide-redrawn-steps", type=int, default=r.guide_redrawn_steps, help="0 skips the last stage")
    p.add_argument("--batch", type=int, default=r.batch)
    p.add_argument("--seed", type=int, default=0)
    # 2 threads (the shipped weights; results vary slightly with the thread count). On a CPU shared with
    # other jobs use 1: two OpenMP threads on an oversubscribed machine mostly wait for each other.
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--checkpoint-every", type=int, default=0, help="also save the pipeline every N diffusion steps")
    return p


def train_world(world: World, args: argparse.Namespace) -> dict[str, float]:
    """Every stage of ``world``'s training with ``args`` (:func:`parser`); returns the seconds per stage."""
    recipe = world.recipe
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # denormals slow CPU convolutions several-fold early in training
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t_all = time.perf_counter()

    def stage_done(name: str, t0: float) -> None:
        timings[name] = time.perf_counter() - t0
        print(f"time {name}: {timings[name]:.1f} s", flush=True)

    t0 = time.perf_counter()
    shared = recipe.classifier_split == "shared"
    full = world.train_split(args.num_images if shared else None)
    data = full if shared else full.take(slice(0, args.num_images))
    test = world.test_split(recipe.test_images)
    stage_done("data", t0)
    print(f"data: {len(data)} training images, {len(full)} for the classifiers, {len(test)} held-out", flush=True)

    t0 = time.perf_counter()
    vae = train_vae(data.images, args.vae_steps, args.batch, gen)
    means, stds = encode(vae, data.images)
    # SD convention: latents are scaled to unit variance before diffusion (vae.config.scaling_factor).
    scaling = 1.0 / (means + stds * torch.randn(means.shape, generator=gen)).std().item()
    vae.register_to_config(scaling_factor=scaling)
    recon = decode(vae, means + stds * torch.randn(means.shape, generator=gen))
    if not shared:  # the classifiers' halves cover the whole train split: reconstruct all of it
        full_means, full_stds = encode(vae, full.images)
        recon = decode(vae, full_means + full_stds * torch.randn(full_means.shape, generator=gen))
    test_recon = decode(vae, encode(vae, test.images)[0])
    stage_done("vae", t0)
    print(f"vae: scaling_factor {scaling:.4f}, held-out reconstruction MSE "
          f"{F.mse_loss(test_recon, test.images).item():.5f}", flush=True)

    names = list(world.class_names)
    trained = {}
    recon_split = Split(recon, full.labels, full.attrs)
    for name, share, steps in (
        ("guide", recipe.guide_recon_share, args.guide_steps),
        ("evaluator", recipe.evaluator_recon_share, args.classifier_steps),
    ):
        t0 = time.perf_counter()
        own, own_recon = world.classifier_split(full, name), world.classifier_split(recon_split, name)
        net, prep = train_classifier(
            name, world.num_classes, own.images, own_recon.images, own.labels, steps, recipe.classifier_batch, gen,
            share,
        )
        trained[name] = (net, prep)
        models.save_classifier(net, name, names, models.classifier_file(args.out, name))
        stage_done(name, t0)
        print(
            f"{name}: trained on {len(own)} images; held-out accuracy "
            f"{accuracy(net, prep, test.images, test.labels):.4f}, "
            f"on their VAE reconstructions {accuracy(net, prep, test_recon, test.labels):.4f}",
            flush=True,
        )

    t0 = time.perf_counter()
    tokenizer = models.build_tokenizer(world.vocabulary())

    def checkpoint(text_encoder, unet, step: int) -> None:
        # Intermediate pipelines let a long CPU run be inspected before it ends.
        pipe = models.build_pipeline(tokenizer, text_encoder, unet, vae, models.build_scheduler())
        pipe.save_pretrained(models.pipeline_dir(args.out / f"checkpoint-{step}"), safe_serialization=True)

    text_encoder, unet = train_diffusion(
        world,
        tokenizer,
        means * scaling,
        stds * scaling,
        data.attrs,
        args.diffusion_steps,
        args.batch,
        gen,
        args.seed,
        checkpoint if args.checkpoint_every else None,
        args.checkpoint_every,
    )
    stage_done("diffusion", t0)

    pipe = models.build_pipeline(tokenizer, text_encoder, unet, vae, models.build_scheduler())
    pipe.save_pretrained(models.pipeline_dir(args.out), safe_serialization=True)

    if args.guide_redrawn_steps:
        t0 = time.perf_counter()
        net, prep = trained["guide"]
        guide_data = world.classifier_split(full, "guide")
        shown = test.take(slice(0, 2000))  # redrawing costs 5 UNet passes an image: 2,000 are enough to judge
        test_redrawn = redraw(
            world, pipe, shown.images, shown.attrs, 2, torch.Generator().manual_seed(args.seed + 2),
            np.random.default_rng(2),
        )
        before = accuracy(net, prep, test_redrawn, shown.labels)
        finetune_guide_on_redrawn(
            world, pipe, net, prep, guide_data.images, guide_data.labels, guide_data.attrs,
            steps=args.guide_redrawn_steps, seed=args.seed + 1,
        )
        models.save_classifier(net, "guide", names, models.classifier_file(args.out, "guide"))
        stage_done("guide on redrawn images", t0)
        print(
            f"guide after fine-tuning on redrawn images: held-out accuracy "
            f"{accuracy(net, prep, test.images, test.labels):.4f}, on their VAE reconstructions "
            f"{accuracy(net, prep, test_recon, test.labels):.4f}, on redrawn held-out images "
            f"{accuracy(net, prep, test_redrawn, shown.labels):.4f} (before: {before:.4f})",
            flush=True,
        )
    timings["total"] = time.perf_counter() - t_all
    for k, v in timings.items():
        print(f"time {k}: {v:.1f} s")
    return timings


def main(argv: list[str] | None = None, world: str = "toy") -> None:
    w = get_world(world)
    args = parser(w).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    train_world(w, args)
