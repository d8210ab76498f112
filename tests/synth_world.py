"""Planted class tokens for synthesis tests: what `dct run` leaves in a store, without optimising."""

from __future__ import annotations

import torch

from dct.artifacts.store import ArtifactStore


def plant_tokens(store: ArtifactStore, world, class_ids, seed: int = 0) -> str:
    """Write a token file per class for the world's current token_key (what `dct run` leaves); returns the key."""
    from dct.artifacts.token_file import token_file_bytes
    from dct.config import token_key
    from dct.run.plan import build_config, resolve_revisions

    _, config = build_config(str(world), None, store.root)
    rev = resolve_revisions(config)
    tkey = token_key(config, rev.diffusion, rev.classifier)
    g = torch.Generator().manual_seed(seed)
    for c in class_ids:
        meta = {"token_key": tkey, "class_id": str(c), "dataset": config.dataset}
        vector = torch.randn(32, generator=g)  # the tiny text encoder's width
        store.write_token(config.dataset, tkey, c, token_file_bytes(config.token_string(c), vector, meta))
    return tkey
