"""`dct generate`: render images of one class with its learned token (and the baseline prompt) as PNGs.

The images are made exactly as evaluation makes them: the dataset's configured sampler through the one
denoising loop (``dct.method.sampling.generate``), image j from template ``j mod len(templates)`` and noise seed
``seed + j``, so ``--image-seed`` defaults to the evaluation seed and the DCT and baseline images of one index
share their noise and template (only the word differs).
"""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from dct.commands.common import (
    add_device_argument,
    add_one_class_arguments,
    nonnegative_int,
    out_folder,
    positive_int,
    quiet_loader_progress,
    resolve_device,
    select_one_class,
    with_pipeline,
)

if TYPE_CHECKING:
    from dct.method.tokens import TokenVector

logger = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="render images of one class with its learned token (and the baseline prompt) to compare",
        description="Load one class token (a token file from `dct optimize`, or a run's bundle from `dct run`) "
        "into the dataset's pipeline and write N images with the dataset's sampler, prompts and seeds.",
    )
    add_one_class_arguments(p)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--token", help="token file written by `dct optimize` (local path or store URI, s3://...)")
    source.add_argument(
        "--bundle",
        help="run bundle written by `dct run`: .../runs/<dataset>/<run_id>/bundle/tokens.safetensors "
        "(or its folder), local or s3://...",
    )
    source.add_argument(
        "--run", metavar="RUN_ID",
        help="a finished `dct run` (the id it printed last): its token of --class and its exact settings, from --store",
    )
    p.add_argument("--store", help="store root URI of --run (default: $DCT_STORE, else ./dct-store)")
    p.add_argument("--n", type=positive_int, default=8, help="images per variant (default 8)")
    p.add_argument(
        "--image-seed", type=nonnegative_int,
        help="image j uses noise seed IMAGE_SEED + j (default: the dataset's evaluation seed)",
    )
    p.add_argument(
        "--baseline",
        action="store_true",
        help="also render the baseline prompt (the baseline word, 'a', in place of the token) on the same seeds",
    )
    p.add_argument(
        "--out", help="output folder, local or s3://bucket/prefix; default ./samples/<dataset>-<class id>/"
    )
    add_device_argument(p)
    p.set_defaults(func=run)


@dataclass(frozen=True)
class _ClassToken:
    """One class token as read from a token file or a bundle, with what it says it was learned on."""

    token: str
    vector: TokenVector  # the token file's form: (D,), (n, D) or {"clip_l": (n, D1), "clip_g": (n, D2)}
    base_model: str | None
    base_model_revision: str | None


def run(args: argparse.Namespace) -> int:
    from dct.artifacts.images import encode_image
    from dct.artifacts.store import open_store
    from dct.artifacts.token_file import check_token
    from dct.config import baseline_prompts, epoch_prompts
    from dct.method.sampling import generate
    from dct.method.tokens import install_token, text_encoders, token_widths
    from dct.models.hub import ModelNotAvailableError
    from dct.models.pipelines import load_pipeline
    from dct.run.handle import resolve_settings

    # Validate everything cheap — arguments, the token itself, the output folder — before any model is loaded.
    device = resolve_device(args.device)
    quiet_loader_progress()
    settings = resolve_settings(dataset=args.dataset, overrides=None, store=args.store, run=args.run)
    spec = settings.spec
    class_id = select_one_class(spec, args.class_, "generate")
    class_name = spec.class_names[class_id]
    config = with_pipeline(settings.config, args.pipeline, args.revision)
    seed = config.evaluation.seed if args.image_seed is None else args.image_seed
    seeds = [seed + j for j in range(args.n)]
    out = out_folder(args.out or str(Path("samples") / f"{spec.name}-{class_id:05d}"))
    if args.run is not None:
        found = _token_from_run(settings, class_id)
    elif args.token is not None:
        found = _token_from_file(args.token, spec.name, class_id)
    else:
        found = _token_from_bundle(args.bundle, spec.name, class_id)
    if found.base_model is not None and found.base_model != config.diffusion.model_id:
        logger.warning(
            "token %s was learned on %r, generating with %r (pass --pipeline to use the other): images may not "
            "show what it learned",
            found.token,
            found.base_model,
            config.diffusion.model_id,
        )
    try:
        loaded = load_pipeline(config.diffusion, device)
    except ModelNotAvailableError as exc:
        raise exc.for_dataset(spec.name) from None

    pipe = loaded.pipe
    try:
        check_token(f"token {found.token!r}", found.token, found.vector, {}, width=token_widths(pipe))
    except ValueError as exc:
        hint = f"{config.diffusion.model_id!r}; pass the model it was learned on with --pipeline"
        raise ValueError(f"{exc} ({hint})") from None
    for tokenizer, _ in text_encoders(pipe):
        if tokenizer.convert_tokens_to_ids(found.token) not in (None, tokenizer.unk_token_id):
            # Writing the vector would change an existing word (perhaps the baseline word itself).
            raise ValueError(f"token {found.token!r} is already a word of the tokenizer; it cannot be a class token")
    if found.base_model_revision not in (None, loaded.resolved_revision):
        logger.warning(
            "token %s was learned on revision %s of the pipeline, this one is %s: images may differ from the run's",
            found.token,
            found.base_model_revision,
            loaded.resolved_revision,
        )
    install_token(pipe, found.token, found.vector, config.token.initializer_token)

    templates = config.prompts.templates
    variants = [("dct", epoch_prompts(templates, found.token, class_name, args.n))]
    if args.baseline:
        variants.append(("baseline", baseline_prompts(templates, config.prompts.baseline_word, class_name, args.n)))
    rendered = {}
    for variant, prompts in variants:
        images = generate(
            pipe,
            prompts,
            seeds,
            config.sampler,
            device=device,
            dtype=loaded.dtype,
            batch_size=config.evaluation.batch_size,
        )
        rendered[variant] = (prompts[0], images)

    # An artifact store rooted at --out (a folder or s3://): its writes are atomic (a reader never sees half an image).
    store = open_store(out)
    digits = max(2, len(str(args.n - 1)))
    written = []
    for variant, (_, images) in rendered.items():
        for j, image in enumerate(images):
            name = f"{variant}-{j:0{digits}d}.png"
            store.write_bytes(store.uri(name), encode_image(image, "png"))
            written.append(name)

    height, width_px = rendered["dct"][1].shape[-2:]
    print(
        f"class {class_id} ({class_name}): token {found.token}; {args.n} image(s) per variant, "
        f"{width_px}x{height}, seeds {seeds[0]}..{seeds[-1]} (image j: template j mod {len(config.prompts.templates)})"
    )
    for variant, (first_prompt, _) in rendered.items():
        print(f'  {variant}: e.g. "{first_prompt}"')
    print(f"  wrote {len(written)} PNGs to {out.rstrip('/')}/: {written[0]} .. {written[-1]}")
    return 0


def _read_uri(uri: str, flag: str) -> tuple[str, bytes]:
    """Bytes of a local path or store URI (``s3://...``) through the artifact store.

    Returns:
        ``(the URI read, its bytes)``.

    Raises:
        FileNotFoundError: nothing there.
        ValueError: a folder; an unsupported URI.
    """
    from dct.artifacts.store import open_store

    if "://" not in uri:
        uri = os.path.abspath(os.path.expanduser(uri))
        parent = os.path.dirname(uri)
    else:
        parent = uri.rstrip("/").rsplit("/", 1)[0]
    store = open_store(parent)
    if not store.exists(uri):
        raise FileNotFoundError(f"{flag} {uri!r} does not exist")
    if store.fs.isdir(store.to_path(uri)):
        raise ValueError(f"{flag} {uri!r} is a folder; give the token file")
    return uri, store.read_bytes(uri)


def _token_from_file(uri: str, dataset: str, class_id: int) -> _ClassToken:
    """The token of a ``dct optimize`` token file, checked against the dataset and class asked for.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a single-token safetensors file, a non-finite vector, or metadata naming another
            dataset or class.
    """
    from dct.artifacts.token_file import check_token, read_token_bytes

    uri, data = _read_uri(uri, "--token")
    try:
        token, vector, meta = read_token_bytes(data)
    except ValueError as exc:
        raise ValueError(f"--token {uri!r}: {exc}; give a token file written by `dct optimize`") from None
    # The metadata `dct optimize` writes (build_token_metadata) says which dataset and class it is for.
    flags = {"dataset": "--dataset", "class_id": "--class"}
    missing = check_token(f"--token {uri!r}", token, vector, meta, flags=flags, dataset=dataset, class_id=str(class_id))
    for key in missing:
        asked = dataset if key == "dataset" else class_id
        logger.warning("--token %s has no %r in its metadata; assuming it is for %s %s", uri, key, flags[key], asked)
    return _ClassToken(token, vector, meta.get("base_model"), meta.get("base_model_revision"))


def _token_from_run(settings, class_id: int) -> _ClassToken:
    """The token a run learned for ``class_id``: ``tokens/<dataset>/<its token_key>/<class_id>.safetensors``.

    Raises:
        ValueError: the run has no token for the class (it failed, or was not selected).
    """
    from dct.artifacts.store import open_store

    store, run = open_store(settings.config.storage.root), settings.run
    if not store.has_token(run.dataset, run.token_key, class_id):
        raise ValueError(
            f"run {run.run_id!r} has no token for class {class_id} (token_key {run.token_key}); pick a class the "
            f"run finished, or learn this one with `dct run --classes {class_id}` and its settings"
        )
    return _token_from_file(store.token_uri(run.dataset, run.token_key, class_id), run.dataset, class_id)


def _token_from_bundle(uri: str, dataset: str, class_id: int) -> _ClassToken:
    """The token of ``class_id`` from a run's export bundle (``dct.artifacts.bundle``), checked against the dataset.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a dct bundle, a bundle of another dataset, or no token for ``class_id`` in it.
    """
    from safetensors import SafetensorError

    from dct.artifacts.bundle import bundle_vector, read_bundle, resolve_bundle_uri
    from dct.artifacts.token_file import check_token

    store, uri = resolve_bundle_uri(uri)  # the bundle's folder or its file, local or s3://
    data = store.read_bytes(uri)
    try:
        tokens, vectors, manifest = read_bundle(data)
    except (SafetensorError, ValueError) as exc:  # pydantic's ValidationError and json errors are ValueErrors
        raise ValueError(
            f"--bundle {uri!r} is not readable ({exc}); give the tokens.safetensors that `dct run` wrote"
        ) from None
    if manifest.dataset != dataset:
        raise ValueError(
            f"--bundle {uri!r} holds tokens of dataset {manifest.dataset!r}, not {dataset!r}; "
            f"pass --dataset {manifest.dataset} or that dataset's bundle"
        )
    by_class = {entry.class_id: i for i, entry in enumerate(manifest.tokens)}
    if class_id not in by_class:
        held = sorted(by_class)
        shown = ", ".join(map(str, held[:20])) + (f", ... ({len(held)} in all)" if len(held) > 20 else "")
        raise ValueError(f"class {class_id} is not in --bundle {uri!r} (run {manifest.run_id!r}); it holds {shown}")
    i = by_class[class_id]
    vector = bundle_vector(vectors, i)
    check_token(f"--bundle {uri!r}", tokens[i], vector, {})
    return _ClassToken(tokens[i], vector, manifest.base_model, manifest.base_model_revision)
