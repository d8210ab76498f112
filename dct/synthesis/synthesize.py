"""Synthetic training sets from a dataset's learned class tokens: plan, one class, finalise.

Plain library code (no Prefect): the synthesis flow (``flows/synthesize_flow.py``) and ``dct synthesize``
drive it shard by shard, a notebook can call :func:`synthesize_dataset`. Images come from the one denoising loop
(``dct.method.sampling.generate``), batched over seeds. A class is finished when its manifest part
exists; the part is written LAST, after every image (docs/synthesis.md).
"""

from __future__ import annotations

import logging
import posixpath
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import torch

from dct.artifacts.images import encode_image
from dct.artifacts.store import ArtifactStore
from dct.artifacts.token_file import check_token, load_stored_token
from dct.config import DatasetSpec, RunConfig, RunOverrides, canonical_json, fill_baseline, fill_template, token_key
from dct.method.sampling import generate
from dct.method.tokens import TokenVector, install_token, token_widths
from dct.models.datasets import select_classes
from dct.models.loading import Models
from dct.run.handle import RunSettings, check_run_token_key, resolve_settings
from dct.run.plan import Revisions, check_models_available, make_shards, preflight_store
from dct.synthesis.config import SynthesisConfig, check_synthesis, synth_key
from dct.synthesis.layout import (
    METADATA_SCHEMA_VERSION,
    class_folder,
    dataset_card,
    read_table,
    table_bytes,
    webdataset_shards,
)

logger = logging.getLogger(__name__)

INFO_FILE = "synthesis.json"


@dataclass
class SynthesisPlan:
    """What a synthesis run will do (small and JSON-friendly: flows pass it around)."""

    dataset: str
    store_root: str
    token_key: str
    synth_key: str
    selected: list[int]
    todo: list[int]
    finished: list[int]
    missing_tokens: list[int]
    shards: list[list[int]]
    revisions: Revisions
    bundle: str | None = None
    info: dict = field(default_factory=dict)
    # THE run configuration the tokens were learned with (a dataset + overrides, or a run's own): every shard
    # uses it as it is (docs/design.md, "One run plan").
    config: RunConfig | None = None
    source: str | None = None  # the dataset as named (registry name or dataset file), for its class names
    # The runs whose tokens make the images, [{"run_id", "token_key"}]: one for `--run`, K for a mixture (image j of a
    # class uses member j mod K's token; `token_key` is then the members' keys joined by "+"), none otherwise.
    members: list[dict] = field(default_factory=list)

    @property
    def is_mixture(self) -> bool:
        return len(self.members) > 1

    def summary_lines(self) -> list[str]:
        lines = [
            f"dataset {self.dataset}: {len(self.selected)} classes selected, {len(self.todo)} to synthesize, "
            f"{len(self.finished)} already finished, {len(self.missing_tokens)} without a finished token (skipped)",
            f"store {self.store_root}  token_key {self.token_key}  synth_key {self.synth_key}",
        ]
        if self.missing_tokens:
            shown = ", ".join(map(str, self.missing_tokens[:20])) + (" …" if len(self.missing_tokens) > 20 else "")
            lines.append(f"no token for classes {shown}: run `dct run` first, or pass optimize_missing")
        return lines

    def shard_config(self) -> RunConfig:
        if self.config is None:
            raise ValueError(
                f"synthesis plan {self.synth_key!r} carries no run configuration; build it with plan_synthesis"
            )
        return self.config


def synthesis_config(spec: DatasetSpec, config: RunConfig, **fields) -> SynthesisConfig:
    """A :class:`SynthesisConfig` from keyword fields (None = default), validated against the run config."""
    synthesis = SynthesisConfig(**{k: v for k, v in fields.items() if v is not None})
    check_synthesis(synthesis, config)
    return synthesis


def bundle_class_tokens(
    bundle: str, dataset: str, store: ArtifactStore | None = None
) -> tuple[str, str, dict[int, tuple[str, TokenVector]]]:
    """The tokens of a run's bundle, checked against the dataset (cheap: no model is touched).

    Args:
        bundle: the bundle's folder or its ``tokens.safetensors``, a local path or ``s3://`` URI
            (:func:`dct.artifacts.bundle.resolve_bundle_uri`; a relative path may be under ``store``'s root).
        dataset: the dataset's name.

    Returns:
        ``(the tensor file's URI, the bundle's token_key, {class_id: (token, vector in the token file's form)})``.

    Raises:
        FileNotFoundError: no bundle there.
        ValueError: not a readable dct bundle, or the bundle of another dataset.
    """
    from safetensors import SafetensorError

    from dct.artifacts.bundle import bundle_vector, read_bundle, resolve_bundle_uri

    at, uri = resolve_bundle_uri(bundle, store)
    try:
        tokens, vectors, manifest = read_bundle(at.read_bytes(uri))
    except (SafetensorError, ValueError) as exc:  # pydantic's ValidationError and json errors are ValueErrors
        raise ValueError(
            f"bundle {uri!r} is not readable ({exc}); give the bundle folder or tokens.safetensors `dct run` wrote"
        ) from None
    if manifest.dataset != dataset:
        raise ValueError(
            f"bundle {uri!r} holds tokens of dataset {manifest.dataset!r}, not {dataset!r}; "
            f"pass --dataset {manifest.dataset} or a bundle of {dataset!r}"
        )
    by_class = {
        entry.class_id: (token, bundle_vector(vectors, i))
        for i, (entry, token) in enumerate(zip(manifest.tokens, tokens, strict=True))
    }
    return uri, manifest.token_key, by_class


def plan_synthesis(
    *,
    dataset: str,
    synthesis: SynthesisConfig,
    classes: str | int | list[str | int] = "all",
    store: str | None = None,
    overrides: RunOverrides | None = None,
    bundle: str | None = None,
    shard_size: int = 16,
    probe_name: str | None = None,
    settings: RunSettings | None = None,
) -> SynthesisPlan:
    """Preflight (cheap checks first: nothing is loaded before the settings are known good) and plan.

    Args:
        overrides: the method overrides the tokens were learned with (they decide ``token_key``).
        bundle: a run's token bundle to take the tokens from instead of the token store: its folder or its
            ``tokens.safetensors``, a local path (relative: to the working directory, else to the store root)
            or ``s3://`` URI (:func:`bundle_class_tokens`). The plan holds the resolved file's URI.
        settings: the dataset and run configuration, already resolved (``--run``: a run's own, whose
            ``token_key`` the models here must reproduce; a notebook: any ``RunConfig``, e.g. with
            ``token.num_vectors``); default: ``dataset`` + ``overrides``.

    Raises:
        ValueError: a seed block overlapping the optimisation/evaluation seeds, bad classes, a foreign bundle.
        FileNotFoundError: no bundle at ``bundle``.
        StoreUnavailableError / OSError: the store is unreachable or not writable.
        ModelNotAvailableError: a model is not cached and the hub is unreachable.
    """
    from dct.run.plan import resolve_revisions

    if shard_size <= 0:
        raise ValueError(f"shard_size={shard_size!r} must be a positive integer")
    settings = settings or resolve_settings(dataset=dataset, overrides=overrides, store=store)
    spec, config = settings.spec, settings.config
    dataset_arg = dataset
    if settings.members and bundle:
        raise ValueError(
            f"--bundle {bundle!r} holds one run's tokens; a mixture of {len(settings.members)} runs reads each run's "
            "tokens from the store: drop --bundle"
        )
    for one in settings.members or (settings,):  # before any model is touched; a mixture's runs have other seeds
        check_synthesis(synthesis, one.config)
    selected = select_classes(spec, classes)
    artifact_store = ArtifactStore.from_config(config.storage)
    preflight_store(artifact_store, probe_name)
    check_models_available(config, dataset_arg)
    revisions = resolve_revisions(config)
    members: list[dict] = []
    if bundle:
        # The resolved tensor file goes into the plan, so every shard reads the same file.
        bundle, tkey, by_class = bundle_class_tokens(bundle, config.dataset, artifact_store)
        have = set(by_class)
    else:
        have = None
        for one in settings.members or (settings,):
            key = token_key(one.config, revisions.diffusion, revisions.classifier)
            check_run_token_key(one, key, revisions)
            stored = artifact_store.stored_token_class_ids(config.dataset, key)
            have = set(stored) if have is None else have & set(stored)  # a mixture's class needs every run's token
            if one.run is not None:
                members.append({"run_id": one.run.run_id, "token_key": key})
        tkey = "+".join(m["token_key"] for m in members) if settings.members else key
    skey = synth_key(synthesis, config, tkey, revisions.classifier, revisions.evaluator)
    done = artifact_store.synthetic_finished_class_ids(config.dataset, skey)
    todo = [c for c in selected if c in have and c not in done]
    info = {
        "dataset": config.dataset,
        "dataset_licence": spec.licence,
        "synth_key": skey,
        "token_key": tkey,
        "bundle": bundle,
        "synthesis": synthesis.model_dump(mode="json", exclude={"batch_size"}),
        "templates": list(synthesis.effective_templates(config)),
        "sampler": synthesis.effective_sampler(config).model_dump(mode="json"),
        "baseline_word": config.prompts.baseline_word,
        "models": _models(config, revisions),
        "metadata_schema_version": METADATA_SCHEMA_VERSION,
        **({"runs": members} if settings.members else {}),  # a mixture's runs are part of what made the set
    }
    return SynthesisPlan(
        dataset=config.dataset,
        store_root=artifact_store.root,
        token_key=tkey,
        synth_key=skey,
        selected=selected,
        todo=todo,
        finished=[c for c in selected if c in done],
        missing_tokens=[c for c in selected if c not in have],
        shards=make_shards(todo, shard_size),
        revisions=revisions,
        bundle=bundle,
        info=info,
        config=config,
        source=settings.source,
        members=members,
    )


def _models(config: RunConfig, revisions: Revisions) -> list[dict]:
    ev = config.evaluation.evaluator
    return [
        {"role": "diffusion", "model_id": config.diffusion.model_id, "revision": revisions.diffusion,
         "licence": config.diffusion.licence},
        {"role": "guide", "model_id": config.classifier.model_id, "revision": revisions.classifier,
         "licence": config.classifier.licence},
        {"role": "evaluator", "model_id": ev.model_id if ev else None, "revision": revisions.evaluator,
         "licence": ev.licence if ev else None},
    ]


@dataclass(frozen=True)
class ClassSynthesis:
    """What one class produced (a small record for task results and logs)."""

    class_id: int
    generated: int
    kept: int
    baseline: int
    part_uri: str


def class_token(
    store: ArtifactStore, plan: SynthesisPlan, config: RunConfig, class_id: int, widths: int | Sequence[int],
    bundle_tokens: Mapping[int, tuple[str, TokenVector]] | None = None, token_key: str | None = None,
) -> tuple[str, TokenVector]:
    """The class's token from the bundle or the store, through THE token check.

    Args:
        widths: the pipeline's text-encoder widths (:func:`dct.method.tokens.token_widths`).
        token_key: the stored token's key (a mixture's member); default the plan's.

    Returns:
        ``(token, vector in the token file's form)``: ``(D,)``, ``(n, D)`` or ``{"clip_l", "clip_g"}``.

    Raises:
        FileNotFoundError / ValueError: no token, or one that is not provably this class's for ``token_key``
            or does not fit the pipeline's text encoders.
    """
    expected = config.token_string(class_id)
    if bundle_tokens is not None:
        if class_id not in bundle_tokens:
            raise ValueError(f"class {class_id} is not in bundle {plan.bundle!r}")
        token, vector = bundle_tokens[class_id]
        # Any number of vectors: the bundle's own token_key (the run's config) decided it, not this config.
        check_token(f"bundle {plan.bundle!r}", token, vector, {}, expected_token=expected, width=widths)
        return token, vector
    # The stored token for this token_key has the configured number of vectors (it is part of the key).
    token, vector, _ = load_stored_token(
        store, plan.dataset, token_key or plan.token_key, class_id, expected, width=widths,
        num_vectors=config.token.num_vectors, require=("token_key",),
    )
    return token, vector


def _probabilities(classifier, images: torch.Tensor, class_id: int, batch_size: int) -> list[float]:
    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size].to(next(classifier.parameters()).device)
            out.append(torch.softmax(classifier(batch), dim=1)[:, class_id].float().cpu())
    return torch.cat(out).tolist()


def _passes(synthesis: SynthesisConfig, guide_p: float, eval_p: float | None) -> bool:
    f = synthesis.filter
    if f is None:
        return True
    need = {"guide": [guide_p], "evaluator": [eval_p], "both": [guide_p, eval_p]}[f.by]
    return all(p is not None and p >= f.min_probability for p in need)


def synthesize_class(
    store: ArtifactStore,
    plan: SynthesisPlan,
    config: RunConfig,
    synthesis: SynthesisConfig,
    models: Models,
    *,
    class_id: int,
    class_name: str,
    token: str,
    vector: TokenVector,
    mixture: Sequence[TokenVector] = (),
) -> ClassSynthesis:
    """Render one class's set in batches over seeds, write images (and shards), then its part LAST.

    DCT images of seeds ``seed, seed+1, …`` are generated batch by batch until ``per_class`` pass the
    filter or the cap is reached; image j uses template ``j mod len(templates)``. The baseline arm renders
    the first ``per_class`` seeds with the baseline word. Every image is scored by the guide (and the
    evaluator, when the dataset has one); the scores go into the manifest.

    Args:
        mixture: a mixture plan's vectors, one per member of ``plan.members`` in order (``vector`` is then the
            first): image j uses member ``j mod K``'s vector, so each member makes every K-th image.

    Returns:
        Counts and the part's URI.
    """
    pipe = models.pipe
    vectors = list(mixture) or [vector]
    if len(vectors) != max(len(plan.members), 1):
        raise ValueError(f"{len(vectors)} token vectors for the plan's {len(plan.members)} runs; give one per run")
    members = plan.members or [{"run_id": None, "token_key": plan.token_key}]
    # Every sub-token into every text encoder (SDXL: clip_l and clip_g), as `dct run` and `dct generate` do.
    install_token(pipe, token, vectors[0], config.token.initializer_token)
    templates = synthesis.effective_templates(config)
    sampler = synthesis.effective_sampler(config)
    folder = class_folder(class_id, class_name)
    ext = synthesis.image_format
    common = {
        "schema_version": METADATA_SCHEMA_VERSION, "dataset": plan.dataset, "synth_key": plan.synth_key,
        "token_key": plan.token_key, "class_id": class_id, "class_name": class_name, "token": token,
        "dataset_licence": plan.info["dataset_licence"],
        **{f"{m['role'] if m['role'] != 'guide' else 'classifier'}_{k}": m[k]
           for m in plan.info["models"] for k in ("model_id", "revision", "licence")},
    }

    def render(
        word: str, seeds: list[int], fill=fill_template, *, by_member: bool = False
    ) -> tuple[torch.Tensor, list[str], list[int]]:
        index = [s - synthesis.seed for s in seeds]
        prompts = [fill(templates[j % len(templates)], word, class_name) for j in index]
        if not by_member or len(vectors) == 1:
            images = generate(
                pipe, prompts, seeds, sampler, device=models.device, dtype=models.dtype,
                batch_size=synthesis.batch_size,
            )
            return images, prompts, index
        # A mixture: each member's images with its vector installed (a seed's noise is the same in any batch).
        images = [None] * len(seeds)
        for m, vec in enumerate(vectors):
            at = [i for i, j in enumerate(index) if j % len(vectors) == m]
            if not at:
                continue
            install_token(pipe, token, vec, config.token.initializer_token)
            made = generate(
                pipe, [prompts[i] for i in at], [seeds[i] for i in at], sampler, device=models.device,
                dtype=models.dtype, batch_size=synthesis.batch_size,
            )
            for i, img in zip(at, made, strict=True):
                images[i] = img
        return torch.stack(images), prompts, index

    def scores(images: torch.Tensor) -> tuple[list[float], list[float | None]]:
        guide = _probabilities(models.classifier, images, class_id, synthesis.batch_size)
        ev = models.evaluator
        evp = _probabilities(ev, images, class_id, synthesis.batch_size) if ev is not None else [None] * len(images)
        return guide, evp

    rows: list[dict] = []
    shard_samples = []
    kept = 0
    block = list(synthesis.seeds)
    pos = 0
    while pos < len(block) and kept < synthesis.per_class:
        # Without a filter every image is kept, so a batch never overshoots the quota.
        n = synthesis.batch_size if synthesis.filter else min(synthesis.batch_size, synthesis.per_class - kept)
        seeds = block[pos : pos + n]
        pos += len(seeds)
        images, prompts, index = render(token, seeds, by_member=True)
        guide, evp = scores(images)
        for img, prompt, j, seed, gp, ep in zip(images, prompts, index, seeds, guide, evp, strict=True):
            status = "kept" if _passes(synthesis, gp, ep) else "below_threshold"
            if status == "kept" and kept >= synthesis.per_class:
                status = "over_quota"
            path = None
            if status != "over_quota":
                arm = "train" if status == "kept" else "filtered"
                data = encode_image(img, ext)
                uri = store.synthetic_image_uri(plan.dataset, plan.synth_key, arm, folder, seed, ext)
                store.write_bytes(uri, data)
                path = f"{arm}/{folder}/{seed}.{ext}"
                if status == "kept":
                    kept += 1
                    meta = {"class_id": class_id, "class_name": class_name, "prompt": prompt, "seed": seed,
                            "guide_probability": gp, "evaluator_probability": ep, "synth_key": plan.synth_key}
                    shard_samples.append((f"{class_id:05d}-{seed}", data, class_id, meta))
            rows.append(common | {
                "token_key": members[j % len(vectors)]["token_key"], "run_id": members[j % len(vectors)]["run_id"],
                "arm": "dct", "path": path, "prompt": prompt, "template_index": j % len(templates), "seed": seed,
                "guide_probability": gp, "evaluator_probability": ep, "filter_status": status,
                "kept": status == "kept", "width": img.shape[-1], "height": img.shape[-2],
            })
    generated = len(rows)
    baseline = 0
    if synthesis.baseline:
        word = config.prompts.baseline_word
        seeds_all = block[: synthesis.per_class]
        for start in range(0, len(seeds_all), synthesis.batch_size):
            seeds = seeds_all[start : start + synthesis.batch_size]
            images, prompts, index = render(word, seeds, fill_baseline)  # the DCT prompt without the token
            guide, evp = scores(images)
            for img, prompt, j, seed, gp, ep in zip(images, prompts, index, seeds, guide, evp, strict=True):
                uri = store.synthetic_image_uri(plan.dataset, plan.synth_key, "baseline", folder, seed, ext)
                store.write_bytes(uri, encode_image(img, ext))
                rows.append(common | {
                    "run_id": None, "arm": "baseline", "path": f"baseline/{folder}/{seed}.{ext}", "prompt": prompt,
                    "template_index": j % len(templates), "seed": seed, "guide_probability": gp,
                    "evaluator_probability": ep, "filter_status": "kept", "kept": True,
                    "width": img.shape[-1], "height": img.shape[-2],
                })
                baseline += 1
    if synthesis.webdataset and shard_samples:
        for k, data in enumerate(webdataset_shards(shard_samples, ext, synthesis.shard_max_bytes)):
            name = f"{class_id:05d}-{k:03d}.tar"
            store.write_bytes(store.synthetic_uri(plan.dataset, plan.synth_key, "webdataset", name), data)
    if kept < synthesis.per_class:
        logger.warning(
            "class %d (%s): only %d of %d images passed the filter in %d generated (cap reached)",
            class_id, class_name, kept, synthesis.per_class, generated,
        )
    # LAST: the part's existence marks the class finished.
    part = store.write_bytes(store.synthetic_part_uri(plan.dataset, plan.synth_key, class_id), table_bytes(rows))
    logger.info("class %d (%s): %d kept of %d generated, %d baseline", class_id, class_name, kept, generated, baseline)
    return ClassSynthesis(class_id, generated, kept, baseline, part)


def finalize_synthesis(store: ArtifactStore, plan: SynthesisPlan, class_names: list[str]) -> dict:
    """Combine the finished classes' parts into ``metadata.parquet``, write the card and ``synthesis.json``.

    Each file is written only when its content changed, so a re-run with nothing new writes nothing.

    Returns:
        ``{"metadata_uri", "card_uri", "classes", "kept", "generated", "written": [uris]}``.
    """
    import pyarrow as pa

    parts = store.list_files(store.synthetic_uri(plan.dataset, plan.synth_key, "parts"))
    tables = [read_table(store.read_bytes(u)) for u in parts if posixpath.splitext(u)[1] == ".parquet"]
    from dct.synthesis.layout import METADATA_SCHEMA

    table = pa.concat_tables(tables) if tables else METADATA_SCHEMA.empty_table()
    written = []
    meta_uri = store.synthetic_uri(plan.dataset, plan.synth_key, "metadata.parquet")
    card_uri = store.synthetic_uri(plan.dataset, plan.synth_key, "README.md")
    info_uri = store.synthetic_uri(plan.dataset, plan.synth_key, INFO_FILE)
    root = store.synthetic_uri(plan.dataset, plan.synth_key)
    files = {
        meta_uri: table_bytes(table.to_pylist()),
        card_uri: dataset_card(table, plan.info, class_names, root).encode(),
        info_uri: (canonical_json(plan.info) + "\n").encode(),
    }
    for uri, data in files.items():
        if store.exists(uri) and store.read_bytes(uri) == data:
            continue
        store.write_bytes(uri, data)
        written.append(uri)
    dct_rows = [r for r in table.to_pylist() if r["arm"] == "dct"]
    return {
        "metadata_uri": meta_uri,
        "card_uri": card_uri,
        "root_uri": root,
        "classes": len({r["class_id"] for r in dct_rows}),
        "kept": sum(r["kept"] for r in dct_rows),
        "generated": len(dct_rows),
        "written": written,
    }


def synthesize_shard(
    store: ArtifactStore, plan: SynthesisPlan, config: RunConfig, synthesis: SynthesisConfig, models: Models,
    class_ids: list[int], class_names: list[str], on_class_done: Callable[[int], None] | None = None,
) -> list[ClassSynthesis]:
    """Every class of a shard with the models loaded once; a class already finished is skipped.

    ``on_class_done(class_id)`` is called after each class's part is written (a stopped command names them).
    """
    widths = token_widths(models.pipe)
    bundle_tokens = bundle_class_tokens(plan.bundle, plan.dataset, store)[2] if plan.bundle else None
    done = store.synthetic_finished_class_ids(plan.dataset, plan.synth_key)
    out = []
    for class_id in class_ids:
        if class_id in done:
            continue
        if plan.is_mixture:  # every member's token of the class, each through the check under its own key
            loaded = [class_token(store, plan, config, class_id, widths, token_key=m["token_key"])
                      for m in plan.members]
            token, vector, mixture = loaded[0][0], loaded[0][1], [v for _, v in loaded]
        else:
            (token, vector), mixture = class_token(store, plan, config, class_id, widths, bundle_tokens), []
        out.append(
            synthesize_class(
                store, plan, config, synthesis, models, class_id=class_id, class_name=class_names[class_id],
                token=token, vector=vector, mixture=mixture,
            )
        )
        if on_class_done is not None:
            on_class_done(class_id)
    return out


def synthesize_dataset(
    *,
    dataset: str,
    synthesis: SynthesisConfig,
    classes: str | int | list[str | int] = "all",
    store: str | None = None,
    overrides: RunOverrides | None = None,
    bundle: str | None = None,
    device: str = "cpu",
    settings: RunSettings | None = None,
) -> tuple[SynthesisPlan, dict]:
    """Plan, synthesize every unfinished class in one process, finalise (no Prefect; notebooks, tests).

    Returns:
        ``(plan, finalize summary)``.
    """
    from dct.models.loading import load_models, resolve_device

    settings = settings or resolve_settings(dataset=dataset, overrides=overrides, store=store)
    plan = plan_synthesis(
        dataset=dataset, synthesis=synthesis, classes=classes, store=store, bundle=bundle, settings=settings
    )
    spec, config = settings.spec, plan.shard_config()
    artifact_store = ArtifactStore.from_config(config.storage)
    if plan.todo:
        models = load_models(config, resolve_device(device))
        synthesize_shard(artifact_store, plan, config, synthesis, models, plan.todo, list(spec.class_names))
    return plan, finalize_synthesis(artifact_store, plan, list(spec.class_names))


def plan_to_json(plan: SynthesisPlan) -> dict:
    data = asdict(plan)
    data["config"] = plan.config.model_dump(mode="json") if plan.config is not None else None
    return data


def plan_from_json(data: dict) -> SynthesisPlan:
    config = RunConfig.model_validate(data["config"]) if data.get("config") is not None else None
    return SynthesisPlan(**{**data, "revisions": Revisions(**data["revisions"]), "config": config})




def check_loaded_revisions(plan: SynthesisPlan, models: Models) -> None:
    """The shard's models are the ones the plan keyed (a worker with other weights would mislabel the set).

    Raises:
        ValueError: a loaded model's resolved revision differs from the plan's.
    """
    loaded = {"diffusion": models.pipe_revision, "classifier": models.classifier_revision,
              "evaluator": models.evaluator_revision}
    for role, revision in loaded.items():
        planned = getattr(plan.revisions, role)
        if revision != planned:
            raise ValueError(
                f"the {role} model loaded here is revision {revision!r}, the plan keyed {planned!r}; "
                "give every worker the same model cache (`dct models pull`)"
            )
