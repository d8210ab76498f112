"""Benchmark presets: random-weight models built from configs (no hub, no downloads).

- ``toy``: the toy world's architectures (the configs in ``dct.toy.models``), 32×32 images, its
  ResNet guide.
- ``mid``: Stable Diffusion's UNet/VAE/CLIP-text architecture (same block types, attention layout,
  77-token context, 49,408-row embedding table) scaled down in width and resolution (128×128 images,
  16×16 latents) so one epoch takes seconds on 2 CPU cores; a small ViT guide behind the reference's
  ImageNet preprocessing (resize 256 bicubic, crop 224). Sampler as the reference: 30 PNDM steps, CFG 7,
  gradients through the last two UNet evaluations.
- ``sd14`` / ``sd21-base``: the full-size SD 1.4 / SD 2.1-base architectures at 512×512 with a
  ViT-L/16 classifier (google/vit-large-patch16-224's architecture) — for GPUs.
- ``sdxl-base``: the full-size SDXL-base architecture (UNet with added text/time conditioning, CLIP ViT-L
  and OpenCLIP bigG text encoders, SDXL VAE) at 1024×1024 with the reference sampler — for GPUs;
  ``sdxl-turbo``: the same architecture (SDXL-Turbo's) at 512×512, one Euler step, no CFG, gradients
  through that one step — for GPUs.
- ``sdxl-mid``: SDXL's structure (two text encoders of different widths, pooled projection,
  add_time_ids, the SDXL UNet's block layout and transformer depths) scaled down like ``mid``, 128×128
  images, the reference sampler (30 PNDM steps, CFG 7, last two UNet evaluations) — for CPUs;
  ``sdxl-turbo-mid``: the same models with the turbo sampler (1 step, no CFG, grad_steps 1), to compare
  the per-update cost of a one-step model with ``mid``'s 30 steps.

Weights are random (seeded), so images are noise; the cost of every operation is the real one.
"""

from __future__ import annotations

import copy
import functools
import gzip
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dct.config import (
    ClassifierConfig,
    DiffusionConfig,
    EvaluationConfig,
    OptimizerConfig,
    PreprocessConfig,
    RunConfig,
    SamplerConfig,
    TrainingConfig,
)
from dct.models.interface import ImageClassifier
from dct.models.preprocess import PRESETS as PREPROCESS_PRESETS
from dct.models.preprocess import DifferentiablePreprocess

CLIP_VOCAB_SIZE = 49408  # rows of CLIP's embedding table in SD 1.x/2.x (the reference decays all of them)

# Stable Diffusion's own scheduler configuration (PNDM, skip_prk_steps), shared by SD 1.4 and 2.1-base.
SD_SCHEDULER = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    skip_prk_steps=True,
    set_alpha_to_one=False,
    steps_offset=1,
)
SD_VAE = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    sample_size=512,
)
SD14_UNET = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    cross_attention_dim=768,
    attention_head_dim=8,
)
SD21_UNET = {
    **SD14_UNET,
    "cross_attention_dim": 1024,
    "attention_head_dim": (5, 10, 20, 20),
    "use_linear_projection": True,
}
SD14_TEXT = dict(  # CLIP ViT-L/14 text tower
    hidden_size=768,
    intermediate_size=3072,
    num_attention_heads=12,
    num_hidden_layers=12,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    projection_dim=768,
)
SD21_TEXT = dict(  # OpenCLIP ViT-H/14 text tower, penultimate layer (23 of 24 layers kept, as SD 2.x ships it)
    hidden_size=1024,
    intermediate_size=4096,
    num_attention_heads=16,
    num_hidden_layers=23,
    max_position_embeddings=77,
    hidden_act="gelu",
    projection_dim=512,
)
VIT_L16 = dict(  # google/vit-large-patch16-224
    hidden_size=1024,
    num_hidden_layers=24,
    num_attention_heads=16,
    intermediate_size=4096,
    image_size=224,
    patch_size=16,
)

MID_UNET = {
    **SD14_UNET,
    "sample_size": 16,
    "block_out_channels": (32, 64, 128, 128),
    "cross_attention_dim": 128,
    "norm_num_groups": 16,
}
MID_VAE = {**SD_VAE, "block_out_channels": (16, 32, 64, 64), "norm_num_groups": 16, "sample_size": 128}
MID_TEXT = {
    **SD14_TEXT,
    "hidden_size": 128,
    "intermediate_size": 512,
    "num_attention_heads": 4,
    "num_hidden_layers": 4,
    "projection_dim": 128,
}
# SDXL-base 1.0 (stabilityai/stable-diffusion-xl-base-1.0's configs; SDXL-Turbo has the same architecture).
SDXL_UNET = dict(
    sample_size=128,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20),
    use_linear_projection=True,
    cross_attention_dim=2048,  # 768 (CLIP ViT-L) + 1280 (OpenCLIP bigG), concatenated
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,  # 6 time ids x 256 + the 1280-d pooled embedding
)
SDXL_VAE = {**SD_VAE, "sample_size": 1024, "scaling_factor": 0.13025, "force_upcast": True}
SDXL_TEXT = {**SD14_TEXT}  # CLIP ViT-L/14, penultimate layer used
SDXL_TEXT_2 = dict(  # OpenCLIP ViT-bigG/14 text tower with projection (its pooled output conditions the UNet)
    hidden_size=1280,
    intermediate_size=5120,
    num_attention_heads=20,
    num_hidden_layers=32,
    max_position_embeddings=77,
    hidden_act="gelu",
    projection_dim=1280,
)
SDXL_MID_UNET = {
    **SDXL_UNET,
    "sample_size": 16,
    "block_out_channels": (32, 64, 128),
    "transformer_layers_per_block": (1, 1, 2),
    "attention_head_dim": (2, 4, 8),
    "cross_attention_dim": 128 + 192,
    "addition_time_embed_dim": 16,
    "projection_class_embeddings_input_dim": 6 * 16 + 192,
    "norm_num_groups": 16,
}
SDXL_MID_TEXT_2 = {
    **SDXL_TEXT_2,
    "hidden_size": 192,
    "intermediate_size": 768,
    "num_attention_heads": 4,
    "num_hidden_layers": 6,
    "projection_dim": 192,
}
MID_VIT = {**VIT_L16, "hidden_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 512}

@dataclass(frozen=True)
class Preset:
    """Architectures (config kwargs of the library classes) and the method settings of one benchmark."""

    name: str
    unet: dict
    vae: dict
    text: dict
    classifier: dict  # {"kind": "vit", **ViTConfig kwargs} or {"kind": "toy-guide"}
    preprocess: PreprocessConfig
    sampler: SamplerConfig
    grad_steps: int
    num_classes: int = 1000
    images_per_epoch: int = 5
    scheduler: dict = field(default_factory=lambda: dict(SD_SCHEDULER))
    text_2: dict | None = None  # the second text encoder (with projection) of an SDXL-style pipeline

    @property
    def max_length(self) -> int:
        return int(self.text["max_position_embeddings"])

    def run_config(self, *, micro_batch_size: int | None = None, max_epochs: int = 50) -> RunConfig:
        """The RunConfig both loops share (reference optimiser settings; token lr as the reference's)."""
        return RunConfig(
            dataset="bench",
            diffusion=DiffusionConfig(model_id=f"random:{self.name}", dtype="auto"),
            sampler=self.sampler,
            classifier=ClassifierConfig(kind="random", model_id=f"random:{self.name}"),
            optimizer=OptimizerConfig(),
            training=TrainingConfig(
                images_per_epoch=self.images_per_epoch,
                grad_steps=self.grad_steps,
                max_epochs=max_epochs,
                accuracy_threshold=1.0,
                patience=max_epochs,
                micro_batch_size=micro_batch_size,
            ),
            evaluation=EvaluationConfig(seed=10_000),
        )


def _toy_preset() -> Preset:
    from dct.toy import models as toy  # part of the package: the toy world's own configs, not a copy

    guide = toy.CLASSIFIER_SPECS["guide"]
    unet, vae, text = dict(toy.UNET_CONFIG), dict(toy.VAE_CONFIG), dict(toy.TEXT_CONFIG)
    classifier = {"kind": "toy-guide", "spec": {k: v for k, v in guide.items() if k != "preprocess"}}
    preprocess = guide["preprocess"]
    return Preset(
        name="toy",
        unet=unet,
        vae=vae,
        text=text,
        classifier=classifier,
        preprocess=preprocess,
        sampler=SamplerConfig(scheduler="ddim", num_inference_steps=5, guidance_scale=3.0, timestep_spacing="trailing"),
        grad_steps=1,
        num_classes=10,
        scheduler=dict(
            num_train_timesteps=1000,
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            clip_sample=False,
            set_alpha_to_one=False,
            steps_offset=1,
            timestep_spacing="trailing",
        ),
    )


_REFERENCE_SAMPLER = SamplerConfig(scheduler="pndm", num_inference_steps=30, guidance_scale=7.0)
# SDXL-Turbo as the sdxl-turbo pipeline preset runs it (dct.models.pipelines.PRESET_SAMPLERS).
_TURBO_SAMPLER = SamplerConfig(
    scheduler="euler", num_inference_steps=1, guidance_scale=1.0, timestep_spacing="trailing", height=512, width=512
)
_TURBO_MID_SAMPLER = _TURBO_SAMPLER.model_copy(update={"height": 128, "width": 128})
_VIT_PRE = PREPROCESS_PRESETS["reference-imagenet-vit"]


def get_preset(name: str) -> Preset:
    """Look up a preset by name.

    Raises:
        ValueError: unknown name (the message lists the presets).
    """
    presets = {
        "toy": _toy_preset,
        "mid": lambda: Preset(
            "mid", MID_UNET, MID_VAE, MID_TEXT, {"kind": "vit", **MID_VIT}, _VIT_PRE, _REFERENCE_SAMPLER, grad_steps=2
        ),
        "sd14": lambda: Preset(
            "sd14", SD14_UNET, SD_VAE, SD14_TEXT, {"kind": "vit", **VIT_L16}, _VIT_PRE, _REFERENCE_SAMPLER, grad_steps=2
        ),
        "sd21-base": lambda: Preset(
            "sd21-base",
            SD21_UNET,
            SD_VAE,
            SD21_TEXT,
            {"kind": "vit", **VIT_L16},
            _VIT_PRE,
            _REFERENCE_SAMPLER,
            grad_steps=2,
        ),
        "sdxl-base": lambda: Preset(
            "sdxl-base", SDXL_UNET, SDXL_VAE, SDXL_TEXT, {"kind": "vit", **VIT_L16}, _VIT_PRE, _REFERENCE_SAMPLER,
            grad_steps=2, text_2=SDXL_TEXT_2,
        ),
        "sdxl-turbo": lambda: Preset(
            "sdxl-turbo", SDXL_UNET, SDXL_VAE, SDXL_TEXT, {"kind": "vit", **VIT_L16}, _VIT_PRE, _TURBO_SAMPLER,
            grad_steps=1, text_2=SDXL_TEXT_2,
        ),
        "sdxl-mid": lambda: Preset(
            "sdxl-mid", SDXL_MID_UNET, MID_VAE, MID_TEXT, {"kind": "vit", **MID_VIT}, _VIT_PRE, _REFERENCE_SAMPLER,
            grad_steps=2, text_2=SDXL_MID_TEXT_2,
        ),
        "sdxl-turbo-mid": lambda: Preset(
            "sdxl-turbo-mid", SDXL_MID_UNET, MID_VAE, MID_TEXT, {"kind": "vit", **MID_VIT}, _VIT_PRE,
            _TURBO_MID_SAMPLER, grad_steps=1, text_2=SDXL_MID_TEXT_2,
        ),
    }
    if name not in presets:
        raise ValueError(f"unknown preset {name!r}; valid presets: {', '.join(presets)}")
    return presets[name]()


PRESET_NAMES = ("toy", "mid", "sd14", "sd21-base", "sdxl-mid", "sdxl-turbo-mid", "sdxl-base", "sdxl-turbo")


# ------------------------------------------------------------------------------------------ builders


def clip_tokenizer(max_length: int):
    """CLIP's BPE tokenizer built locally: the full 49k merges when open_clip (which ships CLIP's BPE
    file) is installed, else byte-level pieces only. Either way the text encoder gets CLIP's 49,408
    embedding rows (see :func:`build_models`), so the embedding-table costs are the real ones.
    A fresh copy per call (variants add their own placeholder tokens)."""
    tok = copy.deepcopy(_clip_tokenizer())
    tok.model_max_length = max_length
    return tok


@functools.cache
def _clip_tokenizer():
    from transformers import CLIPTokenizer

    merges: list[tuple[str, str]] = []
    spec = importlib.util.find_spec("open_clip")
    if spec is not None and spec.submodule_search_locations:
        bpe = Path(next(iter(spec.submodule_search_locations))) / "bpe_simple_vocab_16e6.txt.gz"
        if bpe.is_file():
            with gzip.open(bpe, "rt", encoding="utf-8") as f:
                lines = f.read().split("\n")
            merges = [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]]
    from dct.toy.models import bytes_to_unicode  # CLIP's byte -> unicode map, defined once

    base = list(bytes_to_unicode().values())
    vocab_list = base + [b + "</w>" for b in base] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(vocab_list))}
    return CLIPTokenizer(vocab=vocab, merges=merges)


def _classifier(preset: Preset) -> ImageClassifier:
    spec = dict(preset.classifier)
    kind = spec.pop("kind")
    labels = [f"class {i}" for i in range(preset.num_classes)]
    if kind == "toy-guide":
        from dct.toy.models import build_classifier_model

        model = build_classifier_model(spec["spec"], preset.num_classes)
    else:
        from transformers import ViTConfig, ViTForImageClassification

        config = ViTConfig(num_labels=preset.num_classes, attn_implementation="sdpa", **spec)
        model = ViTForImageClassification(config)
    return ImageClassifier(model, DifferentiablePreprocess(preset.preprocess), labels)


def build_models(preset: Preset, *, seed: int = 0, device: torch.device | str = "cpu"):
    """``(pipe, classifier)``: a frozen fp32 ``StableDiffusionPipeline`` (``StableDiffusionXLPipeline`` when
    the preset has ``text_2``) and classifier with seeded random weights on ``device``; the same seed gives
    bit-identical weights."""
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        PNDMScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    tokenizer = clip_tokenizer(preset.max_length)

    def text_config(spec: dict) -> CLIPTextConfig:
        return CLIPTextConfig(
            vocab_size=max(CLIP_VOCAB_SIZE, len(tokenizer)),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            attn_implementation="sdpa",
            **spec,
        )

    sched_cls = PNDMScheduler if "skip_prk_steps" in preset.scheduler else DDIMScheduler
    with torch.device(device):  # initialise in place: full-size models build much faster on a GPU
        text_encoder = CLIPTextModel(text_config(preset.text))
        text_encoder_2 = CLIPTextModelWithProjection(text_config(preset.text_2)) if preset.text_2 else None
        unet = UNet2DConditionModel(**preset.unet)
        vae = AutoencoderKL(**preset.vae)
        classifier = _classifier(preset)
    if text_encoder_2 is not None:
        pipe = StableDiffusionXLPipeline(
            vae=vae,
            text_encoder=text_encoder,
            text_encoder_2=text_encoder_2,
            tokenizer=tokenizer,
            tokenizer_2=clip_tokenizer(preset.max_length),
            unet=unet,
            scheduler=sched_cls(**preset.scheduler),
            force_zeros_for_empty_prompt=True,
            add_watermarker=False,
        )
    else:
        pipe = StableDiffusionPipeline(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=sched_cls(**preset.scheduler),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    encoders = [pipe.text_encoder] + ([pipe.text_encoder_2] if text_encoder_2 is not None else [])
    for m in (pipe.unet, pipe.vae, *encoders, classifier):
        m.requires_grad_(False)
        m.eval()
    classifier.to(device)
    return pipe, classifier
