"""Sample images as bytes: ``(3, H, W)`` float in [0, 1] ↔ PNG/JPEG/WebP, the one codec of the store."""

from __future__ import annotations

import io

import torch


def encode_image(image: torch.Tensor, fmt: str) -> bytes:
    """One image ``(3, H, W)`` in [0, 1] → PNG/JPEG bytes."""
    from PIL import Image

    array = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(array).save(
        buf, format="JPEG" if fmt == "jpeg" else "PNG", **({"quality": 95} if fmt == "jpeg" else {})
    )
    return buf.getvalue()


def decode_image(data: bytes) -> torch.Tensor:
    """Encoded image bytes → ``(3, H, W)`` float32 in [0, 1] (RGB)."""
    import numpy as np
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        array = np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    return torch.from_numpy(array).permute(2, 0, 1).float() / 255.0
