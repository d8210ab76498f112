"""Pipeline loading on a tiny Stable Diffusion saved in diffusers' layout (local dir and fake hub cache)."""

from __future__ import annotations

import pytest
import torch
from hub_models import put_in_hf_cache

from dct.config import DiffusionConfig
from dct.models.hub import ModelNotAvailableError
from dct.models.pipelines import (
    PIPELINE_PRESETS,
    load_pipeline,
    pipeline_allow_patterns,
    resolve_pipeline_dtype,
)


@pytest.fixture
def tiny_sd_dir(tmp_path):
    from tiny import tiny_pipeline

    pipe = tiny_pipeline(tmp_path / "build", scheduler="pndm")
    path = tmp_path / "tiny-sd"
    pipe.save_pretrained(path, safe_serialization=True)
    return path


def test_local_dir_loads_frozen_without_safety_checker(tiny_sd_dir):
    loaded = load_pipeline(DiffusionConfig(model_id=str(tiny_sd_dir)), "cpu")
    pipe = loaded.pipe
    assert pipe.safety_checker is None
    assert loaded.dtype == torch.float32  # 'auto' on CPU
    assert pipe.text_encoder.dtype == torch.float32  # the learned token lives in its embedding table
    assert not any(p.requires_grad for m in (pipe.unet, pipe.vae, pipe.text_encoder) for p in m.parameters())
    assert loaded.resolved_revision.startswith("sha256:")
    assert type(pipe.scheduler).__name__ == "PNDMScheduler"  # the repo's scheduler; dct.method.sampling picks ours
    again = load_pipeline(DiffusionConfig(model_id=str(tiny_sd_dir)), "cpu")
    assert again.resolved_revision == loaded.resolved_revision


def test_hub_id_loads_offline_from_cache_with_commit_sha(tiny_sd_dir, hf_cache):
    put_in_hf_cache(tiny_sd_dir, hf_cache, "CompVis/tiny-sd", sha="c" * 40)
    loaded = load_pipeline(DiffusionConfig(model_id="CompVis/tiny-sd"), "cpu")
    assert loaded.resolved_revision == "c" * 40
    out = loaded.pipe(
        "a photo of a cat", num_inference_steps=2, output_type="pt", generator=torch.Generator().manual_seed(0)
    )
    assert out.images.shape == (1, 3, 16, 16)


def test_uncached_preset_with_hub_down_names_model_and_pull_command(hf_cache):
    with pytest.raises(ModelNotAvailableError, match=r"'CompVis/stable-diffusion-v1-4'.*dct models pull --dataset"):
        load_pipeline(PIPELINE_PRESETS["sd14"], "cpu")


def test_pickle_only_pipeline_dir_is_refused(tmp_path):
    d = tmp_path / "old-sd"
    (d / "unet").mkdir(parents=True)
    (d / "model_index.json").write_text("{}")
    torch.save({}, d / "unet" / "diffusion_pytorch_model.bin")
    with pytest.raises(ValueError, match="refusing pickle"):
        load_pipeline(DiffusionConfig(model_id=str(d)), "cpu")


def test_presets_and_download_patterns():
    assert PIPELINE_PRESETS["sd14"].model_id == "CompVis/stable-diffusion-v1-4"
    assert PIPELINE_PRESETS["sd21-base"].model_id == "stabilityai/stable-diffusion-2-1-base"
    assert PIPELINE_PRESETS["sdxl-base"].model_id == "stabilityai/stable-diffusion-xl-base-1.0"
    assert PIPELINE_PRESETS["sdxl-turbo"].model_id == "stabilityai/sdxl-turbo"
    assert {k: p.licence for k, p in PIPELINE_PRESETS.items()} == {
        "sd14": "CreativeML OpenRAIL-M",
        "sd21-base": "CreativeML Open RAIL++-M",
        "sdxl-base": "CreativeML Open RAIL++-M",
        "sdxl-turbo": "Stability AI Non-Commercial Research Community License",
    }
    allow, ignore = pipeline_allow_patterns(None)
    assert "unet/*.safetensors" in allow and not any("safety_checker" in a for a in allow)
    # SDXL's second text encoder and tokenizer are pulled too (weights, configs, vocab/merges)
    assert {"text_encoder_2/*.safetensors", "text_encoder_2/*.json", "tokenizer_2/*.json", "tokenizer_2/*.txt"} <= set(
        allow
    )
    assert "*.fp16.*" in ignore  # only the full-precision files, not every variant
    allow, ignore = pipeline_allow_patterns("fp16")
    assert "unet/*.fp16.safetensors" in allow and ignore == []


def test_dtype_resolution():
    assert resolve_pipeline_dtype("auto", "cpu") == torch.float32
    assert resolve_pipeline_dtype("bfloat16", "cpu") == torch.float32  # CPU path stays fp32
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_pipeline_dtype("int8", "cpu")


def test_variant_files_are_selected_from_a_cached_snapshot(tmp_path, hf_cache):
    from tiny import tiny_pipeline

    src = tmp_path / "sd-variant"
    tiny_pipeline(tmp_path / "b").save_pretrained(src, safe_serialization=True, variant="fp16")
    put_in_hf_cache(src, hf_cache, "stabilityai/tiny-sd", sha="9" * 40)
    loaded = load_pipeline(DiffusionConfig(model_id="stabilityai/tiny-sd", variant="fp16"), "cpu")
    assert loaded.resolved_revision == "9" * 40
    with pytest.raises(ValueError, match="no safetensors weights"):
        load_pipeline(DiffusionConfig(model_id="stabilityai/tiny-sd", variant="bf16"), "cpu")


def test_sdxl_preset_from_the_cache_loads_as_a_two_encoder_pipeline(tmp_path, hf_cache):
    """A hub SDXL snapshot (here a tiny one cached as 'stabilityai/sdxl-turbo') loads as
    StableDiffusionXLPipeline: both text encoders float32 and frozen, the commit SHA as revision."""
    from tiny import tiny_sdxl_pipeline

    tiny_sdxl_pipeline(tmp_path / "b").save_pretrained(tmp_path / "xl", safe_serialization=True)
    put_in_hf_cache(tmp_path / "xl", hf_cache, "stabilityai/sdxl-turbo", sha="9" * 40)
    loaded = load_pipeline(PIPELINE_PRESETS["sdxl-turbo"], "cpu")
    pipe = loaded.pipe
    assert type(pipe).__name__ == "StableDiffusionXLPipeline" and loaded.resolved_revision == "9" * 40
    assert pipe.text_encoder.dtype == pipe.text_encoder_2.dtype == torch.float32
    modules = (pipe.unet, pipe.vae, pipe.text_encoder, pipe.text_encoder_2)
    assert not any(p.requires_grad for m in modules for p in m.parameters())


def test_sdxl_dir_without_second_encoder_weights_is_refused(tmp_path):
    from tiny import tiny_sdxl_pipeline

    tiny_sdxl_pipeline(tmp_path / "b").save_pretrained(tmp_path / "xl", safe_serialization=True)
    for f in (tmp_path / "xl" / "text_encoder_2").glob("*.safetensors"):
        f.unlink()
    with pytest.raises(ValueError, match=r"no safetensors weights for \['text_encoder_2'\]"):
        load_pipeline(DiffusionConfig(model_id=str(tmp_path / "xl")), "cpu")
