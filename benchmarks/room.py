"""Room to move: how far the toy generator moves each probe attribute when plain words ask it to.

``python -m benchmarks.room [--class 1] [--seeds 32]`` renders a class with descriptive prompts that vary one
property at a time (size, position, background: the words of the toy's captions, :mod:`dct.toy.captions`) on the
same noise seeds, and prints per attribute the change between the two ends of each property. An attribute
the words hardly move is one the generator can hardly express — a token cannot move it either, so a bias in
it stays invisible to the probe (docs/probe.md, "Limits").
"""

from __future__ import annotations

import argparse

import torch

from dct.method.sampling import generate
from dct.probe.attributes import ATTRIBUTE_EXTRACTORS
from dct.toy import captions
from dct.toy.evaluate import load_world, world_spec

# property → its two ends, as the toy's captions say them
PROPERTIES: dict[str, tuple[str, str]] = {
    "size": ("small", "large"),
    "vertical position": ("at the top", "at the bottom"),
    "horizontal position": ("on the left", "on the right"),
    "background": ("on a dark background", "on a light background"),
}


def prompt(noun: str, prop: str, end: str) -> str:
    return f"a photo of a {end} {noun}" if prop == "size" else f"a photo of a {noun} {end}"


def room(class_id: int, num_seeds: int, first_seed: int = 30_000) -> dict[str, dict[str, float]]:
    """property → attribute → mean(attribute | second end) − mean(attribute | first end), same seeds."""
    spec = world_spec()
    pipe = load_world(spec)[0]
    seeds = list(range(first_seed, first_seed + num_seeds))
    noun = captions.descriptive_name(class_id)
    out: dict[str, dict[str, float]] = {}
    for prop, ends in PROPERTIES.items():
        means = []
        for end in ends:
            images = generate(pipe, [prompt(noun, prop, end)] * num_seeds, seeds, spec.sampler, batch_size=32)
            means.append({n: ex(images)[:, 0].mean().item() for n, ex in ATTRIBUTE_EXTRACTORS.items()})
        out[prop] = {n: means[1][n] - means[0][n] for n in ATTRIBUTE_EXTRACTORS}
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--class", dest="class_id", type=int, default=1, help="toy class id (default 1, the red square)")
    p.add_argument("--seeds", type=int, default=32, help="noise seeds per prompt (default 32)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    result = room(args.class_id, args.seeds)
    props = list(PROPERTIES)
    print(f"class {args.class_id} ({captions.descriptive_name(args.class_id)}), {args.seeds} seeds per prompt")
    print(f"{'attribute':18s} " + " ".join(f"{p[:18]:>18s}" for p in props))
    for name in ATTRIBUTE_EXTRACTORS:
        print(f"{name:18s} " + " ".join(f"{result[p][name]:+18.3f}" for p in props))


if __name__ == "__main__":
    main()
