"""Tiny random-weight models built from configs, shared by the tests (no hub, no network)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

WORDS = [
    "a",
    "photo",
    "of",
    "high",
    "resolution",
    "realistic",
    "image",
    "close-up",
    "red",
    "blue",
    "green",
    "circle",
    "square",
    "triangle",
    "tiger",
    "cat",
    "dog",
    "bird",
    "small",
    "large",
    "the",
]



def tiny_vae():
    """The VAE of the tiny SD and SDXL worlds (one definition for both)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=4,
        sample_size=16,
    )

def write_tiny_clip_vocab(directory: Path) -> tuple[Path, Path]:
    """A small CLIP BPE vocabulary: every byte character, with and without '</w>', plus whole WORDS."""
    from dct.toy.models import bytes_to_unicode  # CLIP's byte -> unicode map, defined once

    chars = list(bytes_to_unicode().values())
    vocab: list[str] = chars + [c + "</w>" for c in chars]
    merges: list[str] = []
    for word in WORDS:
        # Merge each word left to right into one token "word</w>".
        pieces = [*word[:-1], word[-1] + "</w>"]
        while len(pieces) > 1:
            merged = pieces[0] + pieces[1]
            rule = f"{pieces[0]} {pieces[1]}"
            if rule not in merges:
                merges.append(rule)
            if merged not in vocab:
                vocab.append(merged)
            pieces = [merged, *pieces[2:]]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    directory.mkdir(parents=True, exist_ok=True)
    vocab_file, merges_file = directory / "vocab.json", directory / "merges.txt"
    vocab_file.write_text(json.dumps({tok: i for i, tok in enumerate(dict.fromkeys(vocab))}))
    merges_file.write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return vocab_file, merges_file


def tiny_pipeline(tmp_dir: Path, *, seed: int = 0, scheduler: str = "ddim"):
    """A StableDiffusionPipeline of tiny random models: 8×8×4 latents, 16×16 images, hidden size 32."""
    from diffusers import (
        DDIMScheduler,
        PNDMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    vocab_file, merges_file = write_tiny_clip_vocab(tmp_dir / "tokenizer")
    tokenizer = CLIPTokenizer(vocab=str(vocab_file), merges=str(merges_file), model_max_length=32)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            max_position_embeddings=32,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=2,
        norm_num_groups=4,
    )
    vae = tiny_vae()
    sched_kwargs = dict(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000, steps_offset=1
    )
    if scheduler == "pndm":
        sched = PNDMScheduler(skip_prk_steps=True, **sched_kwargs)
    else:
        sched = DDIMScheduler(clip_sample=False, set_alpha_to_one=False, **sched_kwargs)
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=sched,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    for m in (pipe.unet, pipe.vae, pipe.text_encoder):
        m.requires_grad_(False)
        m.eval()
    return pipe


def tiny_sdxl_pipeline(tmp_dir: Path, *, seed: int = 0):
    """A StableDiffusionXLPipeline of tiny random models, from the configs of diffusers' own SDXL tests
    (``get_dummy_components``), with the two text encoders of DIFFERENT widths (32 and 40, as SDXL's 768 and
    1280) so a swapped encoder cannot go unnoticed: CLIPTextModel + CLIPTextModelWithProjection (pooled,
    projection 24), a UNet with ``addition_embed_type="text_time"`` (add_time_ids: 6 × 8 + 24 = 72 inputs),
    cross-attention over the concatenated 32 + 40 = 72 features; 8×8×4 latents, 16×16 images."""
    from diffusers import (
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    torch.manual_seed(seed)
    vocab_file, merges_file = write_tiny_clip_vocab(tmp_dir / "tokenizer")
    tokenizers = [
        CLIPTokenizer(vocab=str(vocab_file), merges=str(merges_file), model_max_length=32) for _ in range(2)
    ]

    def text_config(hidden: int) -> CLIPTextConfig:
        tok = tokenizers[0]
        return CLIPTextConfig(
            vocab_size=len(tok),
            hidden_size=hidden,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=3,
            max_position_embeddings=32,
            projection_dim=24,
            hidden_act="gelu",
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )

    text_encoder = CLIPTextModel(text_config(32))
    text_encoder_2 = CLIPTextModelWithProjection(text_config(40))
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 1),
        projection_class_embeddings_input_dim=6 * 8 + 24,
        cross_attention_dim=32 + 40,
        norm_num_groups=4,
    )
    vae = tiny_vae()
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1, timestep_spacing="leading"
    )
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizers[0],
        tokenizer_2=tokenizers[1],
        unet=unet,
        scheduler=scheduler,
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )
    for m in (pipe.unet, pipe.vae, pipe.text_encoder, pipe.text_encoder_2):
        m.requires_grad_(False)
        m.eval()
    return pipe


class TinyConvNet(nn.Module):
    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.GELU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(128, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def tiny_classifier(num_classes: int = 4, seed: int = 0):
    from dct.config import PreprocessConfig
    from dct.models.interface import ImageClassifier
    from dct.models.preprocess import DifferentiablePreprocess

    torch.manual_seed(seed)
    pre = DifferentiablePreprocess(PreprocessConfig(resize=16, crop=16, mean=(0.5,) * 3, std=(0.5,) * 3))
    return ImageClassifier(TinyConvNet(num_classes), pre, [f"class {i}" for i in range(num_classes)])


def tiny_run_config(**training):
    from dct.config import (
        ClassifierConfig,
        DiffusionConfig,
        EvaluationConfig,
        OptimizerConfig,
        RunConfig,
        SamplerConfig,
        TrainingConfig,
    )

    return RunConfig(
        dataset="tiny",
        diffusion=DiffusionConfig(model_id="tiny", dtype="float32"),
        sampler=SamplerConfig(scheduler="ddim", num_inference_steps=4, guidance_scale=3.0, timestep_spacing="trailing"),
        classifier=ClassifierConfig(kind="tiny", model_id="tiny"),
        optimizer=OptimizerConfig(lr=0.2, lr_scale="token_norm"),
        training=TrainingConfig(**{"images_per_epoch": 3, "max_epochs": 6, **training}),
        evaluation=EvaluationConfig(num_samples=4, seed=1000),
    )


TINY_CLASSES = ("red circle", "blue square", "green triangle", "small dog")


def save_tiny_world(directory: Path, *, max_epochs: int = 2, num_samples: int = 4, sdxl: bool = False) -> Path:
    """A user-defined dataset on disk: tiny pipeline + tiny timm classifier + a TOML dataset file.

    ``sdxl``: the pipeline is :func:`tiny_sdxl_pipeline` (two text encoders) instead of the SD one.
    Returns the dataset file's path; it goes through exactly the loaders that real models use.
    """
    import timm
    from timm.models._hub import save_for_hf

    directory.mkdir(parents=True, exist_ok=True)
    pipe = (tiny_sdxl_pipeline if sdxl else tiny_pipeline)(directory / "build")
    pipe.save_pretrained(directory / "pipeline")
    torch.manual_seed(1)
    clf = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        num_classes=len(TINY_CLASSES),
        img_size=16,
        patch_size=8,
        embed_dim=32,
        depth=1,
        num_heads=2,
    ).eval()
    save_for_hf(
        clf, str(directory / "guide"), model_config={"label_names": list(TINY_CLASSES)}, safe_serialization=True
    )
    names = ", ".join(f'"{n}"' for n in TINY_CLASSES)
    path = directory / "tiny.toml"
    path.write_text(
        f"""name = "tiny"
description = "tiny random-weight world for tests"
class_names = [{names}]
[classifier]
kind = "local"
model_id = "./guide"
licence = "test-only"
[classifier.preprocess]
resize = 16
crop = 16
mean = [0.5, 0.5, 0.5]
std = [0.5, 0.5, 0.5]
[diffusion]
model_id = "./pipeline"
dtype = "float32"
licence = "test-only"
[sampler]
scheduler = "ddim"
num_inference_steps = 3
guidance_scale = 3.0
timestep_spacing = "trailing"
[optimizer]
lr = 0.2
lr_scale = "token_norm"
[training]
images_per_epoch = 3
max_epochs = {max_epochs}
[evaluation]
num_samples = {num_samples}
seed = 1000
batch_size = 4
fid_features = "none"
"""
    )
    return path
