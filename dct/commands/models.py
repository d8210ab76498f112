"""`dct models pull --dataset NAME`: download and cache everything a dataset needs.

Run it where the hub is reachable, with the same HF_HOME as the (air-gapped) GPU workers; afterwards the
workers load with HF_HUB_OFFLINE=1. Prints each model's resolved revision (commit SHA).
"""

from __future__ import annotations

import argparse
import json
import logging
import re

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("models", help="manage model weights (`models pull --dataset NAME`)")
    sub = p.add_subparsers(dest="models_command", metavar="{pull}", required=True)
    pull = sub.add_parser("pull", help="download and cache the diffusion model, classifier and evaluator of a dataset")
    pull.add_argument("--dataset", required=True, help="registered dataset name, or a dataset file (.toml/.yaml)")
    pull.add_argument(
        "--labels-only", action="store_true", help="only the classifier's config.json (class names; inat)"
    )
    pull.set_defaults(func=pull_models)


def _normalise(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", label.split(",")[0].lower().replace("'", "")).strip()


def _check_labels(spec, path) -> None:
    """Shipped label lists must match the downloaded classifier's label map (ids are the key).

    Compared on the normalised first name (punctuation differs between ImageNet label lists, e.g.
    "judge's robe" / "judges robe"): a few differences are logged; many mean a different class ORDER,
    which would silently train every token for the wrong class, so that fails.
    """
    from dct.models.labels import cub_prompt_name, imagenet_labels

    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        return
    id2label = json.loads(cfg_file.read_text(encoding="utf-8")).get("id2label") or {}
    if not id2label:
        return
    if len(id2label) != spec.num_classes:
        raise ValueError(
            f"{spec.classifier.model_id!r} has {len(id2label)} labels but dataset {spec.name!r} has "
            f"{spec.num_classes} classes"
        )
    labels = {int(k): v for k, v in id2label.items()}
    if spec.name == "inet":
        expected = [label for _, label in imagenet_labels()]
    elif spec.name == "cub" and not str(labels[0]).startswith("LABEL_"):
        expected = list(spec.class_names)
        labels = {i: cub_prompt_name(v) for i, v in labels.items()}
    else:
        return
    bad = [i for i in range(spec.num_classes) if _normalise(labels[i]) != _normalise(expected[i])]
    if len(bad) > spec.num_classes // 20:
        i = bad[0]
        raise ValueError(
            f"shipped class names of {spec.name!r} differ from {spec.classifier.model_id!r}'s id2label at "
            f"{len(bad)} ids (first id {i}: {labels[i]!r} vs {expected[i]!r}): a different class order; "
            "report this (class ids are the key)"
        )
    for i in bad:
        logger.warning("class %d: model label %r, shipped name %r", i, labels[i], expected[i])


def pull_models(args: argparse.Namespace) -> int:
    from dct.models.hub import ModelNotAvailableError

    try:
        return _pull(args)
    except ModelNotAvailableError as exc:
        if exc.model_id is None:
            raise
        raise ValueError(
            f"cannot download {exc.model_id!r}: the hub is unreachable or HF_HUB_OFFLINE=1 is set; run this "
            "command where https://huggingface.co is reachable (HTTPS_PROXY / HF_ENDPOINT for mirrors), with the "
            "HF_HOME the workers use"
        ) from None


def _pull(args: argparse.Namespace) -> int:
    from dct.config import DiffusionConfig
    from dct.models.classifiers import fetch_classifier_files
    from dct.models.datasets import INAT_CLASSIFIER, get_dataset
    from dct.models.hub import hub_snapshot, is_local_path, snapshot_revision
    from dct.models.pipelines import resolve_pipeline_dir

    if args.dataset == "inat":
        # inat's class names live in the classifier's config: fetch it first so the spec can be built.
        path = hub_snapshot(INAT_CLASSIFIER.model_id, INAT_CLASSIFIER.revision, ["config.json"])
        print(f"labels      {INAT_CLASSIFIER.model_id} config.json @ {path.name}")
    spec = get_dataset(args.dataset)
    if args.labels_only:
        return 0
    for model in spec.models():
        if isinstance(model, DiffusionConfig):
            path = resolve_pipeline_dir(model, local_files_only=False)
            role, name = "diffusion", model.model_id
        else:
            role = "evaluator" if model is not spec.classifier else "classifier"
            path = fetch_classifier_files(model, local_files_only=False)
            name = f"{model.kind}:{model.model_id}"
            if path is None:
                print(f"{role:<11} {name}: ships with the project, nothing to pull")
                continue
            if model is spec.classifier:
                _check_labels(spec, path)
        where = "local directory" if is_local_path(model.model_id) else "cached"
        print(f"{role:<11} {name} @ {snapshot_revision(path)}  ({where}: {path})")
    return 0
