"""Time our DCT optimisation epoch against a reference-style epoch, interleaved in one process.

    python -m benchmarks.optimize --preset mid                      # CPU (2 cores: an epoch in seconds)
    python -m benchmarks.optimize --preset sd21-base --device cuda  # GPU: adds TFLOP/s and MFU

Variants, on identical seeded random-weight models built from configs (:mod:`benchmarks.presets`):

- ``ours``: ``dct.method.optimize.epoch_loss_and_grad`` (the epoch's images in one batch unless
  ``--micro-batch-size``), then ``clip_grad_norm_`` and one AdamW step on the fp32 token — exactly the
  per-epoch work of ``optimize_token``. Weights: fp32 on CPU; on CUDA bf16 UNet/VAE (the pipeline
  loader's ``auto``), fp32 text encoder and classifier, bf16 autocast.
- ``reference``: :mod:`benchmarks.reference` (batch 1 × accumulation, unpadded conditioning, fp16 weights
  and GradScaler on CUDA with the clip before each backward, UNet gradient checkpointing, whole-table
  AdamW), pinned as documented there.

Both get the same thread count, the same SDPA attention, the same sampler, seeds and ``grad_steps``.
Timing: ``--warmup`` untimed rounds, then ``--epochs`` timed rounds; in each round every variant runs
one epoch, the order alternating between rounds (ABBA) so slow drifts of a shared machine hit both.
Peak memory: each variant again in its own subprocess (peak RSS only rises within a process): peak
RSS on CPU, ``torch.cuda.max_memory_allocated`` on CUDA. FLOPs: one extra epoch per variant under
``torch.utils.flop_counter.FlopCounterMode``; TFLOP/s divides the SMALLER of the two counts (the same
images; each variant adds its own recomputation) by each variant's time, so recomputation counts as
time, not work.
MFU = that ÷ epoch time ÷ the card's dense bf16 peak (CUDA only).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from benchmarks.presets import PRESET_NAMES, Preset, build_models, get_preset
from benchmarks.reference import reference_epoch, setup_reference
from dct.config import RunConfig, epoch_prompts
from dct.method.optimize import epoch_loss_and_grad
from dct.method.sampling import autocast, unconditional
from dct.method.tokens import add_placeholder_token, get_token_vector, text_encoders

VARIANTS = ("ours", "reference")
CLASS_NAME = "tiger cat"
TARGET = 3

# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s, from the vendors' data sheets; matched in order
# against torch.cuda.get_device_name(). Override with --peak-tflops.
BF16_PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H200", 989.4),
    ("H100 NVL", 835.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.4),  # SXM / HBM3
    ("GH200", 989.4),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L40S", 362.05),
    ("L40", 181.05),
    ("L4", 121.0),
    ("A10G", 70.0),
    ("A10", 125.0),
    ("RTX 4090", 165.2),
)


def bf16_peak_tflops(device_name: str) -> float | None:
    for key, peak in BF16_PEAK_TFLOPS:
        if key in device_name:
            return peak
    return None


@dataclass
class Variant:
    name: str
    run_epoch: Callable[[], float]
    modules: dict[str, torch.nn.Module]  # for the phase profile


def ours_dtype(device: torch.device) -> torch.dtype:
    """What the pipeline loader's dtype 'auto' gives: bf16 on CUDA when supported, fp32 otherwise."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def setup_ours(
    pipe,
    classifier,
    config: RunConfig,
    *,
    device: torch.device,
    channels_last: bool = False,
    compile_unet: bool = False,
) -> Variant:
    """Prepare ``pipe`` (a private copy) as ``optimize_token`` does, and return its one-epoch closure."""
    dtype = ours_dtype(device)
    pipe.unet.to(device=device, dtype=dtype)
    pipe.vae.to(device=device, dtype=dtype)
    for _, text_encoder in text_encoders(pipe):
        text_encoder.to(device=device, dtype=torch.float32)
    classifier.to(device=device, dtype=torch.float32)
    if channels_last:
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    if compile_unet:
        pipe.unet = torch.compile(pipe.unet)
    token = config.token_string(TARGET)
    vectors, token_ids = [], []  # one (1, D) parameter per text encoder (two for SDXL), as optimize_token
    for tokenizer, text_encoder in text_encoders(pipe):
        token_ids.append([add_placeholder_token(tokenizer, text_encoder, token, config.token.initializer_token)])
        init_id = tokenizer.encode(config.token.initializer_token, add_special_tokens=False)[0]
        vectors.append(torch.nn.Parameter(get_token_vector(text_encoder, init_id).unsqueeze(0).to(device)))
    opt = config.optimizer
    optimizer = torch.optim.AdamW(vectors, lr=opt.lr, betas=opt.betas, weight_decay=opt.weight_decay, eps=opt.eps)
    prompts = epoch_prompts(config.prompts.templates, token, CLASS_NAME, config.training.images_per_epoch)
    seeds = list(config.training.seeds)
    with torch.no_grad(), autocast(device, dtype):  # once per class in optimize_token: not part of an epoch
        uncond_one = unconditional(pipe) if config.sampler.guidance_scale != 1.0 else None

    def run() -> float:
        optimizer.zero_grad(set_to_none=True)
        loss, _logits = epoch_loss_and_grad(
            pipe, classifier, vectors, token_ids, prompts, seeds, TARGET, config, uncond_one, device=device, dtype=dtype
        )
        if opt.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(vectors, opt.max_grad_norm)
        optimizer.step()
        return loss

    return Variant("ours", run, _modules(pipe, classifier))


def _modules(pipe, classifier) -> dict[str, torch.nn.Module]:
    modules = {"text_encoder": pipe.text_encoder}
    if getattr(pipe, "text_encoder_2", None) is not None:
        modules["text_encoder_2"] = pipe.text_encoder_2
    return modules | {"unet": pipe.unet, "vae_decoder": pipe.vae.decoder, "classifier": classifier}


def setup_reference_variant(pipe, classifier, config: RunConfig, *, device: torch.device) -> Variant:
    token = config.token_string(0)
    prompts = epoch_prompts(config.prompts.templates, token, CLASS_NAME, config.training.images_per_epoch)
    seeds = list(config.training.seeds)
    if getattr(pipe, "text_encoder_2", None) is not None:
        from benchmarks.reference_sdxl import reference_sdxl_epoch, setup_reference_sdxl

        sdxl = setup_reference_sdxl(pipe, classifier, config, prompts, device=device)
        epoch = lambda: reference_sdxl_epoch(sdxl, config, seeds, TARGET)  # noqa: E731
        return Variant("reference", epoch, _modules(pipe, classifier))
    state = setup_reference(pipe, classifier, config, prompts, device=device)
    return Variant("reference", lambda: reference_epoch(state, config, seeds, TARGET), _modules(pipe, classifier))


def make_variants(preset: Preset, config: RunConfig, names: list[str], device: torch.device, args) -> list[Variant]:
    """Identical weights for every variant: built once (seeded), then deep-copied per variant."""
    pipe, classifier = build_models(preset, seed=args.seed, device=device)
    variants = []
    for i, name in enumerate(names):
        last = i == len(names) - 1
        p, c = (pipe, classifier) if last else (copy.deepcopy(pipe), copy.deepcopy(classifier))
        if name == "ours":
            variants.append(
                setup_ours(p, c, config, device=device, channels_last=args.channels_last, compile_unet=args.compile)
            )
        else:
            variants.append(setup_reference_variant(p, c, config, device=device))
    return variants


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(variant: Variant, device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    variant.run_epoch()
    _sync(device)
    return time.perf_counter() - t0


def count_flops(variant: Variant) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        variant.run_epoch()
    return int(counter.get_total_flops())


def phase_profile(variant: Variant, device: torch.device) -> dict[str, float]:
    """Seconds of one epoch by phase: each model's forward (split by grad on/off; for the UNet a
    checkpointed forward's recomputation lands in "backward"), and the rest (backward, sampler,
    optimiser, host work) as "backward+other"."""
    spent: dict[str, float] = {}
    starts: dict[int, float] = {}
    handles = []
    for name, module in variant.modules.items():

        def pre(mod, _args, _name=name):
            _sync(device)
            starts[id(mod)] = time.perf_counter()

        def post(mod, _args, _out, _name=name):
            _sync(device)
            key = f"{_name} forward ({'grad' if torch.is_grad_enabled() else 'no-grad'})"
            spent[key] = spent.get(key, 0.0) + time.perf_counter() - starts.pop(id(mod))

        handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    try:
        total = timed(variant, device)
    finally:
        for h in handles:
            h.remove()
    spent["backward+other"] = total - sum(spent.values())
    spent["total"] = total
    return spent


def _proc_status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise ValueError(f"{field} not in /proc/self/status; peak RSS needs Linux")


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) so that model building does not count (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def memory_child(args) -> None:
    """Subprocess body: one variant only; prints a JSON line with its peak memory."""
    device = torch.device(args.device)
    preset = get_preset(args.preset)
    config = preset.run_config(micro_batch_size=args.micro_batch_size)
    (variant,) = make_variants(preset, config, [args.memory_child], device, args)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    else:
        _reset_peak_rss()
        before = _proc_status_bytes("VmRSS")
    for _ in range(2):  # the second epoch has the optimiser state allocated
        variant.run_epoch()
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = _proc_status_bytes("VmHWM")  # peak RSS since the reset above
    print(json.dumps({"variant": args.memory_child, "before_bytes": before, "peak_bytes": peak}))


def measure_memory(args, name: str) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.optimize",
        "--preset",
        args.preset,
        "--device",
        args.device,
        "--threads",
        str(args.threads),
        "--seed",
        str(args.seed),
        "--memory-child",
        name,
    ]
    if args.micro_batch_size:
        cmd += ["--micro-batch-size", str(args.micro_batch_size)]
    if args.channels_last:
        cmd.append("--channels-last")
    if args.compile:
        cmd.append("--compile")
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def summarize(times: list[float]) -> dict:
    med = statistics.median(times)
    return {
        "median_s": med,
        "min_s": min(times),
        "max_s": max(times),
        "spread_pct": 100 * (max(times) - min(times)) / med if med else 0.0,
        "times_s": times,
    }


def machine_info(device: torch.device) -> dict:
    info = {
        "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "load_avg_1m": os.getloadavg()[0],
    }
    try:
        import diffusers
        import transformers

        info["diffusers"], info["transformers"] = diffusers.__version__, transformers.__version__
    except ImportError:
        pass
    with contextlib.suppress(OSError):  # no git: the commit is simply not recorded
        info["commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip()
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def run_benchmark(args) -> dict:
    device = torch.device(args.device)
    preset = get_preset(args.preset)
    config = preset.run_config(micro_batch_size=args.micro_batch_size)
    names = [v for v in args.variants.split(",") if v]
    for n in names:
        if n not in VARIANTS:
            raise ValueError(f"unknown variant {n!r}; valid: {', '.join(VARIANTS)}")
    variants = make_variants(preset, config, names, device, args)
    images = config.training.images_per_epoch
    times: dict[str, list[float]] = {v.name: [] for v in variants}
    for r in range(args.warmup + args.epochs):
        order = variants if r % 2 == 0 else variants[::-1]
        this_round = {v.name: timed(v, device) for v in order}
        if r >= args.warmup:
            for name, t in this_round.items():
                times[name].append(t)
        if args.verbose:
            tag = "warm-up" if r < args.warmup else "timed"
            print(
                f"round {r} ({tag}): " + ", ".join(f"{n} {t:.3f}s" for n, t in this_round.items()),
                file=sys.stderr,
                flush=True,
            )
    result: dict = {
        "preset": args.preset,
        "device": str(device),
        "machine": machine_info(device),
        "images_per_epoch": images,
        "sampler": config.sampler.model_dump(mode="json"),
        "grad_steps": config.training.grad_steps,
        "micro_batch_size": args.micro_batch_size,
        "channels_last": args.channels_last,
        "compile": args.compile,
        "variants": {},
    }
    for v in variants:
        s = summarize(times[v.name])
        s["images_per_s"] = images / s["median_s"]
        result["variants"][v.name] = s
    if args.flops:
        flops = {v.name: count_flops(v) for v in variants}
        # Both variants do the same useful work on the same images; each adds its own recomputation
        # (the reference its UNet checkpointing and per-image uncond encoding, ours its VAE checkpoint),
        # so the smaller count is the closer estimate of the useful forward+backward FLOPs.
        useful = min(flops.values())
        peak = args.peak_tflops or (
            bf16_peak_tflops(result["machine"].get("gpu", "")) if device.type == "cuda" else None
        )
        result["useful_flops_per_epoch"] = useful
        result["peak_bf16_tflops"] = peak
        for v in variants:
            s = result["variants"][v.name]
            s["counted_flops"] = flops[v.name]
            s["tflops_per_s"] = useful / s["median_s"] / 1e12
            if peak:
                s["mfu_pct"] = 100 * s["tflops_per_s"] / peak
    if args.profile:
        result["profile_s"] = {v.name: phase_profile(v, device) for v in variants}
    if args.memory:
        for v in variants:
            m = measure_memory(args, v.name)
            result["variants"][v.name]["peak_memory_bytes"] = m["peak_bytes"]
            result["variants"][v.name]["memory_before_epochs_bytes"] = m["before_bytes"]
    if "ours" in times and "reference" in times:
        result["ratio_reference_over_ours"] = (
            result["variants"]["reference"]["median_s"] / result["variants"]["ours"]["median_s"]
        )
    return result


def format_result(result: dict) -> str:
    m = result["machine"]
    where = m.get("gpu") or f"{m['cpu']} ×{m['cpu_count']} cores, {m['threads']} thread(s)"
    lines = [
        f"preset {result['preset']} on {result['device']} ({where}); torch {m['torch']}, "
        f"commit {m.get('commit', '?')}, {m['date_utc']}, load avg {m['load_avg_1m']:.1f}",
        f"{result['images_per_epoch']} images/epoch, {result['sampler']['scheduler']} "
        f"{result['sampler']['num_inference_steps']} steps, CFG {result['sampler']['guidance_scale']}, "
        f"grad_steps {result['grad_steps']}, micro_batch {result['micro_batch_size']}, "
        f"channels_last {result['channels_last']}, compile {result['compile']}",
        f"{'variant':<10} {'s/epoch (median)':>16} {'min..max':>16} {'spread':>7} {'img/s':>7} {'peak mem':>10}"
        f" {'TFLOP/s':>8} {'MFU':>6}",
    ]
    for name, s in result["variants"].items():
        mem = f"{s['peak_memory_bytes'] / 2**20:.0f} MiB" if "peak_memory_bytes" in s else "-"
        tf = f"{s['tflops_per_s']:.4f}" if "tflops_per_s" in s else "-"
        mfu = f"{s['mfu_pct']:.1f}%" if "mfu_pct" in s else "-"
        lines.append(
            f"{name:<10} {s['median_s']:>16.3f} {s['min_s']:>7.3f}..{s['max_s']:<7.3f} {s['spread_pct']:>6.1f}%"
            f" {s['images_per_s']:>7.3f} {mem:>10} {tf:>8} {mfu:>6}"
        )
    if "ratio_reference_over_ours" in result:
        lines.append(f"ratio reference/ours (median s/epoch): {result['ratio_reference_over_ours']:.2f}x")
    for name, prof in result.get("profile_s", {}).items():
        lines.append(f"profile {name}: " + ", ".join(f"{k} {v:.2f}s" for k, v in prof.items()))
    if "useful_flops_per_epoch" in result:
        lines.append(
            "useful FLOPs/epoch (smaller FlopCounterMode count): "
            f"{result['useful_flops_per_epoch'] / 1e12:.3f} TFLOP; counted: "
            + ", ".join(f"{n} {s['counted_flops'] / 1e12:.3f}" for n, s in result["variants"].items())
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.optimize", description=__doc__.split("\n")[0])
    p.add_argument("--preset", choices=PRESET_NAMES, default="mid")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--epochs", type=int, default=5, help="timed epochs per variant (after warm-up)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads for both variants (default: 1 on CPU — see RESULTS.md — torch's own on CUDA)",
    )
    p.add_argument("--variants", default="ours,reference")
    p.add_argument("--micro-batch-size", type=int, default=None, help="ours: images per forward/backward")
    p.add_argument("--channels-last", action="store_true", help="ours: UNet and VAE in channels-last")
    p.add_argument("--compile", action="store_true", help="ours: torch.compile the UNet (GPU)")
    p.add_argument("--seed", type=int, default=0, help="weight-initialisation seed")
    p.add_argument("--no-memory", dest="memory", action="store_false", help="skip the per-variant memory subprocesses")
    p.add_argument("--no-flops", dest="flops", action="store_false", help="skip the FLOP-counting epoch")
    p.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak of the card (else looked up)")
    p.add_argument("--profile", action="store_true", help="one more epoch per variant, timed by phase")
    p.add_argument("--json", default=None, help="also write the result as JSON to this path")
    p.add_argument("--verbose", action="store_true", help="per-round times on stderr")
    p.add_argument("--memory-child", choices=VARIANTS, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _quiet_libraries() -> None:
    # Casting random models with .to(dtype) and growing the embedding table log warnings that are
    # expected here; they would bury the result table.
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> dict | None:
    args = parse_args(argv)
    _quiet_libraries()
    device = torch.device(args.device)
    if args.threads is None:
        args.threads = 1 if device.type == "cpu" else torch.get_num_threads()
    torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_child(args)
        return None
    result = run_benchmark(args)
    print(format_result(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
