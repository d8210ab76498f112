"""Two-encoder (SDXL) pipelines and multi-vector tokens, on tiny random models built from configs.

The tiny SDXL pipeline (tests/tiny.py) has both text encoders (of different widths), the pooled
projection and the UNet's add_time_ids conditioning; files are loaded back through diffusers' own
documented calls, and prompts are encoded by diffusers' own ``encode_prompt`` to compare.
"""

from __future__ import annotations

import torch
from tiny import tiny_classifier, tiny_pipeline, tiny_run_config, tiny_sdxl_pipeline

from dct.artifacts.token_file import load_token, save_token
from dct.method.optimize import epoch_loss_and_grad, optimize_token
from dct.method.sampling import encode_text, unconditional
from dct.method.tokens import add_placeholder_tokens, get_token_vector, text_encoders

PROMPT = "a photo of {} cat"


def _with_vectors(config, n: int):
    return config.model_copy(update={"token": config.token.model_copy(update={"num_vectors": n})})


def _tables(pipe) -> list[torch.Tensor]:
    return [te.get_input_embeddings().weight.detach().clone() for _, te in text_encoders(pipe)]


def _frozen_params(pipe) -> dict[str, torch.Tensor]:
    """Every weight of the pipeline except the two embedding tables (those are checked row by row)."""
    out = {}
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        for pname, p in getattr(pipe, name).named_parameters():
            if "token_embedding" not in pname:
                out[f"{name}.{pname}"] = p.detach().clone()
    return out


def test_sdxl_only_the_token_rows_of_both_tables_change(tmp_path):
    pipe, clf = tiny_sdxl_pipeline(tmp_path), tiny_classifier()
    config = tiny_run_config(max_epochs=3, accuracy_threshold=1.0, patience=50)
    before, params = _tables(pipe), _frozen_params(pipe)
    result = optimize_token(pipe, clf, class_id=1, class_name="cat", config=config)
    assert result.epochs == 3
    after = _tables(pipe)
    for (tokenizer, _), old, new, key in zip(text_encoders(pipe), before, after, ("clip_l", "clip_g"), strict=True):
        assert new.shape[0] == old.shape[0] + 1  # one new row per table ...
        assert torch.equal(new[: old.shape[0]], old)  # ... every other row bit-for-bit equal
        token_id = tokenizer.convert_tokens_to_ids(result.token)
        assert token_id == old.shape[0]
        assert torch.equal(new[token_id], result.vector[key][0])  # the row holds the learned vector
        assert not torch.equal(result.vector[key], result.initial_vector[key])  # which moved (both encoders)
    assert all(torch.equal(p, params[n]) for n, p in _frozen_params(pipe).items())


def _hardest_class(pipe, clf, config) -> int:
    from dct.method.sampling import generate

    imgs = generate(pipe, ["a photo of a cat"] * 3, list(config.training.seeds), config.sampler)
    return int(torch.softmax(clf(imgs), dim=1).mean(0).argmin())


def test_sdxl_loss_falls_on_a_learnable_target(tmp_path):
    pipe, clf = tiny_sdxl_pipeline(tmp_path), tiny_classifier()
    config = tiny_run_config(max_epochs=8, accuracy_threshold=1.0, patience=50)
    target = _hardest_class(pipe, clf, config)
    result = optimize_token(pipe, clf, class_id=target, class_name="cat", config=config)
    assert result.best_loss < result.losses[0] - 0.01, result.losses
    assert result.losses[-1] < result.losses[0]


def _one_epoch_grads(pipe, clf, config, num_vectors: int) -> list[torch.Tensor]:
    token = config.token_string(0)
    vectors, ids = [], []
    for tokenizer, text_encoder in text_encoders(pipe):
        token_ids = add_placeholder_tokens(tokenizer, text_encoder, token, "a", num_vectors)
        ids.append(token_ids)
        vectors.append(torch.nn.Parameter(torch.stack([get_token_vector(text_encoder, i) for i in token_ids])))
    with torch.no_grad():
        uncond = unconditional(pipe)
    prompts = [PROMPT.format(token)] * config.training.images_per_epoch
    epoch_loss_and_grad(
        pipe, clf, vectors, ids, prompts, list(config.training.seeds), 0, config, uncond,
        device="cpu", dtype=torch.float32,
    )
    return [v.grad.clone() for v in vectors]


def test_sdxl_one_batch_equals_micro_batches(tmp_path):
    """The epoch gradient of one batch of 3 and of micro-batches 2+1 and 1+1+1, for both encoders' vectors.

    Tolerance: 1e-6 absolute per element on a gradient of norm ~5e-2, and 1e-4 relative in norm (fp32
    sums reordered by batching differ in the last bits, by an amount that depends on the CPU's vector
    units; measured here: max element difference ~6e-8, relative norm ~1.2e-5).
    """
    clf = tiny_classifier()
    grads = {}
    for micro in (None, 2, 1):
        config = tiny_run_config(max_epochs=1, micro_batch_size=micro, grad_steps=2)
        grads[micro] = _one_epoch_grads(tiny_sdxl_pipeline(tmp_path / str(micro)), clf, config, num_vectors=2)
    for micro in (2, 1):
        for g, ref in zip(grads[micro], grads[None], strict=True):
            assert float(ref.norm()) > 0
            assert float((g - ref).abs().max()) <= 1e-6
            assert float((g - ref).norm() / ref.norm()) < 1e-4


def _encode_with_diffusers(pipe, prompt: str):
    embeds, _, pooled, _ = pipe.encode_prompt(prompt, device="cpu", do_classifier_free_guidance=False)
    return embeds, pooled


def test_sdxl_file_loads_with_diffusers_two_calls_and_reproduces_embeddings(tmp_path):
    pipe, clf = tiny_sdxl_pipeline(tmp_path / "a"), tiny_classifier()
    config = tiny_run_config(max_epochs=3, accuracy_threshold=1.0, patience=50)
    target = _hardest_class(pipe, clf, config)
    result = optimize_token(pipe, clf, class_id=target, class_name="cat", config=config)
    assert result.best_epoch > 0  # the kept vector is a learned one, not the initializer's
    path = save_token(tmp_path / "tok.safetensors", result.token, result.vector, {"dataset": "tiny"})

    from safetensors.torch import load_file

    state = load_file(path)
    assert {k: tuple(v.shape) for k, v in state.items()} == {"clip_l": (1, 32), "clip_g": (1, 40)}
    fresh = tiny_sdxl_pipeline(tmp_path / "b")
    # diffusers' documented SDXL calls, one per text encoder:
    fresh.load_textual_inversion(state["clip_l"], token=result.token, text_encoder=fresh.text_encoder,
                                 tokenizer=fresh.tokenizer)
    fresh.load_textual_inversion(state["clip_g"], token=result.token, text_encoder=fresh.text_encoder_2,
                                 tokenizer=fresh.tokenizer_2)
    prompt = PROMPT.format(result.token)
    theirs, their_pooled = _encode_with_diffusers(fresh, prompt)
    with torch.no_grad():
        ours, our_pooled = encode_text(pipe, [prompt])
    assert torch.equal(theirs, ours) and torch.equal(their_pooled, our_pooled)
    # ... and the learned token matters: the initializer's prompt encodes differently in both outputs.
    init, init_pooled = _encode_with_diffusers(fresh, PROMPT.format("a"))
    assert not torch.equal(init, ours) and not torch.equal(init_pooled, our_pooled)
    # Our reader gives back the same token string and vectors.
    token, vector, meta = load_token(path)
    assert token == result.token and meta["token"] == result.token
    assert all(torch.equal(vector[k], result.vector[k]) for k in ("clip_l", "clip_g"))


def test_three_vector_token_on_sd_loads_with_diffusers_and_expands(tmp_path):
    pipe, clf = tiny_pipeline(tmp_path / "a"), tiny_classifier()
    config = _with_vectors(tiny_run_config(max_epochs=2, accuracy_threshold=1.0), 3)
    result = optimize_token(pipe, clf, class_id=1, class_name="cat", config=config)
    assert tuple(result.vector.shape) == (3, 32)
    # every sub-token starts from the initializer's row, and every one is optimised
    init_row = pipe.text_encoder.get_input_embeddings().weight[pipe.tokenizer.convert_tokens_to_ids("a</w>")]
    assert all(torch.equal(i, init_row) for i in result.initial_vector)
    assert all(not torch.equal(r, i) for r, i in zip(result.vector, result.initial_vector, strict=True))
    path = save_token(tmp_path / "tok.safetensors", result.token, result.vector, {"dataset": "tiny"})

    fresh = tiny_pipeline(tmp_path / "b")
    fresh.load_textual_inversion(str(path))  # the one documented call
    prompt = PROMPT.format(result.token)
    ids = fresh.tokenizer(fresh.maybe_convert_prompt(prompt, fresh.tokenizer)).input_ids
    names = fresh.tokenizer.convert_ids_to_tokens(ids)
    assert [n for n in names if n.startswith(result.token)] == [result.token, f"{result.token}_1", f"{result.token}_2"]
    theirs = fresh.encode_prompt(prompt, "cpu", 1, do_classifier_free_guidance=False)[0]
    with torch.no_grad():
        ours, _ = encode_text(pipe, [prompt])
    assert torch.equal(theirs, ours)


def test_three_vector_token_on_sdxl_loads_with_diffusers_and_expands(tmp_path):
    pipe, clf = tiny_sdxl_pipeline(tmp_path / "a"), tiny_classifier()
    config = _with_vectors(tiny_run_config(max_epochs=2, accuracy_threshold=1.0), 3)
    result = optimize_token(pipe, clf, class_id=1, class_name="cat", config=config)
    assert {k: tuple(v.shape) for k, v in result.vector.items()} == {"clip_l": (3, 32), "clip_g": (3, 40)}
    for key, (tokenizer, te) in zip(("clip_l", "clip_g"), text_encoders(pipe), strict=True):
        init_row = te.get_input_embeddings().weight[tokenizer.convert_tokens_to_ids("a</w>")]
        assert all(torch.equal(i, init_row) for i in result.initial_vector[key])
        assert all(not torch.equal(r, i) for r, i in zip(result.vector[key], result.initial_vector[key], strict=True))
    path = save_token(tmp_path / "tok.safetensors", result.token, result.vector, {"dataset": "tiny"})

    from safetensors.torch import load_file

    state = load_file(path)
    fresh = tiny_sdxl_pipeline(tmp_path / "b")
    for key, te, tok in (("clip_l", fresh.text_encoder, fresh.tokenizer), ("clip_g", fresh.text_encoder_2,
                                                                           fresh.tokenizer_2)):
        fresh.load_textual_inversion(state[key], token=result.token, text_encoder=te, tokenizer=tok)
    prompt = PROMPT.format(result.token)
    for tokenizer in (fresh.tokenizer, fresh.tokenizer_2):
        names = tokenizer.convert_ids_to_tokens(tokenizer(fresh.maybe_convert_prompt(prompt, tokenizer)).input_ids)
        assert [n for n in names if n.startswith(result.token)] == [
            result.token, f"{result.token}_1", f"{result.token}_2"
        ]
    theirs, their_pooled = _encode_with_diffusers(fresh, prompt)
    with torch.no_grad():
        ours, our_pooled = encode_text(pipe, [prompt])
    assert torch.equal(theirs, ours) and torch.equal(their_pooled, our_pooled)


def test_sdxl_images_match_the_diffusers_pipeline(tmp_path):
    """Our loop's SDXL conditioning (penultimate states of both encoders, pooled embedding, add_time_ids,
    zero negatives) gives the images of StableDiffusionXLPipeline itself on the same noise and scheduler."""
    from dct.config import SamplerConfig
    from dct.method.sampling import generate, image_size, initial_latents, make_scheduler, vae_scale_factor

    pipe = tiny_sdxl_pipeline(tmp_path)
    sampler = SamplerConfig(scheduler="ddim", num_inference_steps=3, guidance_scale=3.0, timestep_spacing="trailing",
                            height=24, width=16)  # not square: height and width must not be swapped
    prompts, seeds = ["a photo of a cat", "a red circle"], [5, 6]
    ours = generate(pipe, prompts, seeds, sampler)
    height, width = image_size(pipe, sampler)
    factor = vae_scale_factor(pipe.vae)
    latents = initial_latents(seeds, (4, height // factor, width // factor), device="cpu", dtype=torch.float32)
    pipe.scheduler = make_scheduler(pipe.scheduler, sampler)
    theirs = pipe(prompts, height=height, width=width, num_inference_steps=3, guidance_scale=3.0,
                  latents=latents, output_type="pt").images
    assert ours.shape == theirs.shape == (2, 3, 24, 16)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
