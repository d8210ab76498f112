"""Class throughput of a shard: models loaded once, against reloading them for every class (the reference).

    python -m benchmarks.throughput --world toy          # the shipped toy world (dct.models.loading.load_models)
    python -m benchmarks.throughput --world preset:mid   # a benchmark preset saved to disk and reloaded

Both modes optimise the same classes with the same config (a fixed number of epochs per class, stopping
rules off, so both do identical work), class by class, interleaved (class c in mode A, then in mode B,
the order alternating) so a shared machine's drifts hit both. "once" pays one load for the shard;
"reload" pays a load from disk before every class, as the reference's ``train`` does. One untimed load
first warms imports and the OS file cache, so neither mode pays a cold start. Reported:
seconds per class (median), load seconds, and classes per hour for the whole shard.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from dct.config import RunConfig
from dct.method.optimize import optimize_token


@dataclass
class World:
    name: str
    config: RunConfig
    class_names: list[str]
    load: Callable[[], tuple[object, torch.nn.Module]]  # -> (pipe, classifier), frozen, on the CPU


def _fixed_epochs(config: RunConfig, epochs: int) -> RunConfig:
    training = config.training.model_copy(update={"max_epochs": epochs, "accuracy_threshold": 1.0, "patience": epochs})
    return config.model_copy(update={"training": training})


def toy_world(epochs: int) -> World:
    """The toy world through the production loaders (``dct.models.loading.load_models``)."""
    from dct.models.datasets import get_dataset
    from dct.models.loading import load_models

    spec = get_dataset("toy")
    config = _fixed_epochs(spec.run_config(), epochs)
    config = config.model_copy(update={"evaluation": config.evaluation.model_copy(update={"evaluator": None})})

    def load():
        models = load_models(config, "cpu")
        return models.pipe, models.classifier

    return World("toy", config, list(spec.class_names), load)


def preset_world(name: str, epochs: int, directory: Path, num_classes: int) -> World:
    """A benchmark preset's random models saved with ``save_pretrained`` and reloaded from disk."""
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import load_file, save_file

    from benchmarks.presets import _classifier, build_models, get_preset

    preset = get_preset(name)
    pipe, classifier = build_models(preset)
    pipe.save_pretrained(directory / "pipeline", safe_serialization=True)
    save_file(
        {k: v.contiguous() for k, v in classifier.state_dict().items()}, str(directory / "classifier.safetensors")
    )
    config = _fixed_epochs(preset.run_config(), epochs)

    def load():
        p = StableDiffusionPipeline.from_pretrained(
            directory / "pipeline", safety_checker=None, requires_safety_checker=False
        )
        c = _classifier(preset)
        c.load_state_dict(load_file(str(directory / "classifier.safetensors")), strict=False)
        for m in (p.unet, p.vae, p.text_encoder, c):
            m.requires_grad_(False)
            m.eval()
        return p, c

    names = [f"class {i}" for i in range(num_classes)]
    return World(f"preset:{name}", config, names, load)


def run(world: World, num_classes: int) -> dict:
    classes = list(range(min(num_classes, len(world.class_names))))
    world.load()  # untimed: imports and the OS file cache warm for both modes alike
    t0 = time.perf_counter()
    once = world.load()
    load_once = time.perf_counter() - t0
    per_class: dict[str, list[float]] = {"once": [], "reload": []}
    loads: list[float] = []
    for i, c in enumerate(classes):
        for mode in ("once", "reload") if i % 2 == 0 else ("reload", "once"):
            t0 = time.perf_counter()
            if mode == "reload":
                pipe, clf = world.load()
                loads.append(time.perf_counter() - t0)
            else:
                pipe, clf = once
            optimize_token(pipe, clf, class_id=c, class_name=world.class_names[c], config=world.config, progress=False)
            per_class[mode].append(time.perf_counter() - t0)
            del pipe, clf
        print(
            f"class {c}: once {per_class['once'][-1]:.2f}s, reload {per_class['reload'][-1]:.2f}s "
            f"(load {loads[-1]:.2f}s)",
            file=sys.stderr,
            flush=True,
        )
    n = len(classes)
    shard_once = load_once + sum(per_class["once"])
    shard_reload = sum(per_class["reload"])
    return {
        "world": world.name,
        "classes": n,
        "epochs_per_class": world.config.training.max_epochs,
        "threads": torch.get_num_threads(),
        "load_once_s": load_once,
        "load_median_s": statistics.median(loads),
        "once_median_s_per_class": statistics.median(per_class["once"]),
        "reload_median_s_per_class": statistics.median(per_class["reload"]),
        "once_classes_per_hour": 3600 * n / shard_once,
        "reload_classes_per_hour": 3600 * n / shard_reload,
        "ratio": shard_reload / shard_once,
    }


def format_result(r: dict) -> str:
    return "\n".join(
        [
            f"world {r['world']}: {r['classes']}-class shard, {r['epochs_per_class']} epochs/class, CPU, "
            f"{r['threads']} thread(s); {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
            f"{'mode':<8} {'s/class (median)':>16} {'load s':>8} {'classes/hour':>13}",
            f"{'once':<8} {r['once_median_s_per_class']:>16.2f} {r['load_once_s']:>8.2f} "
            f"{r['once_classes_per_hour']:>13.1f}",
            f"{'reload':<8} {r['reload_median_s_per_class']:>16.2f} {r['load_median_s']:>8.2f} "
            f"{r['reload_classes_per_hour']:>13.1f}",
            f"shard time reload/once: {r['ratio']:.2f}x",
        ]
    )


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.throughput", description=__doc__.split("\n")[0])
    p.add_argument("--world", default="toy", help="'toy' (the shipped toy world) or 'preset:NAME' (toy, mid, ...)")
    p.add_argument("--classes", type=int, default=10, help="classes in the shard")
    p.add_argument("--epochs", type=int, default=3, help="epochs per class (fixed, stopping rules off)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from benchmarks.optimize import _quiet_libraries

    _quiet_libraries()
    with tempfile.TemporaryDirectory() as tmp:
        if args.world == "toy":
            world = toy_world(args.epochs)
        elif args.world.startswith("preset:"):
            world = preset_world(args.world.split(":", 1)[1], args.epochs, Path(tmp), args.classes)
        else:
            raise ValueError(f"unknown world {args.world!r}; valid: 'toy' or 'preset:NAME'")
        result = run(world, args.classes)
    print(format_result(result))
    return result


if __name__ == "__main__":
    main()
