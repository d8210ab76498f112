"""Placeholder-token mechanics and the token artifact.

The learned vector is optimised as its own fp32 parameter and spliced into the text encoder's input
embeddings by a forward hook, so every other row of the embedding table is untouched by construction
(and no weight decay can reach it — the reference decayed the whole table). The artifact is the vector
alone: safetensors ``{token: vector}`` with string metadata, loadable by diffusers'
``load_textual_inversion``.

Multi-vector tokens (``TokenConfig.num_vectors = n > 1``) are ``n`` tokenizer entries named as diffusers'
loader names them — ``<tok>``, ``<tok>_1``, …, ``<tok>_{n-1}`` — and a prompt naming ``<tok>`` is expanded
to all of them (:func:`expand_prompt`, diffusers' ``maybe_convert_prompt`` rule). Two-encoder pipelines
(SDXL) get the token in both tokenizers/text encoders, one ``(n, D_i)`` block per encoder
(docs/design.md, "SDXL and multi-vector tokens").

A token's vectors travel in the file form (:data:`TokenVector`): a tensor ``(D,)`` (one encoder, one
vector: today's form), ``(n, D)`` (one encoder, n vectors), or ``{"clip_l": (n, D1), "clip_g": (n, D2)}``
(two encoders, the community SDXL single-file layout).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence

import torch
from torch import nn

# Names of the two text encoders of an SDXL-style pipeline in the community single-file token format.
SDXL_ENCODER_KEYS = ("clip_l", "clip_g")

TokenVector = torch.Tensor | Mapping[str, torch.Tensor]


def text_encoders(pipe) -> list[tuple[object, object]]:
    """``[(tokenizer, text_encoder), ...]``: one pair for SD-style pipelines, two for SDXL-style ones."""
    pairs = [(pipe.tokenizer, pipe.text_encoder)]
    if getattr(pipe, "text_encoder_2", None) is not None:
        pairs.append((pipe.tokenizer_2, pipe.text_encoder_2))
    return pairs


def token_widths(pipe) -> tuple[int, ...]:
    """The embedding width of each text encoder (SD 1.x: ``(768,)``; SDXL: ``(768, 1280)``)."""
    return tuple(int(te.get_input_embeddings().weight.shape[1]) for _, te in text_encoders(pipe))


def sub_tokens(token: str, num_vectors: int) -> list[str]:
    """The tokenizer entries of a token of ``num_vectors`` vectors, as diffusers' loader names them."""
    return [token] + [f"{token}_{i}" for i in range(1, num_vectors)]


def expand_prompt(tokenizer, prompt: str) -> str:
    """``<tok>`` → ``<tok> <tok>_1 … <tok>_{n-1}`` for every multi-vector token in ``prompt``.

    The rule of diffusers' ``TextualInversionLoaderMixin.maybe_convert_prompt``, so a prompt encodes the
    same here as in a diffusers pipeline the token file was loaded into; identity for one-vector tokens.
    """
    added = tokenizer.added_tokens_encoder
    for token in set(tokenizer.tokenize(prompt)):
        if token in added and f"{token}_1" in added:
            replacement, i = token, 1
            while f"{token}_{i}" in added:
                replacement += f" {token}_{i}"
                i += 1
            prompt = prompt.replace(token, replacement)
    return prompt


def to_rows(vector: TokenVector, encoders: int) -> list[torch.Tensor]:
    """The file form → one ``(n, D)`` fp32 tensor per text encoder.

    Raises:
        ValueError: the form does not fit ``encoders`` text encoders.
    """
    if encoders == 2:
        if not isinstance(vector, Mapping) or set(vector) != set(SDXL_ENCODER_KEYS):
            got = sorted(vector) if isinstance(vector, Mapping) else f"one tensor of shape {tuple(vector.shape)}"
            raise ValueError(f"a two-encoder pipeline needs vectors {list(SDXL_ENCODER_KEYS)}, got {got}")
        return [vector[k].float().reshape(-1, vector[k].shape[-1]) for k in SDXL_ENCODER_KEYS]
    if isinstance(vector, Mapping):
        raise ValueError(f"a one-encoder pipeline needs one tensor, got vectors {sorted(vector)} (an SDXL token?)")
    return [vector.float().reshape(-1, vector.shape[-1])]


def from_rows(rows: Sequence[torch.Tensor]) -> TokenVector:
    """One ``(n, D)`` tensor per text encoder → the file form (``(D,)`` for one encoder and one vector)."""
    rows = [r.detach().float().cpu().clone() for r in rows]
    if len(rows) == 2:
        return dict(zip(SDXL_ENCODER_KEYS, rows, strict=True))
    if len(rows) != 1:
        raise ValueError(f"pipelines have one or two text encoders, got {len(rows)} vector blocks")
    return rows[0][0] if rows[0].shape[0] == 1 else rows[0]


def vector_shapes(vector: TokenVector) -> dict[str, tuple[int, ...]] | tuple[int, ...]:
    """Shapes of the file form, for messages."""
    if isinstance(vector, Mapping):
        return {k: tuple(v.shape) for k, v in vector.items()}
    return tuple(vector.shape)


def add_placeholder_tokens(
    tokenizer, text_encoder, token: str, initializer_token: str, num_vectors: int = 1
) -> list[int]:
    """:func:`add_placeholder_token` for every sub-token of an ``num_vectors``-vector token; their ids."""
    names = sub_tokens(token, num_vectors)
    return [add_placeholder_token(tokenizer, text_encoder, t, initializer_token) for t in names]


def install_token(pipe, token: str, vector: TokenVector, initializer_token: str) -> None:
    """Add ``token`` (all its sub-tokens, every text encoder) to ``pipe`` with these vectors.

    Raises:
        ValueError: the vectors do not fit the pipeline's text encoders.
    """
    pairs = text_encoders(pipe)
    rows = to_rows(vector, len(pairs))
    for (tokenizer, text_encoder), block in zip(pairs, rows, strict=True):
        ids = add_placeholder_tokens(tokenizer, text_encoder, token, initializer_token, block.shape[0])
        for token_id, row in zip(ids, block, strict=True):
            set_token_vector(text_encoder, token_id, row)


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


