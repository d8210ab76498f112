"""Token export bundle: all class tokens of a run in ONE safetensors file plus a JSON manifest.

For users who want a whole dataset's classes in one pipeline. Location (built by the store)::

    runs/{dataset}/{run_id}/bundle/tokens.safetensors   {token: vector (D,)} for every class, fp32
    runs/{dataset}/{run_id}/bundle/manifest.json        token ↔ class id/name, token_key, base model, licence

The manifest is also embedded in the safetensors metadata (key ``dct_manifest``), so a copied
``tokens.safetensors`` stays self-describing, and it is written after the tensor file, so a manifest
that exists describes a complete bundle.

Loading — ONE diffusers call. diffusers 0.42's ``load_textual_inversion`` accepts a single file only
in the one-token format (a multi-key safetensors file is rejected as "incorrect"), but it accepts a
list of tensors with a list of token strings of the same length::

    from safetensors.torch import load_file
    tokens = load_file("tokens.safetensors")                 # {"<dct-inat-00000>": tensor (D,), ...}
    pipe.load_textual_inversion(list(tokens.values()), token=list(tokens.keys()))

or, from the store (local or S3): ``dct.artifacts.bundle.load_bundle_into(pipe, bundle_uri)``.

Multi-vector tokens are ``(n, D)`` tensors under the same names (the same call adds ``<tok>_1`` …).
Tokens of a two-encoder pipeline (SDXL) are stored as ``clip_l/<tok>`` ``(n, D1)`` and ``clip_g/<tok>``
``(n, D2)``; they load with one call per text encoder (:data:`LOAD_SNIPPET_SDXL`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence

import torch
from pydantic import BaseModel, ConfigDict
from safetensors.torch import load as st_load

from dct.artifacts.store import ArtifactStore, StoreUnavailableError, open_store, validate_component
from dct.artifacts.token_file import canonical_safetensors, load_stored_token
from dct.method.tokens import SDXL_ENCODER_KEYS, TokenVector, vector_shapes
from dct.results import ClassRecord

logger = logging.getLogger(__name__)

BUNDLE_SCHEMA_VERSION = 1
BUNDLE_FILE = "tokens.safetensors"
MANIFEST_FILE = "manifest.json"
MANIFEST_METADATA_KEY = "dct_manifest"
LOAD_SNIPPET = (
    "from safetensors.torch import load_file; t = load_file('tokens.safetensors'); "
    "pipe.load_textual_inversion(list(t.values()), token=list(t.keys()))"
)
LOAD_SNIPPET_SDXL = (
    "from safetensors.torch import load_file; t = load_file('tokens.safetensors'); "
    "for enc, te, tok in (('clip_l', pipe.text_encoder, pipe.tokenizer), ('clip_g', pipe.text_encoder_2, "
    "pipe.tokenizer_2)): names = [k.split('/', 1)[1] for k in t if k.startswith(enc + '/')]; "
    "pipe.load_textual_inversion([t[f'{enc}/{n}'] for n in names], token=names, text_encoder=te, tokenizer=tok)"
)


class BundleEntry(BaseModel):
    """One token of the bundle."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    token: str
    class_id: int
    class_name: str
    token_key: str
    base_model: str
    base_model_revision: str
    licence: str


class BundleManifest(BaseModel):
    """What a bundle holds and under which terms (the base model's licence carries over to its tokens)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: int = BUNDLE_SCHEMA_VERSION
    dataset: str
    run_id: str
    token_key: str
    base_model: str
    base_model_revision: str
    licence: str
    classifier_model_id: str
    classifier_licence: str
    created_at: dt.datetime
    load: str = LOAD_SNIPPET
    tokens: tuple[BundleEntry, ...]


def bundle_uri(store: ArtifactStore, dataset: str, run_id: str) -> str:
    """Where a run's bundle tensor file lives (the manifest is beside it: :func:`manifest_uri`)."""
    return store.run_uri(dataset, run_id, "bundle", BUNDLE_FILE)


def manifest_uri(store: ArtifactStore, dataset: str, run_id: str) -> str:
    return store.run_uri(dataset, run_id, "bundle", MANIFEST_FILE)


def build_bundle(
    records: Sequence[ClassRecord], vectors: dict[str, TokenVector], run_id: str
) -> tuple[bytes, BundleManifest]:
    """Serialise tokens into one safetensors blob (pure; no I/O).

    Args:
        records: finished records, one per class, all of one dataset and one token_key.
        vectors: token string -> vector for every record, in the token file's form (``(D,)``, ``(n, D)``
            or ``{"clip_l": (n, D1), "clip_g": (n, D2)}``), the same form and shapes for all.
        run_id: the run exporting the bundle.

    Returns:
        ``(safetensors bytes, manifest)``; tensors in class-id order.

    Raises:
        ValueError: no records, mixed datasets/token keys/base models, duplicate tokens, a missing
            vector, or vectors of different forms or shapes.
    """
    if not records:
        raise ValueError("no finished class records to bundle; finish at least one class first")
    records = sorted(records, key=lambda r: r.class_id)
    first = records[0]
    for field in ("dataset", "token_key"):
        values = sorted({getattr(r, field) for r in records})
        if len(values) > 1:
            raise ValueError(f"a bundle holds one {field}; got {values!r}: export each separately")
    base = {(r.provenance.diffusion_model_id, r.provenance.diffusion_revision) for r in records}
    if len(base) > 1:
        raise ValueError(f"records come from different base models {sorted(base)!r}; export each separately")
    tokens = [r.token for r in records]
    if len(set(tokens)) != len(tokens):
        dupes = sorted({t for t in tokens if tokens.count(t) > 1})
        raise ValueError(f"duplicate token strings {dupes!r} in one bundle (one record per class expected)")
    tensors: dict[str, torch.Tensor] = {}
    shapes = set()
    for t in tokens:
        if t not in vectors:
            raise ValueError(f"no vector for token {t!r}")
        v = vectors[t]
        shapes.add(repr(vector_shapes(v)))
        if isinstance(v, Mapping):
            for k in SDXL_ENCODER_KEYS:
                tensors[f"{k}/{t}"] = v[k].detach().float().cpu().contiguous()
        elif v.ndim in (1, 2):
            tensors[t] = v.detach().float().cpu().contiguous()
        else:
            raise ValueError(f"vector of token {t!r} has shape {tuple(v.shape)}, expected (D,) or (n, D)")
    if len(shapes) > 1:
        raise ValueError(f"token vectors have different shapes {sorted(shapes)}; they cannot share one text encoder")
    prov = first.provenance
    manifest = BundleManifest(
        dataset=first.dataset,
        run_id=validate_component(run_id, "run_id"),
        token_key=first.token_key,
        base_model=prov.diffusion_model_id,
        base_model_revision=prov.diffusion_revision,
        licence=prov.diffusion_licence,
        classifier_model_id=prov.classifier_model_id,
        classifier_licence=prov.classifier_licence,
        created_at=dt.datetime.now(dt.UTC),
        load=LOAD_SNIPPET_SDXL if isinstance(vectors[tokens[0]], Mapping) else LOAD_SNIPPET,
        tokens=tuple(
            BundleEntry(
                token=r.token, class_id=r.class_id, class_name=r.class_name, token_key=r.token_key,
                base_model=prov.diffusion_model_id, base_model_revision=prov.diffusion_revision,
                licence=prov.diffusion_licence,
            )
            for r in records
        ),
    )
    data = canonical_safetensors(tensors, {"format": "pt", MANIFEST_METADATA_KEY: manifest.model_dump_json()})
    return data, manifest


def export_bundle(store: ArtifactStore, records: Sequence[ClassRecord], run_id: str) -> tuple[str, BundleManifest]:
    """Collect the tokens of ``records`` into the run's bundle and write it with its manifest.

    Only records with status ``done`` are bundled (a diverged token is not a usable class token). Each
    token comes from the copy of its token file that the record carries (no read: at 10,000 classes on S3
    that is a third of the parent's requests, benchmarks/RESULTS.md), or, for a record written before
    records carried one, from the store by (dataset, token_key, class_id); either way it is checked
    against its record like a stored token (:func:`load_stored_token`).

    Args:
        store: the artifact store.
        records: per-class records of the dataset (typically every finished class of the plan,
            including those finished by earlier runs).
        run_id: the exporting run (names the bundle's folder).

    Returns:
        ``(bundle_uri, manifest)``.

    Raises:
        ValueError: see :func:`build_bundle` and :func:`load_stored_token`.
        FileNotFoundError: a record without its token file.
    """
    done = [r for r in records if r.status == "done"]
    if len(done) < len(records):
        logger.info(
            "bundle of run %s: %d of %d records are not 'done' and are left out",
            run_id, len(records) - len(done), len(records),
        )
    copies: dict[int, bytes | None] = {}
    for r in done:
        try:
            copies[r.class_id] = r.token_file_copy()
        except ValueError as exc:
            raise ValueError(f"class {r.class_id}: the record's token_file_base64 is not base64 ({exc})") from exc
    # Records without a copy: their files in one parallel batch (10k tokens one by one at 20 ms: over 3 minutes).
    older = [r for r in done if copies[r.class_id] is None]
    uris = [store.token_uri(r.dataset, r.token_key, r.class_id) for r in older]
    read = dict(zip((r.class_id for r in older), store.read_many(uris), strict=True))
    vectors: dict[str, TokenVector] = {}
    for r in done:
        copy = copies[r.class_id]
        data = copy if copy is not None else read[r.class_id]
        if data is None:
            uri = store.token_uri(r.dataset, r.token_key, r.class_id)
            raise FileNotFoundError(f"class {r.class_id} has a 'done' record but no token file at {uri!r}")
        what = None if copy is None else f"the token file copy in the record of class {r.class_id}"
        token, vector, _ = load_stored_token(store, r.dataset, r.token_key, r.class_id, r.token, data=data, what=what)
        vectors[token] = vector
    data, manifest = build_bundle(done, vectors, run_id)
    uri = store.write_bytes(bundle_uri(store, manifest.dataset, run_id), data)
    # The manifest is written last: a manifest that exists describes a complete bundle.
    store.write_bytes(manifest_uri(store, manifest.dataset, run_id), manifest.model_dump_json(indent=1).encode())
    return uri, manifest


def read_bundle(data: bytes) -> tuple[list[str], torch.Tensor | dict[str, torch.Tensor], BundleManifest]:
    """Parse bundle bytes.

    Returns:
        ``(tokens, vectors, manifest)``, rows in manifest (class-id) order; ``vectors`` is ``(N, D)`` or
        ``(N, n, D)`` fp32 for one text encoder, ``{"clip_l": (N, n, D1), "clip_g": (N, n, D2)}`` for two
        (row i of each is token i: :func:`bundle_vector`).

    Raises:
        ValueError: not a dct bundle, or tensors and manifest disagree.
    """
    tensors = st_load(data)
    header_len = int.from_bytes(data[:8], "little")
    metadata = json.loads(data[8 : 8 + header_len]).get("__metadata__") or {}
    if MANIFEST_METADATA_KEY not in metadata:
        raise ValueError(f"not a dct token bundle: no {MANIFEST_METADATA_KEY!r} in the safetensors metadata")
    manifest = BundleManifest.model_validate_json(metadata[MANIFEST_METADATA_KEY])
    tokens = [e.token for e in manifest.tokens]
    two = any(k.startswith(f"{SDXL_ENCODER_KEYS[0]}/") for k in tensors)
    expected = sorted(f"{k}/{t}" for k in SDXL_ENCODER_KEYS for t in tokens) if two else sorted(tokens)
    if expected != sorted(tensors):
        raise ValueError(f"bundle tensors {sorted(tensors)[:5]}... do not match its manifest {tokens[:5]}...")
    if two:
        return tokens, {k: torch.stack([tensors[f"{k}/{t}"] for t in tokens]) for k in SDXL_ENCODER_KEYS}, manifest
    return tokens, torch.stack([tensors[t] for t in tokens]), manifest


def resolve_bundle_uri(uri: str, store: ArtifactStore | None = None) -> tuple[ArtifactStore, str]:
    """Where a bundle's tensor file is, from what a user gives as ``--bundle``: every command takes the same.

    ``uri`` is the bundle's folder (``runs/<dataset>/<run_id>/bundle``) or its ``tokens.safetensors``, as a
    local path (``~`` expanded; a relative path is looked up in the working directory, then under the root of
    ``store`` when one is given, as the store-relative ``runs/...`` paths of the docs) or a store URI
    (``s3://bucket/prefix/runs/...``).

    Args:
        uri: the user's value.
        store: the command's artifact store, if it has one: relative paths may name a location under its
            root, and S3 URIs are opened with its endpoint settings.

    Returns:
        ``(a store rooted at the bundle's folder, the URI of the tensor file)``; read it with
        ``store.read_bytes(uri)``.

    Raises:
        FileNotFoundError: nothing at ``uri`` (the message names every place looked at).
        ValueError: a folder without ``tokens.safetensors``; an unsupported URI scheme.
    """
    local = "://" not in uri
    candidates = [os.path.abspath(os.path.expanduser(uri))] if local else [uri.rstrip("/")]
    if local and store is not None and not os.path.isabs(os.path.expanduser(uri)):
        inside = store.root + "/" + uri.strip("/") if "://" in store.root else os.path.join(store.root, uri)
        candidates.append(inside if "://" in store.root else os.path.normpath(inside))
    for candidate in candidates:
        parent = candidate.rsplit("/", 1)[0] if "://" in candidate else os.path.dirname(candidate)
        at = _store_like(parent, store)
        with _reachable(at, uri):
            if not at.exists(candidate):
                continue
            folder = at.fs.isdir(at.to_path(candidate))
            inner = f"{candidate}/{BUNDLE_FILE}" if "://" in candidate else os.path.join(candidate, BUNDLE_FILE)
            if folder and not at.exists(inner):
                raise ValueError(
                    f"bundle {uri!r} is a folder without {BUNDLE_FILE}; give a run's bundle folder "
                    "(runs/<dataset>/<run_id>/bundle) or its tokens.safetensors"
                )
        return (_store_like(candidate, store), inner) if folder else (at, candidate)
    raise FileNotFoundError(
        f"bundle {uri!r} does not exist (looked at {', '.join(map(repr, candidates))}); give a run's bundle "
        "folder runs/<dataset>/<run_id>/bundle or its tokens.safetensors, a local path or s3:// URI"
    )


@contextlib.contextmanager
def _reachable(store: ArtifactStore, uri: str) -> Iterator[None]:
    """S3 connection failures (botocore's own errors, not OSErrors) as :class:`StoreUnavailableError`."""
    if store.protocol != "s3":
        yield
        return
    from botocore.exceptions import BotoCoreError

    try:
        yield
    except BotoCoreError as exc:
        raise StoreUnavailableError(
            f"bundle {uri!r}: S3 is unreachable (endpoint {store.endpoint_url or 'AWS default'}): "
            f"{' '.join(str(exc).split())}; check AWS_ENDPOINT_URL_S3 and the AWS credentials in the environment"
        ) from None


def _store_like(root: str, store: ArtifactStore | None) -> ArtifactStore:
    """A store at ``root`` with the S3 endpoint of ``store`` (the command's), if any."""
    if store is not None and store.endpoint_url and root.startswith("s3://"):
        return ArtifactStore(root, endpoint_url=store.endpoint_url)
    return open_store(root)


def bundle_vector(vectors: torch.Tensor | Mapping[str, torch.Tensor], i: int) -> TokenVector:
    """Token i's vector (the token file's form) from :func:`read_bundle`'s ``vectors``."""
    if isinstance(vectors, Mapping):
        return {k: v[i] for k, v in vectors.items()}
    return vectors[i]


def load_bundle_into(pipe, uri: str, store: ArtifactStore | None = None) -> BundleManifest:
    """Add every token of a bundle to a diffusers pipeline with ``load_textual_inversion``: ONE call for a
    one-encoder pipeline, one per text encoder for SDXL (the documented ``text_encoder``/``tokenizer`` form).

    Args:
        pipe: a pipeline with ``TextualInversionLoaderMixin`` (``StableDiffusionPipeline``,
            ``StableDiffusionXLPipeline``).
        uri: the bundle's tensor file or its folder (``bundle_uri(...)``; a local path or ``s3://...``;
            :func:`resolve_bundle_uri`).
        store: a store whose S3 endpoint settings to use (default: from the environment).

    Returns:
        The manifest (token ↔ class id/name).
    """
    at, uri = resolve_bundle_uri(uri, store)
    tokens, vectors, manifest = read_bundle(at.read_bytes(uri))
    if isinstance(vectors, Mapping):
        encoders = {"clip_l": (pipe.text_encoder, pipe.tokenizer), "clip_g": (pipe.text_encoder_2, pipe.tokenizer_2)}
        for key, (text_encoder, tokenizer) in encoders.items():
            pipe.load_textual_inversion(
                list(vectors[key]), token=tokens, text_encoder=text_encoder, tokenizer=tokenizer
            )
    else:
        pipe.load_textual_inversion(list(vectors), token=tokens)
    return manifest
