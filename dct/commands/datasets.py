"""`dct datasets`: list the registered datasets; `dct datasets show NAME`: classes, models, licences.

Works offline (HF_HUB_OFFLINE=1): class names come from shipped label lists or, for inat, from the
classifier's config.json in the Hugging Face cache; no weights are read.
"""

from __future__ import annotations

import argparse
import json
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("datasets", help="list datasets; `datasets show NAME` for classes and models")
    p.set_defaults(func=list_datasets)
    sub = p.add_subparsers(dest="datasets_command", metavar="{show}")
    show = sub.add_parser("show", help="one dataset: models, licences, class ids and names")
    show.add_argument("name", help="registered dataset name, or a dataset file (.toml/.yaml)")
    show.add_argument("--classes", default="all", help="'all', an id, a range '0-99', a comma list, or names")
    show.add_argument("--json", action="store_true", help="print one JSON object (classes as [{id, name}])")
    show.set_defaults(func=show_dataset)


def _summary_row(name: str) -> tuple[str, str, str, str, str]:
    from dct.models.datasets import DATASETS, get_dataset
    from dct.models.hub import ModelNotAvailableError

    try:
        spec = get_dataset(name)
    except ModelNotAvailableError:
        s = DATASETS[name].summary
        if s is None:
            raise
        classes = f"{s['num_classes']} (names: dct models pull --dataset {name})"
        return name, classes, s["classifier"], s.get("evaluator") or "none", s["diffusion"]
    evaluator = spec.evaluation.evaluator or spec.evaluator
    held_out = evaluator.model_id if evaluator else "none"
    return name, str(spec.num_classes), spec.classifier.model_id, held_out, spec.diffusion.model_id


def list_datasets(args: argparse.Namespace) -> int:
    from dct.models.datasets import dataset_names

    header = ("name", "classes", "classifier", "held-out evaluator", "diffusion model")
    rows = [header] + [_summary_row(n) for n in dataset_names()]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return 0


def _model(cfg) -> dict | None:
    if cfg is None:
        return None
    return cfg.model_dump(mode="json", exclude={"preprocess"}) | (
        {"preprocess": cfg.preprocess.model_dump(mode="json") if cfg.preprocess else "from the model's config"}
        if hasattr(cfg, "preprocess")
        else {}
    )


def show_dataset(args: argparse.Namespace) -> int:
    from dct.models.datasets import get_dataset, select_classes

    spec = get_dataset(args.name)
    ids = select_classes(spec, args.classes)
    evaluator = spec.evaluation.evaluator or spec.evaluator
    if args.json:
        out = {
            "name": spec.name,
            "description": spec.description,
            "licence": spec.licence,
            "num_classes": spec.num_classes,
            "classifier": _model(spec.classifier),
            "evaluator": _model(evaluator),
            "diffusion": _model(spec.diffusion),
            "prompt_templates": list(spec.prompts.templates),
            "token": spec.token.model_dump(mode="json"),
            "reference_images": spec.reference_images,
            "classes": [{"id": i, "name": spec.class_names[i]} for i in ids],
        }
        json.dump(out, sys.stdout, indent=2, ensure_ascii=False)
        print()
        return 0
    print(f"{spec.name}: {spec.description}")
    print(f"  classes     {spec.num_classes}   (dataset licence: {spec.licence})")
    print(f"  classifier  {spec.classifier.kind}:{spec.classifier.model_id}   ({spec.classifier.licence})")
    if evaluator:
        print(f"  evaluator   {evaluator.kind}:{evaluator.model_id}   ({evaluator.licence})")
    print(f"  diffusion   {spec.diffusion.model_id}   ({spec.diffusion.licence})")
    print(f"  token       {spec.token.num_vectors} vector(s), initialised from {spec.token.initializer_token!r}")
    print(f"  reference   {spec.reference_images or '(none configured: FID off)'}")
    width = len(str(spec.num_classes - 1))
    for i in ids:
        print(f"  {i:>{width}}  {spec.class_names[i]}")
    return 0
