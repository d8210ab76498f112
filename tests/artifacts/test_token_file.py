"""Token file bytes: the same token and metadata give the same bytes in every process."""

from __future__ import annotations

import subprocess
import sys

import torch
from safetensors import safe_open

from dct.artifacts.token_file import read_token_bytes, token_file_bytes

WRITE = """
import sys, torch
from dct.artifacts.token_file import token_file_bytes
meta = {k: str(i) for i, k in enumerate("abcdefghijklmnop")} | {"class_name": "grüner Vogel"}
sys.stdout.buffer.write(token_file_bytes("<dct-toy-00003>", torch.arange(8.0), meta))
"""


def test_token_file_bytes_are_the_same_in_every_process(tmp_path):
    # safetensors' own header order changes per process (a Rust HashMap): without the canonical header the
    # three writes below differ, and a re-run could not tell "same token" from its bytes.
    outs = {subprocess.run([sys.executable, "-c", WRITE], capture_output=True, check=True).stdout for _ in range(3)}
    assert len(outs) == 1
    data = outs.pop()
    token, vector, meta = read_token_bytes(data)
    assert token == "<dct-toy-00003>" and torch.equal(vector, torch.arange(8.0))
    assert meta["class_name"] == "grüner Vogel"
    path = tmp_path / "t.safetensors"
    path.write_bytes(data)
    with safe_open(str(path), framework="pt") as f:  # the reference reader still accepts the rewritten header
        assert f.metadata()["p"] == "15" and torch.equal(f.get_tensor(token), vector)
    assert data == token_file_bytes(token, vector, meta)
