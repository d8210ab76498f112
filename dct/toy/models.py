"""Builders of the toy world's models from configs, and the ``toy`` classifier loader.

The text-to-image pipeline uses the same library classes as Stable Diffusion (diffusers
``UNet2DConditionModel`` / ``AutoencoderKL`` / ``DDIMScheduler``, transformers ``CLIPTextModel`` /
``CLIPTokenizer``), only tiny: 32×32 RGB images, 8×8×4 latents, a 64-wide 2-layer text encoder.
The tokenizer is the real CLIP BPE restricted to the merges that the toy captions need (any other
word still tokenizes, into characters), which keeps the embedding table ~1k rows instead of 49k.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import re
from pathlib import Path

import timm
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from dct.config import ClassifierConfig, PreprocessConfig
from dct.models.interface import ImageClassifier, LoadedClassifier
from dct.models.preprocess import DifferentiablePreprocess

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


# The layout of a weights directory: the shipped one, and every `python -m dct.toy.train --out DIR`.
def pipeline_dir(weights_dir: Path) -> Path:
    return weights_dir / "pipeline"


def classifier_file(weights_dir: Path, name: str) -> Path:
    """``name`` is "guide" or "evaluator"."""
    return weights_dir / f"{name}.safetensors"


PIPELINE_DIR = pipeline_dir(WEIGHTS_DIR)
MAX_TOKENS = 32  # prompts are short; SD's 77 would only cost compute

UNET_CONFIG = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    block_out_channels=(32, 64),
    # Cross-attention in BOTH blocks, the first at full 8×8 latent resolution: text must be able to
    # decide the shape, not only the colour (scoping: descriptive ceilings were too low without it).
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=64,
    layers_per_block=1,
    attention_head_dim=8,
    norm_num_groups=16,
)
VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 3,  # 3 blocks = 2 downsamplings: 32×32 -> 8×8
    up_block_types=("UpDecoderBlock2D",) * 3,
    block_out_channels=(16, 32, 64),  # narrow at full resolution: that is where a CPU spends its time
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=8,
    sample_size=32,
)
TEXT_CONFIG = dict(
    hidden_size=64,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=MAX_TOKENS,
    projection_dim=64,
)
# Stable Diffusion's noise schedule; DDIM with "trailing" spacing so that the last of 5 steps is at
# t=199, not t≈1 (a gradient through that one step carries signal; docs/toy.md, "Method defaults").
SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
    timestep_spacing="trailing",
)


# ---------------------------------------------------------------- tokenizer


def _clip_bpe_file() -> Path:
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("retraining the toy tokenizer needs open_clip_torch (it ships CLIP's BPE vocabulary, MIT)")
    return Path(next(iter(spec.submodule_search_locations))) / "bpe_simple_vocab_16e6.txt.gz"


def bytes_to_unicode() -> dict[int, str]:
    # CLIP's reversible byte -> printable unicode map (openai/CLIP simple_tokenizer.py).
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


# CLIP's pre-tokenizer pattern (letters runs, single digits, punctuation runs) in `re` syntax.
_CLIP_WORD_RE = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|[^\s\w]+")


def build_tokenizer(words: list[str]):
    """A ``CLIPTokenizer`` with CLIP's BPE merges restricted to those that ``words`` use.

    Applying the used merges in CLIP's rank order reproduces CLIP's own tokenization of every listed
    word (BPE always picks the lowest-ranked present pair, which is among the used ones); other words
    fall back to byte-level pieces. All 512 byte tokens are kept, so any text tokenizes.
    """
    from transformers import CLIPTokenizer

    with gzip.open(_clip_bpe_file(), "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]]
    ranks = {m: i for i, m in enumerate(merges)}
    byte_encoder = bytes_to_unicode()
    used: set[tuple[str, str]] = set()
    for text in words:
        for w in _CLIP_WORD_RE.findall(text.lower()):
            w = "".join(byte_encoder[b] for b in w.encode("utf-8"))
            parts = [*w[:-1], w[-1] + "</w>"]
            while len(parts) > 1:
                pairs = [(parts[i], parts[i + 1]) for i in range(len(parts) - 1)]
                best = min(pairs, key=lambda p: ranks.get(p, float("inf")))
                if best not in ranks:
                    break
                used.add(best)
                merged = []
                j = 0
                while j < len(parts):
                    if j < len(parts) - 1 and (parts[j], parts[j + 1]) == best:
                        merged.append(parts[j] + parts[j + 1])
                        j += 2
                    else:
                        merged.append(parts[j])
                        j += 1
                parts = merged
    kept = sorted(used, key=ranks.__getitem__)
    base = list(byte_encoder.values())
    vocab_list = base + [b + "</w>" for b in base] + ["".join(m) for m in kept] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(vocab_list))}
    tok = CLIPTokenizer(vocab=vocab, merges=kept)
    tok.model_max_length = MAX_TOKENS
    return tok


# ---------------------------------------------------------------- pipeline parts


def build_text_encoder(tokenizer):
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **TEXT_CONFIG,
    )
    return CLIPTextModel(config)


def build_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**UNET_CONFIG)


def build_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(**VAE_CONFIG)


def build_scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(**SCHEDULER_CONFIG)


def build_pipeline(tokenizer, text_encoder, unet, vae, scheduler):
    """A ``StableDiffusionPipeline`` with no safety checker (saved so that loading warns about nothing)."""
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )


# ---------------------------------------------------------------- classifiers


class ToyConvNet(nn.Module):
    """The held-out evaluator: a plain VGG-style CNN (no residuals, no timm) — a different
    architecture from the guide's ResNet, so a token cannot win by exploiting one model's quirks."""

    def __init__(self, num_classes: int = 10, width: int = 32) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.GELU(),
                nn.Conv2d(cout, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.GELU(),
            )

        self.features = nn.Sequential(
            block(3, width), nn.MaxPool2d(2), block(width, 2 * width), nn.MaxPool2d(2), block(2 * width, 4 * width)
        )
        self.head = nn.Linear(4 * width, num_classes)

    def forward_features_pooled(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features ``(B, 4*width)`` (used for FID)."""
        return self.features(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features_pooled(x))


# name -> (architecture spec stored in the weights file's metadata, preprocessing)
CLASSIFIER_SPECS: dict[str, dict] = {
    "guide": {
        "arch": "timm",
        "name": "resnet10t",
        "kwargs": {"channels": [16, 32, 64, 128]},
        # Upsampled ×2: resnet10t's stem divides by 4, which would leave 8×8 of a 32×32 image.
        "preprocess": PreprocessConfig(resize=64, crop=64, mean=(0.5,) * 3, std=(0.5,) * 3, interpolation="bilinear"),
    },
    "evaluator": {
        "arch": "toyconvnet",
        "kwargs": {"width": 32},
        "preprocess": PreprocessConfig(
            resize=32, crop=32, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), interpolation="bilinear"
        ),
    },
}


def build_classifier_model(spec: dict, num_classes: int) -> nn.Module:
    if spec["arch"] == "timm":
        return timm.create_model(spec["name"], pretrained=False, num_classes=num_classes, **spec["kwargs"])
    if spec["arch"] == "toyconvnet":
        return ToyConvNet(num_classes=num_classes, **spec["kwargs"])
    raise ValueError(f"unknown toy classifier arch {spec['arch']!r}; valid: 'timm', 'toyconvnet'")


def save_classifier(model: nn.Module, name: str, labels: list[str], path: Path) -> None:
    """Weights + the metadata that rebuilds the model (architecture, labels, preprocessing)."""
    spec = CLASSIFIER_SPECS[name]
    meta = {
        "arch": json.dumps({k: v for k, v in spec.items() if k != "preprocess"}),
        "labels": json.dumps(labels),
        "preprocess": spec["preprocess"].model_dump_json(),
    }
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata=meta)


# Guides trained with the guide's spec on other data, shipped beside it (`python -m dct.toy.bias` retrains them):
# the planted-bias guide and its unbiased replica (docs/probe.md, "The planted bias").
GUIDE_VARIANTS: tuple[str, ...] = ("guide-biased", "guide-biased-size", "guide-replica")


def classifier_path(model_id: str, weights_dir: Path = WEIGHTS_DIR, names: tuple[str, ...] | None = None) -> Path:
    """Where classifier ``model_id`` lives: a name among ``names`` (default: the toy's guide, evaluator and guide
    variants) in ``weights_dir``, else a path to a ``.safetensors``."""
    names = (*CLASSIFIER_SPECS, *GUIDE_VARIANTS) if names is None else names
    if model_id in names:
        return classifier_file(weights_dir, model_id)
    return Path(model_id).expanduser().resolve()


def load_toy_classifier(config: ClassifierConfig) -> LoadedClassifier:
    """Load a toy classifier: ``config.model_id`` is "guide", "evaluator", one of :data:`GUIDE_VARIANTS` or a
    path to a ``.safetensors``.

    Raises:
        ValueError: the weights file does not exist.
    """
    path = classifier_path(config.model_id)
    if not path.is_file():
        raise ValueError(
            f"toy classifier {config.model_id!r} not found at {path}; use 'guide', 'evaluator', "
            f"{', '.join(map(repr, GUIDE_VARIANTS))} or a .safetensors path, or retrain with `python -m dct.toy.train` "
            "(`python -m dct.toy.bias` for the variants)"
        )
    return load_classifier_file(path, config)


def load_classifier_file(path: Path, config: ClassifierConfig) -> LoadedClassifier:
    """A classifier saved by :func:`save_classifier` (architecture, labels and preprocessing in its metadata);
    its resolved revision is the file's sha256 prefix."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    spec = json.loads(meta["arch"])
    labels = json.loads(meta["labels"])
    preprocess = config.preprocess or PreprocessConfig.model_validate_json(meta["preprocess"])
    model = build_classifier_model(spec, len(labels))
    model.load_state_dict(load_file(str(path)))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    classifier = ImageClassifier(model, DifferentiablePreprocess(preprocess), labels)
    return LoadedClassifier(classifier, resolved_revision=digest)
