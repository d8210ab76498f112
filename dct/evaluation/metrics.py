"""Pooled distribution metrics of a run: FID and KID of the baseline and DCT samples against real images.

Per-class accuracy (guide and held-out evaluator, top-1/top-5) is computed where the samples are made
(:func:`dct.run.runner.process_class`); this module adds what needs ALL classes of a run at once: how far
the generated images, pooled over the run's finished classes, are from the dataset's reference images
(docs/design.md, "Data flow": evaluate).

- **Features** (``EvaluationConfig.fid_features``): ``"evaluator"`` = the held-out evaluator's pooled
  penultimate features through its own preprocessing (:meth:`ImageClassifier.features`); ``"inception"``
  = the standard FID network (torch-fidelity's TF-ported InceptionV3, 2048-d pool features), with weights
  from a local or store path because offline workers cannot download them (:func:`resolve_inception_weights`).
- **Metrics**: torchmetrics' ``FrechetInceptionDistance`` / ``KernelInceptionDistance`` fed PRE-COMPUTED
  features through a pass-through module, so features are extracted once and cached in the store:
  the reference set's once per dataset + extractor + reference source, each class's samples once per
  ``eval_key`` + extractor (a nightly run only extracts the classes it added).
- **Minimum sample counts** (stated in docs/evaluation.md and in :class:`PooledMetrics.notes`): FID needs
  more images than feature dimensions in both sets (``N >= D + 1``; below that the covariance is singular
  and the number meaningless), so a variant with fewer gets ``fid = None`` and a reason. KID uses
  ``subset_size = min(1000, min(N_generated, N_reference) // 2)`` (≥ 2; never more than either set) over
  100 subsets drawn with a fixed seed, and is reported with its standard deviation over the subsets.
- **Which images**: the samples of the classes whose record is ``done`` (diverged tokens are excluded
  from both variants so the two FIDs compare the same classes); the reference images of those classes
  when the reference set is labelled (sub-folders named by class id, or the toy generator), else all.

Pure library: no Prefect. Storage goes through :class:`dct.artifacts.store.ArtifactStore` only.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from dct.artifacts.store import VARIANTS, ArtifactStore
from dct.class_metrics import metric_columns, run_mean_columns
from dct.config import RunConfig
from dct.evaluation.features import (
    DEFAULT_MAX_REFERENCE_IMAGES,
    FeatureExtractor,
    build_feature_extractor,
    cached_reference_features,
    check_fid_features,
    class_sample_features,
    feature_extractor_identity,
    read_class_features,
    reference_features,
)
from dct.evaluation.fidelity import class_feature_metrics
from dct.results import ClassRecord, read_class_records

logger = logging.getLogger(__name__)


KID_SUBSETS = 100
KID_MAX_SUBSET_SIZE = 1000  # torchmetrics' (and the KID paper's) default
KID_MIN_SUBSET_SIZE = 2  # an unbiased MMD estimate needs two samples per set
KID_SEED = 0  # subsets are drawn from a fixed seed: the same features give the same KID

DEFAULT_MAX_KID_SAMPLES = 50_000  # KID keeps its features in memory; FID only sums
# Feature files read per parallel batch: bounds memory (256 classes x 128 x 2048-d Inception features =
# 256 MB) while keeping enough requests in flight.
FEATURE_READ_CHUNK = 256


# ---------------------------------------------------------------------------------------------------------
# Feature extractors
# ---------------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------------
# Images: samples from the store, reference sets
# ---------------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------------
# Feature caches in the store
# ---------------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------------
# FID / KID on features (torchmetrics)
# ---------------------------------------------------------------------------------------------------------


class _Precomputed(nn.Module):
    """Pass-through "feature extractor" so torchmetrics' FID/KID accumulate features computed elsewhere."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _some(ids: Sequence[int], shown: int = 20) -> str:
    """The first ``shown`` ids: a note about 10k classes must stay one line (the full lists are in the tables)."""
    return str(list(ids[:shown]))[:-1] + (f", … ({len(ids)} in all)]" if len(ids) > shown else "]")


def min_fid_samples(num_features: int) -> int:
    """Fewest images per set for FID with ``num_features``-d features: more images than dimensions."""
    return num_features + 1


def _check_features(real: torch.Tensor, fake: torch.Tensor) -> None:
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"features must be (N, D) with the same D, got {tuple(real.shape)} and {tuple(fake.shape)}")


def _fid_metric(num_features: int):
    """torchmetrics FID over pre-computed features (float64 sums; ``update(features, real=...)``)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    return FrechetInceptionDistance(feature=_Precomputed(num_features), reset_real_features=False)


def fid_from_features(real: torch.Tensor, fake: torch.Tensor) -> float:
    """FID between feature sets ``(N, D)`` and ``(M, D)`` with torchmetrics (float64).

    Raises:
        ValueError: mismatched shapes, or fewer than ``D + 1`` rows in either set (:func:`min_fid_samples`).
    """
    _check_features(real, fake)
    need = min_fid_samples(real.shape[1])
    if real.shape[0] < need or fake.shape[0] < need:
        raise ValueError(
            f"FID with {real.shape[1]}-d features needs at least {need} images per set, got "
            f"{real.shape[0]} reference and {fake.shape[0]} generated"
        )
    metric = _fid_metric(real.shape[1])
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    return float(metric.compute())


def kid_subset_size(n_real: int, n_fake: int) -> int:
    """KID subset size: ``min(1000, max(2, min(n_real, n_fake) // 2))``.

    1000 is the KID paper's (and torchmetrics') size for 50k-image sets. Below 2000 images, half of the
    smaller set is used instead of all of it: subsets that each hold the whole set are identical, and
    their standard deviation (reported with KID) would be a meaningless 0.
    """
    return min(KID_MAX_SUBSET_SIZE, max(KID_MIN_SUBSET_SIZE, min(n_real, n_fake) // 2))


def kid_from_features(
    real: torch.Tensor,
    fake: torch.Tensor,
    *,
    subset_size: int | None = None,
    subsets: int = KID_SUBSETS,
    seed: int = KID_SEED,
) -> tuple[float, float, int]:
    """KID (polynomial-kernel MMD², degree 3) mean and std over ``subsets`` random subsets, torchmetrics.

    Subsets are drawn with ``seed`` inside a forked RNG (deterministic, no effect on the caller's RNG).

    Returns:
        ``(kid_mean, kid_std, subset_size)``.

    Raises:
        ValueError: ``subset_size`` larger than either set, or below 2.
    """
    from torchmetrics.image.kid import KernelInceptionDistance

    _check_features(real, fake)
    size = kid_subset_size(real.shape[0], fake.shape[0]) if subset_size is None else subset_size
    if not KID_MIN_SUBSET_SIZE <= size <= min(real.shape[0], fake.shape[0]):
        raise ValueError(
            f"KID subset_size={size} must be within [{KID_MIN_SUBSET_SIZE}, min(#reference={real.shape[0]}, "
            f"#generated={fake.shape[0]})]"
        )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        metric = KernelInceptionDistance(feature=_Precomputed(real.shape[1]), subsets=subsets, subset_size=size)
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std), size


# ---------------------------------------------------------------------------------------------------------
# Pooled metrics of a run
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VariantMetrics:
    """FID/KID of one variant (``baseline`` or ``dct``); None with a reason where not computed."""

    num_samples: int
    fid: float | None = None
    kid: float | None = None
    kid_std: float | None = None
    fid_not_computed: str | None = None
    kid_not_computed: str | None = None


@dataclass
class PooledMetrics:
    """Pooled distribution metrics of a run, with everything needed to interpret them.

    ``record_fields()`` gives the :class:`dct.results.RunRecord` fields; ``to_json()`` the full detail
    (classes used, reasons, minimum counts) that the flow stores as ``runs/{dataset}/{run_id}/pooled.json``.
    """

    feature_extractor: str | None
    num_features: int | None = None
    feature_licence: str | None = None
    reference: str | None = None
    num_reference: int | None = None
    min_fid_samples: int | None = None
    kid_subset_size: int | None = None
    kid_subsets: int = KID_SUBSETS
    class_ids: list[int] = field(default_factory=list)
    variants: dict[str, VariantMetrics] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    nearest_k: int | None = None
    # Per class: the ClassRecord fields of the metrics computed from features (dct.evaluation.fidelity),
    # plus ``feature_metrics_reference`` and ``feature_metrics_note``; the table's rows get them at publishing.
    classes: dict[int, dict[str, Any]] = field(default_factory=dict)

    def record_fields(self) -> dict[str, Any]:
        """The RunRecord fields (``fid_baseline``, ``kid_std_dct``, ``mean_coverage_dct``, ...)."""
        out: dict[str, Any] = {
            "fid_feature_extractor": self.feature_extractor,
            "fid_num_reference": self.num_reference,
            "kid_subset_size": self.kid_subset_size,
            "nearest_k": self.nearest_k,
        }
        # Mean over classes, not one value over the pooled features: the per-class sets are what a token
        # changes (pooled over 10k classes, between-class spread would hide a class that collapsed), and
        # k-NN over every class's images at once would be quadratic in the run's size.
        for m, v, mean_col in run_mean_columns():
            vals = [x for c in self.classes.values() if (x := c.get(m.column(v))) is not None]
            out[mean_col] = sum(vals) / len(vals) if vals else None
        cols = [c for _, _, c in metric_columns("features")]
        with_values = sum(any(v.get(c) is not None for c in cols) for v in self.classes.values())
        out["feature_metrics_classes"] = with_values if self.classes else None
        for v in VARIANTS:
            m = self.variants.get(v)
            out[f"fid_{v}"] = m.fid if m else None
            out[f"kid_{v}"] = m.kid if m else None
            out[f"kid_std_{v}"] = m.kid_std if m else None
            out[f"fid_num_samples_{v}"] = m.num_samples if m else None
        return out

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def class_fields(pooled_json: dict[str, Any] | None) -> dict[int, dict[str, Any]]:
        """``classes`` of a stored ``pooled.json`` (:meth:`to_json`), by int class id ({} if absent)."""
        return {int(c): dict(v) for c, v in ((pooled_json or {}).get("classes") or {}).items()}

    @classmethod
    def not_computed(cls, reason: str, feature_extractor: str | None = None) -> PooledMetrics:
        return cls(feature_extractor=feature_extractor, notes=[reason])


def _class_reference(ref: torch.Tensor, ref_ids: torch.Tensor) -> dict[int, torch.Tensor] | None:
    """The reference features of each class ``{class_id: (N_c, D)}`` in cache order, or None when the
    reference set is not labelled by class. One sort, not one scan of the whole set per class."""
    if not bool((ref_ids >= 0).all()):
        return None
    order = torch.argsort(ref_ids, stable=True)
    ids, counts = torch.unique_consecutive(ref_ids[order], return_counts=True)
    groups = torch.split(order, counts.tolist())
    return {int(c): ref[g] for c, g in zip(ids.tolist(), groups, strict=True)}


def _no_feature_metrics(reason: str) -> dict[str, Any]:
    return {"feature_metrics_reference": None, "feature_metrics_note": reason}


def _feature_metrics(
    class_reference: dict[int, torch.Tensor] | None, class_id: int, feats: Mapping[str, torch.Tensor], k: int
) -> dict[str, Any]:
    """One class's per-class feature metrics (ClassRecord fields), from the features already in memory."""
    if class_reference is None:
        ref, missing = None, "the reference set is not labelled by class (no per-class reference images)"
    else:
        ref = class_reference.get(class_id)
        missing = "the reference set has no images of this class" if ref is None else None
    values, note = class_feature_metrics(ref, feats, k, reference_missing=missing)
    return {
        **values,
        "feature_metrics_reference": None if ref is None else int(ref.shape[0]),
        "feature_metrics_note": note,
    }


def finished_records(store: ArtifactStore, dataset: str, eval_key: str, class_ids: Sequence[int]) -> list[ClassRecord]:
    """The finished records (``done`` or ``diverged``) of ``class_ids`` for ``eval_key``, by class id."""
    return [r for r in read_class_records(store, dataset, eval_key, class_ids).values() if r is not None]


def pooled_metrics(
    store: ArtifactStore,
    config: RunConfig,
    records: Sequence[ClassRecord],
    *,
    reference_images: str | None,
    device: torch.device | str = "cpu",
    extractor: FeatureExtractor | None = None,
    inception_weights: str | None = None,
    max_reference_images: int = DEFAULT_MAX_REFERENCE_IMAGES,
    max_kid_samples: int = DEFAULT_MAX_KID_SAMPLES,
    batch_size: int | None = None,
    environ: Mapping[str, str] | None = None,
    features_only: bool = False,
    evaluator_revision: str | None = None,
) -> PooledMetrics:
    """FID and KID of the baseline and DCT samples of ``records``, pooled, against the reference set.

    Args:
        store: the artifact store holding the samples; also holds the feature caches.
        config: the run config (``evaluation.fid_features`` picks the extractor).
        records: per-class records of the run (e.g. :func:`finished_records` of the plan's selection);
            only ``done`` records with stored samples are used.
        reference_images: ``DatasetSpec.reference_images`` (None: nothing to compare to → not computed).
        device: where features are extracted.
        extractor: a ready extractor (overrides ``fid_features``; tests, notebooks).
        inception_weights: location of the Inception weights (see :func:`inception_weight_candidates`).
        max_reference_images: cap on reference images (evenly spaced subset of a folder).
        max_kid_samples: cap on generated images per variant for KID (FID always uses all of them).
        batch_size: images per feature batch (default ``config.evaluation.batch_size``).
        features_only: the parent of a deployment run: read only the feature files the shards wrote (one
            per class, in parallel); never decode a sample or load a network for them. A class without
            a current feature file is excluded from both variants, with a note. (Only a reference set
            that is not cached yet is extracted here, once per dataset + extractor.)
        evaluator_revision: the held-out evaluator's resolved revision (names its features when
            ``features_only`` and no ``extractor`` is given; the plan's ``revisions.evaluator``).

    Returns:
        :class:`PooledMetrics`; values are None with a reason in ``notes``/``*_not_computed`` where the
        data do not allow them (no reference set, too few images for FID, ...).

    Raises:
        FeatureWeightsMissingError: ``fid_features='inception'`` without weights on this worker.
        FileNotFoundError: a finished class whose samples are missing, or a missing reference folder.
    """
    if extractor is None and (reason := check_fid_features(config, store, weights=inception_weights, environ=environ)):
        return PooledMetrics.not_computed(reason)
    if reference_images is None:
        return PooledMetrics.not_computed(
            f"dataset {config.dataset!r} has no reference_images; set it (a folder of real images) to get FID/KID"
        )
    if config.evaluation.sample_format == "none":
        return PooledMetrics.not_computed("sample_format='none': no samples were stored")
    used = [r for r in records if r.status == "done" and r.samples_uri]
    used_ids = {r.class_id for r in used}
    skipped = sorted(r.class_id for r in records if r.class_id not in used_ids)
    if not used:
        return PooledMetrics.not_computed("no finished ('done') class with stored samples")
    batch = batch_size or config.evaluation.batch_size
    if extractor is None and features_only:
        name, licence = feature_extractor_identity(
            config, store, evaluator_revision=evaluator_revision, inception_weights=inception_weights, environ=environ
        )
    else:
        if extractor is None:
            extractor = build_feature_extractor(
                config, store, device, inception_weights=inception_weights, environ=environ
            )
        extractor.eval()
        name, licence = extractor.name, extractor.licence

    cached = cached_reference_features(store, config.dataset, reference_images, name, max_images=max_reference_images)
    if cached is None:  # once per dataset + extractor + reference set; later runs read the cache
        if extractor is None:
            logger.info("reference %r has no cached features for %s: extracting them once", reference_images, name)
            extractor = build_feature_extractor(
                config, store, device, inception_weights=inception_weights, environ=environ
            ).eval()
        cached = reference_features(
            store, config.dataset, reference_images, extractor, max_images=max_reference_images, batch_size=batch
        )
    ref_all, ref_ids, _ = cached
    class_ids = sorted(r.class_id for r in used)
    notes: list[str] = []
    if skipped:
        notes.append(
            f"{len(skipped)} classes without a 'done' record or samples are excluded from both variants: "
            + _some(skipped)
        )
    if bool((ref_ids >= 0).all()):
        ref = ref_all[torch.isin(ref_ids, torch.tensor(class_ids))]
        notes.append(f"reference restricted to the run's {len(class_ids)} classes: {ref.shape[0]} images")
        missing = sorted(set(class_ids) - set(ref_ids.tolist()))
        if missing:
            notes.append(f"reference set has no images of {len(missing)} classes: {_some(missing)}")
    else:
        ref = ref_all
        notes.append(f"reference set is not labelled by class: all {ref.shape[0]} images used")

    d = int(ref_all.shape[1])
    need = min_fid_samples(d)
    k = config.evaluation.nearest_k
    class_reference = _class_reference(ref_all, ref_ids)
    result = PooledMetrics(
        feature_extractor=name,
        num_features=d,
        feature_licence=licence,
        reference=reference_images,
        num_reference=int(ref.shape[0]),
        min_fid_samples=need,
        class_ids=class_ids,
        notes=notes,
        nearest_k=k,
    )
    for r in records:
        if r.class_id not in used_ids:
            result.classes[r.class_id] = _no_feature_metrics(
                f"not evaluated: status {r.status!r}" + ("" if r.samples_uri else ", no stored samples")
            )
    # One streaming pass over the classes, FEATURE_READ_CHUNK feature files at a time (read in parallel):
    # FID accumulates sums (memory D² whatever the count); KID keeps at most `max_kid_samples` features
    # per variant (an equal share per class), as 10k classes × 64 × 2048-d Inception features would be
    # 5 GB per variant.
    fids = {v: _fid_metric(d) for v in VARIANTS}
    for m in fids.values():
        m.update(ref.double(), real=True)
    counts = dict.fromkeys(VARIANTS, 0)
    kid_parts: dict[str, list[torch.Tensor]] = {v: [] for v in VARIANTS}
    total = sum(r.num_samples or 0 for r in used)
    keep = max(KID_MIN_SUBSET_SIZE, max_kid_samples // len(used)) if total > max_kid_samples else None
    no_features: list[int] = []
    for start in range(0, len(used), FEATURE_READ_CHUNK):
        chunk = used[start : start + FEATURE_READ_CHUNK]
        for r, feats in zip(chunk, read_class_features(store, chunk, name), strict=True):
            if feats is None:
                if extractor is None:
                    no_features.append(r.class_id)
                    continue
                feats = class_sample_features(store, r, extractor, batch)  # extracts and caches
            result.classes[r.class_id] = _feature_metrics(class_reference, r.class_id, feats, k)
            for v in VARIANTS:
                counts[v] += feats[v].shape[0]
                fids[v].update(feats[v].double(), real=False)
                kid_parts[v].append(feats[v][:keep])
    for c in no_features:
        result.classes[c] = _no_feature_metrics("no current feature file (see pooled.json notes)")
    if no_features:
        result.class_ids = [c for c in class_ids if c not in set(no_features)]
        notes.append(
            f"{len(no_features)} classes have no current feature file (finished before shards wrote features, "
            f"or by another extractor) and are excluded from both variants: {_some(no_features)}"
        )
    if keep is not None:
        notes.append(f"KID on {keep} images per class (of {total // len(used)}), at most {max_kid_samples} per variant")
    for v in VARIANTS:
        n = counts[v]
        fake_kid = torch.cat(kid_parts[v]) if kid_parts[v] else torch.zeros(0, d)
        fid = kid = kid_std = None
        fid_reason = kid_reason = None
        if n < need or ref.shape[0] < need:
            fid_reason = (
                f"FID needs more images than feature dimensions (>= {need} for {d}-d features); "
                f"have {n} generated and {ref.shape[0]} reference"
            )
        else:
            fid = float(fids[v].compute())
        if min(fake_kid.shape[0], ref.shape[0]) < KID_MIN_SUBSET_SIZE:
            kid_reason = f"KID needs at least {KID_MIN_SUBSET_SIZE} images per set; have {n} and {ref.shape[0]}"
        else:
            kid, kid_std, result.kid_subset_size = kid_from_features(ref, fake_kid)
        for reason in (fid_reason, kid_reason):
            if reason:
                result.notes.append(f"{v}: {reason}")
        result.variants[v] = VariantMetrics(n, fid, kid, kid_std, fid_reason, kid_reason)
    logger.info(
        "pooled metrics over %d classes (%s, %d reference): %s",
        len(class_ids),
        name,
        ref.shape[0],
        ", ".join(f"{v} FID {m.fid} KID {m.kid}±{m.kid_std} (n={m.num_samples})" for v, m in result.variants.items()),
    )
    return result
