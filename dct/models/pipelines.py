"""Stable-Diffusion-style pipelines by spec: hub id or local directory, revision, variant, dtype.

Presets (``DiffusionConfig`` values, so a dataset can name them):

- ``sd14``: ``CompVis/stable-diffusion-v1-4``, the paper's results (CreativeML OpenRAIL-M);
- ``sd21-base``: ``stabilityai/stable-diffusion-2-1-base``, the authors' code default
  (CreativeML Open RAIL++-M);
- ``sdxl-base``: ``stabilityai/stable-diffusion-xl-base-1.0`` (CreativeML Open RAIL++-M), two text
  encoders, 1024² native;
- ``sdxl-turbo``: ``stabilityai/sdxl-turbo`` (Stability AI Non-Commercial Research Community License),
  distilled for 1–4 steps without classifier-free guidance at 512²; its sampler settings come with the
  preset (:data:`PRESET_SAMPLERS`).

A directory whose ``model_index.json`` lists ``text_encoder_2`` loads as ``StableDiffusionXLPipeline``
(the two-encoder structure); anything else as ``StableDiffusionPipeline``.

The use restrictions of those licences carry over to learned tokens and generated images; the licence
string travels in ``DiffusionConfig.licence`` into token metadata and the results table.

Loading never includes the safety checker (its images are scored by our classifiers, and a blacked-out
image would silently poison the loss). The scheduler is NOT chosen here: ``dct.method.sampling`` builds it
from ``SamplerConfig`` on top of the pipeline's scheduler config.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from dct.config import DiffusionConfig, SamplerConfig
from dct.models.hub import hub_snapshot, is_local_path, refuse_pickles, snapshot_revision

logger = logging.getLogger(__name__)

PIPELINE_PRESETS: dict[str, DiffusionConfig] = {
    "sd14": DiffusionConfig(model_id="CompVis/stable-diffusion-v1-4", licence="CreativeML OpenRAIL-M"),
    "sd21-base": DiffusionConfig(model_id="stabilityai/stable-diffusion-2-1-base", licence="CreativeML Open RAIL++-M"),
    "sdxl-base": DiffusionConfig(
        model_id="stabilityai/stable-diffusion-xl-base-1.0", licence="CreativeML Open RAIL++-M"
    ),
    "sdxl-turbo": DiffusionConfig(
        model_id="stabilityai/sdxl-turbo", licence="Stability AI Non-Commercial Research Community License"
    ),
}

# Sampler settings a preset brings along (a dataset file's own [sampler] keys override them). SDXL-Turbo is
# distilled for 1-4 steps without CFG at 512x512; one Euler step with trailing spacing starts from pure
# noise at the last training timestep (its own Euler-ancestral scheduler is the same at one step, and its
# noise draws would make later steps depend on a global RNG). With one step, the gradient goes through
# the whole sampling chain (grad_steps = 1 covers it).
PRESET_SAMPLERS: dict[str, SamplerConfig] = {
    "sdxl-turbo": SamplerConfig(
        scheduler="euler", num_inference_steps=1, guidance_scale=1.0, timestep_spacing="trailing", height=512, width=512
    ),
}
# Training settings a preset brings along (grad_steps cannot exceed the steps there are).
PRESET_TRAINING: dict[str, dict[str, int]] = {"sdxl-turbo": {"grad_steps": 1}}

# Components the DCT method uses; everything else in a repo (safety checker, full .ckpt files, EMA
# copies, other variants) is never downloaded.
COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "scheduler")
_WEIGHTED = ("unet", "vae", "text_encoder", "text_encoder_2")
_KNOWN_VARIANTS = ("fp16", "bf16", "ema", "non_ema")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class LoadedPipeline:
    pipe: object  # diffusers StableDiffusionPipeline
    resolved_revision: str  # hub commit SHA, or content hash of a local directory
    dtype: torch.dtype  # dtype of the UNet and VAE weights (the text encoder stays float32)


def resolve_pipeline_dtype(name: str, device: torch.device | str) -> torch.dtype:
    """'auto' → bfloat16 on CUDA where supported, float32 elsewhere; explicit names are honoured on CUDA.

    float16 is allowed but warned about: SD 2.x produces NaNs in fp16 when gradients flow through the
    UNet (DCT's training step), which is why 'auto' picks bfloat16.
    """
    device = torch.device(device)
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if name not in _DTYPES:
        raise ValueError(f"unknown dtype {name!r}; valid: auto, {', '.join(_DTYPES)}")
    if device.type == "cpu" and name != "float32":
        logger.warning("dtype %s on CPU is slow and poorly supported; using float32", name)
        return torch.float32
    return _DTYPES[name]


def pipeline_allow_patterns(variant: str | None) -> tuple[list[str], list[str]]:
    """(allow, ignore) hub file patterns for the pipeline's components, safetensors only."""
    allow = ["model_index.json"]
    for c in COMPONENTS:
        allow += [f"{c}/*.json", f"{c}/*.txt"]
        if c in _WEIGHTED:
            allow.append(f"{c}/*.{variant}.safetensors" if variant else f"{c}/*.safetensors")
    ignore = [] if variant else [f"*.{v}.*" for v in _KNOWN_VARIANTS]
    return allow, ignore


def _dtype_kwarg() -> str:
    """diffusers renamed ``torch_dtype`` to ``dtype`` (the old name now warns); older releases know only
    ``torch_dtype``. The rename shipped with ``diffusers.utils.deprecation_utils._resolve_dtype``."""
    import importlib

    try:
        module = importlib.import_module("diffusers.utils.deprecation_utils")
    except ModuleNotFoundError:
        return "torch_dtype"
    return "dtype" if hasattr(module, "_resolve_dtype") else "torch_dtype"


def _weights(folder: Path, variant: str | None) -> list[Path]:
    """The component's safetensors of ``variant`` (None = the non-variant files); a cached snapshot may
    hold several variants."""
    if variant:
        return sorted(folder.glob(f"*.{variant}.safetensors"))
    return [p for p in folder.glob("*.safetensors") if not any(f".{v}." in p.name for v in _KNOWN_VARIANTS)]


def _components(path: Path, names: tuple[str, ...]) -> list[str]:
    """The components of ``names`` that the pipeline at ``path`` has (its model_index.json lists them)."""
    import json

    index = json.loads((path / "model_index.json").read_text(encoding="utf-8"))
    return [c for c in names if c in ("unet", "vae", "text_encoder") or (index.get(c) or [None])[0] is not None]


def is_two_encoder(path: Path) -> bool:
    """Whether the diffusers pipeline at ``path`` has a second text encoder (SDXL structure)."""
    return "text_encoder_2" in _components(path, ("text_encoder_2",))


def resolve_pipeline_dir(config: DiffusionConfig, *, local_files_only: bool | None = None) -> Path:
    """A local directory with the pipeline's components: the user's directory, or a hub snapshot.

    Raises:
        ModelNotAvailableError (a ValueError): not cached and the hub unreachable / HF_HUB_OFFLINE=1.
        ValueError: a pickle-only local directory, or no model_index.json.
    """
    if is_local_path(config.model_id):
        path = Path(config.model_id).expanduser().resolve()
        if not path.is_dir():
            raise FileNotFoundError(f"diffusion model directory {str(path)!r} does not exist")
        refuse_pickles(path)
    else:
        allow, ignore = pipeline_allow_patterns(config.variant)
        path = hub_snapshot(
            config.model_id, config.revision, allow, ignore_patterns=ignore, local_files_only=local_files_only
        )
    if not (path / "model_index.json").is_file():
        raise ValueError(f"{config.model_id!r} is not a diffusers pipeline (no model_index.json in {str(path)!r})")
    missing = [c for c in _components(path, _WEIGHTED) if not _weights(path / c, config.variant)]
    if missing:
        raise ValueError(
            f"{config.model_id!r} has no safetensors weights for {missing}"
            f"{f' in variant {config.variant!r}' if config.variant else ''}; pick another revision/variant"
        )
    return path


def load_pipeline(
    config: DiffusionConfig, device: torch.device | str = "cpu", *, local_files_only: bool | None = None
) -> LoadedPipeline:
    """Load a Stable-Diffusion-style pipeline, frozen, without safety checker, on ``device``.

    Args:
        config: model id (hub or local directory), revision, variant, dtype.
        device: target device.
        local_files_only: never contact the hub (also implied by ``HF_HUB_OFFLINE=1``).

    Returns:
        the pipeline (UNet/VAE in the resolved dtype, text encoder float32 because the learned token
        lives in its embedding table), the resolved revision, and the dtype.

    Raises:
        ModelNotAvailableError (a ValueError): model not cached and the hub unreachable; the message
            names the model id and ``dct models pull``.
        ValueError: not a diffusers pipeline, pickle-only weights, unknown dtype.
    """
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    dtype = resolve_pipeline_dtype(config.dtype, device)
    if dtype == torch.float16 and "stable-diffusion-2" in config.model_id:
        logger.warning(
            "float16 with %s is known to produce NaNs when training embeddings; prefer dtype 'auto' (bfloat16)",
            config.model_id,
        )
    path = resolve_pipeline_dir(config, local_files_only=local_files_only)
    two = is_two_encoder(path)
    vae_dtype = dtype
    if two and dtype == torch.float16:
        # The SDXL VAE overflows in fp16 (NaN/black images; the SDXL pipeline upcasts it): keep it float32
        # unless the config names a VAE fixed for fp16 (e.g. madebyollin/sdxl-vae-fp16-fix) in its place.
        logger.warning("float16 with the SDXL VAE overflows; its VAE stays float32 (prefer dtype 'auto' = bfloat16)")
        vae_dtype = torch.float32
    if two:
        cls, extra = StableDiffusionXLPipeline, {"add_watermarker": False}
    else:
        cls = StableDiffusionPipeline
        extra = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
    pipe = cls.from_pretrained(
        path,
        # Per-component dtypes at load time (diffusers >= 0.33), so modules the model wants in float32
        # stay there; the text encoders are float32 because the learned token lives in their embeddings.
        **{_dtype_kwarg(): {"unet": dtype, "vae": vae_dtype, "default": torch.float32}},
        variant=config.variant,
        use_safetensors=True,
        local_files_only=True,  # everything is in `path` already
        **extra,
    )
    encoders = [pipe.text_encoder] + ([pipe.text_encoder_2] if two else [])
    for module in (pipe.unet, pipe.vae, *encoders):
        module.requires_grad_(False)
        module.eval()
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return LoadedPipeline(pipe=pipe, resolved_revision=snapshot_revision(path), dtype=dtype)
