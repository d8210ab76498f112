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


def plant_token_vectors(store: ArtifactStore, config, class_ids, widths, num_vectors: int, seed: int = 0):
    """Like :func:`plant_tokens`, for the token layout of ``widths`` (one text encoder, or SDXL's two) and
    ``num_vectors``, under the token_key of ``config`` (the run config the tokens were learned with).

    Returns:
        ``(token_key, {class_id: vector in the token file's form})``: ``(n, D)`` for one encoder (``(D,)`` when
        ``num_vectors`` is 1), ``{"clip_l": (n, D1), "clip_g": (n, D2)}`` for two.
    """
    from dct.artifacts.token_file import token_file_bytes
    from dct.config import token_key
    from dct.run.plan import resolve_revisions

    rev = resolve_revisions(config)
    tkey = token_key(config, rev.diffusion, rev.classifier)
    g = torch.Generator().manual_seed(seed)
    vectors = {}
    for c in class_ids:
        if len(widths) == 2:
            keys = ("clip_l", "clip_g")
            vector = {k: torch.randn(num_vectors, d, generator=g) for k, d in zip(keys, widths, strict=True)}
        else:
            vector = torch.randn(num_vectors, widths[0], generator=g)
            vector = vector[0] if num_vectors == 1 else vector
        meta = {"token_key": tkey, "class_id": str(c), "dataset": config.dataset}
        store.write_token(config.dataset, tkey, c, token_file_bytes(config.token_string(c), vector, meta))
        vectors[c] = vector
    return tkey, vectors


def plant_bundle(store: ArtifactStore, config, token_key: str, class_ids, run_id: str) -> str:
    """The run's export bundle of the planted tokens (what `dct run` publishes); returns its tensor file's URI."""
    import datetime as dt

    from dct.artifacts.bundle import export_bundle
    from dct.results import ClassRecord, Provenance

    now = dt.datetime.now(dt.UTC)
    prov = Provenance(
        diffusion_model_id=config.diffusion.model_id, diffusion_revision="r", classifier_model_id="tiny:guide",
        classifier_revision="r", device="cpu", dtype="float32",
    )
    records = [
        ClassRecord(
            run_id=run_id, dataset=config.dataset, class_id=c, class_name=f"class {c}",
            token=config.token_string(c), token_key=token_key, eval_key="ek", status="done", provenance=prov,
            started_at=now, finished_at=now,
        )
        for c in class_ids
    ]
    return export_bundle(store, records, run_id)[0]


def record_run(store: ArtifactStore, world, overrides, classes=range(4)) -> str:
    """What `dct run --dataset world` with ``overrides`` leaves: the (planted) tokens of its token_key and its run
    record, whose config, dataset source and classes `--run` reads. Returns the run id."""
    import datetime as dt

    from dct.results import Provenance, RunRecord, new_run_id, write_run_record
    from dct.run.plan import build_config

    _, config = build_config(str(world), overrides, store.root)
    tkey, _ = plant_token_vectors(store, config, classes, (32,), 1, seed=config.training.seed + 1)
    run_id = new_run_id()
    now = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    prov = Provenance(diffusion_model_id="tiny", diffusion_revision="r", classifier_model_id="tiny",
                      classifier_revision="r", device="cpu", dtype="float32")
    write_run_record(store, RunRecord(
        run_id=run_id, dataset=config.dataset, status="done", token_key=tkey, eval_key="ek",
        config_json=config.model_dump_json(), dataset_source=str(world), class_ids=list(classes), provenance=prov,
        started_at=now, finished_at=now,
    ))
    return run_id
