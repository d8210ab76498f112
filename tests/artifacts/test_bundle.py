"""The export bundle: all tokens of a run in one file, loaded into a pipeline with ONE diffusers call."""

from __future__ import annotations

import base64

import pytest
import torch
from safetensors.torch import load_file

from dct.artifacts.bundle import bundle_uri, export_bundle, load_bundle_into, manifest_uri, read_bundle
from dct.artifacts.token_file import load_stored_token, token_file_bytes
from dct.results import write_class_record

CLASSES = (0, 3, 11)


def _store_tokens(store, make_record, dim, num_vectors: int | None = None):
    """``dim``: an int (one text encoder) or ``(D1, D2)`` (SDXL: ``{"clip_l", "clip_g"}`` tokens);
    ``num_vectors``: None = ``(D,)`` vectors, n = ``(n, D)`` blocks."""
    records, vectors = [], {}
    for cid in CLASSES:
        rec = make_record(cid, run_id="run-1" if cid else "run-0")  # class 0 finished in an earlier run
        gen = torch.Generator().manual_seed(100 + cid)
        if isinstance(dim, tuple):
            keys = ("clip_l", "clip_g")
            vec = {k: torch.randn(num_vectors or 1, d, generator=gen) for k, d in zip(keys, dim, strict=True)}
        else:
            vec = torch.randn(*((num_vectors,) if num_vectors else ()), dim, generator=gen)
        meta = {"token_key": rec.token_key, "class_id": str(cid), "dataset": rec.dataset}
        store.write_token(rec.dataset, rec.token_key, cid, token_file_bytes(rec.token, vec, meta))
        write_class_record(store, rec)
        records.append(rec)
        vectors[rec.token] = vec
    failed = make_record(5, run_id="run-1", status="failed", error="oom")
    return [*records, failed], vectors


def test_bundle_loads_with_one_call_and_identical_embeddings(store, make_record, tiny_pipe, tmp_path):
    dim = tiny_pipe.text_encoder.get_input_embeddings().weight.shape[1]
    records, vectors = _store_tokens(store, make_record, dim)

    uri, manifest = export_bundle(store, records, "run-1")
    assert uri == bundle_uri(store, "toy", "run-1") and store.exists(manifest_uri(store, "toy", "run-1"))
    assert [e.class_id for e in manifest.tokens] == list(CLASSES)  # the failed class is left out
    entry = manifest.tokens[1]
    assert (entry.token, entry.class_name, entry.token_key) == ("<dct-toy-00003>", "class 3", "tk0001")
    assert (entry.base_model, entry.licence) == ("toy/diffusion", "creativeml-openrail-m")

    rows_before = tiny_pipe.text_encoder.get_input_embeddings().weight.detach().clone()
    load_bundle_into(tiny_pipe, uri, store)  # one load_textual_inversion call inside

    tok, emb = tiny_pipe.tokenizer, tiny_pipe.text_encoder.get_input_embeddings().weight
    for token, vec in vectors.items():
        ids = tok(token, add_special_tokens=False).input_ids
        assert len(ids) == 1, f"{token} is not one token: {ids}"
        assert torch.equal(emb[ids[0]].detach(), vec)
    assert torch.equal(emb[: rows_before.shape[0]].detach(), rows_before)  # other rows untouched
    # all tokens usable in one prompt
    tiny_pipe.encode_prompt("A photo of <dct-toy-00003> and <dct-toy-00011>", "cpu", 1, False)


def test_documented_raw_snippet_without_dct(s3_store, make_record, tmp_path):
    """The call the manifest and docs give users who only have the file, safetensors and diffusers."""
    from tiny import tiny_pipeline

    store = s3_store
    pipe = tiny_pipeline(tmp_path)
    dim = pipe.text_encoder.get_input_embeddings().weight.shape[1]
    records, vectors = _store_tokens(store, make_record, dim)
    uri, _ = export_bundle(store, records, "run-1")
    local = tmp_path / "tokens.safetensors"
    local.write_bytes(store.read_bytes(uri))

    t = load_file(str(local))
    pipe.load_textual_inversion(list(t.values()), token=list(t.keys()))

    emb = pipe.text_encoder.get_input_embeddings().weight
    for token, vec in vectors.items():
        assert torch.equal(emb[pipe.tokenizer.convert_tokens_to_ids(token)].detach(), vec)


def test_read_bundle_and_mismatch_detection(store, make_record):
    records, _ = _store_tokens(store, make_record, 8)
    uri, manifest = export_bundle(store, records, "run-1")
    tokens, stacked, back = read_bundle(store.read_bytes(uri))
    assert tokens == [f"<dct-toy-{c:05d}>" for c in CLASSES] and stacked.shape == (3, 8) and back == manifest

    # a token file whose metadata contradicts its record is refused, not bundled
    rec = records[0]
    store.write_token("toy", rec.token_key, rec.class_id,
                      token_file_bytes(rec.token, torch.zeros(8), {"token_key": "someother", "class_id": "0"}))
    with pytest.raises(ValueError, match="is the token of token_key 'someother', not 'tk0001'"):
        export_bundle(store, records, "run-2")


def test_load_stored_token_detects_corrupt_and_foreign_files(store):
    meta = {"token_key": "tk0001", "class_id": "1", "dataset": "toy"}
    good = token_file_bytes("<dct-toy-00001>", torch.ones(4), meta)
    store.write_token("toy", "tk0001", 1, good)
    token, vec, _ = load_stored_token(store, "toy", "tk0001", 1, "<dct-toy-00001>")
    assert token == "<dct-toy-00001>" and torch.equal(vec, torch.ones(4))

    store.write_token("toy", "tk0001", 1, good[:-3])  # truncated
    with pytest.raises(ValueError, match="unreadable"):
        load_stored_token(store, "toy", "tk0001", 1)
    store.write_token("toy", "tk0001", 1, good)
    with pytest.raises(ValueError, match="expected '<dct-toy-00002>'"):
        load_stored_token(store, "toy", "tk0001", 1, "<dct-toy-00002>")
    store.write_token("toy", "tk0001", 2, good)  # copied to another class's location
    with pytest.raises(ValueError, match="is the token of class_id '1', not '2'"):
        load_stored_token(store, "toy", "tk0001", 2)
    with pytest.raises(FileNotFoundError):
        load_stored_token(store, "toy", "tk0001", 3)


def test_multi_vector_bundle_loads_with_the_same_one_call(store, make_record, tiny_pipe):
    dim = tiny_pipe.text_encoder.get_input_embeddings().weight.shape[1]
    records, vectors = _store_tokens(store, make_record, dim, num_vectors=3)
    uri, _ = export_bundle(store, records, "run-1")
    _, stacked, _ = read_bundle(store.read_bytes(uri))
    assert stacked.shape == (3, 3, dim)
    load_bundle_into(tiny_pipe, uri, store)
    tok, emb = tiny_pipe.tokenizer, tiny_pipe.text_encoder.get_input_embeddings().weight
    for token, vec in vectors.items():
        for j, name in enumerate([token, f"{token}_1", f"{token}_2"]):
            assert torch.equal(emb[tok.convert_tokens_to_ids(name)].detach(), vec[j])


def test_sdxl_bundle_loads_with_one_call_per_text_encoder(store, make_record, tmp_path):
    from tiny import tiny_sdxl_pipeline

    from dct.artifacts.bundle import bundle_vector

    pipe = tiny_sdxl_pipeline(tmp_path)
    records, vectors = _store_tokens(store, make_record, (32, 40), num_vectors=2)
    uri, manifest = export_bundle(store, records, "run-1")
    tokens, stacked, _ = read_bundle(store.read_bytes(uri))
    assert {k: tuple(v.shape) for k, v in stacked.items()} == {"clip_l": (3, 2, 32), "clip_g": (3, 2, 40)}
    assert all(torch.equal(bundle_vector(stacked, i)["clip_g"], vectors[t]["clip_g"]) for i, t in enumerate(tokens))
    assert "text_encoder_2" in manifest.load
    load_bundle_into(pipe, uri, store)
    encoders = (("clip_l", pipe.tokenizer, pipe.text_encoder), ("clip_g", pipe.tokenizer_2, pipe.text_encoder_2))
    for key, tok, te in encoders:
        emb = te.get_input_embeddings().weight
        for token, vec in vectors.items():
            assert torch.equal(emb[tok.convert_tokens_to_ids(token)].detach(), vec[key][0])
            assert torch.equal(emb[tok.convert_tokens_to_ids(f"{token}_1")].detach(), vec[key][1])


def test_every_command_finds_the_bundle_by_its_folder_or_its_file(store, make_record, tmp_path, monkeypatch):
    """`--bundle`: the folder `dct run` prints or the file in it; local, store-relative or s3://; else one error."""
    from dct.artifacts.bundle import resolve_bundle_uri

    records, _ = _store_tokens(store, make_record, 8)
    uri, _ = export_bundle(store, records, "run-1")
    folder = uri.rsplit("/", 1)[0]
    monkeypatch.chdir(tmp_path)  # not the store: a relative path is looked up under the store root next
    for given in (uri, folder, folder + "/", "runs/toy/run-1/bundle", "runs/toy/run-1/bundle/tokens.safetensors"):
        at, found = resolve_bundle_uri(given, store)
        assert found == uri, given
        assert read_bundle(at.read_bytes(found))[0] == [f"<dct-toy-{c:05d}>" for c in CLASSES]
    with pytest.raises(ValueError, match=r"is a folder without tokens\.safetensors"):
        resolve_bundle_uri(uri.split("/runs/", 1)[0] + "/runs/toy/run-1", store)
    with pytest.raises(FileNotFoundError, match="'runs/toy/run-2/bundle' does not exist"):
        resolve_bundle_uri("runs/toy/run-2/bundle", store)


def test_the_manifest_is_written_after_the_tensors(local_store, make_record, monkeypatch):
    """docs/storage.md: "an existing manifest means a complete bundle" — the write order is what makes it so."""
    records, _ = _store_tokens(local_store, make_record, 8)
    writes: list[str] = []
    real = local_store.write_bytes

    def recording(uri, data):
        writes.append(uri)
        return real(uri, data)

    monkeypatch.setattr(local_store, "write_bytes", recording)
    export_bundle(local_store, records, "run-1")
    assert writes == [bundle_uri(local_store, "toy", "run-1"), manifest_uri(local_store, "toy", "run-1")]


def _with_copies(store, records):
    """``records`` as the shard writes them: each finished one carries a copy of its token file."""
    def copy(r):
        return r.token_file_field(store.read_token(r.dataset, r.token_key, r.class_id))

    return [r.model_copy(update={"token_file_base64": copy(r)}) if r.finished else r for r in records]


def token_reads(store) -> int:
    return sum(n for (op, kind), n in store.requests.items() if op == "get" and kind == "tokens")


@pytest.mark.parametrize("dim", [8, (8, 12)], ids=["one-encoder", "sdxl"])
def test_the_bundle_is_built_from_the_records_copies_without_a_token_read(store, make_record, dim):
    """docs/storage.md: the parent builds the bundle from the token copies in the records it has read — no token
    file is read (at 10,000 classes on S3 a third of its requests) — and the bundle holds those tokens exactly."""
    records, vectors = _store_tokens(store, make_record, dim, num_vectors=2 if isinstance(dim, tuple) else None)
    records = _with_copies(store, records)
    before = token_reads(store)
    uri, manifest = export_bundle(store, records, "run-1")
    assert token_reads(store) == before  # not one token file read
    tokens, stacked, _ = read_bundle(store.read_bytes(uri))
    assert tokens == [f"<dct-toy-{c:05d}>" for c in CLASSES] == [e.token for e in manifest.tokens]
    for i, token in enumerate(tokens):
        want = vectors[token]
        got = {k: v[i] for k, v in stacked.items()} if isinstance(stacked, dict) else stacked[i]
        if isinstance(want, dict):
            assert all(torch.equal(got[k], want[k]) for k in want)
        else:
            assert torch.equal(got, want)


def test_records_without_a_copy_read_their_token_file(store, make_record):
    """Records written before records carried the copy still bundle: only their token files are read."""
    records, vectors = _store_tokens(store, make_record, 8)
    with_copies = _with_copies(store, records)
    mixed = [with_copies[0], *records[1:]]  # class 0 has a copy, classes 3 and 11 (and the failed 5) do not
    before = token_reads(store)
    uri, _ = export_bundle(store, mixed, "run-1")
    assert token_reads(store) - before == 2
    tokens, stacked, _ = read_bundle(store.read_bytes(uri))
    assert all(torch.equal(stacked[i], vectors[t]) for i, t in enumerate(tokens)) and len(tokens) == 3


def test_a_copy_that_contradicts_its_record_is_refused(local_store, make_record):
    """The copy is checked as a token file is: another class's token, or bytes that are not a token file, in a
    record fail the bundle with a message naming the class (nothing is bundled from it)."""
    store = local_store
    records, _ = _store_tokens(store, make_record, 8)
    records = _with_copies(store, records)
    foreign = records[1].model_copy(update={"token_file_base64": records[2].token_file_base64})  # class 11's token
    with pytest.raises(ValueError, match="the token file copy in the record of class 3 holds '<dct-toy-00011>'"):
        export_bundle(store, [records[0], foreign, records[2]], "run-2")
    garbage = records[1].model_copy(update={"token_file_base64": base64.b64encode(b"not a token").decode()})
    with pytest.raises(ValueError, match="the token file copy in the record of class 3 is unreadable"):
        export_bundle(store, [records[0], garbage, records[2]], "run-2")
    not_base64 = records[1].model_copy(update={"token_file_base64": "%%%"})
    with pytest.raises(ValueError, match="class 3: the record's token_file_base64 is not base64"):
        export_bundle(store, [records[0], not_base64, records[2]], "run-2")
    assert not store.exists(bundle_uri(store, "toy", "run-2"))
