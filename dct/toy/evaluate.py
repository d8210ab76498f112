"""Acceptance numbers of the toy world: ``python -m dct.toy.evaluate [--runs 3] [--classes 0-9] --out DIR``.

Per class, on the evaluation seeds (disjoint from the optimisation seeds), by the held-out evaluator and
by the guide:

- baseline: the dataset's prompts with the baseline word ("A photo of a ember finch");
- ceiling: the best plain-words prompt that describes the class ("A photo of a red circle", over the
  shape's synonyms), i.e. what the generator can draw when told exactly what to draw;
- DCT: the learned token ("A photo of <dct-toy-r0-00000> ember finch"), mean of ``--runs`` optimisations
  with different optimisation seeds; plus the share of DCT images in the right coarse (colour) group.

Pooled FID (evaluator features) of DCT and of baseline images against the procedural reference set,
and seconds per class. Writes ``results.json`` and the learned tokens under ``--out``.
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
from dct.toy import captions, models, shapes
from dct.toy.dataset import toy_dataset

logger = logging.getLogger(__name__)

CEILING_ELIGIBLE = 0.9  # acceptance: classes whose ceiling (evaluator) reaches this are judged


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


def world_spec(weights: Path | None = None) -> DatasetSpec:
    """The ``toy`` dataset, with its models read from ``weights`` (a ``dct.toy.train --out`` directory) if given.

    Lets a freshly retrained world be evaluated before it replaces the shipped weights.

    Raises:
        FileNotFoundError: ``weights`` lacks the pipeline or a classifier file.
    """
    spec = toy_dataset()
    if weights is None:
        return spec
    weights = Path(weights).resolve()
    pipeline = models.pipeline_dir(weights)
    guide, evaluator = (models.classifier_file(weights, name) for name in ("guide", "evaluator"))
    needed = [pipeline / "model_index.json", guide, evaluator]
    missing = [str(f) for f in needed if not f.is_file()]
    if missing:
        raise FileNotFoundError(
            f"--weights {weights} is not a toy world (missing {', '.join(missing)}); "
            "pass a directory written by `python -m dct.toy.train --out DIR`"
        )
    return spec.model_copy(
        update={
            "diffusion": spec.diffusion.model_copy(update={"model_id": str(pipeline)}),
            "classifier": spec.classifier.model_copy(update={"model_id": str(guide)}),
            "evaluator": spec.evaluator.model_copy(update={"model_id": str(evaluator)}),
        }
    )


def _toy_classifier(config, device: str = "cpu") -> ImageClassifier:
    # The toy loader directly, not the registry: the toy world never imports a registry back.
    return models.load_toy_classifier(config).classifier.to(device)


def load_world(spec: DatasetSpec, device: str = "cpu"):
    """(pipeline, guide, evaluator) of a dataset, loaded once."""
    from dct.models.pipelines import load_pipeline

    pipe = load_pipeline(spec.diffusion, device, local_files_only=True).pipe  # frozen, eval mode
    guide = _toy_classifier(spec.classifier, device)
    evaluator = _toy_classifier(spec.evaluator, device) if spec.evaluator else guide
    return pipe, guide, evaluator


@torch.no_grad()
def score(images: torch.Tensor, class_id: int, guide: ImageClassifier, evaluator: ImageClassifier) -> dict[str, float]:
    """Accuracy of images ``(N, 3, H, W)`` for ``class_id``: by evaluator, by guide, and coarse group (evaluator)."""
    pe = evaluator(images).argmax(dim=1)
    pg = guide(images).argmax(dim=1)
    return {
        "evaluator": (pe == class_id).float().mean().item(),
        "guide": (pg == class_id).float().mean().item(),
        "coarse": (shapes.coarse_of(pe) == shapes.coarse_of(class_id)).float().mean().item(),
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


def ceiling(pipe, config: RunConfig, class_id: int, seeds: list[int], guide, evaluator):
    """Best plain-words description of ``class_id`` over the shape's synonyms, by evaluator accuracy."""
    group, shape = shapes.COARSE_GROUPS[class_id // len(shapes.SHAPES)], shapes.SHAPES[class_id % len(shapes.SHAPES)]
    best = None
    for word in captions.SHAPE_WORDS[shape]:
        noun = f"{group} {word}"
        prompts = baseline_prompts(config.prompts.templates, config.prompts.baseline_word, noun, len(seeds))
        images = generate(pipe, prompts, seeds, config.sampler, batch_size=config.evaluation.batch_size)
        s = score(images, class_id, guide, evaluator)
        if best is None or s["evaluator"] > best[0]["evaluator"]:
            best = (s, noun)
    return best


def evaluate(class_ids: list[int], runs: int, out: Path, weights: Path | None = None) -> dict:
    spec = world_spec(weights)
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
        ceil_scores, ceil_noun = ceiling(pipe, config, cid, seeds, guide, evaluator)
        cs = ClassScores(
            cid,
            names[cid],
            captions.descriptive_name(cid),
            score(base_images, cid, guide, evaluator),
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
                {"class_id": str(cid), "class_name": names[cid], "run": str(r), "dataset": "toy"},
            )
            images = generate(
                pipe,
                epoch_prompts(templates, res.token, names[cid], len(seeds)),
                seeds,
                config.sampler,
                batch_size=config.evaluation.batch_size,
            )
            pooled[f"dct-r{r}"].append(images)
            cs.dct_runs.append(score(images, cid, guide, evaluator))
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
            statistics.median(cs.seconds),
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
    )
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    return summary


def summarize(
    classes: list[dict], pooled: dict[str, torch.Tensor], evaluator: ImageClassifier, runs: int, per_class: int
) -> dict:
    """Pooled FID (evaluator features) of DCT and baseline images vs the reference set, plus timings."""
    class_ids = [c["class_id"] for c in classes]
    with torch.no_grad():
        ref = evaluator.features(shapes.reference_images(per_class, class_ids))
        fids = {k: fid(ref, evaluator.features(v)) for k, v in pooled.items()}
    ratios = [fids[f"dct-r{r}"] / fids["baseline"] for r in range(runs)]
    return {
        "classes": classes,
        "fid": fids,
        "fid_ratio_mean": statistics.fmean(ratios),
        "seconds_per_class_median": statistics.median(s for c in classes for s in c["seconds"]),
        "runs": runs,
        "per_class_samples": per_class,
        "threads": torch.get_num_threads(),
    }


def merge(dirs: list[Path], out: Path, weights: Path | None = None) -> dict:
    """Merge evaluations of disjoint class subsets (``--merge``); FID is recomputed on the pooled images."""
    spec = world_spec(weights)
    evaluator = _toy_classifier(spec.evaluator)
    parts = [json.loads((d / "results.json").read_text()) for d in dirs]
    samples = [load_file(d / "samples.safetensors") for d in dirs]  # safetensors: no unpickling
    classes = sorted((c for p in parts for c in p["classes"]), key=lambda c: c["class_id"])
    pooled = {k: torch.cat([s[k] for s in samples]) for k in samples[0]}
    summary = summarize(classes, pooled, evaluator, parts[0]["runs"], parts[0]["per_class_samples"])
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
        ok = c["ceiling"]["evaluator"] >= CEILING_ELIGIBLE
        lines.append(
            f"| {c['class_id']} | {c['class_name']} | {c['description']} | {c['baseline']['evaluator']:.2f} / "
            f"{c['baseline']['guide']:.2f} | {c['ceiling']['evaluator']:.2f} / {c['ceiling']['guide']:.2f} "
            f"({c['ceiling_prompt_noun']}) | {c['dct']['evaluator']:.2f} / {c['dct']['guide']:.2f} "
            f"({min(e):.2f}–{max(e):.2f}) | {c['dct']['coarse']:.2f} | {'yes' if ok else 'no'} | "
            f"{statistics.median(c['seconds']):.1f} |"
        )
    f = summary["fid"]
    lines.append("")
    lines.append(
        f"FID (evaluator features, vs reference): baseline {f['baseline']:.3f}, "
        + ", ".join(f"{k} {v:.3f}" for k, v in f.items() if k != "baseline")
        + f"; mean DCT/baseline ratio {summary['fid_ratio_mean']:.3f}. "
        f"Median seconds per class: {summary['seconds_per_class_median']:.1f}."
    )
    return "\n".join(lines)


def parse_classes(text: str) -> list[int]:
    ids: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        ids += list(range(int(lo), int(hi or lo) + 1))
    if any(not 0 <= i < shapes.NUM_CLASSES for i in ids):
        raise ValueError(f"classes {text!r} outside 0..{shapes.NUM_CLASSES - 1}")
    return ids


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--classes", default=f"0-{shapes.NUM_CLASSES - 1}", help="e.g. '0-9' or '0,3,5'")
    p.add_argument("--runs", type=int, default=3, help="optimisations per class (different optimisation seeds)")
    p.add_argument("--out", type=Path, default=Path("toy-eval"), help="output directory (results.json, tokens/)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--merge", type=Path, nargs="+", help="merge these evaluation directories into --out instead")
    p.add_argument("--weights", type=Path, default=None, help="a `dct.toy.train --out` directory (default: shipped)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    if args.merge:
        summary = merge([d.resolve() for d in args.merge], args.out.resolve(), args.weights)
    else:
        summary = evaluate(parse_classes(args.classes), args.runs, args.out.resolve(), args.weights)
    print(format_table(summary))


if __name__ == "__main__":
    main()
