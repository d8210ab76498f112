"""The registry of per-class metrics: ONE declaration per metric, from which everything else follows.

Each :class:`ClassMetric` names a metric (``precision``), its variants (``baseline``, ``dct``, and for a
property of the real images ``reference``), its Arrow type, unit, which direction is better, what it means
and how it is computed. From the registry follow:

- the record fields (:class:`dct.results.ClassRecord` has one ``{name}_{variant}`` field per column),
- the ``classes`` table columns (:data:`dct.results.CLASS_SCHEMA`) and, for ``run_mean`` metrics, the
  ``runs`` table's ``mean_{name}_{variant}`` columns,
- the report's columns (``index.html``'s per-class table, ``classes.js`` keys ``{key}{variant[0]}``),
- the column tables of docs/evaluation.md and docs/storage.md (a test compares them with
  :func:`markdown_table` / :func:`storage_rows`).

Adding a metric = one entry here + its computation (the code that returns a value under its column name:
:func:`dct.run.runner.process_class` for ``source="shard"``, :func:`dct.evaluation.fidelity.class_feature_metrics`
for ``source="features"``) + the docs rows the test prints. Nothing else names it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pyarrow as pa

# The generated variants (dct.artifacts.store.VARIANTS; a test keeps them equal) and the real images.
GENERATED: tuple[str, ...] = ("baseline", "dct")
REFERENCE = "reference"
VARIANT_LABELS = {"baseline": "baseline", "dct": "DCT", "reference": "reference"}


@dataclass(frozen=True)
class ClassMetric:
    """One per-class metric.

    Attributes:
        name: the column stem; columns are ``{name}_{variant}``.
        label: the report's column header.
        key: the short key of the report's ``classes.js`` rows: ``{key}{variant[0]}`` (keeps 10k rows small).
        unit: what a value is, e.g. ``"fraction in [0, 1]"``.
        better: ``"higher"`` or ``"lower"`` is better (the report colours a change by it).
        description: what it means, one phrase without a full stop (docs/storage.md's column table).
        computed: how and where it is computed, one sentence (docs/evaluation.md).
        source: ``"shard"``: the shard computes it from the images (:func:`dct.run.runner.process_class`);
            ``"features"``: the parent computes it from the feature files the shards wrote, during the pooled
            evaluation (:func:`dct.evaluation.metrics.pooled_metrics`).
        variants: which image sets have a value.
        arrow_type: the Parquet column type (:attr:`pa_type`).
        run_mean: the ``runs`` table gets ``mean_{name}_{variant}`` (mean over the run's classes).
        digits: decimals shown in the report.
    """

    name: str
    label: str
    key: str
    unit: str
    better: Literal["higher", "lower"]
    description: str
    computed: str
    source: Literal["shard", "features"]
    variants: tuple[str, ...] = GENERATED
    arrow_type: Literal["float64", "int32"] = "float64"
    run_mean: bool = False
    digits: int = 2

    def column(self, variant: str) -> str:
        if variant not in self.variants:
            raise ValueError(f"metric {self.name!r} has no variant {variant!r}; valid: {self.variants}")
        return f"{self.name}_{variant}"

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(self.column(v) for v in self.variants)

    @property
    def pa_type(self) -> pa.DataType:
        return pa.type_for_alias(self.arrow_type)

    def js_key(self, variant: str) -> str:
        return f"{self.key}{variant[0]}"


CLASS_METRICS: tuple[ClassMetric, ...] = (
    ClassMetric(
        name="guide_top1",
        label="guide top-1",
        key="g1",
        unit="fraction in [0, 1]",
        better="higher",
        description="Top-1 accuracy (fraction) of the guiding classifier",
        computed="shard: the guide's top-1 prediction on each stored sample, compared with the class id",
        source="shard",
    ),
    ClassMetric(
        name="guide_top5",
        label="guide top-5",
        key="g5",
        unit="fraction in [0, 1]",
        better="higher",
        description="Top-5 accuracy of the guiding classifier",
        computed="shard: the class id among the guide's five highest logits",
        source="shard",
    ),
    ClassMetric(
        name="evaluator_top1",
        label="evaluator top-1",
        key="e1",
        unit="fraction in [0, 1]",
        better="higher",
        description="Top-1 accuracy of the held-out evaluator (null: no evaluator)",
        computed="shard: as guide top-1, with the held-out evaluator (another architecture)",
        source="shard",
    ),
    ClassMetric(
        name="evaluator_top5",
        label="evaluator top-5",
        key="e5",
        unit="fraction in [0, 1]",
        better="higher",
        description="Top-5 accuracy of the held-out evaluator",
        computed="shard: as guide top-5, with the held-out evaluator",
        source="shard",
    ),
    ClassMetric(
        name="precision",
        label="precision",
        key="p",
        unit="fraction in [0, 1]",
        better="higher",
        description="Fidelity: share of generated images inside the class's real-image manifold",
        computed="parent, from features: share of generated images inside at least one reference image's k-NN "
        "ball (radius: distance to its k-th nearest reference image; Kynkäänniemi et al. 2019)",
        source="features",
        run_mean=True,
    ),
    ClassMetric(
        name="recall",
        label="recall",
        key="r",
        unit="fraction in [0, 1]",
        better="higher",
        description="Diversity: share of the class's real images inside the generated images' manifold",
        computed="parent, from features: share of reference images inside at least one generated image's k-NN "
        "ball (radius from the generated set)",
        source="features",
        run_mean=True,
    ),
    ClassMetric(
        name="density",
        label="density",
        key="dn",
        unit="mean count / k, ≥ 0 (1 ≈ as dense as the real images)",
        better="higher",
        description="Fidelity robust to outliers: real-image neighbourhoods holding a generated image, / k, averaged",
        computed="parent, from features: per generated image, the number of reference k-NN balls holding it, "
        "divided by k, averaged (Naeem et al. 2020)",
        source="features",
        run_mean=True,
    ),
    ClassMetric(
        name="coverage",
        label="coverage",
        key="cv",
        unit="fraction in [0, 1]",
        better="higher",
        description="Diversity robust to outliers: share of real images with a generated image in their neighbourhood",
        computed="parent, from features: share of reference images whose k-NN ball holds at least one generated "
        "image (Naeem et al. 2020)",
        source="features",
        run_mean=True,
    ),
    ClassMetric(
        name="vendi",
        label="Vendi",
        key="v",
        unit="effective number of distinct images, in [1, n]",
        better="higher",
        description="Diversity of one image set on its own, the effective number of distinct images (cosine "
        "kernel)",
        computed="parent, from features: cosine-similarity kernel of the L2-normalised features (Friedman & "
        "Dieng 2023, vendi-score's score_X); the reference set on as many images as the generated sets",
        source="features",
        variants=(*GENERATED, REFERENCE),
        run_mean=True,
        digits=1,
    ),
    ClassMetric(
        name="class_fid",
        label="class FID",
        key="f",
        unit="squared feature distance, ≥ 0",
        better="lower",
        description="Fréchet distance of the class's images to its real images (reference: the real-vs-real "
        "floor, two disjoint halves of them); null below D + 1 images per set",
        computed="parent, from features: FID's formula on the class's generated and reference features, and on "
        "two disjoint halves of the reference features as large as a generated set (the floor)",
        source="features",
        variants=(*GENERATED, REFERENCE),
    ),
    ClassMetric(
        name="class_kid",
        label="class KID",
        key="k",
        unit="squared kernel distance (MMD², unbiased; may be slightly < 0)",
        better="lower",
        description="Kernel distance of the class's images to its real images, defined from 2 images (reference: "
        "the real-vs-real floor)",
        computed="parent, from features: unbiased MMD² with KID's cubic polynomial kernel on all the class's "
        "images at once (no subsets); the floor on two disjoint halves of the reference features",
        source="features",
        variants=(*GENERATED, REFERENCE),
        digits=4,
    ),
)

BY_NAME: dict[str, ClassMetric] = {m.name: m for m in CLASS_METRICS}


def metric(name: str) -> ClassMetric:
    """The registered metric ``name``.

    Raises:
        ValueError: not registered (the message lists the registered names).
    """
    try:
        return BY_NAME[name]
    except KeyError:
        raise ValueError(f"no per-class metric {name!r}; registered: {sorted(BY_NAME)}") from None


def column(name: str, variant: str) -> str:
    """The column of metric ``name`` and ``variant`` (``guide_top1``, ``dct`` → ``guide_top1_dct``)."""
    return metric(name).column(variant)


def metric_columns(source: str | None = None) -> list[tuple[ClassMetric, str, str]]:
    """``(metric, variant, column)`` of every registered column, in registry order (optionally one source)."""
    return [(m, v, m.column(v)) for m in CLASS_METRICS if source in (None, m.source) for v in m.variants]


def run_mean_columns() -> list[tuple[ClassMetric, str, str]]:
    """``(metric, variant, runs-table column)`` of the means over classes: ``mean_{name}_{variant}``."""
    return [(m, v, f"mean_{m.column(v)}") for m in CLASS_METRICS if m.run_mean for v in m.variants]


_PY_TYPES: dict[str, type] = {"float64": float, "int32": int}


def python_type(m: ClassMetric) -> type:
    """The record field's type (without the ``| None``)."""
    return _PY_TYPES[m.arrow_type]


def markdown_table() -> str:
    """The metric table of docs/evaluation.md, "Per-class metrics" (a test keeps the doc equal to it)."""
    lines = ["| metric | columns | unit | better | computed |", "|---|---|---|---|---|"]
    for m in CLASS_METRICS:
        cols = ", ".join(f"`{c}`" for c in m.columns)
        lines.append(f"| {m.label} | {cols} | {m.unit} | {m.better} | {m.computed} |")
    return "\n".join(lines)


def storage_rows() -> list[str]:
    """The metric rows of docs/storage.md's ``classes`` and ``runs`` tables (a test finds each in the doc)."""
    rows = []
    for m, v, col in metric_columns():
        rows.append(f"| `{col}` | {m.arrow_type}, null | {m.description}: {VARIANT_LABELS[v]} images. |")
    for m, v, col in run_mean_columns():
        rows.append(
            f"| `{col}` | float64, null | Mean of `{m.column(v)}` over the run's classes with a value. |"
        )
    return rows


def _check_registry() -> None:
    names = [m.name for m in CLASS_METRICS]
    keys = [m.js_key(v) for m in CLASS_METRICS for v in m.variants]
    assert len(set(names)) == len(names), f"metric names repeat: {names}"
    assert len(set(keys)) == len(keys), f"report keys repeat: {keys}"
    for m in CLASS_METRICS:
        assert m.arrow_type in _PY_TYPES, f"{m.name}: unsupported arrow type {m.arrow_type}"
        assert set(m.variants) <= {*GENERATED, REFERENCE}, f"{m.name}: unknown variants {m.variants}"
        # The runs table's means are those of the pooled evaluation, over the classes it computed.
        assert not m.run_mean or m.source == "features", f"{m.name}: run_mean needs source='features'"


_check_registry()
