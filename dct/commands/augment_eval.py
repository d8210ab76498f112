"""`dct augment-eval`: the low-resource augmentation experiment (docs/synthesis.md, "The augmentation experiment").

Makes (or reuses) two synthetic sets from the dataset's tokens — unfiltered with the baseline arm, and
guide-filtered — then trains a fresh downstream classifier per (seed, k, arm) (k = 0: synthetic images only, the
Classification Accuracy Score, beside real only at the same count) and writes a Parquet table
and a PNG plot of top-1 on held-out real images vs k, to ``--out`` and beside the report of the run whose
tokens it used (``--run``, default the dataset's latest run with those tokens), whose ``index.html`` gains
an "Augmentation experiment" section (:mod:`dct.synthesis.augment_page`).
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from dct.commands.common import (
    UserError,
    add_device_argument,
    add_override_arguments,
    add_run_arguments,
    out_folder,
    overrides_from_args,
    positive_int,
    quiet_loader_progress,
    resolve_command_settings,
)
from dct.worlds import WORLDS, get_world

logger = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "augment-eval",
        help="low-resource experiment: k real images per class ± synthetic ones, downstream top-1 vs k",
        description="Trains a fresh downstream classifier (timm, from scratch) per training seed, k and arm: "
        "real only, + baseline synthetic, + DCT synthetic, + guide-filtered DCT synthetic (k=0: each synthetic arm "
        "alone, the Classification Accuracy Score, and real only with as many real images); top-1 on held-out "
        "real images; writes augment.parquet and augment.png to --out, and with augment.html beside the report of the "
        "run whose tokens it used, whose index.html gains an augmentation section.",
    )
    add_run_arguments(p, mixture=True)
    p.add_argument(
        "--classes", help='"all", ids "0,3", a range "0-99", or names (default: all; with --run or --bundle, its '
        "classes); the downstream classifier tells the selected classes apart",
    )
    p.add_argument(
        "--bundle", help="take the tokens from a run's bundle: runs/<dataset>/<run_id>/bundle or its tokens.safetensors"
    )
    add_override_arguments(p)
    p.add_argument(
        "--shots", default="1,2,4,8", help="real images per class, comma-separated (default 1,2,4,8); 0 = synthetic "
        "only (the Classification Accuracy Score), beside real only with as many real images as synthetic ones",
    )
    p.add_argument("--synthetic-per-class", type=positive_int, default=64, help="synthetic images per class")
    p.add_argument("--seeds", type=positive_int, default=3, help="training seeds (default 3)")
    p.add_argument("--store", help="store root URI with the dataset's tokens (default: $DCT_STORE, else ./dct-store)")
    p.add_argument(
        "--real-train",
        help="image folder (class-id subfolders) of real training images; the built-in worlds (toy, fashion) bring "
        "their own, which the folders replace",
    )
    p.add_argument("--real-test", help="image folder (class-id subfolders) of held-out real test images")
    p.add_argument(
        "--test-per-class",
        type=positive_int,
        default=150,
        help="held-out real images per class where the world renders them (toy; default 150)",
    )
    p.add_argument("--min-probability", type=float, default=0.5, help="guide filter threshold (default 0.5)")
    p.add_argument("--model", default=None, help="timm model of the downstream classifier (default test_efficientnet)")
    p.add_argument("--steps", type=positive_int, help="optimiser steps per training run (default 600)")
    p.add_argument("--sanity-k", type=int, default=64, help="also real-only with this many per class (0 = off)")
    p.add_argument("--out", help="output folder, local or s3://bucket/prefix (default ./augment-<dataset>/)")
    add_device_argument(p)
    p.set_defaults(func=run)


def _shots(text: str) -> list[int]:
    usage = f"--shots {text!r} must be comma-separated non-negative integers (0 = synthetic only), e.g. 0,1,2,4,8"
    try:
        shots = sorted({int(s) for s in text.split(",") if s.strip()})
    except ValueError:
        raise UserError(usage) from None
    if not shots or shots[0] < 0:
        raise UserError(usage)
    return shots


def run(args: argparse.Namespace) -> int:
    from dct.artifacts.store import open_store
    from dct.models.datasets import select_classes
    from dct.models.loading import resolve_device
    from dct.synthesis.augment import DownstreamConfig
    from dct.synthesis.config import FilterConfig, SynthesisConfig

    t_start = time.perf_counter()
    device = resolve_device(args.device)
    quiet_loader_progress()
    shots = _shots(args.shots)
    overrides = overrides_from_args(args)
    settings, classes = resolve_command_settings(args, overrides)  # --run: the run's settings and classes
    spec = settings.spec
    if args.classes is None and args.bundle:  # a bundle's own classes, as --run takes the run's
        from dct.synthesis.synthesize import bundle_class_tokens

        classes = sorted(bundle_class_tokens(args.bundle, spec.name, open_store(args.store))[2])
    class_ids = select_classes(spec, classes)
    if len(class_ids) < 2:
        raise UserError(f"--classes {classes!r} selects {len(class_ids)} class; a downstream classifier needs two")
    # A built-in world brings its real images (World.augment_real); image folders, where given, are used instead.
    world = None if (args.real_train or args.real_test) or spec.name not in WORLDS else get_world(spec.name)
    if world is not None:
        world.check_real_images()  # e.g. fashion's one line naming the package, before any image is rendered
    elif not (args.real_train and args.real_test):
        raise UserError(f"dataset {spec.name!r} needs --real-train and --real-test image folders (class-id folders)")
    if not 0 < args.min_probability <= 1:
        raise UserError(f"--min-probability {args.min_probability!r} must be within (0, 1]")
    fields = {k: v for k, v in (("model", args.model), ("steps", args.steps)) if v is not None}
    if args.model is not None:
        fields["model_kwargs"] = {}
    downstream = DownstreamConfig(**fields)
    out = out_folder(args.out or f"augment-{spec.name}")
    n = args.synthetic_per_class
    # k = 0's reference, real_matched, takes as many real images per class as the DCT arm has synthetic ones.
    most = max([*shots, args.sanity_k or 0, n if 0 in shots else 0])
    plain = SynthesisConfig(per_class=n, baseline=True, batch_size=64)
    filtered = SynthesisConfig(
        per_class=n, batch_size=64, filter=FilterConfig(by="guide", min_probability=args.min_probability)
    )
    from dct.synthesis.synthesize import plan_synthesis, synthesize_dataset

    # Cheap checks before any image is rendered: the tokens exist, and the run the results go to has them.
    where = {"classes": class_ids, "store": args.store, "bundle": args.bundle, "settings": settings}
    first = plan_synthesis(dataset=settings.source, synthesis=plain, **where)
    store = open_store(first.store_root)
    if first.missing_tokens:
        from dct.commands.common import missing_tokens_hint

        raise UserError(
            f"classes {first.missing_tokens[:20]} of {spec.name!r} have no finished token under token_key "
            f"{first.token_key} in store {first.store_root!r}; "
            + missing_tokens_hint(store, settings, first.token_key, args.dataset)
        )
    if first.is_mixture:  # no one run's report: its own augmentation section would show the mixture's numbers
        run_id = None
        print(f"note: a mixture of runs {', '.join(args.run)}; the results go to --out only")
    else:
        run_id = _attach_to(store, args.run[0] if args.run else None, first.dataset, first.token_key)
    if world is None:
        _check_folder_counts(args.real_train, class_ids, most, shots, n)
    else:  # before any image is generated, so a world short of real images fails here (seconds, not minutes)
        real_pools, real_test = world.augment_real(class_ids, args.seeds, most, args.test_per_class)
    sets = {}
    for name, cfg in (("plain", plain), ("filtered", filtered)):
        plan, summary = synthesize_dataset(dataset=settings.source, synthesis=cfg, device=str(device), **where)
        sets[name] = (plan, summary)
    t_synth = time.perf_counter() - t_start
    from dct.synthesis.augment import ArmData, plot_png, relabel, results_table, run_experiment, summary_frame

    synthetic = {arm: relabel(data, class_ids) for arm, data in _synthetic_arms(store, sets).items()}
    size = synthetic["dct"].images.shape[-2:]
    if world is not None:
        pools, test = [ArmData(*p) for p in real_pools], ArmData(*real_test)
    else:
        pools, test = _folder_real(args, spec.num_classes, size, most)
    pools, test = [relabel(p, class_ids) for p in pools], relabel(test, class_ids)
    rows = run_experiment(
        downstream, real_pools=pools, test=test, synthetic=synthetic, shots=shots, num_classes=len(class_ids),
        sanity_k=args.sanity_k or None, device=device, class_ids=class_ids,
    )
    import pyarrow as pa
    import pyarrow.parquet as pq

    info = {
        "downstream_model": downstream.model, "dataset": spec.name, "synth_key": sets["plain"][0].synth_key,
        "filtered_synth_key": sets["filtered"][0].synth_key, "token_key": first.token_key, "run_id": run_id,
    }
    table = results_table(rows, info)
    png = plot_png(rows, f"{spec.name}: downstream {downstream.model} from scratch")
    out_store = open_store(out)
    parquet = pa.BufferOutputStream()
    pq.write_table(table, parquet)
    written = [out_store.write_bytes(out_store.uri(name), data)
               for name, data in (("augment.parquet", parquet.getvalue().to_pybytes()), ("augment.png", png))]
    total = time.perf_counter() - t_start
    _print_tables(rows, summary_frame(rows), spec.class_names, synthetic)
    print(f"synthetic sets: {info['synth_key']} (+ baseline), {info['filtered_synth_key']} (guide filter)")
    print(f"wrote {written[0]} and {written[1]}")
    if run_id is not None:
        from dct.synthesis.augment_page import write_augment_results

        uris = write_augment_results(store, first.dataset, run_id, table, png, spec.class_names)
        where = uris["index"] or f"{uris['page']} (the run has no index.html yet)"
        print(f"run {run_id}: section added to {where}")
    print(f"time: {total:.0f} s in all ({t_synth:.0f} s synthesis, {total - t_synth:.0f} s training runs)")
    return 0


def _attach_to(store, run_id: str | None, dataset: str, token_key: str) -> str | None:
    """The run whose report gets the results: ``run_id`` checked, else the latest run with ``token_key``.

    Returns None (with a printed line) when no ``run_id`` is given and no run of the dataset has these tokens
    (tokens planted by `dct optimize`, say): the results then go to ``--out`` only.
    """
    from dct.probe.probe import find_runs

    if run_id is None:
        try:
            return find_runs(store, [], dataset, token_key=token_key)[0].run_id
        except ValueError as exc:
            print(f"note: {exc}. The results go to --out only (--run RUN_ID attaches them to a run's report)")
            return None
    return find_runs(store, [run_id], dataset, token_key=token_key)[0].run_id


def _synthetic_arms(store, sets):
    """The three synthetic arms from the two sets' manifests (images decoded from the store)."""
    import torch

    from dct.artifacts.images import decode_image
    from dct.synthesis.augment import ArmData
    from dct.synthesis.layout import read_table

    def load(plan, summary, arm: str) -> ArmData | None:
        rows = [r for r in read_table(store.read_bytes(summary["metadata_uri"])).to_pylist() if r["arm"] == arm]
        rows = [r for r in rows if r["kept"]]
        if not rows:
            return None
        root = summary["root_uri"]
        images = [decode_image(store.read_bytes(f"{root}/{r['path']}")) for r in rows]
        return ArmData(torch.stack(images), torch.tensor([r["class_id"] for r in rows]))

    plain, filtered = sets["plain"], sets["filtered"]
    arms = {"baseline": load(*plain, "baseline"), "dct": load(*plain, "dct")}
    if filtered_rows := load(*filtered, "dct"):
        arms["dct_filtered"] = filtered_rows
    else:
        logger.warning("no DCT image passed the guide filter; the dct_filtered arm is left out")
    return arms


def _check_folder_counts(root: str, class_ids: list[int], most: int, shots: list[int], n: int) -> None:
    """Before any image is rendered: every selected class of ``--real-train`` has ``most`` images (a listing)."""
    from dct.artifacts.store import open_store
    from dct.synthesis.layout import class_id_of_folder

    st = open_store(root if "://" in root else str(Path(root).absolute()))
    if not st.fs.isdir(st.to_path(st.root)):
        raise UserError(f"--real-train {root!r} is not a folder; give an image folder with class-id subfolders")
    counts = dict.fromkeys(class_ids, 0)
    for folder in st.list_folders(st.root):
        c = class_id_of_folder(folder.rstrip("/").rsplit("/", 1)[-1])
        if c in counts:
            counts[c] += len(st.list_files(folder))
    short = {c: m for c, m in counts.items() if m < most}
    if short:
        c, m = next(iter(short.items()))
        why = (f"k=0's real_matched reference trains on as many real images as --synthetic-per-class {n}; "
               if 0 in shots and most == n else "")
        raise UserError(
            f"--real-train {root!r} has {m} images of class {c} ({len(short)} classes short), fewer than the {most} "
            f"per class the experiment needs: {why}add images, or lower --shots / --sanity-k / --synthetic-per-class"
        )


def _folder_real(args, num_classes: int, size, per_class: int):
    """Real images from class-id image folders; each seed's pool is a seeded permutation of the train folder."""
    import torch
    import torch.nn.functional as F

    from dct.artifacts.images import decode_image
    from dct.artifacts.store import open_store
    from dct.synthesis.augment import ArmData
    from dct.synthesis.layout import class_id_of_folder

    def read(root: str) -> ArmData:
        st = open_store(root if "://" in root else str(Path(root).absolute()))
        imgs, labels = [], []
        for folder in st.list_folders(st.root):
            name = folder.rstrip("/").rsplit("/", 1)[-1]
            c = class_id_of_folder(name)
            if c >= num_classes:
                raise ValueError(f"folder {name!r} names class {c}, but the dataset has {num_classes} classes")
            for uri in st.list_files(folder):
                img = decode_image(st.read_bytes(uri))
                imgs.append(F.interpolate(img[None], size=tuple(size), mode="bilinear", antialias=True)[0])
                labels.append(c)
        if not imgs:
            raise ValueError(f"image folder {root!r} holds no images (expected <class_id>-<name>/<image> files)")
        return ArmData(torch.stack(imgs), torch.tensor(labels))

    train, test = read(args.real_train), read(args.real_test)
    pools = []
    for s in range(args.seeds):
        g = torch.Generator().manual_seed(s)
        order = torch.randperm(len(train.labels), generator=g)
        pools.append(ArmData(train.images[order], train.labels[order]))
    return pools, test


def _print_tables(rows, summary, class_names, synthetic) -> None:
    from dct.synthesis.augment import ARMS

    print("top-1 on held-out real images, mean ± std over seeds:")
    arms = [a for a in ARMS if a in set(summary.arm)]
    print(f"{'k':>4} " + " ".join(f"{a:>16}" for a in arms))
    for k in sorted(set(summary.k)):
        cells = []
        for a in arms:
            r = summary[(summary.k == k) & (summary.arm == a)]
            text = f"{r['mean'].iloc[0]:.3f} ± {r['std'].fillna(0).iloc[0]:.3f}" if len(r) else ""
            cells.append(text.rjust(16))
        print(f"{k:>4} " + " ".join(cells))
    matched = {r["real_images"] for r in rows if r["arm"] == "real_matched" and r["class_id"] is None}
    if matched:
        per = matched.pop() // len({r["class_id"] for r in rows if r["class_id"] is not None})
        print(f"k=0: each synthetic arm alone (Classification Accuracy Score); real_matched: real only, {per} real "
              "images per class (as many as the DCT arm's synthetic ones)")
    import pandas as pd
    import torch

    df = pd.DataFrame([r for r in rows if r["class_id"] is not None])
    per = df.groupby(["class_id", "k", "arm"])["accuracy"].mean().unstack(["k", "arm"])
    print("per class (mean over seeds), columns k/arm:")
    with pd.option_context("display.width", 250, "display.max_columns", 50, "display.precision", 2):
        per.index = [f"{c} {class_names[c]}" for c in per.index]
        print(per)
    ids = sorted(set(df["class_id"]))  # the selected classes; synthetic labels are their positions
    counts = {a: dict(zip(ids, torch.bincount(d.labels, minlength=len(ids)).tolist(), strict=True))
              for a, d in synthetic.items()}
    print(f"synthetic images per class: {counts}")
