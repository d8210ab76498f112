"""Differentiable classifier preprocessing: resize → centre crop → normalise, all tensor ops.

The training path must stay differentiable from the VAE's pixels to the classifier's logits, so PIL
processors are never used there (DESIGN, "Reference behaviour").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dct.config import PreprocessConfig


class DifferentiablePreprocess(nn.Module):
    """Maps images ``(B, 3, H, W)`` float in [0, 1] to normalised classifier input ``(B, 3, crop, crop)``."""

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
        top = (images.shape[-2] - cfg.crop) // 2
        left = (images.shape[-1] - cfg.crop) // 2
        images = images[..., top : top + cfg.crop, left : left + cfg.crop]
        mean = self.mean.to(images.dtype)
        std = self.std.to(images.dtype)
        return (images - mean) / std
