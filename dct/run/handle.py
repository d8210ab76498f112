"""A run's settings, resolved once: from a dataset + overrides, or from a finished run (``--run RUN_ID``).

Every command that learns or uses class tokens (`dct run`, `optimize`, `synthesize`, `augment-eval`, `probe`,
`generate`) gets its dataset spec and :class:`~dct.config.RunConfig` here, so the same arguments mean the
same thing everywhere (docs/design.md, "One run plan"). ``--run RUN_ID`` takes the run's exact configuration
from its run record (``runs/<dataset>/<run_id>/run.json``), the class names from the dataset it names, and the
run's ``token_key``, so whatever `dct run` made can be used without repeating its flags.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from dct.artifacts.store import ArtifactStore
from dct.config import DatasetSpec, RunConfig, RunOverrides
from dct.models.datasets import get_dataset
from dct.results import RunRecord, read_results, read_run_record
from dct.run.plan import build_config, dataset_source


@dataclass(frozen=True)
class RunSettings:
    """What decides a command's tokens: the dataset, its run configuration, and the run they came from."""

    spec: DatasetSpec
    config: RunConfig
    source: str
    run: RunRecord | None = None
    # A mixture (several --run): every run whose tokens the images are drawn from, evenly, in the order given; the
    # first is this one. Their configurations differ only in the optimisation seed (:func:`mixture_settings`).
    members: tuple[RunSettings, ...] = ()

    @property
    def token_key(self) -> str | None:
        """The ``token_key`` the run learned its tokens under (None without ``--run``: computed from the models)."""
        return self.run.token_key if self.run is not None else None


def find_run_record(store: ArtifactStore, run_id: str) -> RunRecord:
    """The run record of ``run_id`` in ``store``, whatever its dataset.

    Raises:
        ValueError: no such run in the store (the message says where the id comes from).
    """
    from dct.artifacts.store import validate_component

    validate_component(run_id, "--run")
    rows = read_results(store, "runs", run_id=run_id, columns=["dataset"])
    for dataset in dict.fromkeys(rows["dataset"]):
        record = read_run_record(store, dataset, run_id)
        if record is not None:
            return record
    raise ValueError(
        f"no run {run_id!r} in store {store.root!r}: give a run id that `dct run` printed (its last line) for this "
        "store, or the --store it ran with"
    )


def settings_from_run(store: ArtifactStore, run_id: str, dataset: str | None = None) -> RunSettings:
    """The exact settings of a finished run.

    Args:
        dataset: where the run's dataset is now (a registry name or dataset file), if not where the run
            found it (a moved dataset file, or a run recorded before runs kept their dataset's source).

    Raises:
        ValueError: no such run, a dataset that is not the run's, or a run whose dataset cannot be found.
        FileNotFoundError: the run's dataset file is gone (the message says to pass --dataset).
    """
    record = find_run_record(store, run_id)
    config = RunConfig.model_validate_json(record.config_json)
    # The run's files are where this store is now (it may have been copied from a local disk to S3).
    config = config.model_copy(update={"storage": config.storage.model_copy(update={"root": store.root})})
    source = dataset_source(dataset) if dataset else record.dataset_source
    if source is None:
        raise ValueError(
            f"run {run_id!r} does not record where its dataset {record.dataset!r} is defined (an older run); "
            f"pass --dataset with the registry name or dataset file it ran on"
        )
    try:
        spec = get_dataset(source)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"run {run_id!r} ran on dataset file {source!r}, which is gone; pass --dataset with where it is now"
        ) from None
    if spec.name != config.dataset:
        raise ValueError(
            f"run {run_id!r} is a run of dataset {config.dataset!r}, and --dataset {dataset or source!r} defines "
            f"{spec.name!r}; pass the run's dataset or leave --dataset out"
        )
    return RunSettings(spec=spec, config=config, source=source, run=record)


def resolve_settings(
    *, dataset: str | None, overrides: RunOverrides | None, store: str | None,
    run: str | Sequence[str] | None = None, overrides_given: str = "",
) -> RunSettings:
    """``--run`` (the run's settings) or ``--dataset`` + override flags: one rule for every command.

    Args:
        run: a run id, or several (a mixture of their tokens: :func:`mixture_settings`; the commands that draw
            images, `synthesize` and `augment-eval`, take it).
        overrides_given: the override flags as the user typed them, for the refusal when both are given.

    Raises:
        ValueError: ``--run`` together with override flags (the run's settings are exact), and as
            :func:`settings_from_run` / :func:`mixture_settings` / :func:`dct.run.plan.build_config`.
    """
    runs = [run] if isinstance(run, str) else list(run or [])
    if not runs:
        spec, config = build_config(dataset or "toy", overrides, store)
        return RunSettings(spec=spec, config=config, source=dataset_source(dataset or "toy"))
    if overrides is not None:
        named = " ".join(f"--run {r}" for r in runs)
        raise ValueError(
            f"{named} takes the run's own settings; drop {overrides_given or 'the override flags'}, or drop "
            "--run to name the settings by flags"
        )
    from dct.artifacts.store import open_store

    if len(runs) == 1:
        return settings_from_run(open_store(store), runs[0], dataset)
    return mixture_settings(open_store(store), runs, dataset)


def _first_difference(a, b, path: str = "") -> tuple[str, object, object] | None:
    """The first dotted path where two JSON-like values differ, with both values (None when equal)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(a.keys() | b.keys()):
            found = _first_difference(a.get(key), b.get(key), f"{path}.{key}" if path else key)
            if found is not None:
                return found
        return None
    return None if a == b else (path, a, b)


def mixture_settings(store: ArtifactStore, run_ids: Sequence[str], dataset: str | None = None) -> RunSettings:
    """The settings of a mixture: K ≥ 2 finished runs whose tokens one synthetic set draws from evenly.

    The runs must be independent draws of the same method: the same configuration except
    ``training.seed``, and optimisation seeds that do not overlap (a run's ``all_seeds``; so different tokens).

    Returns:
        The first run's settings with ``members`` = every run's, in the order given.

    Raises:
        ValueError: a run given twice, runs whose configurations differ in anything but the seed (the field is
            named), or runs with overlapping optimisation seeds; and as :func:`settings_from_run`.
    """
    seen = set()
    for run_id in run_ids:
        if run_id in seen:
            raise ValueError(f"--run {run_id!r} is given twice; a mixture takes different runs")
        seen.add(run_id)
    members = [settings_from_run(store, run_id, dataset) for run_id in run_ids]

    def comparable(m: RunSettings) -> dict:
        data = m.config.model_dump(mode="json", exclude={"storage"})
        data["training"].pop("seed")
        return data

    first = members[0]
    for other in members[1:]:
        found = _first_difference(comparable(first), comparable(other))
        if found is not None:
            path, va, vb = found
            raise ValueError(
                f"runs {first.run.run_id!r} and {other.run.run_id!r} differ in {path} ({va!r} vs {vb!r}); a mixture "
                "takes runs whose settings differ only in the optimisation seed (--seed): give runs of one "
                "configuration"
            )
    for i, m in enumerate(members):
        for other in members[i + 1 :]:
            shared = set(m.config.training.all_seeds) & set(other.config.training.all_seeds)
            if shared:
                raise ValueError(
                    f"runs {m.run.run_id!r} and {other.run.run_id!r} share optimisation seeds ({min(shared)}.."
                    f"{max(shared)}), so their tokens are not independent; give runs whose --seed values are at "
                    f"least {len(m.config.training.all_seeds)} apart"
                )
    return RunSettings(spec=first.spec, config=first.config, source=first.source, run=first.run,
                       members=tuple(members))


def check_run_token_key(settings: RunSettings, computed: str, revisions) -> None:
    """With ``--run``, the models here must give the run's ``token_key``, or its tokens are not theirs.

    Raises:
        ValueError: they give another key; the message names the run's model revisions and these.
    """
    run = settings.run
    if run is None or computed == run.token_key:
        return
    p = run.provenance
    raise ValueError(
        f"run {run.run_id!r} learned its tokens under token_key {run.token_key}, the models here give {computed} "
        f"(the run's diffusion revision {p.diffusion_revision!r}, here {revisions.diffusion!r}; its guide "
        f"{p.classifier_revision!r}, here {revisions.classifier!r}): restore the run's models (`dct models pull`) "
        "or learn the tokens again with `dct run`"
    )


def latest_other_run(store: ArtifactStore, config: RunConfig, token_key: str) -> tuple[str, RunOverrides | None] | None:
    """The dataset's latest run that learned its tokens under another ``token_key`` than ``token_key``, and the
    overrides that give its settings from ``config`` (None when no override flag can: other models or
    templates). None when there is no such run. For the hint of a command that found no tokens."""
    runs = read_results(store, "runs", dataset=config.dataset, columns=["run_id", "token_key", "started_at"])
    runs = runs[runs["token_key"] != token_key]
    if runs.empty:
        return None
    run_id = str(runs.sort_values("started_at").iloc[-1]["run_id"])
    record = read_run_record(store, config.dataset, run_id)
    if record is None:
        return run_id, None
    return run_id, RunOverrides.between(config, RunConfig.model_validate_json(record.config_json))
