"""Run configuration: one frozen pydantic model per concern, composed into :class:`RunConfig`.

The canonical JSON of the parts that decide an artifact hashes to a short key (``token_key`` /
``eval_key``, see docs/design.md "Names and keys"). Keys must be stable across processes and machines,
so they are computed from ``model_dump(mode="json")`` with sorted keys and no whitespace.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    field_validator,
    model_validator,
)

# Bump by hand whenever the optimisation method changes in a way that changes the learned token for the
# same settings (loss, loop order, noise construction, ...). It is part of every token_key.
ALGORITHM_VERSION = 1

# The reference implementation's prompt templates (DCT code, "prompts" list); the placeholder is
# substituted first, then the class name is appended.
REFERENCE_TEMPLATES: tuple[str, ...] = (
    "A photo of {}",
    "a high resolution realistic image of {}",
    "A close-up photo of a {}",
)

Dtype = Literal["auto", "float32", "bfloat16", "float16"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DiffusionConfig(_Frozen):
    """Which Stable-Diffusion-style pipeline to load."""

    model_id: str = Field(description="diffusers hub id (e.g. 'CompVis/stable-diffusion-v1-4') or a local directory")
    revision: str | None = Field(default=None, description="hub revision (branch, tag or commit SHA); None = 'main'")
    variant: str | None = Field(default=None, description="diffusers weight variant, e.g. 'fp16'")
    dtype: Dtype = Field(
        default="auto",
        description="weights/autocast dtype; 'auto' = bfloat16 on CUDA where supported, float32 on CPU",
    )
    licence: str = Field(default="unknown", description="licence of the model, carried into token metadata")


class SamplerConfig(_Frozen):
    """Denoising settings, shared by optimisation and evaluation (the reference evaluated with other ones)."""

    scheduler: Literal["pipeline", "pndm", "ddim", "euler", "dpm"] = Field(
        default="pndm", description="sampler; 'pipeline' keeps the pipeline's own scheduler"
    )
    num_inference_steps: PositiveInt = Field(default=30, description="denoising steps")
    guidance_scale: float = Field(default=7.0, ge=1.0, description="classifier-free guidance scale (1 = no CFG)")
    timestep_spacing: Literal["leading", "trailing", "linspace"] | None = Field(
        default=None, description="override of the scheduler's timestep spacing; None keeps the scheduler's"
    )
    height: PositiveInt | None = Field(
        default=None, description="image height in pixels; None = the UNet's native size"
    )
    width: PositiveInt | None = Field(default=None, description="image width in pixels; None = the UNet's native size")


class PreprocessConfig(_Frozen):
    """Differentiable classifier preprocessing (tensor ops only, so gradients reach the token)."""

    resize: PositiveInt = Field(description="shorter side after resizing, pixels")
    crop: PositiveInt = Field(description="centre-crop size, pixels (square)")
    mean: tuple[float, float, float] = Field(description="per-channel mean subtracted after scaling to [0, 1]")
    std: tuple[float, float, float] = Field(description="per-channel std divided after mean subtraction")
    interpolation: Literal["bilinear", "bicubic", "nearest"] = Field(default="bicubic", description="resize filter")
    antialias: bool = Field(default=True, description="antialias when downsampling (as PIL does)")

    @model_validator(mode="after")
    def _crop_fits(self) -> PreprocessConfig:
        if self.crop > self.resize:
            raise ValueError(f"crop={self.crop!r} is larger than resize={self.resize!r}; set crop <= resize")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std={self.std!r} must be positive in every channel")
        return self


class ClassifierConfig(_Frozen):
    """A frozen image classifier (the guide, or a held-out evaluator)."""

    kind: str = Field(
        description="loader kind, a key of dct.models.classifiers.CLASSIFIER_LOADERS (e.g. 'hf', 'timm', 'toy')"
    )
    model_id: str = Field(description="hub id, timm name or local path, depending on kind")
    revision: str | None = Field(default=None, description="hub revision; None = 'main'")
    preprocess: PreprocessConfig | None = Field(
        default=None, description="preprocessing; None = derived from the model's own configuration"
    )
    licence: str = Field(default="unknown", description="licence of the model, carried into metadata and tables")


class TokenConfig(_Frozen):
    """The learned placeholder token."""

    initializer_token: str = Field(
        default="a", description="existing single token whose embedding initialises the vector"
    )
    placeholder_template: str = Field(
        default="<dct-{dataset}-{class_id:05d}>",
        description="token string per class; must contain {dataset} and {class_id} so it is unique and stable",
    )
    num_vectors: PositiveInt = Field(
        default=1,
        le=16,
        description="embedding vectors per token (sub-tokens <tok>, <tok>_1, ... as diffusers' loader names them); "
        "each takes one of the text encoder's 77 positions",
    )

    @model_validator(mode="after")
    def _unique(self) -> TokenConfig:
        for field in ("{dataset", "{class_id"):
            if field not in self.placeholder_template:
                raise ValueError(
                    f"placeholder_template={self.placeholder_template!r} lacks {field}}}: tokens of different "
                    "classes or datasets would collide in one pipeline"
                )
        return self


class OptimizerConfig(_Frozen):
    """AdamW on the token vector only (reference: lr 1.25e-3, betas (0.9, 0.999), wd 1e-2, eps 1e-8, clip 1.0)."""

    lr: PositiveFloat = Field(default=1.25e-3, description="learning rate (absolute, or × token norm; see lr_scale)")
    lr_scale: Literal["absolute", "token_norm"] = Field(
        default="absolute",
        description="'token_norm' multiplies lr by the initial token's L2 norm (for tiny text encoders)",
    )
    lr_schedule: Literal["constant", "cosine"] = Field(
        default="constant", description="per-update schedule over max_epochs"
    )
    betas: tuple[float, float] = Field(default=(0.9, 0.999), description="AdamW betas")
    weight_decay: float = Field(default=1e-2, ge=0.0, description="decoupled weight decay on the token only")
    eps: PositiveFloat = Field(default=1e-8, description="AdamW epsilon")
    max_grad_norm: PositiveFloat | None = Field(
        default=1.0, description="gradient-norm clip after backward; None = off"
    )


class TrainingConfig(_Frozen):
    """One epoch = ``images_per_epoch`` generated images = one update; stopping as in the reference."""

    images_per_epoch: PositiveInt = Field(default=5, description="images (prompt, seed pairs) per update")
    seed: NonNegativeInt = Field(
        default=0, description="first optimisation noise seed: image i of every epoch uses noise seed `seed + i` "
        "(seed_schedule 'fixed')"
    )
    seed_schedule: Literal["fixed", "fresh"] = Field(
        default="fixed",
        description="'fixed': the same images_per_epoch noise seeds every epoch (the authors' code); 'fresh': "
        "epoch e uses seeds `seed + e * images_per_epoch + i`, new noise every update",
    )
    max_epochs: PositiveInt = Field(default=50, description="upper bound on updates")
    accuracy_threshold: float = Field(
        default=0.7, ge=0.0, le=1.0, description="stop once an epoch's guide accuracy is strictly above this"
    )
    patience: PositiveInt = Field(default=16, description="stop after this many updates without a better epoch loss")
    grad_steps: PositiveInt = Field(
        default=1,
        description="number of final UNet evaluations that carry gradients (1 = the paper's text; 2 = the "
        "authors' code with PNDM, whose N + 1 timesteps make its last step two evaluations; the real-model "
        "datasets use 2)",
    )
    micro_batch_size: PositiveInt | None = Field(
        default=None, description="images per forward/backward; None = the whole epoch in one batch"
    )
    restarts: NonNegativeInt = Field(
        default=0,
        description="extra attempts after a stalled one, attempt k on the next seed block (0 = reference behaviour)",
    )
    restart_below: float = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        description="an attempt has stalled when its best-loss epoch's guide accuracy is below this",
    )

    @property
    def seeds(self) -> tuple[int, ...]:
        """The first attempt's seeds (the only ones unless a restart happens)."""
        return self.attempt_seeds(0)

    @property
    def attempt_block(self) -> int:
        """Seeds one attempt may use: ``images_per_epoch`` ('fixed'), one block per epoch ('fresh')."""
        return self.images_per_epoch * (self.max_epochs if self.seed_schedule == "fresh" else 1)

    def attempt_seeds(self, attempt: int) -> tuple[int, ...]:
        """Every seed attempt ``attempt`` may use: the ``attempt``-th block of :attr:`attempt_block` seeds after
        ``seed``."""
        first = self.seed + attempt * self.attempt_block
        return tuple(range(first, first + self.attempt_block))

    def epoch_seeds(self, attempt: int, epoch: int) -> tuple[int, ...]:
        """The ``images_per_epoch`` noise seeds of one epoch (image i uses the i-th): the attempt's seeds every
        epoch ('fixed'), the epoch's own block of them ('fresh')."""
        first = self.seed + attempt * self.attempt_block
        if self.seed_schedule == "fresh":
            first += epoch * self.images_per_epoch
        return tuple(range(first, first + self.images_per_epoch))

    @property
    def all_seeds(self) -> tuple[int, ...]:
        """Every seed an optimisation may use, restarts included ('fresh': every epoch's, up to max_epochs)."""
        return tuple(range(self.seed, self.seed + (self.restarts + 1) * self.attempt_block))


class PromptConfig(_Frozen):
    """Prompt templates; image i of an epoch uses template i mod len(templates) (fixed pairs)."""

    templates: tuple[str, ...] = Field(default=REFERENCE_TEMPLATES, min_length=1, description="each with one '{}'")
    baseline_word: str = Field(
        default="a",
        description="word in place of the token for the baseline prompt, unless the slot follows an article "
        "(then the slot is dropped; dct.config.fill_baseline)",
    )

    @model_validator(mode="after")
    def _one_slot(self) -> PromptConfig:
        for t in self.templates:
            if t.count("{}") != 1:
                raise ValueError(f"prompt template {t!r} must contain exactly one '{{}}' for the token")
        return self


class EvaluationConfig(_Frozen):
    """Sampling and scoring after optimisation; seeds are disjoint from the optimisation seeds."""

    num_samples: PositiveInt = Field(default=16, description="images per class and variant (baseline, dct)")
    seed: NonNegativeInt = Field(default=10_000, description="sample j uses seed `seed + j`")
    batch_size: PositiveInt = Field(default=16, description="images per generation batch")
    evaluator: ClassifierConfig | None = Field(default=None, description="held-out classifier; None = guide only")
    sample_format: Literal["png", "jpeg", "none"] = Field(default="png", description="how samples are stored")
    fid_features: Literal["inception", "evaluator", "none"] = Field(default="evaluator", description="FID/KID features")
    nearest_k: PositiveInt = Field(
        default=5,
        description="k of the k-nearest-neighbour balls of the per-class precision/recall/density/coverage "
        "(computed from the FID/KID features; each set needs at least k + 1 images)",
    )

    @property
    def seeds(self) -> tuple[int, ...]:
        return tuple(self.seed + j for j in range(self.num_samples))


class StorageConfig(_Frozen):
    """Where artifacts go. Credentials are never configured here (environment / Secret blocks only)."""

    root: str | None = Field(default=None, description="fsspec root URI; None = $DCT_STORE, else ./dct-store")
    endpoint_url: str | None = Field(default=None, description="S3 endpoint; None = $AWS_ENDPOINT_URL_S3 / default")
    path_style: bool = Field(default=False, description="S3 path-style addressing (MinIO/Ceph behind one DNS name)")


class RunConfig(_Frozen):
    """Everything that decides one dataset run."""

    dataset: str = Field(description="dataset registry name")
    diffusion: DiffusionConfig
    sampler: SamplerConfig = SamplerConfig()
    classifier: ClassifierConfig
    token: TokenConfig = TokenConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    training: TrainingConfig = TrainingConfig()
    prompts: PromptConfig = PromptConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    storage: StorageConfig = StorageConfig()

    @model_validator(mode="after")
    def _seeds_disjoint(self) -> RunConfig:
        opt, ev = set(self.training.all_seeds), set(self.evaluation.seeds)
        if opt & ev:
            raise ValueError(
                f"evaluation seeds {min(ev)}..{max(ev)} overlap the optimisation seeds {min(opt)}..{max(opt)}; "
                "move evaluation.seed past the optimisation seeds"
            )
        if self.training.grad_steps > self.sampler.num_inference_steps + 1:
            raise ValueError(
                f"grad_steps={self.training.grad_steps!r} exceeds the number of UNet evaluations "
                f"(num_inference_steps={self.sampler.num_inference_steps}); lower grad_steps"
            )
        return self

    def token_string(self, class_id: int) -> str:
        return self.token.placeholder_template.format(dataset=self.dataset, class_id=class_id)


def canonical_json(obj: Any) -> str:
    """Deterministic JSON (sorted keys, no whitespace) of a pydantic model or plain data."""
    if isinstance(obj, BaseModel):
        obj = obj.model_dump(mode="json")
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def short_hash(obj: Any, length: int = 16) -> str:
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:length]


ResolvedRevision = Annotated[str, Field(description="commit SHA of a hub model, or a content hash of a local one")]


def _training_fields_outside_token_key(training: TrainingConfig) -> set[str]:
    """Training fields that do not change the learned token: micro-batching (same gradient), and the
    restart settings while restarts are off (so turning the feature's defaults around keeps old keys). A setting
    added later stays out at its default, so the keys from before it existed stay valid: ``seed_schedule``
    'fixed' is what every token was optimised with before the setting existed."""
    outside = {"micro_batch_size"} | ({"restarts", "restart_below"} if training.restarts == 0 else set())
    return outside | ({"seed_schedule"} if training.seed_schedule == "fixed" else set())


def model_identity(model_id: str, revision: ResolvedRevision | None) -> str:
    """What names a model in a key: its id, except for a local directory, which its content hash names.

    A local directory's revision is a content hash (``sha256:…``) of its weights and configs; its path is where
    this checkout or worker happens to keep it. Keying on the path made the toy world's keys differ between
    two clones (and between a parent and a worker with another code directory), so the same token was
    optimised twice and a parent could not find its workers' records.
    """
    return "local directory" if revision is not None and revision.startswith("sha256:") else model_id


def token_key(config: RunConfig, diffusion_revision: ResolvedRevision, classifier_revision: ResolvedRevision) -> str:
    """Hash of everything that determines a learned token (docs/design.md, "Names and keys").

    The resolved revisions are passed in because they are facts about the loaded models (a hub SHA or
    a content hash of a local directory), not configuration.
    """
    return short_hash(
        {
            "algorithm_version": ALGORITHM_VERSION,
            "dataset": config.dataset,
            "diffusion": {
                "model_id": model_identity(config.diffusion.model_id, diffusion_revision),
                "revision": diffusion_revision,
                "variant": config.diffusion.variant,
                "dtype": config.diffusion.dtype,
            },
            "classifier": {
                "kind": config.classifier.kind,
                "model_id": model_identity(config.classifier.model_id, classifier_revision),
                "revision": classifier_revision,
                "preprocess": canonical_json(config.classifier.preprocess),
            },
            "sampler": config.sampler.model_dump(mode="json"),
            # num_vectors enters the key only when it is not 1, so one-vector keys are those from before it existed.
            "token": config.token.model_dump(
                mode="json", exclude={"num_vectors"} if config.token.num_vectors == 1 else None
            ),
            "optimizer": config.optimizer.model_dump(mode="json"),
            "training": config.training.model_dump(
                mode="json", exclude=_training_fields_outside_token_key(config.training)
            ),
            "prompts": config.prompts.model_dump(mode="json"),
        }
    )


def _evaluation_identity(ev: EvaluationConfig, evaluator_revision: ResolvedRevision | None) -> dict[str, Any]:
    # nearest_k only changes numbers the parent computes from stored features: samples and records stay valid.
    out = ev.model_dump(mode="json", exclude={"batch_size", "nearest_k"})
    if out["evaluator"] is not None:
        out["evaluator"]["model_id"] = model_identity(out["evaluator"]["model_id"], evaluator_revision)
    return out


def eval_key(config: RunConfig, tkey: str, evaluator_revision: ResolvedRevision | None) -> str:
    """``token_key`` + the evaluation settings; changing evaluation never re-optimises."""
    ev = config.evaluation
    decided: dict[str, Any] = {
        "token_key": tkey,
        "evaluation": _evaluation_identity(ev, evaluator_revision),
        "evaluator_revision": evaluator_revision,
    }
    if baseline_differs_from_word(config.prompts):  # the baseline images are decided here, not by the token
        word = config.prompts.baseline_word
        decided["baseline_prompts"] = [fill_baseline(t, word, "{class}") for t in config.prompts.templates]
    return short_hash(decided)


class RunOverrides(_Frozen):
    """Flow-parameter overrides of a dataset's method settings (Prefect validates them; None = keep).

    Model ids are deliberately absent: models are decided by the dataset (registry or dataset file),
    so a run's table rows always name the models that a dataset means.
    """

    max_epochs: PositiveInt | None = Field(default=None, description="upper bound on updates per class")
    images_per_epoch: PositiveInt | None = Field(default=None, description="images per update")
    seed: NonNegativeInt | None = Field(
        default=None, description="optimisation noise seed (image i of every epoch uses seed + i): another token"
    )
    seed_schedule: Literal["fixed", "fresh"] | None = Field(
        default=None, description="'fixed' noise seeds every epoch, or 'fresh' ones (epoch e: seed + e * "
        "images_per_epoch + i)"
    )
    grad_steps: PositiveInt | None = Field(default=None, description="final UNet evaluations with gradients")
    micro_batch_size: PositiveInt | None = Field(default=None, description="images per forward/backward")
    num_inference_steps: PositiveInt | None = Field(default=None, description="denoising steps")
    guidance_scale: float | None = Field(default=None, ge=1.0, description="classifier-free guidance scale")
    lr: PositiveFloat | None = Field(default=None, description="token learning rate (see OptimizerConfig.lr_scale)")
    num_samples: PositiveInt | None = Field(default=None, description="evaluation images per class and variant")
    eval_batch_size: PositiveInt | None = Field(default=None, description="images per evaluation batch")
    sample_format: Literal["png", "jpeg", "none"] | None = Field(default=None, description="stored sample format")
    num_vectors: PositiveInt | None = Field(
        default=None, le=16, description="embedding vectors per class token (TokenConfig.num_vectors)"
    )
    initializer_token: str | None = Field(
        default=None, min_length=1, description="existing one-token word whose embedding initialises the token"
    )

    def apply(self, config: RunConfig) -> RunConfig:
        """A new, re-validated RunConfig with these overrides (the input is never mutated)."""
        data = config.model_dump()
        for field, value in self.model_dump(exclude_none=True).items():
            section, key = OVERRIDE_PATHS[field]
            data[section][key] = value
        return RunConfig.model_validate(data)

    @classmethod
    def between(cls, base: RunConfig, target: RunConfig) -> RunOverrides | None:
        """The overrides that turn ``base`` into ``target`` (empty when they are equal), or None when they
        differ in something no override sets (another model, other templates): how a command says which
        flags reproduce a run's settings."""
        a, b = base.model_dump(mode="json"), target.model_dump(mode="json")
        settable = {path: field for field, path in OVERRIDE_PATHS.items()}
        given = {}
        for section in a:
            if section == "storage":
                continue
            if not isinstance(a[section], dict):
                if a[section] != b[section]:
                    return None
                continue
            for key in a[section].keys() | b[section].keys():
                if a[section].get(key) != b[section].get(key):
                    if (section, key) not in settable:
                        return None
                    given[settable[section, key]] = b[section].get(key)
        return cls(**given)


# Where each override lands in the RunConfig: (section, field).
OVERRIDE_PATHS: dict[str, tuple[str, str]] = {
    "max_epochs": ("training", "max_epochs"),
    "images_per_epoch": ("training", "images_per_epoch"),
    "seed": ("training", "seed"),
    "seed_schedule": ("training", "seed_schedule"),
    "grad_steps": ("training", "grad_steps"),
    "micro_batch_size": ("training", "micro_batch_size"),
    "num_inference_steps": ("sampler", "num_inference_steps"),
    "guidance_scale": ("sampler", "guidance_scale"),
    "lr": ("optimizer", "lr"),
    "num_vectors": ("token", "num_vectors"),
    "initializer_token": ("token", "initializer_token"),
    "num_samples": ("evaluation", "num_samples"),
    "eval_batch_size": ("evaluation", "batch_size"),
    "sample_format": ("evaluation", "sample_format"),
}
assert set(OVERRIDE_PATHS) == set(RunOverrides.model_fields), "every override names its place in RunConfig"


# The one prompt builder: optimisation, evaluation, generation and the report all call these two.
def fill_template(template: str, word: str, class_name: str) -> str:
    """Reference prompt construction: the template formatted with the token (or word), class name appended."""
    return f"{template.format(word)} {class_name}"


def epoch_prompts(templates: Sequence[str], word: str, class_name: str, n: int) -> list[str]:
    """Prompt of image i = template ``i mod len(templates)`` (fixed noise↔prompt pairs, unlike the reference).

    ``word`` is the class token (for the baseline images use :func:`baseline_prompts`).
    """
    return [fill_template(templates[i % len(templates)], word, class_name) for i in range(n)]


# A template whose slot already follows one of these reads right with the slot simply removed.
_ARTICLES = frozenset({"a", "an", "the"})


def fill_baseline(template: str, baseline_word: str, class_name: str) -> str:
    """The baseline prompt of a template: what the DCT prompt says without the token (docs/design.md, "Prompts").

    The slot takes ``baseline_word`` ("A photo of {}" → "A photo of a tench"), except where the word before
    the slot is already an article, or ``baseline_word`` is empty: then the slot is removed and the spaces
    around it collapse ("A close-up photo of a {}" → "A close-up photo of a tench", never "… of a a tench").
    """
    before, after = template.split("{}")
    words = before.split()
    if baseline_word.strip() and not (words and words[-1].lower() in _ARTICLES):
        return fill_template(template, baseline_word, class_name)
    text = " ".join(part for part in (before.rstrip(), after.lstrip()) if part)
    return f"{text} {class_name}" if text else class_name


def baseline_prompts(templates: Sequence[str], baseline_word: str, class_name: str, n: int) -> list[str]:
    """The baseline images' prompts, paired with the same templates (and so seeds) as :func:`epoch_prompts`."""
    return [fill_baseline(templates[i % len(templates)], baseline_word, class_name) for i in range(n)]


def baseline_differs_from_word(prompts: PromptConfig) -> bool:
    """True when some template's baseline drops the slot instead of filling it with the baseline word (the
    construction before :func:`fill_baseline`); ``eval_key`` then hashes the baseline templates, so samples
    made with the old baseline are never read as the new one, while every other key stays as it was."""
    return any(
        fill_baseline(t, prompts.baseline_word, "X") != fill_template(t, prompts.baseline_word, "X")
        for t in prompts.templates
    )


_UNSAFE = re.compile(r"[/\\\x00-\x1f\x7f]")


def validate_class_name(name: str) -> str:
    """A class name must be non-empty, stripped, and safe as a path component.

    Raises:
        ValueError: the offending name and why.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"class name {name!r} is empty")
    if name != name.strip():
        raise ValueError(f"class name {name!r} has leading/trailing whitespace")
    if name in (".", "..") or _UNSAFE.search(name):
        raise ValueError(f"class name {name!r} is not safe as a path component (no '/', '\\', control chars, '..')")
    if len(name) > 200:
        raise ValueError(f"class name {name[:40]!r}... is longer than 200 characters")
    return name


class DatasetSpec(BaseModel):
    """Everything a dataset decides. Method settings default to the paper's and may be overridden per dataset."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(
        pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$", description="registry name, used in token strings and keys"
    )
    description: str = ""
    licence: str = Field(default="unknown", description="terms of the dataset's images/labels (reference set, names)")
    class_names: tuple[str, ...] = Field(min_length=1, description="prompt name per class id (0-based, unique)")
    classifier: ClassifierConfig
    evaluator: ClassifierConfig | None = None
    diffusion: DiffusionConfig
    prompts: PromptConfig = PromptConfig()
    sampler: SamplerConfig = SamplerConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    training: TrainingConfig = TrainingConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    token: TokenConfig = TokenConfig()
    reference_images: str | None = Field(default=None, description="URI/dir of real images for FID, or None")

    @field_validator("class_names")
    @classmethod
    def _names_unique_and_safe(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        seen: dict[str, int] = {}
        for i, n in enumerate(names):
            validate_class_name(n)
            key = n.lower()
            if key in seen:
                raise ValueError(f"class name {n!r} is used by class ids {seen[key]} and {i}; names must be unique")
            seen[key] = i
        return names

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def run_config(self, storage: StorageConfig | None = None) -> RunConfig:
        """The dataset's run configuration (a dataset file's ``[token]`` section included); overrides are
        :meth:`RunOverrides.apply`'s job."""
        evaluation = self.evaluation
        if evaluation.evaluator is None and self.evaluator is not None:
            evaluation = evaluation.model_copy(update={"evaluator": self.evaluator})
        return RunConfig(
            dataset=self.name,
            diffusion=self.diffusion,
            sampler=self.sampler,
            classifier=self.classifier,
            token=self.token,
            optimizer=self.optimizer,
            training=self.training,
            prompts=self.prompts,
            evaluation=evaluation,
            storage=storage or StorageConfig(),
        )

    def models(self) -> list[ClassifierConfig | DiffusionConfig]:
        """Every model this dataset needs (diffusion, classifier, evaluator), for ``dct models pull``."""
        evaluator = self.evaluation.evaluator or self.evaluator
        return [self.diffusion, self.classifier, *([evaluator] if evaluator else [])]
