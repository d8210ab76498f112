"""Differentiable classifier preprocessing: resize → centre crop → normalise, all tensor ops.

The training path must stay differentiable from the VAE's pixels to the classifier's logits, so PIL
processors are never used there (docs/design.md, "Reference behaviour").

Where the settings come from, in order of precedence:

1. ``ClassifierConfig.preprocess`` (a dataset may pin one of the :data:`PRESETS`, e.g. the reference's);
2. the model's own configuration: a transformers ``preprocessor_config.json``
   (:func:`preprocess_from_hf_processor`) or a timm ``pretrained_cfg`` (:func:`preprocess_from_timm`).

Known differences from the models' own (PIL / torchvision) processors are listed in docs/models.md and
tested in tests/models/test_preprocess.py.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dct.config import PreprocessConfig

IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)

# The reference implementation (DCT `utils.transform_img_tensor`) preprocessed with kornia:
# ImageNet ViT: resize shorter side 256 bicubic, centre crop 224, mean/std 0.5;
# ViT-MAE (iNat/CUB): resize 224 bicubic, centre crop 224, ImageNet mean/std.
# kornia's resize does not antialias by default, so neither do these presets (faithful to the paper's
# numbers; google/vit-large-patch16-224's own processor instead squashes to 224x224 bilinear, see docs).
PRESETS: dict[str, PreprocessConfig] = {
    "reference-imagenet-vit": PreprocessConfig(
        resize=256, crop=224, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bicubic", antialias=False
    ),
    "reference-vit-mae": PreprocessConfig(
        resize=224,
        crop=224,
        mean=IMAGENET_DEFAULT_MEAN,
        std=IMAGENET_DEFAULT_STD,
        interpolation="bicubic",
        antialias=False,
    ),
}

# PIL resampling codes used by transformers' `resample` field.
_PIL_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic", 1: "bicubic", 4: "bilinear", 5: "bicubic"}
# 1 = LANCZOS, 4 = BOX, 5 = HAMMING have no tensor equivalent in F.interpolate; the closest filter is
# used (documented in docs/models.md).


def get_preset(name: str) -> PreprocessConfig:
    """Look up a preprocessing preset by name.

    Raises:
        ValueError: unknown name (the message lists the presets).
    """
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(
            f"unknown preprocessing preset {name!r}; valid presets: {', '.join(sorted(PRESETS))}"
        ) from None


def _square(value: Any, what: str) -> int:
    """A size from a transformers processor config (int, or dict with height/width/shortest_edge)."""
    if isinstance(value, int):
        return value
    if isinstance(value, Mapping):
        if "height" in value and "width" in value:
            if value["height"] != value["width"]:
                raise ValueError(
                    f"{what}={dict(value)!r} is not square; set ClassifierConfig.preprocess explicitly for this model"
                )
            return int(value["height"])
        if "shortest_edge" in value:
            return int(value["shortest_edge"])
    raise ValueError(f"cannot read {what}={value!r} from the processor config; set ClassifierConfig.preprocess")


def preprocess_from_hf_processor(processor_config: Mapping[str, Any]) -> PreprocessConfig:
    """Derive tensor preprocessing from a transformers ``preprocessor_config.json`` (as a dict).

    ``size: {height, width}`` (ViT) resizes both sides to that size; for the square images Stable
    Diffusion produces this equals "shorter side to size, then centre crop", which is what we do.

    Raises:
        ValueError: a setting this module cannot express (non-square target size, no normalisation).
    """
    cfg = dict(processor_config)
    if cfg.get("do_normalize", True) is False:
        raise ValueError("processor config has do_normalize=False; set ClassifierConfig.preprocess explicitly")
    rescale = cfg.get("rescale_factor", 1 / 255)
    if cfg.get("do_rescale", True) and not math.isclose(rescale, 1 / 255, rel_tol=1e-4):
        raise ValueError(f"rescale_factor={rescale!r} is not 1/255; set ClassifierConfig.preprocess explicitly")
    resize = _square(cfg.get("size", 224), "size") if cfg.get("do_resize", True) else None
    crop = _square(cfg["crop_size"], "crop_size") if cfg.get("do_center_crop") and "crop_size" in cfg else None
    if resize is None and crop is None:
        raise ValueError("processor config neither resizes nor crops; set ClassifierConfig.preprocess explicitly")
    resize = resize or crop
    crop = crop or resize
    mean = tuple(float(v) for v in cfg.get("image_mean", (0.5, 0.5, 0.5)))
    std = tuple(float(v) for v in cfg.get("image_std", (0.5, 0.5, 0.5)))
    resample = cfg.get("resample", 2)
    interpolation = _PIL_RESAMPLE.get(int(resample), "bilinear") if resample is not None else "bilinear"
    return PreprocessConfig(resize=resize, crop=crop, mean=mean, std=std, interpolation=interpolation, antialias=True)


def preprocess_from_timm(data_config: Mapping[str, Any]) -> PreprocessConfig:
    """Derive tensor preprocessing from a timm data config (``timm.data.resolve_data_config`` output).

    timm's eval transform resizes the shorter side to ``floor(size / crop_pct)`` and centre-crops
    ``size``; ``crop_mode='squash'`` resizes both sides, which for square images is resize=crop=size.
    """
    _, h, w = data_config["input_size"]
    if h != w:
        raise ValueError(
            f"timm input_size={data_config['input_size']!r} is not square; set ClassifierConfig.preprocess"
        )
    mode = data_config.get("crop_mode", "center")
    crop_pct = float(data_config.get("crop_pct") or 1.0)
    resize = h if mode == "squash" else math.floor(h / crop_pct)
    interpolation = data_config.get("interpolation", "bicubic")
    if interpolation not in ("bilinear", "bicubic", "nearest"):
        interpolation = "bicubic"  # 'random' / 'lanczos' have no tensor equivalent
    return PreprocessConfig(
        resize=resize,
        crop=h,
        mean=tuple(float(v) for v in data_config["mean"]),
        std=tuple(float(v) for v in data_config["std"]),
        interpolation=interpolation,
        antialias=True,
    )


class DifferentiablePreprocess(nn.Module):
    """Maps images ``(B, 3, H, W)`` float in [0, 1] to normalised classifier input ``(B, 3, crop, crop)``.

    Resize the shorter side to ``resize`` (aspect kept), centre-crop ``crop``, normalise. With
    ``antialias=True`` it mimics PIL/torchvision processors (antialiased, bicubic clipped to [0, 1]);
    with ``antialias=False`` it is kornia's resize as the reference used it.
    """

    def __init__(self, config: PreprocessConfig) -> None:
        super().__init__()
        self.config = config
        self.register_buffer("mean", torch.tensor(config.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(config.std).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
        cfg = self.config
        h, w = images.shape[-2:]
        # Resize the shorter side to cfg.resize, keeping the aspect ratio (torchvision's Resize(int)).
        scale = cfg.resize / min(h, w)
        size = (max(cfg.resize, round(h * scale)), max(cfg.resize, round(w * scale)))
        if size != (h, w):
            kwargs = {} if cfg.interpolation == "nearest" else {"align_corners": False, "antialias": cfg.antialias}
            images = F.interpolate(images, size=size, mode=cfg.interpolation, **kwargs)
            if cfg.interpolation == "bicubic" and cfg.antialias:
                # PIL/torchvision resize uint8 images, so bicubic overshoot is clipped to [0, 1]; we do the
                # same in this "processor-like" mode. antialias=False is the reference's kornia resize,
                # which neither antialiases nor clips (the presets), kept exact.
                images = images.clamp(0.0, 1.0)
        top = (images.shape[-2] - cfg.crop) // 2
        left = (images.shape[-1] - cfg.crop) // 2
        images = images[..., top : top + cfg.crop, left : left + cfg.crop]
        mean = self.mean.to(images.dtype)
        std = self.std.to(images.dtype)
        return (images - mean) / std
