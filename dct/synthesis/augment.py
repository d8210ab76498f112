"""The low-resource augmentation experiment: does a class token's synthetic set stand in for real images?

For each k (real images per class) and each training seed, a fresh downstream classifier (a timm model
from scratch, an architecture family different from the guide's) is trained with ONE recipe on

    real          k real images per class
    baseline      k real + the baseline arm's synthetic images (baseline word instead of the token)
    dct           k real + the DCT synthetic images (the same count as baseline)
    dct_filtered  k real + the DCT images that passed the guide filter (the same count)

and scored top-1 on a held-out real test set. Arms are paired: within a seed they share the real images
and the initial weights (docs/synthesis.md, "The augmentation experiment").

k = 0 is the Classification Accuracy Score (Ravuri & Vinyals, "Classification Accuracy Score for Conditional
Generative Models", NeurIPS 2019): each synthetic arm alone, no real image; its reference is

    real_matched  as many real images per class as the DCT arm has synthetic ones (``--synthetic-per-class``)
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

ARMS = ("real", "baseline", "dct", "dct_filtered", "real_matched")
SYNTHETIC_ARMS = ("baseline", "dct", "dct_filtered")
# 2: run_id and token_key (the run the results are attached to); 3: k = 0 (the CAS rows and their real_matched
# reference) and the training set's size in every row (real_images, synthetic_images)
AUGMENT_SCHEMA_VERSION = 3


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
    real: ArmData | None,
    synthetic: ArmData | None,
    test: ArmData,
    num_classes: int,
    seed: int,
    device: torch.device | str = "cpu",
) -> tuple[float, list[float]]:
    """Train one downstream classifier and score it on the test set.

    Args:
        real: the real training images; None trains on ``synthetic`` alone (k = 0: every batch is synthetic).
        synthetic: the synthetic training images (``synthetic_fraction`` of each batch), or None.

    Returns:
        ``(top-1 over the test set, top-1 per class (length num_classes))``.
    """
    model = build_downstream(cfg, num_classes, seed).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / cfg.steps)))
    g = torch.Generator().manual_seed(seed + 1)
    if real is None and synthetic is None:
        raise ValueError("train_and_score needs real or synthetic training images; both are None")
    if real is None:
        n_syn = cfg.batch_size
    else:
        n_syn = round(cfg.batch_size * cfg.synthetic_fraction) if synthetic is not None else 0
    n_real = cfg.batch_size - n_syn
    model.train()
    for _ in range(cfg.steps):
        xs, ys = [], []
        if n_real:
            idx = torch.randint(0, len(real.labels), (n_real,), generator=g)
            xs.append(real.images[idx])
            ys.append(real.labels[idx])
        if n_syn:
            sidx = torch.randint(0, len(synthetic.labels), (n_syn,), generator=g)
            xs.append(synthetic.images[sidx])
            ys.append(synthetic.labels[sidx])
        x, y = torch.cat(xs), torch.cat(ys)
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


def per_class_counts(data: ArmData, num_classes: int) -> list[int]:
    """Images per class of ``data`` (labels ``0..num_classes-1``)."""
    return torch.bincount(data.labels, minlength=num_classes).tolist()[:num_classes]


def real_matched_count(synthetic: Mapping[str, ArmData], num_classes: int) -> int:
    """Real images per class of k = 0's reference: as many as the DCT arm has synthetic images per class (its
    fewest), else the first synthetic arm present. The Classification Accuracy Score is read against a classifier
    trained on the same number of real images (Ravuri & Vinyals 2019).

    Raises:
        ValueError: no synthetic arm.
    """
    arm = next((a for a in ("dct", *SYNTHETIC_ARMS) if a in synthetic), None)
    if arm is None:
        raise ValueError("no synthetic arm given: k = 0 needs one of " + ", ".join(SYNTHETIC_ARMS))
    return min(per_class_counts(synthetic[arm], num_classes))


def check_shots(shots: Sequence[int], synthetic: Mapping[str, ArmData]) -> list[int]:
    """The k values, sorted and unique; k = 0 (synthetic only) needs a synthetic arm.

    Raises:
        ValueError: a negative k, no k at all, or k = 0 without any synthetic arm (named, with what to do).
    """
    ks = sorted(set(shots))
    if not ks or ks[0] < 0:
        raise ValueError(f"shots {list(shots)!r} must be non-negative integers (0 = synthetic only), e.g. 0,1,2,4,8")
    if ks[0] == 0 and not any(a in synthetic for a in SYNTHETIC_ARMS):
        raise ValueError(
            "shots include k=0 (the Classification Accuracy Score: a classifier trained on synthetic images only), "
            f"but no synthetic arm ({', '.join(SYNTHETIC_ARMS)}) was given; pass synthetic arms or drop 0 from shots"
        )
    return ks


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
        shots: the k values (real images per class). k = 0 trains each synthetic arm on its synthetic images
            alone (the Classification Accuracy Score), and ``real_matched`` on :func:`real_matched_count` real
            images per class, its reference; the ``real`` arm has no k = 0 row.
        sanity_k: also train real-only with this many real images per class (the recipe can learn the task).

    Returns:
        Rows ``{arm, k, seed, class_id (None = all), accuracy, seconds, real_images, synthetic_images}``: the
        last two count the training set's images (all classes).

    Raises:
        ValueError: bad ``shots`` (:func:`check_shots`), or a pool with fewer real images of a class than a k
            (or k = 0's reference) needs — before any classifier is trained.
    """
    ids = list(class_ids) if class_ids is not None else list(range(num_classes))
    if len(ids) != num_classes:
        raise ValueError(f"class_ids has {len(ids)} ids for {num_classes} downstream classes; give one per class")
    ks = check_shots(shots, synthetic)
    plan: list[tuple[int, str, int]] = []  # (k, arm, real images per class)
    for k in ks:
        if k == 0:
            plan += [(0, arm, 0) for arm in SYNTHETIC_ARMS if arm in synthetic]
            plan.append((0, "real_matched", real_matched_count(synthetic, num_classes)))
        else:
            plan += [(k, arm, k) for arm in ARMS if arm == "real" or (arm in SYNTHETIC_ARMS and arm in synthetic)]
    if sanity_k:
        plan.append((sanity_k, "real", sanity_k))
    most = max(n for _, _, n in plan)
    for seed, pool in enumerate(real_pools):  # fail before the first training run, not in the middle
        fewest = min(per_class_counts(pool, num_classes))
        if fewest < most:
            c = per_class_counts(pool, num_classes).index(fewest)
            need = [f"{arm} at k={k}" for k, arm, n in plan if n > fewest]
            raise ValueError(
                f"class {ids[c]} has {fewest} real training images in the pool of seed {seed}, fewer than the {most} "
                f"that {', '.join(dict.fromkeys(need))} needs; add real images, or lower --shots / --sanity-k "
                "(k=0's real_matched reference takes as many as --synthetic-per-class)"
            )
    rows = []
    for seed, pool in enumerate(real_pools):
        real_only: dict[int, tuple[float, list[float]]] = {}  # real-only runs of this seed by image count
        for k, arm, n_real in plan:
            t0 = time.perf_counter()
            syn = synthetic.get(arm) if arm in SYNTHETIC_ARMS else None
            real = first_k(pool, n_real, num_classes) if n_real else None
            if syn is None and n_real in real_only:  # real_matched == the sanity run when the counts agree
                top1, per_class = real_only[n_real]
            else:
                top1, per_class = train_and_score(cfg, real, syn, test, num_classes, seed, device)
            if syn is None:
                real_only[n_real] = (top1, per_class)
            seconds = time.perf_counter() - t0
            logger.info("seed %d k=%d %-12s top-1 %.3f (%.1f s)", seed, k, arm, top1, seconds)
            sizes = {"real_images": len(real.labels) if real is not None else 0,
                     "synthetic_images": len(syn.labels) if syn is not None else 0}
            rows.append({"arm": arm, "k": k, "seed": seed, "class_id": None, "accuracy": top1, "seconds": seconds,
                         **sizes})
            rows += [
                {"arm": arm, "k": k, "seed": seed, "class_id": ids[c], "accuracy": a, "seconds": None, **sizes}
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
            ("real_images", pa.int32()),
            ("synthetic_images", pa.int32()),
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
    """Accuracy vs k, one line per arm with ± std error bars; PNG bytes.

    The k axis is logarithmic above 1 and linear from 0 to 1 (symlog), so k = 0 — each synthetic arm alone, the
    Classification Accuracy Score — is the first point of its arm's line, and ``real_matched`` (real only, as
    many real images per class as the DCT arm has synthetic ones) is a black star at k = 0. Real-only at the
    sanity count is a dashed grey line.
    """
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
        if not len(part):
            continue
        if arm == "real_matched":
            n = sorted({r["real_images"] for r in rows if r["arm"] == arm and r["class_id"] is None})
            per = {r["class_id"] for r in rows if r["arm"] == arm and r["class_id"] is not None}
            count = f", {n[0] // max(len(per), 1)}/class" if len(n) == 1 else ""
            ax.errorbar(part.k, part["mean"], yerr=part["std"].fillna(0), marker="*", ms=11, ls="none", capsize=3,
                        color="black", label=f"real only{count} (k=0 reference)")
            continue
        ax.errorbar(part.k, part["mean"], yerr=part["std"].fillna(0), marker="o", capsize=3, label=arm)
    for _, r in sanity.iterrows():
        ax.axhline(r["mean"], ls="--", color="grey", lw=1, label=f"real only, k={int(r.k)}")
    ks = sorted({int(r["k"]) for r in rows} - {int(k) for k in sanity.k})  # the sanity level is a line, not a tick
    if ks and ks[0] == 0:
        ax.set_xscale("symlog", base=2, linthresh=1, linscale=0.5)
        ax.set_xlim(-0.3, None)
        ax.set_xticks(ks, ["0\n(synthetic only)" if k == 0 else str(k) for k in ks])
    else:
        ax.set_xscale("log", base=2)
    ax.set_xlabel("real images per class (k)")
    ax.set_ylabel("top-1 on held-out real images")
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return figure_png(fig)
