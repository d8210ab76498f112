"""The layouts of a synthetic set that training code reads as-is (docs/synthesis.md, "Layout").

Under ``synthetic/{dataset}/{synth_key}/``::

    train/{class_id:05d}-{slug}/{seed}.png     kept DCT images (torchvision ImageFolder / HF "imagefolder")
    baseline/{class_id:05d}-{slug}/{seed}.png  the baseline arm (same prompts and seeds, baseline word)
    filtered/{class_id:05d}-{slug}/{seed}.png  DCT images the filter rejected (for inspection, never trained on)
    webdataset/{class_id:05d}-{k:03d}.tar      optional WebDataset shards of train/ (__key__, png|jpeg, cls, json)
    parts/{class_id:05d}.parquet               one class's manifest rows, written LAST = "class finished"
    metadata.parquet                           every row of every finished class (:data:`METADATA_SCHEMA`)
    README.md                                  the dataset card
    synthesis.json                             the settings and keys that made the set
"""

from __future__ import annotations

import io
import json
import re
import tarfile
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

METADATA_SCHEMA_VERSION = 2  # 2: run_id (the run whose token made the image; a mixture draws from several)

# Why a row was (not) kept: "kept"; "below_threshold" (the filter rejected it, image in filtered/);
# "over_quota" (generated in the last batch after the quota was met; not stored).
FILTER_STATUSES = ("kept", "below_threshold", "over_quota")

METADATA_SCHEMA = pa.schema(
    [
        ("schema_version", pa.int32()),
        ("dataset", pa.string()),
        ("synth_key", pa.string()),
        ("token_key", pa.string()),
        ("run_id", pa.string()),  # the run named for the token that made the image (--run); null otherwise
        ("arm", pa.string()),  # "dct" | "baseline"
        ("class_id", pa.int64()),
        ("class_name", pa.string()),
        ("token", pa.string()),
        ("path", pa.string()),  # relative to the set's root; null for over_quota rows
        ("prompt", pa.string()),
        ("template_index", pa.int32()),
        ("seed", pa.int64()),
        ("guide_probability", pa.float64()),
        ("evaluator_probability", pa.float64()),
        ("filter_status", pa.string()),
        ("kept", pa.bool_()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("diffusion_model_id", pa.string()),
        ("diffusion_revision", pa.string()),
        ("diffusion_licence", pa.string()),
        ("classifier_model_id", pa.string()),
        ("classifier_revision", pa.string()),
        ("classifier_licence", pa.string()),
        ("evaluator_model_id", pa.string()),
        ("evaluator_revision", pa.string()),
        ("evaluator_licence", pa.string()),
        ("dataset_licence", pa.string()),
    ],
    metadata={"dct.table": "synthetic", "dct.schema_version": str(METADATA_SCHEMA_VERSION)},
)

_SLUG = re.compile(r"[^a-z0-9]+")


def class_folder(class_id: int, class_name: str) -> str:
    """``{class_id:05d}-{slug}``: sorts by class id, so ImageFolder's label index is the class id."""
    slug = _SLUG.sub("-", class_name.lower()).strip("-")[:60].strip("-") or "class"
    return f"{class_id:05d}-{slug}"


def class_id_of_folder(folder: str) -> int:
    """The class id a folder name starts with (``"00003-blue-square"`` → 3)."""
    head = folder.split("-", 1)[0]
    if not head.isdigit():
        raise ValueError(f"folder {folder!r} does not start with a class id (expected '00003-name')")
    return int(head)


def table_bytes(rows: Sequence[dict[str, Any]]) -> bytes:
    """Parquet bytes of manifest rows under :data:`METADATA_SCHEMA` (a missing column is an error)."""
    table = pa.Table.from_pylist([{name: r[name] for name in METADATA_SCHEMA.names} for r in rows], METADATA_SCHEMA)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def read_table(data: bytes) -> pa.Table:
    """A manifest (part or metadata.parquet) from bytes, cast to :data:`METADATA_SCHEMA`.

    Raises:
        ValueError: a newer schema_version than this code knows.
    """
    table = pq.read_table(io.BytesIO(data))
    version = int((table.schema.metadata or {}).get(b"dct.schema_version", b"1"))
    if version > METADATA_SCHEMA_VERSION:
        raise ValueError(f"synthetic manifest has schema_version {version} > {METADATA_SCHEMA_VERSION}; upgrade dct")
    if "run_id" not in table.column_names:  # version 1 named no run
        table = table.append_column("run_id", pa.nulls(table.num_rows, pa.string()))
    return table.select(METADATA_SCHEMA.names).cast(METADATA_SCHEMA)


def webdataset_shards(
    samples: Sequence[tuple[str, bytes, int, dict[str, Any]]], ext: str, max_bytes: int
) -> list[bytes]:
    """WebDataset tar shards of ``(key, image bytes, class id, json fields)`` samples, each under ``max_bytes``.

    Each sample is ``{key}.{ext}``, ``{key}.cls`` (the class id as text) and ``{key}.json``; the members of
    a sample are adjacent, as WebDataset requires. A shard holds at least one sample.
    """
    shards: list[bytes] = []
    buf: io.BytesIO | None = None
    tar: tarfile.TarFile | None = None
    size = 0

    def add(name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mtime = 0  # deterministic bytes: the same images give the same shard
        tar.addfile(info, io.BytesIO(data))

    for key, image, class_id, meta in samples:
        members = [
            (f"{key}.{ext}", image),
            (f"{key}.cls", str(class_id).encode()),
            (f"{key}.json", json.dumps(meta, sort_keys=True).encode()),
        ]
        need = sum(512 + len(d) + 511 for _, d in members)
        if tar is not None and size + need > max_bytes:
            tar.close()
            shards.append(buf.getvalue())
            tar = None
        if tar is None:
            buf, size = io.BytesIO(), 0
            tar = tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT)  # noqa: SIM115 - closed above
        for name, data in members:
            add(name, data)
        size += need
    if tar is not None:
        tar.close()
        shards.append(buf.getvalue())
    return shards


def dataset_card(
    table: pa.Table, info: dict[str, Any], class_names: Sequence[str], root_uri: str
) -> str:
    """The README.md of a synthetic set: what made it, its terms, counts per class, the filter, how to load it.

    Args:
        table: every manifest row of the finished classes.
        info: the ``synthesis.json`` content (settings, keys, models).
        class_names: names by class id.
        root_uri: where the set lives (shown in the loading snippet).
    """
    rows = table.to_pylist()
    s = info["synthesis"]
    models = info["models"]
    counts: dict[int, dict[str, int]] = {}
    for r in rows:
        c = counts.setdefault(r["class_id"], {"generated": 0, "kept": 0, "baseline": 0})
        if r["arm"] == "dct":
            c["generated"] += 1
            c["kept"] += int(r["kept"])
        else:
            c["baseline"] += 1
    f = s.get("filter")
    filt = (
        f"kept an image only if the {f['by']} gave its class probability ≥ {f['min_probability']} "
        f"(at most {f['max_factor']}× the quota generated)"
        if f
        else "none (every generated image is kept)"
    )
    licences = sorted(
        {f"{m['role']}: {m['model_id']} — {m['licence']}" for m in models if m.get("model_id")}
        | {f"dataset {info['dataset']}: {info['dataset_licence']}"}
    )
    lines = [
        f"# Synthetic training set `{info['dataset']}` / `{info['synth_key']}`",
        "",
        "Images made by Discriminative Class Tokens (`dct synthesize`): one learned text token per class, "
        "rendered through the diffusion pipeline below.",
        "",
        "## What made it",
        "",
        "| role | model | revision | licence |",
        "|---|---|---|---|",
        *(f"| {m['role']} | `{m['model_id']}` | `{m['revision']}` | {m['licence']} |" for m in models if m["model_id"]),
        "",
        f"- token_key `{info['token_key']}`, synth_key `{info['synth_key']}`",
        *_mixture_lines(info, rows),
        f"- seeds: image j of a class uses noise seed {s['seed']} + j (disjoint from every optimisation and "
        "evaluation seed)",
        f"- templates: {', '.join(repr(t) for t in info['templates'])}",
        f"- sampler: {json.dumps(info['sampler'], sort_keys=True)}",
        f"- filter: {filt}",
        f"- baseline arm: {'yes, in baseline/' if s.get('baseline') else 'no'}",
        "",
        "## Terms of use",
        "",
        "The images inherit the use restrictions of every model that made them and of the dataset's labels:",
        "",
        *(f"- {x}" for x in licences),
        "",
        "## Counts per class",
        "",
        "| class id | name | generated | kept | baseline |",
        "|---|---|---|---|---|",
        *(
            f"| {cid} | {class_names[cid]} | {c['generated']} | {c['kept']} | {c['baseline']} |"
            for cid, c in sorted(counts.items())
        ),
        "",
        f"Classes: {len(counts)}; kept images: {sum(c['kept'] for c in counts.values())}.",
        "",
        "## Load it",
        "",
        "```python",
        "from torchvision.datasets import ImageFolder",
        f'train = ImageFolder("{root_uri}/train")   # label index = class id when every class is present',
        f'rows = __import__("pandas").read_parquet("{root_uri}/metadata.parquet")  # one row per image',
        "```",
        "",
        'Or `datasets.load_dataset("imagefolder", data_dir=".../train")`; from S3, copy the folder first or '
        "stream the WebDataset shards in `webdataset/`. Folder names start with the class id "
        "(`00003-blue-square`): with a subset of classes map labels through that prefix, not the index.",
        "",
    ]
    return "\n".join(lines)


def _mixture_lines(info: dict[str, Any], rows: Sequence[dict[str, Any]]) -> list[str]:
    """The card's lines on the runs whose tokens made the images (a mixture: how many images each made)."""
    runs = info.get("runs") or []
    if not runs:
        return []
    kept = {m["run_id"]: 0 for m in runs}
    for r in rows:
        if r["arm"] == "dct" and r["kept"] and r["run_id"] in kept:
            kept[r["run_id"]] += 1
    return [
        f"- tokens: a mixture of {len(runs)} runs; image j of a class uses run j mod {len(runs)}'s token (the "
        "`run_id` and `token_key` columns of metadata.parquet name it):",
        *(f"  - run `{m['run_id']}` (token_key `{m['token_key']}`): {kept[m['run_id']]} kept images" for m in runs),
    ]
