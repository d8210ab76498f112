"""The token artifact: safetensors {token: vector} + metadata, loadable by diffusers."""

from __future__ import annotations

import pytest
import torch
from tiny import tiny_pipeline, tiny_run_config

from dct.artifacts.token_file import load_token, read_token_bytes, save_token, token_file_bytes
from dct.method.optimize import optimize_token
from dct.method.sampling import encode_prompts


def test_saved_token_loads_through_diffusers_and_reproduces_embedding(tmp_path, tiny_clf):
    config = tiny_run_config(max_epochs=2, accuracy_threshold=1.0)
    trained = tiny_pipeline(tmp_path / "a")
    result = optimize_token(trained, tiny_clf, class_id=2, class_name="cat", config=config)
    path = save_token(tmp_path / "tok.safetensors", result.token, result.vector, {"class_id": "2", "token_key": "abc"})
    prompt = f"A photo of {result.token} cat"
    expected = encode_prompts(trained.tokenizer, trained.text_encoder, [prompt])

    fresh = tiny_pipeline(tmp_path / "b")  # same seed -> same base weights, no token yet
    fresh.load_textual_inversion(str(path))
    got = encode_prompts(fresh.tokenizer, fresh.text_encoder, [prompt])
    assert torch.equal(got, expected)
    token_id = fresh.tokenizer.convert_tokens_to_ids(result.token)
    assert torch.equal(fresh.text_encoder.get_input_embeddings().weight[token_id], result.vector)
    # ... and the token really steers the prompt: another vector gives another embedding.
    with torch.no_grad():
        fresh.text_encoder.get_input_embeddings().weight[token_id] += 1.0
    assert not torch.equal(encode_prompts(fresh.tokenizer, fresh.text_encoder, [prompt]), expected)


def test_round_trip_bytes_and_metadata(tmp_path):
    vec = torch.randn(32)
    data = token_file_bytes("<dct-toy-00001>", vec, {"class_id": "1", "class_name": "red circle"})
    token, back, meta = read_token_bytes(data)
    assert token == "<dct-toy-00001>" and torch.equal(back, vec)
    assert meta == {"class_id": "1", "class_name": "red circle"}
    path = save_token(tmp_path / "x" / "t.safetensors", token, vec, meta)
    assert load_token(path)[0] == token and load_token(path)[2] == meta
    assert not list(path.parent.glob(".*tmp*"))  # no temporary file left behind


@pytest.mark.parametrize(
    "corrupt",
    [lambda d: d[: len(d) // 2], lambda d: b"not a safetensors file at all", lambda d: b""],
    ids=["truncated", "foreign", "empty"],
)
def test_corrupt_token_bytes_are_refused(corrupt):
    data = token_file_bytes("<t>", torch.randn(8), {})
    with pytest.raises(ValueError, match="not a readable safetensors token file"):
        read_token_bytes(corrupt(data))


def test_refuses_bad_vectors_and_metadata():
    with pytest.raises(ValueError, match="non-finite"):
        token_file_bytes("<t>", torch.tensor([1.0, float("nan")]), {})
    with pytest.raises(ValueError, match=r"\(D,\) or \(n, D\), got shape \(2, 3, 4\)"):
        token_file_bytes("<t>", torch.zeros(2, 3, 4), {})  # (n, D) is a multi-vector token; 3-D is nothing
    with pytest.raises(ValueError, match="strings"):
        token_file_bytes("<t>", torch.zeros(3), {"class_id": 3})


def test_multi_token_file_is_not_a_token_file():
    from safetensors.torch import save

    with pytest.raises(ValueError, match="exactly one token"):
        read_token_bytes(save({"<a>": torch.zeros(3), "<b>": torch.zeros(3)}))


def test_initializer_must_be_one_token(tiny_pipe):
    from dct.method.tokens import add_placeholder_token

    with pytest.raises(ValueError, match="'photo cat' is 2 tokens"):
        add_placeholder_token(tiny_pipe.tokenizer, tiny_pipe.text_encoder, "<x>", "photo cat")
    first = add_placeholder_token(tiny_pipe.tokenizer, tiny_pipe.text_encoder, "<x>", "a")
    assert add_placeholder_token(tiny_pipe.tokenizer, tiny_pipe.text_encoder, "<x>", "a") == first


def test_check_token_knows_the_shapes_of_every_layout():
    from dct.artifacts.token_file import check_token

    sd, xl = 32, (32, 40)
    check_token("f", "<t>", torch.ones(32), {}, width=sd, num_vectors=1)
    check_token("f", "<t>", torch.ones(3, 32), {}, width=sd, num_vectors=3)
    check_token("f", "<t>", {"clip_l": torch.ones(3, 32), "clip_g": torch.ones(3, 40)}, {}, width=xl, num_vectors=3)
    bad = {
        "SD width": (torch.ones(40), sd, None, r"\(40,\), the pipeline's text encoder\(s\) expect \(32,\) or \(n, 32"),
        "vector count": (torch.ones(3, 32), sd, 1, r"holds \[3\] vector\(s\).*token.num_vectors=1"),
        "SD token on SDXL": (torch.ones(32), xl, None, r"expect \{'clip_l': '\(n, 32\)', 'clip_g': '\(n, 40\)'\}"),
        "SDXL token on SD": ({"clip_l": torch.ones(1, 32), "clip_g": torch.ones(1, 40)}, sd, None, "expect"),
        "swapped encoders": ({"clip_l": torch.ones(1, 40), "clip_g": torch.ones(1, 32)}, xl, None, "expect"),
        "non-finite clip_g": (
            {"clip_l": torch.ones(1, 32), "clip_g": torch.full((1, 40), float("nan"))}, xl, None, "non-finite"
        ),
    }
    for name, (vector, width, n, message) in bad.items():
        with pytest.raises(ValueError, match=message):
            check_token("f", "<t>", vector, {}, width=width, num_vectors=n)
            pytest.fail(name)


def test_two_encoder_token_file_round_trips_and_needs_its_token_string():
    from safetensors.torch import save

    vector = {"clip_l": torch.randn(2, 32), "clip_g": torch.randn(2, 40)}
    token, back, meta = read_token_bytes(token_file_bytes("<t>", vector, {"dataset": "x"}))
    assert token == "<t>" and meta == {"dataset": "x", "token": "<t>"}
    assert all(torch.equal(back[k], vector[k]) for k in vector)
    with pytest.raises(ValueError, match="without 'token' in its metadata"):
        read_token_bytes(save(vector))
    with pytest.raises(ValueError, match="same n"):
        token_file_bytes("<t>", {"clip_l": torch.ones(2, 32), "clip_g": torch.ones(3, 40)}, {})
