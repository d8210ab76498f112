"""Synthesis throughput: our batched generation vs diffusers' plain pipeline call, one prompt at a time.

    python -m benchmarks.synthesis --preset toy --images 64 --batch-size 16
    python -m benchmarks.synthesis --preset mid --images 16 --batch-size 8

Both paths make the same images — the same prompts (one class token spliced into the preset's templates),
the same noise seeds, the preset's sampler (steps, CFG) — in the same process on the same models:

- ``batched``: ``dct.method.sampling.generate`` with ``batch_size`` images per denoising batch (what
  ``dct synthesize`` runs);
- ``per-prompt``: ``pipe(prompt, generator=torch.Generator().manual_seed(seed), ...)`` once per image, as a
  user without the product would loop.

The two are interleaved (batched, per-prompt, batched, …) so a shared machine's drifts hit both; after one
untimed warm-up round each, ``--repeats`` timed rounds. Prints images/s (median) and the ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def _per_prompt(pipe, prompts, seeds, sampler, height, width):
    images = []
    for prompt, seed in zip(prompts, seeds, strict=True):
        out = pipe(
            prompt,
            num_inference_steps=sampler.num_inference_steps,
            guidance_scale=sampler.guidance_scale,
            height=height,
            width=width,
            generator=torch.Generator("cpu").manual_seed(seed),
            output_type="pt",
        )
        images.append(out.images)
    return torch.cat(images)


def main(argv: list[str] | None = None) -> dict:
    from benchmarks.presets import build_models, get_preset
    from dct.config import fill_template
    from dct.method.sampling import generate, image_size, make_scheduler
    from dct.method.tokens import add_placeholder_token

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="toy", help="benchmarks/presets.py preset (toy, mid, sd14, sd21-base)")
    p.add_argument("--images", type=int, default=32, help="images per round")
    p.add_argument("--batch-size", type=int, default=16, help="images per batch of the batched path")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds per path")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    preset = get_preset(args.preset)
    config = preset.run_config()
    pipe, _ = build_models(preset, device=args.device)
    pipe.set_progress_bar_config(disable=True)
    token = config.token_string(0)
    add_placeholder_token(pipe.tokenizer, pipe.text_encoder, token, config.token.initializer_token)
    templates = config.prompts.templates
    prompts = [fill_template(templates[j % len(templates)], token, "tabby cat") for j in range(args.images)]
    seeds = [1_000_000 + j for j in range(args.images)]
    sampler = config.sampler
    height, width = image_size(pipe, sampler)
    # The pipeline call uses the pipeline's scheduler: give it exactly the configured one.
    pipe.scheduler = make_scheduler(pipe.scheduler, sampler)
    paths = {
        "batched": lambda: generate(pipe, prompts, seeds, sampler, device=args.device, batch_size=args.batch_size),
        "per-prompt": lambda: _per_prompt(pipe, prompts, seeds, sampler, height, width),
    }
    times: dict[str, list[float]] = {k: [] for k in paths}
    outputs = {}
    for round_ in range(args.repeats + 1):
        for name, fn in paths.items():
            t0 = time.perf_counter()
            with torch.no_grad():
                outputs[name] = fn()
            if round_:
                times[name].append(time.perf_counter() - t0)
    diff = float((outputs["batched"] - outputs["per-prompt"].cpu()).abs().max())
    result = {
        "preset": args.preset,
        "images": args.images,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "size": [height, width],
        "steps": sampler.num_inference_steps,
        "guidance_scale": sampler.guidance_scale,
        "max_abs_pixel_difference": diff,
        **{f"{k}_images_per_s": args.images / statistics.median(v) for k, v in times.items()},
        **{f"{k}_seconds": [round(t, 3) for t in v] for k, v in times.items()},
    }
    result["speedup"] = result["batched_images_per_s"] / result["per-prompt_images_per_s"]
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
