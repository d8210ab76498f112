"""A stored run with planted shifts, written through the real store and record functions (no generation).

Baseline images: a grey background whose level the seed decides, a coloured ring-like square in the
centre. DCT images: the same seed's image, with the background brightened by ``shift`` for the shifted
classes only. The probe must find that and nothing else.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import numpy as np
import pytest
import torch

SIZE = 32


def planted_images(seeds, background_shift: float, colour=(0.2, 0.3, 0.9)) -> torch.Tensor:
    out = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        level = rng.uniform(0.2, 0.6)
        img = torch.full((3, SIZE, SIZE), level + background_shift)
        img += torch.from_numpy(rng.normal(0, 0.01, size=(3, SIZE, SIZE))).float()  # sensor-like noise
        img[:, 10:22, 10:22] = torch.tensor(colour).view(3, 1, 1)
        out.append(img.clamp(0, 1))
    return torch.stack(out)


@pytest.fixture
def write_run(tmp_path) -> Callable[..., tuple[str, str]]:
    """``write_run(shifts={class_id: shift}, seeds=..., sample_format="png")`` → ``(store root, run id)``."""
    from dct.artifacts.images import encode_image
    from dct.artifacts.store import ArtifactStore
    from dct.results import ClassRecord, Provenance, RunRecord, new_run_id, write_class_record, write_run_record
    from dct.run.plan import build_config

    root = str(tmp_path / "store")
    counter = iter(range(100))

    def write(shifts: dict[int, float], seeds=range(32), sample_format: str = "png", eval_key: str | None = None):
        store = ArtifactStore(root)
        _, config = build_config("toy", None, root)
        run_id = new_run_id()
        ekey = eval_key or f"ek{next(counter)}"
        now = dt.datetime.now(dt.UTC)
        prov = Provenance(
            diffusion_model_id="toy", diffusion_revision="r", classifier_model_id="toy:guide",
            classifier_revision="r", device="cpu", dtype="float32",
        )
        for cid, shift in shifts.items():
            if sample_format != "none":
                for variant, s in (("baseline", 0.0), ("dct", shift)):
                    for seed, img in zip(seeds, planted_images(seeds, s), strict=True):
                        store.write_sample("toy", ekey, cid, variant, seed, encode_image(img, "png"))
            write_class_record(
                store,
                ClassRecord(
                    run_id=run_id, dataset="toy", class_id=cid, class_name=f"class {cid}", token=f"<c{cid}>",
                    token_key="tk", eval_key=ekey, status="done",
                    samples_uri=store.samples_uri("toy", ekey, cid) if sample_format != "none" else None,
                    sample_format=sample_format, num_samples=len(seeds), provenance=prov, started_at=now,
                    finished_at=now,
                ),
            )
        write_run_record(
            store,
            RunRecord(
                run_id=run_id, dataset="toy", status="done", token_key="tk", eval_key=ekey,
                classes_done=len(shifts), config_json=config.model_dump_json(), provenance=prov, started_at=now,
                finished_at=now,
            ),
        )
        return root, run_id

    return write
