"""The low-resource augmentation experiment: does a class token's synthetic set stand in for real images?

For each k (real images per class) and each training seed, a fresh downstream classifier (a timm model
from scratch, an architecture family different from the guide's) is trained with ONE recipe on

    real          k real images per class
    baseline      k real + the baseline arm's synthetic images (baseline word instead of the token)
    dct           k real + the DCT synthetic images (the same count as baseline)
    dct_filtered  k real + the DCT images that passed the guide filter (the same count)

and scored top-1 on a held-out real test set. Arms are paired: within a seed they share the real images
and the initial weights (docs/synthesis.md, "The augmentation experiment").
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt

logger = logging.getLogger(__name__)

ARMS = ("real", "baseline", "dct", "dct_filtered")
AUGMENT_SCHEMA_VERSION = 2  # 2: run_id and token_key (the run the results are attached to)


class DownstreamConfig(BaseModel):
    """The downstream classifier and its training recipe, the same for every arm."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # timm's smallest EfficientNet (~100k parameters: BatchNorm, depthwise-separable blocks, squeeze-excite):
    # another family than the toy guide (ResNet) and evaluator (VGG-style). Measured on the toy world
    # (docs/synthesis.md): real-only with 64 real images per class reaches 0.987 in 600 steps, where a
    # ConvNeXt scaled to 70k parameters reached 0.51 (300 steps) / 0.73 (1000) and MobileNetV3-small 0.38.
    model: str = Field(default="test_efficientnet", description="timm model name, built from scratch (no weights)")
    model_kwargs: dict = Field(default_factory=dict, description="keyword arguments of timm.create_model")
    steps: PositiveInt = Field(default=600, description="optimiser steps per training run")
    batch_size: PositiveInt = Field(default=64, description="images per step (half synthetic in augmented arms)")
    lr: PositiveFloat = Field(default=4e-3, description="AdamW peak learning rate (cosine to 0)")
    weight_decay: float = Field(default=0.05, ge=0.0, description="AdamW weight decay")
    synthetic_fraction: float = Field(default=0.5, ge=0.0, lt=1.0, description="share of a batch that is synthetic")
    pad: int = Field(default=4, ge=0, description="random-crop padding, pixels (random shifts of up to ±pad)")
    hflip: bool = Field(default=True, description="random horizontal flips")
    vflip: bool = Field(default=True, description="random vertical flips (a shape class survives them)")
    brightness: float = Field(default=0.2, ge=0.0, description="± brightness jitter (label-preserving: no hue)")
    contrast: float = Field(default=0.2, ge=0.0, description="± contrast jitter")


@dataclass(frozen=True)
class ArmData:
    """Training images ``(N, 3, H, W)`` in [0, 1] with labels ``(N,)``."""

    images: torch.Tensor
    labels: torch.Tensor


def augment_batch(x: torch.Tensor, cfg: DownstreamConfig, g: torch.Generator) -> torch.Tensor:
    """The recipe's augmentation of a batch ``(B, 3, H, W)`` in [0, 1]: shifts, flips, brightness/contrast."""
    b, _, h, w = x.shape
    if cfg.pad:
        padded = F.pad(x, (cfg.pad,) * 4, mode="replicate")
        dy = torch.randint(0, 2 * cfg.pad + 1, (b,), generator=g)
        dx = torch.randint(0, 2 * cfg.pad + 1, (b,), generator=g)
        x = torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(b)])
    if cfg.hflip:
        flip = torch.rand(b, generator=g) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    if cfg.vflip:
        flip = torch.rand(b, generator=g) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(2), x)
    if cfg.brightness or cfg.contrast:
        bright = 1 + (torch.rand(b, 1, 1, 1, generator=g) * 2 - 1) * cfg.brightness
        contrast = 1 + (torch.rand(b, 1, 1, 1, generator=g) * 2 - 1) * cfg.contrast
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = ((x - mean) * contrast + mean) * bright
    return x.clamp(0, 1)


def build_downstream(cfg: DownstreamConfig, num_classes: int, seed: int) -> torch.nn.Module:
    """A fresh timm model from scratch, its initial weights a function of ``seed`` (shared by the arms)."""
    import timm

    torch.manual_seed(seed)
    return timm.create_model(cfg.model, pretrained=False, num_classes=num_classes, **cfg.model_kwargs)


def train_and_score(
    cfg: DownstreamConfig,
    real: ArmData,
    synthetic: ArmData | None,
    test: ArmData,
    num_classes: int,
    seed: int,
    device: torch.device | str = "cpu",
) -> tuple[float, list[float]]:
    """Train one downstream classifier and score it on the test set.

    Returns:
        ``(top-1 over the test set, top-1 per class (length num_classes))``.
    """
    model = build_downstream(cfg, num_classes, seed).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / cfg.steps)))
    g = torch.Generator().manual_seed(seed + 1)
    n_syn = round(cfg.batch_size * cfg.synthetic_fraction) if synthetic is not None else 0
    n_real = cfg.batch_size - n_syn
    model.train()
    for _ in range(cfg.steps):
        idx = torch.randint(0, len(real.labels), (n_real,), generator=g)
        x, y = real.images[idx], real.labels[idx]
        if n_syn:
            sidx = torch.randint(0, len(synthetic.labels), (n_syn,), generator=g)
            x, y = torch.cat([x, synthetic.images[sidx]]), torch.cat([y, synthetic.labels[sidx]])
        x = augment_batch(x, cfg, g)
        loss = F.cross_entropy(model((x.to(device) - 0.5) / 0.25), y.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    preds = []
    with torch.no_grad():
        for start in range(0, len(test.labels), 256):
            batch = test.images[start : start + 256].to(device)
            preds.append(model((batch - 0.5) / 0.25).argmax(dim=1).cpu())
    pred = torch.cat(preds)
    correct = pred == test.labels
    per_class = [float(correct[test.labels == c].float().mean()) for c in range(num_classes)]
    return float(correct.float().mean()), per_class


def first_k(data: ArmData, k: int, num_classes: int) -> ArmData:
    """The first ``k`` images of every class (raises if a class has fewer)."""
    picks = []
    for c in range(num_classes):
        idx = (data.labels == c).nonzero().flatten()
        if len(idx) < k:
            raise ValueError(f"class {c} has {len(idx)} real training images, fewer than k={k}; lower --shots")
        picks.append(idx[:k])
    sel = torch.cat(picks)
    return ArmData(data.images[sel], data.labels[sel])


def run_experiment(
    cfg: DownstreamConfig,
    *,
    real_pools: Sequence[ArmData],
    test: ArmData,
    synthetic: Mapping[str, ArmData],
    shots: Sequence[int],
    num_classes: int,
    sanity_k: int | None = 64,
    device: torch.device | str = "cpu",
    class_ids: Sequence[int] | None = None,
) -> list[dict]:
    """Every (seed, k, arm) training run; the rows of the result table.

    Args:
        class_ids: the dataset's class id of each downstream label ``0..num_classes-1`` (a selection of
            classes, relabelled by :func:`relabel`); default the labels themselves.
        real_pools: one pool of real training images per training seed (the seed's k images are its first k
            per class, shared by every arm of that seed).
        synthetic: arm name → synthetic images (``baseline``, ``dct``, ``dct_filtered``; absent arms skipped).
        sanity_k: also train real-only with this many real images per class (the recipe can learn the task).

    Returns:
        Rows ``{arm, k, seed, class_id (None = all), accuracy, seconds}``.
    """
    ids = list(class_ids) if class_ids is not None else list(range(num_classes))
    if len(ids) != num_classes:
        raise ValueError(f"class_ids has {len(ids)} ids for {num_classes} downstream classes; give one per class")
    rows = []
    for seed, pool in enumerate(real_pools):
        plan = [(k, arm) for k in shots for arm in ARMS if arm == "real" or arm in synthetic]
        if sanity_k:
            plan.append((sanity_k, "real"))
        for k, arm in plan:
            t0 = time.perf_counter()
            top1, per_class = train_and_score(
                cfg, first_k(pool, k, num_classes), synthetic.get(arm) if arm != "real" else None, test,
                num_classes, seed, device,
            )
            seconds = time.perf_counter() - t0
            logger.info("seed %d k=%d %-12s top-1 %.3f (%.1f s)", seed, k, arm, top1, seconds)
            rows.append({"arm": arm, "k": k, "seed": seed, "class_id": None, "accuracy": top1, "seconds": seconds})
            rows += [
                {"arm": arm, "k": k, "seed": seed, "class_id": ids[c], "accuracy": a, "seconds": None}
                for c, a in enumerate(per_class)
            ]
    return rows


def relabel(data: ArmData, class_ids: Sequence[int]) -> ArmData:
    """Only the images of ``class_ids``, labelled by their position there (a downstream task over a selection).

    Raises:
        ValueError: a selected class without an image (it could not be learned or tested).
    """
    keep = torch.isin(data.labels, torch.tensor(list(class_ids)))
    position = {c: j for j, c in enumerate(class_ids)}
    labels = torch.tensor([position[int(c)] for c in data.labels[keep]], dtype=torch.long)
    missing = sorted(set(class_ids) - {int(c) for c in data.labels[keep]})
    if missing:
        raise ValueError(f"no image of classes {missing[:20]} here; each selected class needs images")
    return ArmData(data.images[keep], labels)


def results_table(rows: Sequence[dict], info: Mapping[str, str]):
    """The rows as a pyarrow table with an explicit schema (``schema_version``, keys and model in every row).

    Args:
        info: the columns every row shares: ``downstream_model``, ``dataset``, ``synth_key``,
            ``filtered_synth_key``, ``token_key`` and ``run_id`` (the run whose tokens made the synthetic sets;
            None when the store has no such run).
    """
    import pyarrow as pa

    schema = pa.schema(
        [
            ("schema_version", pa.int32()),
            ("arm", pa.string()),
            ("k", pa.int32()),
            ("seed", pa.int32()),
            ("class_id", pa.int64()),
            ("accuracy", pa.float64()),
            ("seconds", pa.float64()),
            ("downstream_model", pa.string()),
            ("dataset", pa.string()),
            ("synth_key", pa.string()),
            ("filtered_synth_key", pa.string()),
            ("token_key", pa.string()),
            ("run_id", pa.string()),
        ],
        metadata={"dct.table": "augment", "dct.schema_version": str(AUGMENT_SCHEMA_VERSION)},
    )
    full = [{"schema_version": AUGMENT_SCHEMA_VERSION, **r, **info} for r in rows]
    return pa.Table.from_pylist(full, schema=schema)


def summary_frame(rows: Sequence[dict]):
    """Mean ± std over seeds of the overall top-1, per arm and k (pandas)."""
    import pandas as pd

    df = pd.DataFrame([r for r in rows if r["class_id"] is None])
    return df.groupby(["k", "arm"])["accuracy"].agg(["mean", "std", "count"]).reset_index()


def plot_png(rows: Sequence[dict], title: str) -> bytes:
    """Accuracy vs k, one line per arm with ± std error bars; PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dct.evaluation.report import figure_png

    s = summary_frame(rows)
    sanity = s[(s.arm == "real") & ~s.k.isin(sorted({r["k"] for r in rows if r["arm"] != "real"}))]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for arm in ARMS:
        part = s[s.arm == arm]
        if arm == "real" and len(sanity):
            part = part[~part.k.isin(sanity.k)]
        if len(part):
            ax.errorbar(part.k, part["mean"], yerr=part["std"].fillna(0), marker="o", capsize=3, label=arm)
    for _, r in sanity.iterrows():
        ax.axhline(r["mean"], ls="--", color="grey", lw=1, label=f"real only, k={int(r.k)}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("real images per class (k)")
    ax.set_ylabel("top-1 on held-out real images")
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return figure_png(fig)
