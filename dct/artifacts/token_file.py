"""Token files: the bytes, their metadata, and THE one check that a stored token is the one asked for.

A token file is safetensors with string metadata (what produced it, under which licences), loadable by
diffusers' ``load_textual_inversion`` (docs/storage.md, "Token files"), in one of three layouts:

- ``{token: (D,)}``: one text encoder, one vector (``token.num_vectors = 1``);
- ``{token: (n, D)}``: one text encoder, ``n`` vectors (diffusers adds ``<tok>``, ``<tok>_1``, …);
- ``{"clip_l": (n, D1), "clip_g": (n, D2)}``: two text encoders (SDXL), the community single-file layout;
  the token string is in the metadata (``token``), and the file loads with two calls, one per encoder.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from dct.artifacts.store import ArtifactStore
from dct.config import RunConfig
from dct.method.optimize import TokenResult, seed_span
from dct.method.tokens import SDXL_ENCODER_KEYS, TokenVector, vector_shapes


def canonical_safetensors(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> bytes:
    """safetensors bytes that depend only on the tensors and the metadata: the same token, the same bytes.

    safetensors writes its ``__metadata__`` map in a per-process random order (a Rust ``HashMap``), so two
    processes saving the same token produce different bytes. The header is rewritten with sorted metadata
    keys (tensor entries and data unchanged, header padded to 8 bytes as safetensors does); any safetensors
    reader loads it as before.
    """
    data = st_save(dict(tensors), metadata=dict(metadata))
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    meta = header.pop("__metadata__", None)
    ordered = ({"__metadata__": dict(sorted(meta.items()))} if meta else {}) | header
    text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + data[8 + n :]


def _tensors(token: str, vector: TokenVector) -> dict[str, torch.Tensor]:
    if isinstance(vector, Mapping):
        if set(vector) != set(SDXL_ENCODER_KEYS):
            raise ValueError(f"a two-encoder token holds exactly {list(SDXL_ENCODER_KEYS)}, got {sorted(vector)}")
        tensors = {k: vector[k] for k in SDXL_ENCODER_KEYS}
        if any(v.ndim != 2 for v in tensors.values()) or len({v.shape[0] for v in tensors.values()}) != 1:
            raise ValueError(f"two-encoder token vectors must be (n, D) with the same n, got {vector_shapes(vector)}")
    else:
        if vector.ndim not in (1, 2):
            raise ValueError(f"token vector must be (D,) or (n, D), got shape {tuple(vector.shape)}")
        tensors = {token: vector}
    for v in tensors.values():
        if not torch.isfinite(v).all():
            raise ValueError(f"refusing to save a non-finite vector for token {token!r}")
    return {k: v.detach().float().cpu().contiguous() for k, v in tensors.items()}


def token_file_bytes(token: str, vector: TokenVector, metadata: Mapping[str, str]) -> bytes:
    """Serialise one token (fp32) with string-valued metadata, in the layout of its form (module docstring).

    A two-encoder token's string is written into the metadata (``token``), where readers find it.

    Raises:
        ValueError: a non-finite vector, a shape outside the three layouts, or a non-string metadata value.
    """
    tensors = _tensors(token, vector)
    bad = {k: type(v).__name__ for k, v in metadata.items() if not isinstance(v, str)}
    if bad:
        raise ValueError(f"token metadata values must be strings; got {bad}")
    metadata = dict(metadata)
    if isinstance(vector, Mapping):
        if metadata.get("token", token) != token:
            raise ValueError(f"metadata names token {metadata['token']!r} but the file is for {token!r}")
        metadata["token"] = token
    return canonical_safetensors(tensors, metadata)


def read_token_bytes(data: bytes) -> tuple[str, TokenVector, dict[str, str]]:
    """Parse a token file produced by :func:`token_file_bytes` (any of its three layouts).

    Returns:
        ``(token, vector, metadata)``; the vector in the file's form: ``(D,)`` or ``(n, D)`` fp32, or
        ``{"clip_l": (n, D1), "clip_g": (n, D2)}``.

    Raises:
        ValueError: not a token file (truncated, foreign, several tokens, or a two-encoder file without
            its token string in the metadata).
    """
    try:
        tensors = st_load(data)
        header_len = int.from_bytes(data[:8], "little")
        metadata = json.loads(data[8 : 8 + header_len]).get("__metadata__", {}) or {}
    except (SafetensorError, ValueError, UnicodeDecodeError) as exc:  # json errors are ValueErrors
        raise ValueError(f"not a readable safetensors token file ({exc})") from exc
    metadata = dict(metadata)
    if set(tensors) == set(SDXL_ENCODER_KEYS):
        token = metadata.get("token")
        if not token:
            raise ValueError("a clip_l/clip_g token file without 'token' in its metadata: which token is it?")
        vector = {k: tensors[k].float() for k in SDXL_ENCODER_KEYS}
        if any(v.ndim != 2 for v in vector.values()) or len({v.shape[0] for v in vector.values()}) != 1:
            raise ValueError(f"token {token!r} has shapes {vector_shapes(vector)}, expected (n, D) with the same n")
        return token, vector, metadata
    if len(tensors) != 1:
        raise ValueError(f"expected exactly one token in the file, found {sorted(tensors)}")
    ((token, vector),) = tensors.items()
    if vector.ndim not in (1, 2):
        raise ValueError(f"token {token!r} has shape {tuple(vector.shape)}, expected (D,) or (n, D)")
    return token, vector.float(), metadata


def save_token(path: str | Path, token: str, vector: TokenVector, metadata: Mapping[str, str]) -> Path:
    """Write a token file to a local path atomically (temporary name, then ``os.replace``)."""
    path = Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(token_file_bytes(token, vector, metadata))
    os.replace(tmp, path)
    return path


def load_token(path: str | Path) -> tuple[str, TokenVector, dict[str, str]]:
    """Read a local token file; see :func:`read_token_bytes`."""
    return read_token_bytes(Path(path).read_bytes())


def build_token_metadata(
    config: RunConfig,
    result: TokenResult,
    *,
    token_key: str,
    diffusion_revision: str,
    classifier_revision: str,
) -> dict[str, str]:
    """String metadata written into the token file (what produced it, and under which licences)."""
    from dct import __version__

    return {
        "format": "dct-token/1",
        "token": result.token,
        "dataset": config.dataset,
        "class_id": str(result.class_id),
        "class_name": result.class_name,
        "token_key": token_key,
        "base_model": config.diffusion.model_id,
        "base_model_revision": diffusion_revision,
        "base_model_licence": config.diffusion.licence,
        "classifier": f"{config.classifier.kind}:{config.classifier.model_id}",
        "classifier_revision": classifier_revision,
        "classifier_licence": config.classifier.licence,
        "stop_reason": result.stop_reason,
        "epochs": str(result.epochs),
        "best_loss": repr(result.best_loss),
        "attempt": f"{result.attempt + 1} of {result.attempts}",
        "optimisation_seeds": seed_span(result.seeds) if result.seeds else "",
        "dct_version": __version__,
    }


def check_token(
    where: str,
    token: str,
    vector: TokenVector,
    metadata: Mapping[str, str],
    *,
    expected_token: str | None = None,
    width: int | Sequence[int] | None = None,
    num_vectors: int | None = None,
    require: Sequence[str] = (),
    flags: Mapping[str, str] | None = None,
    **expected: str,
) -> list[str]:
    """THE check that a token file is the one asked for: every reader of a stored token calls it.

    Args:
        where: how the file is named in messages (``"token file 's3://...'"``, ``"--token 'x.safetensors'"``).
        expected_token: the token string it must hold (e.g. ``RunConfig.token_string(class_id)``).
        width: the text encoders' embedding widths (``dct.method.tokens.token_widths``; an int for one
            encoder): one width → a ``(width,)`` or ``(n, width)`` tensor; two → ``{"clip_l": (n, width[0]),
            "clip_g": (n, width[1])}``.
        num_vectors: the number of vectors ``n`` it must hold (None = any).
        require: keys of ``expected`` that the metadata must carry (a file without them is not provably ours).
        flags: CLI flag per key, so a mismatch says which flag to change (``{"dataset": "--dataset"}``).
        expected: metadata values the file must agree with (``dataset``, ``class_id``, ``token_key``).

    Returns:
        The keys of ``expected`` that the metadata does not carry (and were not required).

    Raises:
        ValueError: another token string, metadata that contradicts ``expected``, a required key missing,
            a vector of the wrong shape, or non-finite values.
    """
    if expected_token is not None and token != expected_token:
        raise ValueError(f"{where} holds {token!r}, expected {expected_token!r}")
    missing = []
    for key, value in expected.items():
        if key not in metadata:
            if key in require:
                raise ValueError(
                    f"{where} lacks {key} {value} in its metadata, so it is not provably the one asked for"
                )
            missing.append(key)
        elif metadata[key] != value:
            flag = (flags or {}).get(key)
            hint = f"; pass {flag} {metadata[key]} or the token file of {key} {value!r}" if flag else ""
            raise ValueError(f"{where} is the token of {key} {metadata[key]!r}, not {value!r}{hint}")
    _check_shape(where, token, vector, width, num_vectors)
    return missing


def _check_shape(
    where: str, token: str, vector: TokenVector, width: int | Sequence[int] | None, num_vectors: int | None
) -> None:
    """The vector's layout fits the text encoders (``width``) and ``num_vectors``; every value finite."""
    blocks = list(vector.values()) if isinstance(vector, Mapping) else [vector]
    shapes = vector_shapes(vector)
    if width is not None:
        widths = (width,) if isinstance(width, int) else tuple(width)
        if len(widths) == 2:
            ok = isinstance(vector, Mapping) and set(vector) == set(SDXL_ENCODER_KEYS) and all(
                vector[k].ndim == 2 and vector[k].shape[1] == w for k, w in zip(SDXL_ENCODER_KEYS, widths, strict=True)
            )
            expected = {k: f"(n, {w})" for k, w in zip(SDXL_ENCODER_KEYS, widths, strict=True)}
        else:
            ok = not isinstance(vector, Mapping) and vector.ndim in (1, 2) and vector.shape[-1] == widths[0]
            expected = f"({widths[0]},) or (n, {widths[0]})"
        if not ok:
            raise ValueError(
                f"{where}: {token!r} has shape {shapes}, the pipeline's text encoder(s) expect {expected}; "
                "it was learned for another model"
            )
    if num_vectors is not None:
        found = {1 if b.ndim == 1 else b.shape[0] for b in blocks}
        if found != {num_vectors}:
            raise ValueError(
                f"{where}: {token!r} holds {sorted(found)} vector(s) per encoder (shape {shapes}), "
                f"the configuration asks for token.num_vectors={num_vectors}"
            )
    if not all(bool(torch.isfinite(b).all()) for b in blocks):
        raise ValueError(f"{where}: the vector of {token!r} has non-finite values; re-optimise the class")


def load_stored_token(
    store: ArtifactStore,
    dataset: str,
    token_key: str,
    class_id: int,
    token: str | None = None,
    *,
    width: int | Sequence[int] | None = None,
    num_vectors: int | None = None,
    require: Sequence[str] = (),
    data: bytes | None = None,
    what: str | None = None,
) -> tuple[str, TokenVector, dict[str, str]]:
    """Read a stored token and check (:func:`check_token`) that it is the one its location claims.

    A ``ValueError`` here means: do not use it (a shard re-optimises the class).

    Args:
        token: the expected token string (e.g. ``RunConfig.token_string(class_id)``), or None.
        width, num_vectors, require: see :func:`check_token`.
        data: the file's bytes if the caller already has them (batched reads, a record's copy); else read here.
        what: names ``data`` in errors (default: the token file at its location).

    Returns:
        ``(token, vector in the file's form (see :func:`read_token_bytes`), metadata)``.

    Raises:
        FileNotFoundError: no token for these keys.
        ValueError: truncated/foreign file, another token string, metadata (``token_key``, ``class_id``,
            ``dataset``) that contradicts the location, or an unusable vector.
    """
    uri = store.token_uri(dataset, token_key, class_id)
    what = what or f"token file {uri!r}"
    try:
        found, vector, metadata = read_token_bytes(store.read_bytes(uri) if data is None else data)
    except ValueError as exc:
        raise ValueError(f"{what} is unreadable: {exc}") from exc
    check_token(
        what,
        found,
        vector,
        metadata,
        expected_token=token,
        width=width,
        num_vectors=num_vectors,
        require=require,
        token_key=token_key,
        class_id=str(class_id),
        dataset=dataset,
    )
    return found, vector, metadata
