"""Hub access: one local directory per model (a hub snapshot or the user's folder), its revision, no pickles.

Every loader (classifiers, pipelines) resolves a model here first, so the hub path and the local path run
the same code. Offline unless told otherwise; a missing model raises :class:`ModelNotAvailableError`
naming `dct models pull`.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from pathlib import Path

logger = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


PULL_HINT = "run `dct models pull --dataset <name>` where the hub is reachable (same HF_HOME), then retry"


class ModelNotAvailableError(ValueError):
    """A model is not in the local cache and cannot be downloaded (offline, or the hub unreachable)."""

    def __init__(self, message: str, model_id: str | None = None) -> None:
        super().__init__(message)
        self.model_id = model_id

    def for_dataset(self, dataset: str) -> ModelNotAvailableError:
        """The same error with the dataset filled into the ``dct models pull --dataset`` hint."""
        return ModelNotAvailableError(str(self).replace("--dataset <name>", f"--dataset {dataset}"), self.model_id)


def is_local_path(model_id: str) -> bool:
    """Local directories/files are given as paths (absolute, ``./``, ``~``) or exist on disk."""
    return model_id.startswith(("/", "./", "../", "~")) or Path(model_id).expanduser().exists()


def content_hash(paths: Iterable[Path], root: Path) -> str:
    """SHA-256 over (relative path, bytes) of ``paths``: the revision of a local model directory."""
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(str(p.relative_to(root)).encode() + b"\0")
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return "sha256:" + h.hexdigest()[:40]


def local_dir_revision(path: Path) -> str:
    """Content hash of the weights and JSON/text configs under ``path`` (what decides the model's outputs)."""
    files = [p for p in path.rglob("*") if p.is_file() and p.suffix in (".safetensors", ".json", ".txt")]
    return content_hash(files, path)


def refuse_pickles(path: Path) -> None:
    """Local checkpoints must be safetensors: unpickling runs arbitrary code.

    Raises:
        ValueError: ``path`` is a pickle file, or a directory whose only weights are pickles.
    """
    if path.is_file():
        if path.suffix in PICKLE_SUFFIXES:
            raise ValueError(
                f"refusing pickle checkpoint {str(path)!r} (unpickling can run arbitrary code); convert it to "
                "safetensors (safetensors.torch.save_file(model.state_dict(), 'model.safetensors')) next to its "
                "config.json and pass the directory"
            )
        return
    if any(path.rglob("*.safetensors")):
        return
    pickles = sorted(p.name for p in path.rglob("*") if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise ValueError(
            f"refusing pickle checkpoint(s) {pickles} in {str(path)!r} (unpickling can run arbitrary code); "
            "save the weights as model.safetensors and retry"
        )


def hub_snapshot(
    repo_id: str,
    revision: str | None,
    allow_patterns: list[str],
    *,
    local_files_only: bool | None = None,
    ignore_patterns: list[str] | None = None,
) -> Path:
    """Download (or find in the cache) the files of a hub repo matching ``allow_patterns``.

    Honours ``HF_HOME`` / ``HF_HUB_CACHE`` / ``HF_HUB_OFFLINE`` (huggingface_hub reads them). With the hub
    unreachable, huggingface_hub falls back to the cache by itself.

    Returns:
        the snapshot directory ``.../snapshots/<commit sha>``.

    Raises:
        ModelNotAvailableError: not cached and not downloadable (names the model and ``dct models pull``).
        ValueError: the repo or revision does not exist.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        path = snapshot_download(
            repo_id,
            revision=revision,
            allow_patterns=allow_patterns,
            ignore_patterns=ignore_patterns,
            local_files_only=bool(local_files_only),
        )
    except LocalEntryNotFoundError:
        raise ModelNotAvailableError(
            f"model {repo_id!r} (revision {revision or 'main'!r}) is not in the local Hugging Face cache and the "
            f"hub is unreachable (or HF_HUB_OFFLINE=1); {PULL_HINT}",
            model_id=repo_id,
        ) from None
    except RevisionNotFoundError:
        raise ValueError(f"revision {revision!r} of model {repo_id!r} does not exist on the hub") from None
    except RepositoryNotFoundError:
        raise ValueError(f"model {repo_id!r} does not exist on the hub (or is gated/private: log in)") from None
    return Path(path)


def snapshot_revision(path: Path) -> str:
    """The commit SHA of a hub snapshot directory (its name), or a content hash of a plain directory."""
    if path.parent.name == "snapshots" and len(path.name) == 40:
        return path.name
    return local_dir_revision(path)


def resolve_weights_dir(model_id: str, revision: str | None, *, local_files_only: bool | None = None) -> Path:
    """One local directory holding a model's configs and weights: the user's directory, or a hub snapshot.

    Hub repos: safetensors are preferred; a repo that has only ``pytorch_model.bin`` (many 2022 models,
    e.g. the paper's ViT-MAE ones) is fetched as is and loaded by transformers with ``weights_only``
    unpickling. Local directories must be safetensors (:func:`refuse_pickles`).
    """
    if is_local_path(model_id):
        path = Path(model_id).expanduser().resolve()
        if not path.exists():
            raise FileNotFoundError(f"model directory {str(path)!r} does not exist")
        refuse_pickles(path)
        if not path.is_dir():
            raise ValueError(f"{str(path)!r} is a file; pass the directory holding config.json and the weights")
        return path
    configs = ["*.json", "*.txt"]
    path = hub_snapshot(model_id, revision, [*configs, "*.safetensors"], local_files_only=local_files_only)
    if not any(path.glob("*.safetensors")):
        path = hub_snapshot(model_id, revision, [*configs, "pytorch_model.bin"], local_files_only=local_files_only)
    return path
