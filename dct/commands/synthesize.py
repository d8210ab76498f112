"""`dct synthesize`: the synthesis flow in-process — a synthetic training set from a dataset's tokens."""

from __future__ import annotations

import argparse

from dct.commands.common import (
    UserError,
    add_device_argument,
    add_override_arguments,
    add_run_arguments,
    nonnegative_int,
    overrides_from_args,
    positive_int,
    quiet_local_prefect,
    resolve_command_settings,
)
from dct.commands.stopping import run_until_stopped


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "synthesize",
        help="make a synthetic training set (image folder + manifest + card) from a dataset's learned tokens",
        description="Runs the synthesis flow (deployed as dct/synthesize-all) in this process: renders PER_CLASS "
        "images per class "
        "with the dataset's finished tokens (or a run's --bundle) into synthetic/<dataset>/<synth_key>/ in the "
        "store. Resumable: a re-run renders only unfinished classes; changed settings write a new synth_key beside.",
    )
    add_run_arguments(p, mixture=True)
    p.add_argument("--per-class", type=positive_int, required=True, help="kept images per class")
    p.add_argument(
        "--classes", help='"all", ids "0,3", a range "0-99", or names (default: all; with --run, the run\'s classes)'
    )
    p.add_argument("--store", help="store root URI (default: $DCT_STORE, else ./dct-store)")
    p.add_argument(
        "--bundle", help="take the tokens from a run's bundle: runs/<dataset>/<run_id>/bundle or its tokens.safetensors"
    )
    p.add_argument("--optimize-missing", action="store_true", help="optimise classes without a token first")
    add_override_arguments(p)
    p.add_argument(
        "--image-seed", type=nonnegative_int, help="image j of a class uses seed IMAGE_SEED + j (default 1000000; "
        "must miss the optimisation and evaluation seeds)"
    )
    p.add_argument(
        "--template", action="append", dest="templates", metavar="TEMPLATE",
        help="prompt template with '{}' for the token (repeatable; default: the dataset's)",
    )
    p.add_argument("--steps", type=positive_int, help="denoising steps (default: the dataset's sampler)")
    p.add_argument("--guidance-scale", type=float, help="classifier-free guidance scale (default: the dataset's)")
    p.add_argument("--filter", choices=("guide", "evaluator", "both"), help="keep only images the judge is sure of")
    p.add_argument("--min-probability", type=float, default=0.5, help="filter threshold on p(class) (default 0.5)")
    p.add_argument("--max-factor", type=float, default=3.0, help="filter cap: generate ≤ this × per-class (default 3)")
    p.add_argument("--baseline", action="store_true", help="also render the baseline arm (baseline word, same seeds)")
    p.add_argument("--webdataset", action="store_true", help="also write WebDataset tar shards")
    p.add_argument("--format", choices=("png", "jpeg"), default="png", help="image format (default png)")
    p.add_argument("--batch-size", type=positive_int, help="images per denoising batch (default 16)")
    p.add_argument("--shard-size", type=positive_int, default=16, help="classes per shard (default 16)")
    add_device_argument(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dct.models.loading import resolve_device
    from dct.results import new_run_id
    from dct.synthesis.config import FilterConfig, SynthesisConfig
    from dct.synthesis.synthesize import plan_synthesis

    # Every check before Prefect starts or a model loads: the settings (a dataset + flags, or --run), the classes,
    # the store, the models, the tokens. The flow runs THIS plan (deployments plan inside the flow).
    resolve_device(args.device)
    overrides = overrides_from_args(args)
    settings, classes = resolve_command_settings(args, overrides)
    if settings.members and args.optimize_missing:
        raise UserError(
            f"--optimize-missing learns tokens under one configuration; a mixture of {len(settings.members)} runs "
            "takes finished runs: complete each with `dct run --seed …`, or drop --optimize-missing"
        )
    config = settings.config
    sampler = None
    if args.steps is not None or args.guidance_scale is not None:
        update = {"num_inference_steps": args.steps, "guidance_scale": args.guidance_scale}
        sampler = config.sampler.model_copy(update={k: v for k, v in update.items() if v is not None})
        sampler = type(sampler).model_validate(sampler.model_dump())
    filt = (
        FilterConfig(by=args.filter, min_probability=args.min_probability, max_factor=args.max_factor)
        if args.filter
        else None
    )
    fields = dict(
        per_class=args.per_class, seed=args.image_seed, templates=tuple(args.templates) if args.templates else None,
        sampler=sampler, filter=filt, baseline=args.baseline, webdataset=args.webdataset, image_format=args.format,
        batch_size=args.batch_size,
    )
    synthesis = SynthesisConfig(**{k: v for k, v in fields.items() if v is not None})
    run_id = new_run_id()
    plan = plan_synthesis(
        dataset=settings.source, synthesis=synthesis, classes=classes, store=args.store, bundle=args.bundle,
        shard_size=args.shard_size, probe_name=run_id, settings=settings,
    )
    if not plan.todo and not plan.finished and plan.missing_tokens and not args.optimize_missing:
        raise UserError(_no_tokens_text(plan, settings, args))
    quiet_local_prefect()
    try:
        from flows.synthesize_flow import dct_synthesize  # Prefect only once the input is known to be good
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("prefect"):
            raise UserError("`dct synthesize` needs Prefect: pip install -e '.[orchestration]'") from None
        raise
    state = run_until_stopped(
        "dct synthesize", dct_synthesize,
        dataset=settings.source, per_class=args.per_class, classes=classes, store=args.store,
        image_seed=args.image_seed, templates=list(args.templates) if args.templates else None, sampler=sampler,
        filter=filt, baseline=args.baseline, webdataset=args.webdataset, image_format=args.format,
        batch_size=args.batch_size, overrides=overrides, run=args.run, bundle=args.bundle,
        optimize_missing=args.optimize_missing, shard_size=args.shard_size, device=args.device, run_id=run_id,
        plan=plan, return_state=True,
    )
    try:
        out = state.result()
    except Exception as exc:  # noqa: BLE001 - the flow's own error, shown as one line
        print(f"dct synthesize: {type(exc).__name__}: {' '.join(str(exc).split())}")
        return 1
    print(f"synthetic set {out['synth_key']} of dataset {out['dataset']} (token_key {out['token_key']})")
    if plan.is_mixture:
        print(f"  tokens:  a mixture of runs {', '.join(m['run_id'] for m in plan.members)} (image j: run j mod "
              f"{len(plan.members)}; metadata.parquet's run_id names it)")
    missing = out["missing_tokens"]
    print(
        f"  classes: {len(out['synthesized'])} synthesized now, {len(out['finished_before'])} already finished, "
        f"{len(missing)} without a token (skipped{': ' + _ids(missing) if missing else ''})"
    )
    print(f"  images:  {out['kept']} kept of {out['generated']} generated; classes in the set: {out['classes']}")
    print(f"  folder:  {out['root_uri']}/train   (torchvision ImageFolder / datasets 'imagefolder')")
    print(f"  rows:    {out['metadata_uri']}")
    print(f"  card:    {out['card_uri']}")
    return 0


def _no_tokens_text(plan, settings, args) -> str:
    """Why nothing can be synthesized, and the flag or ``--run`` that finds the tokens a run learned."""
    from dct.artifacts.store import open_store
    from dct.commands.common import missing_tokens_hint

    hint = missing_tokens_hint(open_store(plan.store_root), settings, plan.token_key, args.dataset)
    return (
        f"no class of {plan.dataset!r} selected here has a token under token_key {plan.token_key} in store "
        f"{plan.store_root!r}; {hint}"
    )


def _ids(ids: list[int]) -> str:
    return ", ".join(map(str, ids[:20])) + (" …" if len(ids) > 20 else "")
