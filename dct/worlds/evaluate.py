"""Acceptance numbers of a world: ``python -m dct.toy.evaluate [--runs 3] [--classes 0-9] --out DIR`` (or
``dct.fashion.evaluate``).

Per class, on the evaluation seeds (disjoint from the optimisation seeds), by the held-out evaluator and
by the guide:

- baseline: the dataset's prompts with the baseline word ("A photo of a ember finch");
- ceiling: the best plain-words prompt that describes the class ("A photo of a red circle", over the
  class's synonyms, :meth:`~dct.worlds.World.descriptive_nouns`), i.e. what the generator can draw when told
  exactly what to draw;
- DCT: the learned token ("A photo of <dct-toy-r0-00000> ember finch"), mean of ``--runs`` optimisations
  with different optimisation seeds; plus the share of DCT images in the right coarse (colour) group.

Pooled FID (evaluator features) of DCT and of baseline images against the world's reference set (the toy's
procedural renders, Fashion-MNIST's real test images), and seconds per class. Writes ``results.json`` and the
learned tokens under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from scipy import linalg

from dct.artifacts.token_file import save_token
from dct.config import DatasetSpec, RunConfig, TokenConfig, baseline_prompts, epoch_prompts
from dct.method.optimize import optimize_token
from dct.method.sampling import generate
from dct.models.interface import ImageClassifier
from dct.worlds import World, get_world

logger = logging.getLogger(__name__)

CEILING_ELIGIBLE = 0.9  # the toy's acceptance: classes whose ceiling (evaluator) reaches this are judged


@dataclass
class ClassScores:
    class_id: int
    class_name: str
    description: str
    baseline: dict[str, float]  # classifier -> accuracy
    ceiling: dict[str, float]
    ceiling_prompt_noun: str
    dct_runs: list[dict[str, float]] = field(default_factory=list)  # per run: evaluator, guide, coarse
    seconds: list[float] = field(default_factory=list)
    epochs: list[int] = field(default_factory=list)

    @property
    def dct(self) -> dict[str, float]:
        keys = self.dct_runs[0].keys() if self.dct_runs else ()
        return {k: statistics.fmean(r[k] for r in self.dct_runs) for k in keys}


def world_spec(weights: Path | None = None, world: World | str = "toy") -> DatasetSpec:
    """The world's dataset, with its models read from ``weights`` (a ``train --out`` directory) if given.

    Lets a freshly retrained world be evaluated before it replaces the shipped weights.

    Raises:
        FileNotFoundError: ``weights`` lacks the pipeline or a classifier file.
    """
    world = get_world(world) if isinstance(world, str) else world
    return world.dataset(weights)


def _world_classifier(config, device: str = "cpu") -> ImageClassifier:
    # The worlds' own loader, not the registry: a world never imports a registry back.
    return load_world_classifier(config).classifier.to(device)


def load_world_classifier(config):
    """A world's classifier: ``config.kind`` names the world whose loader reads it ("toy", "fashion"; a name in
    the world's weights, or a ``.safetensors`` path)."""
    return get_world(config.kind).load_classifier(config)


def load_world(spec: DatasetSpec, device: str = "cpu"):
    """(pipeline, guide, evaluator) of a dataset, loaded once."""
    from dct.models.pipelines import load_pipeline

    pipe = load_pipeline(spec.diffusion, device, local_files_only=True).pipe  # frozen, eval mode
    guide = _world_classifier(spec.classifier, device)
    evaluator = _world_classifier(spec.evaluator, device) if spec.evaluator else guide
    return pipe, guide, evaluator


@torch.no_grad()
def score(
    images: torch.Tensor, class_id: int, guide: ImageClassifier, evaluator: ImageClassifier, world: World | None = None
) -> dict[str, float]:
    """Accuracy of images ``(N, 3, H, W)`` for ``class_id``: by evaluator, by guide, and coarse group (evaluator)."""
    world = world or get_world("toy")
    pe = evaluator(images).argmax(dim=1)
    pg = guide(images).argmax(dim=1)
    return {
        "evaluator": (pe == class_id).float().mean().item(),
        "guide": (pg == class_id).float().mean().item(),
        "coarse": (world.coarse_of(pe) == world.coarse_of(class_id)).float().mean().item(),
    }


@torch.no_grad()
def fid(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    """Fréchet distance between two feature sets ``(N, D)`` (Gaussian fit, as in FID)."""
    a, b = features_a.double().numpy(), features_b.double().numpy()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(cov_a @ cov_b)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * covmean.real))


def run_config_for(config: RunConfig, run: int) -> RunConfig:
    """Run ``run``'s config: its own optimisation seeds (``100 * run`` + i) and its own token string."""
    training = config.training.model_copy(update={"seed": config.training.seed + 100 * run})
    token = TokenConfig(placeholder_template=f"<dct-{{dataset}}-r{run}-{{class_id:05d}}>")
    out = config.model_copy(update={"training": training, "token": token})
    return RunConfig.model_validate(out.model_dump())  # re-run the validators (seed disjointness)


def ceiling(pipe, config: RunConfig, class_id: int, seeds: list[int], guide, evaluator, world: World):
    """Best plain-words description of ``class_id`` over the world's synonyms, by evaluator accuracy."""
    best = None
    for noun in world.descriptive_nouns(class_id):
        prompts = baseline_prompts(config.prompts.templates, config.prompts.baseline_word, noun, len(seeds))
        images = generate(pipe, prompts, seeds, config.sampler, batch_size=config.evaluation.batch_size)
        s = score(images, class_id, guide, evaluator, world)
        if best is None or s["evaluator"] > best[0]["evaluator"]:
            best = (s, noun)
    return best


def evaluate(
    class_ids: list[int], runs: int, out: Path, weights: Path | None = None, world: World | None = None
) -> dict:
    world = world or get_world("toy")
    spec = world.dataset(weights)
    config = spec.run_config()
    pipe, guide, evaluator = load_world(spec)
    seeds = list(config.evaluation.seeds)
    names = spec.class_names
    templates = config.prompts.templates
    results: list[ClassScores] = []
    pooled: dict[str, list[torch.Tensor]] = {"baseline": [], **{f"dct-r{r}": [] for r in range(runs)}}
    for cid in class_ids:
        base_images = generate(
            pipe,
            baseline_prompts(templates, config.prompts.baseline_word, names[cid], len(seeds)),
            seeds,
            config.sampler,
            batch_size=config.evaluation.batch_size,
        )
        pooled["baseline"].append(base_images)
        ceil_scores, ceil_noun = ceiling(pipe, config, cid, seeds, guide, evaluator, world)
        cs = ClassScores(
            cid,
            names[cid],
            world.describe(cid),
            score(base_images, cid, guide, evaluator, world),
            ceil_scores,
            ceil_noun,
        )
        for r in range(runs):
            rc = run_config_for(config, r)
            res = optimize_token(pipe, guide, class_id=cid, class_name=names[cid], config=rc, progress=False)
            save_token(
                out / "tokens" / f"r{r}-{cid:05d}.safetensors",
                res.token,
                res.vector,
                {"class_id": str(cid), "class_name": names[cid], "run": str(r), "dataset": world.name},
            )
            images = generate(
                pipe,
                epoch_prompts(templates, res.token, names[cid], len(seeds)),
                seeds,
                config.sampler,
                batch_size=config.evaluation.batch_size,
            )
            pooled[f"dct-r{r}"].append(images)
            cs.dct_runs.append(score(images, cid, guide, evaluator, world))
            cs.seconds.append(res.seconds)
            cs.epochs.append(res.epochs)
        results.append(cs)
        logger.info(
            "class %d %s: baseline %s ceiling %s dct %s (%.1fs)",
            cid,
            names[cid],
            cs.baseline,
            cs.ceiling,
            cs.dct,
            statistics.median(cs.seconds or [0.0]),
        )

    out.mkdir(parents=True, exist_ok=True)
    # The images are kept so that evaluations of class subsets (parallel processes) can be merged.
    save_file({k: torch.cat(v).contiguous() for k, v in pooled.items()}, out / "samples.safetensors")
    summary = summarize(
        [asdict(c) | {"dct": c.dct} for c in results],
        {k: torch.cat(v) for k, v in pooled.items()},
        evaluator,
        runs,
        len(seeds),
        world,
    )
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    return summary


def summarize(
    classes: list[dict],
    pooled: dict[str, torch.Tensor],
    evaluator: ImageClassifier,
    runs: int,
    per_class: int,
    world: World,
) -> dict:
    """Pooled FID (evaluator features) of DCT and baseline images vs the reference set, plus timings."""
    class_ids = [c["class_id"] for c in classes]
    with torch.no_grad():
        ref = evaluator.features(world.reference_images(per_class, class_ids))
        fids = {k: fid(ref, evaluator.features(v)) for k, v in pooled.items()}
    ratios = [fids[f"dct-r{r}"] / fids["baseline"] for r in range(runs)]  # none with --runs 0
    return {
        "classes": classes,
        "fid": fids,
        "fid_ratio_mean": statistics.fmean(ratios) if ratios else None,
        "seconds_per_class_median": statistics.median([s for c in classes for s in c["seconds"]] or [0.0]),
        "runs": runs,
        "per_class_samples": per_class,
        "threads": torch.get_num_threads(),
        "world": world.name,
        "eligible_at": world.ceiling_eligible,
    }


def merge(dirs: list[Path], out: Path, weights: Path | None = None, world: World | None = None) -> dict:
    """Merge evaluations of disjoint class subsets (``--merge``); FID is recomputed on the pooled images."""
    world = world or get_world("toy")
    spec = world.dataset(weights)
    evaluator = _world_classifier(spec.evaluator)
    parts = [json.loads((d / "results.json").read_text()) for d in dirs]
    samples = [load_file(d / "samples.safetensors") for d in dirs]  # safetensors: no unpickling
    classes = sorted((c for p in parts for c in p["classes"]), key=lambda c: c["class_id"])
    pooled = {k: torch.cat([s[k] for s in samples]) for k in samples[0]}
    summary = summarize(classes, pooled, evaluator, parts[0]["runs"], parts[0]["per_class_samples"], world)
    (out / "tokens").mkdir(parents=True, exist_ok=True)
    for d in dirs:
        for token_file in sorted((d / "tokens").glob("*.safetensors")):
            shutil.copy2(token_file, out / "tokens" / token_file.name)
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    return summary


def format_table(summary: dict) -> str:
    """Markdown table of the per-class numbers (E = evaluator, G = guide)."""
    lines = [
        "| id | class name | class | baseline E / G | ceiling E / G (prompt) | DCT E / G (min–max E) "
        "| DCT coarse | eligible | s/class |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in summary["classes"]:
        e = [r["evaluator"] for r in c["dct_runs"]]
        ok = c["ceiling"]["evaluator"] >= summary.get("eligible_at", CEILING_ELIGIBLE)
        dct = "– | –"  # --runs 0: baseline and ceiling only
        if e:
            d = c["dct"]
            dct = f"{d['evaluator']:.2f} / {d['guide']:.2f} ({min(e):.2f}–{max(e):.2f}) | {d['coarse']:.2f}"
        lines.append(
            f"| {c['class_id']} | {c['class_name']} | {c['description']} | {c['baseline']['evaluator']:.2f} / "
            f"{c['baseline']['guide']:.2f} | {c['ceiling']['evaluator']:.2f} / {c['ceiling']['guide']:.2f} "
            f"({c['ceiling_prompt_noun']}) | {dct} | {'yes' if ok else 'no'} | "
            f"{statistics.median(c['seconds'] or [0.0]):.1f} |"
        )
    f = summary["fid"]
    lines.append("")
    lines.append(
        "FID (evaluator features, vs reference): "
        + ", ".join(f"{k} {v:.3f}" for k, v in f.items())
        + (f"; mean DCT/baseline ratio {summary['fid_ratio_mean']:.3f}" if summary["fid_ratio_mean"] else "")
        + ". "
        f"Median seconds per class: {summary['seconds_per_class_median']:.1f}."
    )
    return "\n".join(lines)


def parse_classes(text: str, num_classes: int = 10) -> list[int]:
    ids: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        ids += list(range(int(lo), int(hi or lo) + 1))
    if any(not 0 <= i < num_classes for i in ids):
        raise ValueError(f"classes {text!r} outside 0..{num_classes - 1}")
    return ids


def main(argv: list[str] | None = None, world: str = "toy") -> None:
    w = get_world(world)
    p = argparse.ArgumentParser(prog=f"python -m dct.{w.name}.evaluate", description=__doc__.splitlines()[0])
    p.add_argument("--classes", default=f"0-{w.num_classes - 1}", help="e.g. '0-9' or '0,3,5'")
    p.add_argument(
        "--runs", type=int, default=3, help="optimisations per class (different optimisation seeds); 0: baseline and "
        "ceiling only (DCT numbers from `dct run` runs)"
    )
    p.add_argument("--out", type=Path, default=Path(f"{w.name}-eval"), help="output directory (results.json, tokens/)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--merge", type=Path, nargs="+", help="merge these evaluation directories into --out instead")
    p.add_argument(
        "--weights", type=Path, default=None, help=f"a `dct.{w.name}.train --out` directory (default: shipped)"
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    if args.merge:
        summary = merge([d.resolve() for d in args.merge], args.out.resolve(), args.weights, w)
    else:
        summary = evaluate(parse_classes(args.classes, w.num_classes), args.runs, args.out.resolve(), args.weights, w)
    print(format_table(summary))
