"""`dct optimize`: learn the token of one class and write the token file."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from dct.commands.common import (
    add_device_argument,
    add_one_class_arguments,
    add_override_arguments,
    check_out_parent,
    overrides_from_args,
    resolve_device,
    select_one_class,
    with_overrides,
    with_pipeline,
)

if TYPE_CHECKING:
    from dct.artifacts.store import ArtifactStore

logger = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "optimize",
        help="learn the discriminative token of one class and write it as a token file",
        description="Optimise one class token of a dataset (default: the embedded toy world) and save it as "
        "safetensors loadable by diffusers' load_textual_inversion.",
    )
    add_one_class_arguments(p)
    p.add_argument("--classifier", help="classifier model id/path (overrides the dataset's guide)")
    p.add_argument("--classifier-kind", help="loader kind of --classifier (hf, vit-mae, timm, local, toy)")
    p.add_argument(
        "--out",
        help="token file to write, a local path or s3://bucket/.../name.safetensors; "
        "default ./tokens/<dataset>-<class id>.safetensors",
    )
    add_override_arguments(p, ("token", "memory"))
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None, help="progress bar")
    add_device_argument(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dct.artifacts.token_file import build_token_metadata, token_file_bytes
    from dct.config import token_key
    from dct.method.optimize import optimize_token
    from dct.models.classifiers import load_classifier
    from dct.models.hub import ModelNotAvailableError
    from dct.models.pipelines import load_pipeline
    from dct.run.handle import resolve_settings
    from dct.run.plan import check_models_available

    # Validate everything cheap before any model is loaded.
    device = resolve_device(args.device)
    settings = resolve_settings(dataset=args.dataset, overrides=overrides_from_args(args), store=None)
    spec = settings.spec
    class_id = select_one_class(spec, args.class_, "optimize")
    config = with_pipeline(settings.config, args.pipeline, args.revision)
    updates: dict = {}
    if args.classifier or args.classifier_kind:
        updates["classifier"] = config.classifier.model_copy(
            update={
                "model_id": args.classifier or config.classifier.model_id,
                "kind": args.classifier_kind or config.classifier.kind,
                "preprocess": None,
            }
        )
    config = with_overrides(config, **updates)
    store, out = _out_location(args.out or str(Path("tokens") / f"{spec.name}-{class_id:05d}.safetensors"))
    # Models present, of a known kind and not pickles — checked without loading any weights.
    check_models_available(config, args.dataset)

    try:
        loaded_pipe = load_pipeline(config.diffusion, device)
        loaded_clf = load_classifier(config.classifier, device)
    except ModelNotAvailableError as exc:
        raise exc.for_dataset(spec.name) from None
    result = optimize_token(
        loaded_pipe.pipe,
        loaded_clf.classifier,
        class_id=class_id,
        class_name=spec.class_names[class_id],
        config=config,
        device=device,
        progress=args.progress,
    )
    tkey = token_key(config, loaded_pipe.resolved_revision, loaded_clf.resolved_revision)
    metadata = build_token_metadata(
        config,
        result,
        token_key=tkey,
        diffusion_revision=loaded_pipe.resolved_revision,
        classifier_revision=loaded_clf.resolved_revision,
    )
    # Through the artifact store: atomic locally (temporary name + rename) and on S3 (one PUT).
    store.write_bytes(out, token_file_bytes(result.token, result.vector, metadata))
    best_acc = result.accuracies[result.best_epoch] if result.best_epoch >= 0 else float("nan")
    print(f"class {class_id} ({spec.class_names[class_id]}): token {result.token}")
    print(
        f"  stop: {result.stop_reason} after {result.epochs} epochs; best epoch {result.best_epoch}: "
        f"loss {result.best_loss:.4f}, guide accuracy {best_acc:.2f}; {result.seconds:.1f}s"
    )
    if result.attempts > 1:
        print(
            f"  restarts: attempt {result.attempt + 1} of {result.attempts} kept "
            f"(optimisation seeds {metadata['optimisation_seeds']}); the others stalled"
        )
    if result.message:
        print(f"  note: {result.message}")
    print(f"  token file: {out}  (token_key {tkey})")
    prompt = f'"A photo of {result.token} {spec.class_names[class_id]}"'
    local = out if store.is_local else "<a local copy of it>"  # diffusers loads local files (or `dct generate --token`)
    if isinstance(result.vector, dict):  # two text encoders (SDXL): one documented call per encoder
        print(
            f"  use it: state = safetensors.torch.load_file({local!r}); "
            f"pipe.load_textual_inversion(state['clip_l'], token={result.token!r}, text_encoder=pipe.text_encoder, "
            f"tokenizer=pipe.tokenizer); the same with 'clip_g', pipe.text_encoder_2, pipe.tokenizer_2; prompt {prompt}"
        )
    else:
        print(f"  use it: pipe.load_textual_inversion({local!r}); prompt {prompt}")
    return 0


def _out_location(value: str) -> tuple[ArtifactStore, str]:
    """The store that writes ``--out`` and the file's URI: a local path (made absolute) or an ``s3://`` URI.

    Checked before any model is loaded: not a folder, a local parent that is not a file, an S3 bucket that
    exists (write permission shows only when writing: the product never writes probes beside a user's file).

    Raises:
        ValueError: a folder, a URI without a file name, an unsupported scheme.
        FileNotFoundError: the bucket does not exist.
        StoreUnavailableError: the S3 endpoint cannot be reached or no credentials are set.
    """
    from dct.artifacts.store import StoreUnavailableError, open_store

    fix = "give a file name ending in .safetensors"
    if value.startswith("file://"):
        value = value[len("file://") :]
    if "://" not in value:
        out = Path(value).expanduser().absolute()
        if out.is_dir():
            raise ValueError(f"--out {str(out)!r} is a directory; {fix}")
        check_out_parent(out)
        return open_store(str(out.parent)), str(out)
    parent, _, name = value.partition("://")[2].rpartition("/")
    if not parent or not name:
        raise ValueError(f"--out {value!r} names no file; {fix}, e.g. s3://bucket/tokens/tok.safetensors")
    store = open_store(value.rsplit("/", 1)[0])  # an unsupported scheme is refused here, naming the supported
    if store.protocol != "s3":
        return store, value
    from botocore.exceptions import BotoCoreError

    bucket = store.to_path(store.root).split("/", 1)[0]
    try:
        if store.fs.isdir(store.to_path(value)):
            raise ValueError(f"--out {value!r} is a folder; {fix}")
        if not store.fs.exists(bucket):
            raise FileNotFoundError(f"--out {value!r}: bucket {bucket!r} does not exist; create it first")
    except BotoCoreError as exc:
        raise StoreUnavailableError(
            f"--out {value!r}: S3 is unreachable ({' '.join(str(exc).split())}); check AWS_ENDPOINT_URL_S3 and "
            "the AWS credentials in the environment"
        ) from None
    return store, value
