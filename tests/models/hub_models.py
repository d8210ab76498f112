"""Tiny random-weight models with the real architectures, saved the way the hub stores them.

Every loader test goes through the same code as a real model id: either a local directory, or a fake
Hugging Face cache (``models--org--name/snapshots/<sha>/``) read with the hub offline.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

TINY_VIT = dict(
    image_size=32,
    patch_size=8,
    num_channels=3,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    hidden_act="gelu",
    layer_norm_eps=1e-6,
)
NUM_LABELS = 5
LABELS = {i: name for i, name in enumerate(["circle", "square", "triangle", "cross", "ring"])}


def save_tiny_vit(path: Path, *, image_size: int = 32, seed: int = 0, processor: dict | None = None) -> Path:
    """A ViTForImageClassification (the architecture of google/vit-* and vesteinn/vit-mae-*) + its processor."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(seed)
    config = ViTConfig(
        **{**TINY_VIT, "image_size": image_size},
        num_labels=NUM_LABELS,
        id2label=LABELS,
        label2id={v: k for k, v in LABELS.items()},
    )
    model = ViTForImageClassification(config).eval()
    model.save_pretrained(path, safe_serialization=True)
    ViTImageProcessor(**(processor or {"size": {"height": image_size, "width": image_size}})).save_pretrained(path)
    return path


def save_tiny_timm(path: Path, *, seed: int = 0) -> Path:
    """A timm ViT saved with timm's own hub exporter (config.json + model.safetensors)."""
    import timm
    from timm.models._hub import save_for_hf

    torch.manual_seed(seed)
    model = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        num_classes=NUM_LABELS,
        img_size=32,
        patch_size=8,
        embed_dim=32,
        depth=2,
        num_heads=2,
    ).eval()
    save_for_hf(model, str(path), model_config={"label_names": list(LABELS.values())}, safe_serialization=True)
    return path


def put_in_hf_cache(src: Path, cache: Path, repo_id: str, sha: str = "a" * 40) -> Path:
    """Lay out ``src`` as huggingface_hub's cache does for ``repo_id`` at commit ``sha`` (refs/main)."""
    repo_dir = cache / f"models--{repo_id.replace('/', '--')}"
    snap = repo_dir / "snapshots" / sha
    shutil.copytree(src, snap)
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / "main").write_text(sha)
    return snap


def write_inat_config(path: Path, n: int = 10_000) -> Path:
    """A config.json with iNat21-style id2label (the category-name pattern of the iNat 2021 release)."""
    path.mkdir(parents=True, exist_ok=True)
    id2label = {str(i): f"{i:05d}_Animalia_Chordata_Aves_Passeriformes_Fam{i}_Genus{i}_species{i}" for i in range(n)}
    (path / "config.json").write_text(json.dumps({"model_type": "vit", "id2label": id2label}))
    return path
