"""Dataset registry: which classifier, diffusion model, class names and settings a dataset runs with.

Built-in datasets register a factory here (``inet``, ``inat``, ``cub``; the toy world registers
``toy``). A user-defined dataset is one TOML or YAML file with the same fields (no code changes);
:func:`get_dataset` accepts its path. See docs/models.md for the file format.

Class ids are the key everywhere (0-based, equal to the classifier's label ids); names are the prompt
text and must be unique and safe as path components.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from dct.config import (
    ClassifierConfig,
    DatasetSpec,
    TrainingConfig,
)
from dct.lazy import resolve
from dct.models.labels import cub_class_names, imagenet_class_names, names_from_id2label
from dct.models.pipelines import PIPELINE_PRESETS, PRESET_SAMPLERS, PRESET_TRAINING
from dct.models.preprocess import PRESETS as PREPROCESS_PRESETS

DATASET_FILE_SUFFIXES = (".toml", ".yaml", ".yml")


def dataset_names() -> list[str]:
    return sorted(DATASETS)


def dataset_label(dataset: str) -> str:
    """A dataset parameter for names (run names, child flow names): the registry name, or a dataset file's stem."""
    return Path(dataset).stem if dataset.endswith(DATASET_FILE_SUFFIXES) else dataset


def is_dataset_file(name: str) -> bool:
    return name.endswith(DATASET_FILE_SUFFIXES) or "/" in name or "\\" in name


def get_dataset(name: str) -> DatasetSpec:
    """Look up a registered dataset by name, or load a user-defined dataset file (``.toml``/``.yaml``).

    Raises:
        ValueError: unknown name (the message lists the registered ones), a malformed dataset file, or
            (``ModelNotAvailableError``) class names that need a model config not cached yet (inat).
        FileNotFoundError: a dataset file that does not exist.
    """
    if is_dataset_file(name):
        return load_dataset_file(name)
    try:
        entry = DATASETS[name]
    except KeyError:
        raise ValueError(
            f"unknown dataset {name!r}; registered datasets: {', '.join(sorted(DATASETS))} "
            "(or pass a dataset file path ending in .toml/.yaml)"
        ) from None
    return resolve(entry.factory)()


# ------------------------------------------------------------------------------------ class selection

_RANGE = re.compile(r"^\s*(\d+)\s*-\s*(\d+)\s*$")


def select_classes(spec: DatasetSpec, classes: str | int | Iterable[str | int]) -> list[int]:
    """Class ids from ``"all"``, an int, a list, a range string ``"0-99"`` (inclusive), a comma list
    ``"1,5,10-12"``, or class names (exact, case-insensitive). Order of first mention, no duplicates.

    Raises:
        ValueError: an id out of range or an unknown name (the message names the valid range).
    """
    n = spec.num_classes
    valid = f"valid ids are 0-{n - 1} for dataset {spec.name!r}"
    by_name = {c.lower(): i for i, c in enumerate(spec.class_names)}

    def one(item: str | int) -> list[int]:
        if isinstance(item, bool):
            raise ValueError(f"class {item!r} is not an id, range or name")
        if isinstance(item, int):
            ids = [item]
        else:
            text = str(item).strip()
            if text.lower() in by_name:  # names win over numeric parsing ("1" could be a name)
                return [by_name[text.lower()]]
            if text.lower() == "all":
                return list(range(n))
            m = _RANGE.match(text)
            if m:
                lo, hi = int(m.group(1)), int(m.group(2))
                if lo > hi:
                    raise ValueError(f"class range {text!r} is empty (start > end); {valid}")
                ids = [lo, hi]
                if not (0 <= lo < n and 0 <= hi < n):
                    raise ValueError(f"class range {text!r} is out of range; {valid}")
                return list(range(lo, hi + 1))
            if re.fullmatch(r"-?\d+", text):
                ids = [int(text)]
            else:
                raise ValueError(
                    f"unknown class name {text!r} in dataset {spec.name!r}; use `dct datasets show {spec.name}` "
                    f"to list names, or give ids ({valid})"
                )
        for i in ids:
            if not 0 <= i < n:
                raise ValueError(f"class id {i} is out of range; {valid}")
        return ids

    if isinstance(classes, (str, int)):
        items: list[str | int] = (
            [c for c in classes.split(",")] if isinstance(classes, str) and "," in classes else [classes]
        )
    else:
        items = list(classes)
    if not items:
        raise ValueError(f"no classes selected; {valid}")
    out: dict[int, None] = {}
    for item in items:
        for i in one(item):
            out.setdefault(i, None)
    return list(out)


# ------------------------------------------------------------------------------------ dataset files


def _read_mapping(path: Path) -> dict[str, Any]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".toml":
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"malformed dataset file {str(path)!r}: {exc}") from None
    else:
        import yaml

        try:
            data = yaml.safe_load(text)  # safe_load only: a dataset file is data, never code
        except yaml.YAMLError as exc:
            raise ValueError(f"malformed dataset file {str(path)!r}: {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict):
        raise ValueError(f"malformed dataset file {str(path)!r}: expected a mapping at the top level")
    return data


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _resolve_presets(data: dict[str, Any]) -> dict[str, Any]:
    """Preset names in a dataset file: ``diffusion = "sd14"``, ``classifier.preprocess = "reference-vit-mae"``."""
    data = dict(data)
    if isinstance(data.get("diffusion"), str):
        name = data["diffusion"]
        if name not in PIPELINE_PRESETS:
            raise ValueError(f"unknown diffusion preset {name!r}; valid: {', '.join(sorted(PIPELINE_PRESETS))}")
        data["diffusion"] = PIPELINE_PRESETS[name].model_dump()
    elif isinstance(data.get("diffusion"), dict) and "preset" in data["diffusion"]:
        d = dict(data["diffusion"])
        name = d.pop("preset")
        if name not in PIPELINE_PRESETS:
            raise ValueError(f"unknown diffusion preset {name!r}; valid: {', '.join(sorted(PIPELINE_PRESETS))}")
        data["diffusion"] = {**PIPELINE_PRESETS[name].model_dump(), **d}
    else:
        name = None
    # A preset's own sampler/training settings (sdxl-turbo: 1 step, no CFG, 512²) under the file's own keys.
    if name in PRESET_SAMPLERS:
        data["sampler"] = {**PRESET_SAMPLERS[name].model_dump(), **(data.get("sampler") or {})}
    if name in PRESET_TRAINING:
        data["training"] = {**PRESET_TRAINING[name], **(data.get("training") or {})}
    for key in ("classifier", "evaluator"):
        c = data.get(key)
        if isinstance(c, dict) and isinstance(c.get("preprocess"), str):
            name = c["preprocess"]
            if name not in PREPROCESS_PRESETS:
                raise ValueError(f"unknown preprocess preset {name!r}; valid: {', '.join(sorted(PREPROCESS_PRESETS))}")
            data[key] = {**c, "preprocess": PREPROCESS_PRESETS[name].model_dump()}
    return data


def _base_spec(base: str, class_names: list[str] | None) -> DatasetSpec:
    """The built-in dataset a file extends; a file that brings its own class names can extend ``inat``
    without the classifier's config in the cache (the names are what that config would provide)."""
    from dct.models.hub import ModelNotAvailableError

    try:
        return get_dataset(base)
    except (ModelNotAvailableError, ValueError):
        if base == "inat" and class_names:
            return _inat_with_names(tuple(class_names))
        raise


def _one_line(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        value = err.get("input")
        given = "" if err["type"] == "missing" or isinstance(value, (dict, list, tuple)) else f" (got {value!r:.80})"
        parts.append(f"{loc}: {err['msg']}{given}")
    return "; ".join(parts)


def load_dataset_file(path: str | Path) -> DatasetSpec:
    """A user-defined dataset from one TOML/YAML file (format: docs/models.md).

    Extra keys over DatasetSpec's fields: ``base`` (a built-in dataset to start from, e.g. to set only
    ``reference_images`` for ``inet``), ``class_names_file`` (one name per line, relative to the file),
    and preset names for ``diffusion`` and ``classifier.preprocess``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: malformed file or invalid fields (one line naming the fields).
    """
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise FileNotFoundError(f"dataset file {str(path)!r} does not exist")
    if path.suffix not in DATASET_FILE_SUFFIXES:
        raise ValueError(f"dataset file {str(path)!r} must end in {', '.join(DATASET_FILE_SUFFIXES)}")
    data = _read_mapping(path)
    base = data.pop("base", None)
    names_file = data.pop("class_names_file", None)
    if names_file is not None:
        if "class_names" in data:
            raise ValueError(f"dataset file {str(path)!r} sets both class_names and class_names_file; keep one")
        names_path = (path.parent / str(names_file)).resolve()
        if not names_path.is_file():
            raise FileNotFoundError(f"class_names_file {str(names_path)!r} (from {str(path)!r}) does not exist")
        data["class_names"] = [ln.strip() for ln in names_path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    data = _resolve_presets(data)
    # Local model directories and the reference folder written as "./x" or "../x" are relative to the dataset
    # file, not the cwd.
    for key in ("classifier", "evaluator", "diffusion"):
        model = data.get(key)
        if isinstance(model, dict) and str(model.get("model_id", "")).startswith(("./", "../")):
            data[key] = {**model, "model_id": str((path.parent / model["model_id"]).resolve())}
    reference = data.get("reference_images")
    if isinstance(reference, str) and reference.startswith(("./", "../")):
        data["reference_images"] = str((path.parent / reference).resolve())
    if base is not None:
        if is_dataset_file(str(base)):
            raise ValueError(f"base={base!r} must be a registered dataset name, not a file")
        data = _deep_merge(json.loads(_base_spec(str(base), data.get("class_names")).model_dump_json()), data)
    try:
        spec = DatasetSpec.model_validate(data)
    except ValidationError as exc:
        raise ValueError(f"invalid dataset file {str(path)!r}: {_one_line(exc)}") from None
    from dct.models.classifiers import check_classifier_kind
    from dct.models.hub import is_local_path, refuse_pickles

    # Fail before any model is loaded: unknown kinds, and local pickle checkpoints.
    for model in (spec.classifier, spec.evaluator, spec.evaluation.evaluator):
        if model is not None:
            check_classifier_kind(model.kind)
    for model in (spec.diffusion, spec.classifier, spec.evaluator, spec.evaluation.evaluator):
        if model is not None and is_local_path(model.model_id) and Path(model.model_id).expanduser().exists():
            refuse_pickles(Path(model.model_id).expanduser())
    return spec


# ------------------------------------------------------------------------------------ built-in datasets

INET_CLASSIFIER = ClassifierConfig(
    kind="hf",
    model_id="google/vit-large-patch16-224",
    preprocess=PREPROCESS_PRESETS["reference-imagenet-vit"],
    licence="Apache-2.0",
)
# Held-out evaluator for ImageNet: a different architecture (ConvNet) trained on other data (IN-22k).
INET_EVALUATOR = ClassifierConfig(kind="timm", model_id="convnext_base.fb_in22k_ft_in1k", licence="Apache-2.0")
INAT_CLASSIFIER = ClassifierConfig(
    kind="vit-mae",
    model_id="vesteinn/vit-mae-inat21",
    preprocess=PREPROCESS_PRESETS["reference-vit-mae"],
    licence="unspecified on the model card (check before commercial use)",
)
# Held-out evaluator for iNat21: a ConvNeXt (not a ViT like the guide) from LAION-2B CLIP pretraining, fine-tuned
# on iNat21 by timm (90.95 top-1 at 448 on iNat21 val, per its model card). Every timm iNat21 fine-tune is
# CC-BY-NC-4.0; the licence flows into every token file, table row and report (docs/models.md). The revision is
# resolved at run time (hub SHA) and hashed into eval_key.
INAT_EVALUATOR = ClassifierConfig(
    kind="timm",
    model_id="hf-hub:timm/convnext_large_mlp.laion2b_ft_augreg_inat21",
    revision=None,
    licence="CC-BY-NC-4.0 (non-commercial use only; timm iNat21 fine-tune, see its model card)",
)
# CUB-200 has NO held-out evaluator: no hub model found with stated provenance, accuracy, licence and
# safetensors weights in CUB's class order (docs/models.md, "Held-out evaluators"); accuracy is the guide's.
CUB_CLASSIFIER = ClassifierConfig(
    kind="vit-mae",
    model_id="vesteinn/vit-mae-cub",
    preprocess=PREPROCESS_PRESETS["reference-vit-mae"],
    licence="unspecified on the model card (check before commercial use)",
)
INAT_NUM_CLASSES = 10_000
# The authors' code (which produced the paper's numbers) builds PNDM's timestep list with N + 1 entries
# (``skip_prk_steps``: the first timestep is repeated) and backpropagates through its "last step", i.e. the
# last TWO UNet evaluations. The real-model datasets reproduce that; ``grad_steps=1`` (the paper's text: the
# t≈1 evaluation only) stays one override away (docs/design.md, "Reference behaviour").
REFERENCE_TRAINING = TrainingConfig(grad_steps=2)


def _inet() -> DatasetSpec:
    return DatasetSpec(
        name="inet",
        description="ImageNet-1k (ILSVRC-2012), the paper's classifier google/vit-large-patch16-224",
        licence="ImageNet terms of access (non-commercial research and education)",
        class_names=tuple(imagenet_class_names()),
        classifier=INET_CLASSIFIER,
        evaluator=INET_EVALUATOR,
        diffusion=PIPELINE_PRESETS["sd14"],  # the paper's results use SD 1.4
        training=REFERENCE_TRAINING,
    )


def _cub() -> DatasetSpec:
    return DatasetSpec(
        name="cub",
        description="CUB-200-2011 birds, the paper's mean-pooled ViT-MAE classifier vesteinn/vit-mae-cub",
        licence="CUB-200-2011: images from Flickr, research use (see the Caltech-UCSD dataset page)",
        class_names=tuple(cub_class_names()),
        classifier=CUB_CLASSIFIER,
        diffusion=PIPELINE_PRESETS["sd14"],
        training=REFERENCE_TRAINING,
    )


def inat_class_names(*, local_files_only: bool = True) -> list[str]:
    """iNat21 prompt names from ``vesteinn/vit-mae-inat21``'s ``config.json`` (config only, no weights).

    Offline by default: reads the Hugging Face cache (``dct models pull --dataset inat`` fills it).

    Raises:
        ModelNotAvailableError: the config is not cached (and, with ``local_files_only=False``, the hub
            is unreachable); the message names the model and ``dct models pull --dataset inat``.
    """
    from dct.models.hub import ModelNotAvailableError, hub_snapshot

    try:
        path = hub_snapshot(
            INAT_CLASSIFIER.model_id, INAT_CLASSIFIER.revision, ["config.json"], local_files_only=local_files_only
        )
    except ModelNotAvailableError:
        raise ModelNotAvailableError(
            f"the class names of dataset 'inat' come from {INAT_CLASSIFIER.model_id!r}'s config.json, which is "
            "not in the local Hugging Face cache; run `dct models pull --dataset inat` (or "
            "`dct models pull --dataset inat --labels-only` for the 1 MB config alone) where the hub is reachable",
            model_id=INAT_CLASSIFIER.model_id,
        ) from None
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelNotAvailableError(
            f"{str(config_file)!r} is missing from the cache; run `dct models pull --dataset inat --labels-only`"
        )
    id2label = json.loads(config_file.read_text(encoding="utf-8")).get("id2label") or {}
    if len(id2label) != INAT_NUM_CLASSES:
        raise ValueError(
            f"{INAT_CLASSIFIER.model_id!r} config.json has {len(id2label)} labels, expected {INAT_NUM_CLASSES}"
        )
    if all(re.fullmatch(r"LABEL_\d+", str(v)) for v in list(id2label.values())[:10]):
        raise ValueError(
            f"{INAT_CLASSIFIER.model_id!r} config.json has placeholder labels (LABEL_0, ...); give the names in a "
            'dataset file: base = "inat" and class_names_file = "<one iNat21 name per line>"'
        )
    return names_from_id2label(id2label, "inat")


def _inat() -> DatasetSpec:
    return _inat_with_names(tuple(inat_class_names()))


def _inat_with_names(class_names: tuple[str, ...]) -> DatasetSpec:
    return DatasetSpec(
        name="inat",
        description="iNaturalist 2021 (10,000 species), the paper's mean-pooled ViT-MAE classifier "
        "vesteinn/vit-mae-inat21",
        licence="iNaturalist 2021: images under their observers' licences (mostly CC BY-NC); see the iNat 2021 terms",
        class_names=class_names,
        classifier=INAT_CLASSIFIER,
        evaluator=INAT_EVALUATOR,
        diffusion=PIPELINE_PRESETS["sd14"],
        training=REFERENCE_TRAINING,
    )


@dataclass(frozen=True)
class DatasetEntry:
    """A registered dataset: its factory (or ``"module:function"``, imported on first use) and what
    `dct datasets` shows without building it (inat's names need a cached model config)."""

    factory: Callable[[], DatasetSpec] | str
    summary: dict[str, Any] | None = None


# The built-in datasets, one row each; the toy world is a lazily imported row (it never imports this module).
DATASETS: dict[str, DatasetEntry] = {
    "inet": DatasetEntry(
        _inet,
        summary={
            "num_classes": 1000,
            "classifier": INET_CLASSIFIER.model_id,
            "evaluator": INET_EVALUATOR.model_id,
            "diffusion": PIPELINE_PRESETS["sd14"].model_id,
        },
    ),
    "cub": DatasetEntry(
        _cub,
        summary={
            "num_classes": 200,
            "classifier": CUB_CLASSIFIER.model_id,
            "evaluator": None,
            "diffusion": PIPELINE_PRESETS["sd14"].model_id,
        },
    ),
    "inat": DatasetEntry(
        _inat,
        summary={
            "num_classes": INAT_NUM_CLASSES,
            "classifier": INAT_CLASSIFIER.model_id,
            "evaluator": INAT_EVALUATOR.model_id,
            "diffusion": PIPELINE_PRESETS["sd14"].model_id,
        },
    ),
    "toy": DatasetEntry("dct.toy.dataset:toy_dataset"),
    "toy-biased": DatasetEntry("dct.toy.dataset:toy_biased_dataset"),
    "toy-biased-size": DatasetEntry("dct.toy.dataset:toy_biased_size_dataset"),
    "toy-replica": DatasetEntry("dct.toy.dataset:toy_replica_dataset"),
    "fashion": DatasetEntry("dct.fashion.dataset:fashion_dataset"),
}
