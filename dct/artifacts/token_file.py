"""Token files: the bytes, their metadata, and THE one check that a stored token is the one asked for.

A token file is safetensors ``{token: vector (D,)}`` with string metadata (what produced it, under which
licences), loadable by diffusers' ``load_textual_inversion`` (docs/storage.md, "Token files").
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


def token_file_bytes(token: str, vector: torch.Tensor, metadata: Mapping[str, str]) -> bytes:
    """Serialise one token: safetensors ``{token: vector}`` (fp32, ``(D,)``) with string-valued metadata.

    Raises:
        ValueError: a non-finite vector, a non-1-D vector, or a non-string metadata value.
    """
    if vector.ndim != 1:
        raise ValueError(f"token vector must be 1-D (D,), got shape {tuple(vector.shape)}")
    if not torch.isfinite(vector).all():
        raise ValueError(f"refusing to save a non-finite vector for token {token!r}")
    bad = {k: type(v).__name__ for k, v in metadata.items() if not isinstance(v, str)}
    if bad:
        raise ValueError(f"token metadata values must be strings; got {bad}")
    return canonical_safetensors({token: vector.detach().float().cpu().contiguous()}, metadata)


def read_token_bytes(data: bytes) -> tuple[str, torch.Tensor, dict[str, str]]:
    """Parse a token file produced by :func:`token_file_bytes`.

    Returns:
        ``(token, vector (D,) fp32, metadata)``.

    Raises:
        ValueError: not a single-token safetensors file (truncated, foreign or multi-token).
    """
    try:
        tensors = st_load(data)
        header_len = int.from_bytes(data[:8], "little")
        metadata = json.loads(data[8 : 8 + header_len]).get("__metadata__", {}) or {}
    except (SafetensorError, ValueError, UnicodeDecodeError) as exc:  # json errors are ValueErrors
        raise ValueError(f"not a readable safetensors token file ({exc})") from exc
    if len(tensors) != 1:
        raise ValueError(f"expected exactly one token in the file, found {sorted(tensors)}")
    ((token, vector),) = tensors.items()
    if vector.ndim != 1:
        raise ValueError(f"token {token!r} has shape {tuple(vector.shape)}, expected (D,)")
    return token, vector.float(), dict(metadata)


def save_token(path: str | Path, token: str, vector: torch.Tensor, metadata: Mapping[str, str]) -> Path:
    """Write a token file to a local path atomically (temporary name, then ``os.replace``)."""
    path = Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(token_file_bytes(token, vector, metadata))
    os.replace(tmp, path)
    return path


def load_token(path: str | Path) -> tuple[str, torch.Tensor, dict[str, str]]:
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
    vector: torch.Tensor,
    metadata: Mapping[str, str],
    *,
    expected_token: str | None = None,
    width: int | None = None,
    require: Sequence[str] = (),
    flags: Mapping[str, str] | None = None,
    **expected: str,
) -> list[str]:
    """THE check that a token file is the one asked for: every reader of a stored token calls it.

    Args:
        where: how the file is named in messages (``"token file 's3://...'"``, ``"--token 'x.safetensors'"``).
        expected_token: the token string it must hold (e.g. ``RunConfig.token_string(class_id)``).
        width: the text encoder's embedding width; the vector must be ``(width,)``.
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
    if width is not None and tuple(vector.shape) != (width,):
        raise ValueError(f"{where}: {token!r} has shape {tuple(vector.shape)}, the text encoder expects ({width},)")
    if not bool(torch.isfinite(vector).all()):
        raise ValueError(f"{where}: the vector of {token!r} has non-finite values; re-optimise the class")
    return missing


def load_stored_token(
    store: ArtifactStore,
    dataset: str,
    token_key: str,
    class_id: int,
    token: str | None = None,
    *,
    width: int | None = None,
    require: Sequence[str] = (),
    data: bytes | None = None,
) -> tuple[str, torch.Tensor, dict[str, str]]:
    """Read a stored token and check (:func:`check_token`) that it is the one its location claims.

    A ``ValueError`` here means: do not use it (a shard re-optimises the class).

    Args:
        token: the expected token string (e.g. ``RunConfig.token_string(class_id)``), or None.
        width, require: see :func:`check_token`.
        data: the file's bytes if the caller already read them (batched reads); else read here.

    Returns:
        ``(token, vector (D,) fp32, metadata)``.

    Raises:
        FileNotFoundError: no token for these keys.
        ValueError: truncated/foreign file, another token string, metadata (``token_key``, ``class_id``,
            ``dataset``) that contradicts the location, or an unusable vector.
    """
    uri = store.token_uri(dataset, token_key, class_id)
    try:
        found, vector, metadata = read_token_bytes(store.read_bytes(uri) if data is None else data)
    except ValueError as exc:
        raise ValueError(f"token file {uri!r} is unreadable: {exc}") from exc
    check_token(
        f"token file {uri!r}",
        found,
        vector,
        metadata,
        expected_token=token,
        width=width,
        require=require,
        token_key=token_key,
        class_id=str(class_id),
        dataset=dataset,
    )
    return found, vector, metadata
