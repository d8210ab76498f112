"""Placeholder-token mechanics and the token artifact.

The learned vector is optimised as its own fp32 parameter and spliced into the text encoder's input
embeddings by a forward hook, so every other row of the embedding table is untouched by construction
(and no weight decay can reach it — the reference decayed the whole table). The artifact is the vector
alone: safetensors ``{token: vector}`` with string metadata, loadable by diffusers'
``load_textual_inversion``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

import torch
from torch import nn


def add_placeholder_token(tokenizer, text_encoder, token: str, initializer_token: str) -> int:
    """Add ``token`` to the tokenizer and the text encoder, its row initialised from ``initializer_token``.

    Idempotent: a token already in the tokenizer keeps its row and id.

    Args:
        tokenizer: a Hugging Face (CLIP) tokenizer.
        text_encoder: a transformers text model with ``get_input_embeddings``/``resize_token_embeddings``.
        token: the placeholder string, e.g. ``"<dct-toy-00003>"``.
        initializer_token: an existing word that is ONE token (reference: ``"a"``).

    Returns:
        The placeholder's token id.

    Raises:
        ValueError: the initializer is not exactly one token.
    """
    init_ids = tokenizer.encode(initializer_token, add_special_tokens=False)
    if len(init_ids) != 1:
        raise ValueError(
            f"initializer_token {initializer_token!r} is {len(init_ids)} tokens for this tokenizer; "
            "choose a word that is a single token (e.g. 'a')"
        )
    existing = tokenizer.convert_tokens_to_ids(token)
    if existing is not None and existing != tokenizer.unk_token_id:
        return int(existing)
    if tokenizer.add_tokens(token) != 1:
        raise ValueError(f"token {token!r} could not be added to the tokenizer")
    token_id = int(tokenizer.convert_tokens_to_ids(token))
    emb = text_encoder.get_input_embeddings()
    if token_id >= emb.weight.shape[0]:
        # mean_resizing=False: the row is overwritten below, and the default computes a V×D covariance.
        text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        emb = text_encoder.get_input_embeddings()
    with torch.no_grad():
        emb.weight[token_id] = emb.weight[init_ids[0]]
    return token_id


def get_token_vector(text_encoder, token_id: int) -> torch.Tensor:
    """The current embedding row of ``token_id`` as an fp32 CPU tensor ``(D,)``."""
    return text_encoder.get_input_embeddings().weight[token_id].detach().float().cpu().clone()


def set_token_vector(text_encoder, token_id: int, vector: torch.Tensor) -> None:
    """Write ``vector`` ``(D,)`` into the embedding row of ``token_id`` (in the table's dtype)."""
    weight = text_encoder.get_input_embeddings().weight
    with torch.no_grad():
        weight[token_id] = vector.to(device=weight.device, dtype=weight.dtype)


@contextlib.contextmanager
def bind_token_vectors(text_encoder, vectors: Mapping[int, torch.Tensor]) -> Iterator[None]:
    """Within the block, the embeddings of these token ids are the given tensors (gradients flow to them).

    Implemented as a forward hook on the input-embedding module, which sees the input ids: rows of the
    output where the id matches are replaced by the vector (cast to the output dtype, so an fp32 token
    works under bf16/fp16 weights or autocast).
    """
    emb: nn.Module = text_encoder.get_input_embeddings()

    def hook(_module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        ids = args[0]
        for token_id, vec in vectors.items():
            mask = (ids == token_id).unsqueeze(-1)
            output = torch.where(mask, vec.to(device=output.device, dtype=output.dtype), output)
        return output

    handle = emb.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


