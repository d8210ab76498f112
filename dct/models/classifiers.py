"""Frozen image classifiers behind one interface, and the registry of loaders.

Every loader returns an :class:`ImageClassifier`: images ``(B, 3, H, W)`` float in [0, 1] in, logits
``(B, num_classes)`` out, differentiable end to end. Class ids are 0-based and equal the model's label ids.

Built-in kinds (``ClassifierConfig.kind``):

- ``hf``: a transformers image classifier (``AutoModelForImageClassification``), hub id or local dir;
- ``vit-mae``: the paper's iNat21/CUB ViT-MAE classifiers (``vesteinn/vit-mae-inat21``,
  ``vesteinn/vit-mae-cub``), whose head reads the MEAN of the patch tokens (see :class:`MeanPooledViT`);
- ``timm``: a timm model by name (``convnext_tiny.fb_in1k``), ``hf-hub:org/name`` id, or local dir;
- ``local``: a local directory in transformers or timm layout, safetensors weights only;
- ``toy``: the toy world's classifiers (registered by ``dct.toy.models``).
- ``fashion``: the fashion world's classifiers (``dct.fashion.world``).

Every loader resolves the model to ONE local directory first (a hub snapshot, or the user's directory)
and loads from there, so the hub path and the local path run the same code; tests use the latter with
tiny random-weight models. The resolved revision is the hub commit SHA (the snapshot's name) or, for a
local directory, a content hash of its weights and configs. ``trust_remote_code`` is never used.

Weights are safetensors. The one exception: a hub repo of kind ``hf``/``vit-mae`` that publishes no
safetensors (the paper's 2022 ViT-MAE classifiers) is read from its ``pytorch_model.bin`` with torch's
``weights_only`` unpickler, which builds tensors and plain containers only and refuses anything that would
run code. Pickle files in a local directory are refused outright (:func:`dct.models.hub.refuse_pickles`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dct.config import ClassifierConfig
from dct.lazy import resolve
from dct.models.hub import hub_snapshot, is_local_path, refuse_pickles, resolve_weights_dir, snapshot_revision
from dct.models.interface import ImageClassifier, LoadedClassifier
from dct.models.preprocess import DifferentiablePreprocess, preprocess_from_hf_processor, preprocess_from_timm

logger = logging.getLogger(__name__)


ClassifierLoader = Callable[[ClassifierConfig], LoadedClassifier]


def classifier_kinds() -> list[str]:
    """The registered loader kinds (built-ins included)."""
    return sorted(CLASSIFIER_LOADERS)


def check_classifier_kind(kind: str) -> None:
    """Fail fast on an unknown kind, before anything is loaded.

    Raises:
        ValueError: unknown kind (the message lists the valid ones).
    """
    kinds = classifier_kinds()
    if kind not in kinds:
        raise ValueError(f"unknown classifier kind {kind!r}; valid kinds: {', '.join(kinds)}")


def load_classifier(config: ClassifierConfig, device: torch.device | str = "cpu") -> LoadedClassifier:
    """Load a classifier by ``config.kind`` and move it to ``device``.

    Raises:
        ValueError: unknown kind (the message lists the valid ones), a pickle checkpoint, a model that
            is neither cached nor downloadable (the message names the model and ``dct models pull``).
    """
    check_classifier_kind(config.kind)
    loaded = resolve(CLASSIFIER_LOADERS[config.kind])(config)
    loaded.classifier.to(device)
    return loaded


# ------------------------------------------------------------------------------------------ hub access


def _read_json(path: Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


# ------------------------------------------------------------------------------------------ transformers


def _labels_from_id2label(id2label: dict[Any, str], num_labels: int) -> list[str]:
    labels = {int(k): v for k, v in id2label.items()}
    return [labels.get(i, f"LABEL_{i}") for i in range(num_labels)]


def _hf_preprocess(config: ClassifierConfig, path: Path) -> DifferentiablePreprocess:
    if config.preprocess is not None:
        return DifferentiablePreprocess(config.preprocess)
    proc = path / "preprocessor_config.json"
    if not proc.is_file():
        raise ValueError(
            f"{config.model_id!r} has no preprocessor_config.json; set the classifier's `preprocess` "
            "(resize, crop, mean, std) in the dataset config"
        )
    return DifferentiablePreprocess(preprocess_from_hf_processor(_read_json(proc)))


class HFClassifier(nn.Module):
    """A transformers image classifier as ``pixel_values -> logits`` (and pooled features for ViTs)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.hf = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.hf(pixel_values=x).logits

    def forward_features_pooled(self, x: torch.Tensor) -> torch.Tensor:
        base = getattr(self.hf, "vit", None)
        if base is None:
            raise TypeError(f"{type(self.hf).__name__} exposes no pooled features; use the Inception extractor")
        return base(x).last_hidden_state[:, 0]  # the normed CLS token the head reads


def load_hf_classifier(config: ClassifierConfig) -> LoadedClassifier:
    """A transformers ``AutoModelForImageClassification`` (e.g. ``google/vit-large-patch16-224``)."""
    from transformers import AutoConfig, AutoModelForImageClassification

    path = resolve_weights_dir(config.model_id, config.revision)
    hf_config = AutoConfig.from_pretrained(path, trust_remote_code=False)
    # weights_only: a hub repo without safetensors is read by torch's restricted unpickler (resolve_weights_dir).
    model = AutoModelForImageClassification.from_pretrained(
        path, config=hf_config, trust_remote_code=False, weights_only=True
    )
    labels = _labels_from_id2label(hf_config.id2label, hf_config.num_labels)
    classifier = ImageClassifier(HFClassifier(model), _hf_preprocess(config, path), labels)
    return LoadedClassifier(classifier, snapshot_revision(path))


class MeanPooledViT(nn.Module):
    """The paper's ViT-MAE classifier head: mean of the patch tokens → LayerNorm → Linear.

    MAE fine-tuning (``global_pool=True``) drops the CLS token from the pooled representation and
    normalises the MEAN of the patch tokens (MAE's ``fc_norm``) before the linear head. The
    ``vesteinn/vit-mae-*`` checkpoints store these two layers under a stock ViT classifier's names
    (``vit.layernorm`` and ``classifier``; the reference loads them with a ViT subclass), so a stock
    ``ViTForImageClassification`` loads them without complaint but reads the normed CLS token instead:
    silently wrong logits. This module wraps the stock model and pools as MAE does.
    """

    def __init__(self, vit_for_classification: nn.Module) -> None:
        super().__init__()
        self.hf = vit_for_classification

    def forward_features_pooled(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, S, S)`` normalised pixels -> ``(B, D)`` normed mean patch token."""
        vit = self.hf.vit
        # hidden_states[-1] is the last encoder block's output, BEFORE the model's final LayerNorm (that
        # LayerNorm is the head's fc_norm here and must see the pooled vector, not every token).
        hidden = vit(x, output_hidden_states=True).hidden_states[-1]
        return vit.layernorm(hidden[:, 1:, :].mean(dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.hf.classifier(self.forward_features_pooled(x))


def load_vit_mae_classifier(config: ClassifierConfig) -> LoadedClassifier:
    """The paper's mean-pooled ViT-MAE classifier (``vesteinn/vit-mae-inat21``, ``vesteinn/vit-mae-cub``)."""
    from transformers import ViTConfig, ViTForImageClassification

    path = resolve_weights_dir(config.model_id, config.revision)
    raw = _read_json(path / "config.json")
    # The checkpoint's config may say model_type "vit" or "vit_mae"; the encoder is a plain ViT either way.
    fields = {k: v for k, v in raw.items() if k not in ("model_type", "architectures", "transformers_version")}
    vit_config = ViTConfig(**fields)
    model, info = ViTForImageClassification.from_pretrained(
        path, config=vit_config, output_loading_info=True, weights_only=True
    )
    missing = [k for k in info.get("missing_keys", []) if "pooler" not in k]
    if missing:
        raise ValueError(
            f"{config.model_id!r} is not a ViT classifier checkpoint: missing weights {sorted(missing)[:5]}"
            f"{' ...' if len(missing) > 5 else ''}"
        )
    labels = _labels_from_id2label(vit_config.id2label, vit_config.num_labels)
    classifier = ImageClassifier(MeanPooledViT(model), _hf_preprocess(config, path), labels)
    return LoadedClassifier(classifier, snapshot_revision(path))


# ------------------------------------------------------------------------------------------ timm


def timm_hub_id(model_id: str) -> str:
    """The hub repo of a timm model id: ``hf-hub:org/name`` -> ``org/name``; a timm name -> its pretrained_cfg's."""
    if model_id.startswith("hf-hub:"):
        return model_id.removeprefix("hf-hub:").split("@")[0]
    import timm

    try:
        cfg = timm.models.get_pretrained_cfg(model_id)
    except RuntimeError:
        cfg = None
    if cfg is None or not getattr(cfg, "hf_hub_id", None):
        raise ValueError(
            f"timm model {model_id!r} is not a known pretrained tag with hub weights; use 'hf-hub:org/name', "
            "'arch.tag' (see timm.list_pretrained()), or a local directory"
        )
    return cfg.hf_hub_id


def _timm_labels(pretrained_cfg: dict[str, Any], num_classes: int) -> list[str]:
    names = pretrained_cfg.get("label_names")
    if isinstance(names, dict):
        names = [names.get(str(i), names.get(i)) for i in range(num_classes)]
    if names and len(names) == num_classes and all(names):
        descriptions = pretrained_cfg.get("label_descriptions") or {}
        return [descriptions.get(n, n) for n in names]
    if num_classes == 1000:
        from timm.data import ImageNetInfo

        info = ImageNetInfo()
        return [info.index_to_description(i) for i in range(1000)]
    # The dataset's class list is the authority for prompts; these are only informative.
    return [f"class_{i}" for i in range(num_classes)]


def load_timm_classifier(config: ClassifierConfig) -> LoadedClassifier:
    """A timm model by name, ``hf-hub:`` id, or local directory (config.json + model.safetensors).

    Note: some iNat21 timm weights (e.g. ``eva02_large_patch14_clip_336.merged2b_ft_inat21``) are
    licensed for non-commercial use only; set ``ClassifierConfig.licence`` accordingly.
    """
    import timm
    from timm.data import resolve_data_config

    if is_local_path(config.model_id):
        path = resolve_weights_dir(config.model_id, config.revision)
    else:
        repo = timm_hub_id(config.model_id)
        path = hub_snapshot(repo, config.revision, ["config.json", "*.safetensors"])
        refuse_pickles(path)
    if not (path / "config.json").is_file():
        raise ValueError(f"{str(path)!r} has no timm config.json (architecture, pretrained_cfg)")
    # Same factory call for hub and local: timm reads config.json + model.safetensors from the directory.
    model = timm.create_model(f"local-dir:{path}", pretrained=True)
    pretrained_cfg = dict(model.pretrained_cfg)
    preprocess = config.preprocess or preprocess_from_timm(resolve_data_config({}, model=model))
    labels = _timm_labels(pretrained_cfg, model.num_classes)
    return LoadedClassifier(
        ImageClassifier(model, DifferentiablePreprocess(preprocess), labels), snapshot_revision(path)
    )


# ------------------------------------------------------------------------------------------ local


def load_local_classifier(config: ClassifierConfig) -> LoadedClassifier:
    """A local directory: timm layout (config.json has ``architecture``) or transformers layout
    (``model_type``); safetensors only. Use kind ``vit-mae`` for a local mean-pooled ViT-MAE checkpoint."""
    path = Path(config.model_id).expanduser().resolve()
    if not path.exists():
        raise FileNotFoundError(f"local classifier {str(path)!r} does not exist")
    refuse_pickles(path)
    if path.is_file():
        raise ValueError(f"{str(path)!r} is a file; pass the directory holding config.json and model.safetensors")
    if not any(path.glob("*.safetensors")):
        raise ValueError(f"no *.safetensors weights in {str(path)!r}")
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise ValueError(f"{str(path)!r} has no config.json; save the model with save_pretrained / timm's save_for_hf")
    raw = _read_json(cfg_file)
    local = config.model_copy(update={"model_id": str(path)})
    if "architecture" in raw:
        return load_timm_classifier(local)
    if "model_type" in raw:
        return load_hf_classifier(local)
    raise ValueError(f"{str(cfg_file)!r} is neither a timm (architecture) nor a transformers (model_type) config")


def fetch_classifier_files(config: ClassifierConfig, *, local_files_only: bool | None = None) -> Path | None:
    """Download (or find in the cache) a classifier's files without loading it; ``dct models pull`` uses it.

    Returns:
        the local directory, or None for kinds whose weights ship with the project (``toy``) or are
        not hub-backed (unknown custom kinds).

    Raises:
        ValueError: unknown kind, pickle-only local directory, model not downloadable.
    """
    check_classifier_kind(config.kind)
    if config.kind in ("hf", "vit-mae", "local"):
        return resolve_weights_dir(config.model_id, config.revision, local_files_only=local_files_only)
    if config.kind == "timm":
        if is_local_path(config.model_id):
            return resolve_weights_dir(config.model_id, config.revision)
        path = hub_snapshot(
            timm_hub_id(config.model_id),
            config.revision,
            ["config.json", "*.safetensors"],
            local_files_only=local_files_only,
        )
        refuse_pickles(path)
        return path
    return None


def classifier_revision(config: ClassifierConfig, *, local_files_only: bool | None = None) -> str | None:
    """The resolved revision of a classifier without loading its weights into memory (for keys and plans).

    Returns None for kinds that are not hub/directory-backed (e.g. ``toy``): load those to learn theirs.
    """
    path = fetch_classifier_files(config, local_files_only=local_files_only)
    return snapshot_revision(path) if path is not None else None


# The built-in loader kinds, one row each; "module:function" rows are imported on first use (the toy world
# implements the interface without importing this registry). Plugins add a row: CLASSIFIER_LOADERS["x"] = fn.
CLASSIFIER_LOADERS: dict[str, ClassifierLoader | str] = {
    "hf": load_hf_classifier,
    "vit-mae": load_vit_mae_classifier,
    "timm": load_timm_classifier,
    "local": load_local_classifier,
    "toy": "dct.toy.models:load_toy_classifier",
    "fashion": "dct.fashion.world:load_fashion_classifier",
}
