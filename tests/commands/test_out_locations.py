"""Output locations: `dct optimize --out` takes a local path or an s3:// URI and writes through the store."""

from __future__ import annotations

from dct.artifacts.token_file import read_token_bytes
from dct.cli import main


def test_optimize_out_s3_puts_the_token_in_the_bucket(s3_bucket, aws_env, tmp_path, monkeypatch, capsys):
    import boto3

    monkeypatch.chdir(tmp_path)
    uri = f"s3://{s3_bucket}/team/tokens/toy-3.safetensors"
    argv = ["optimize", "--dataset", "toy", "--class", "3", "--max-epochs", "1", "--out", uri]
    assert main([*argv, "--device", "cpu", "--no-progress"]) == 0, capsys.readouterr().err
    assert f"token file: {uri}" in capsys.readouterr().out
    body = boto3.client("s3", endpoint_url=aws_env).get_object(Bucket=s3_bucket, Key="team/tokens/toy-3.safetensors")
    token, vector, meta = read_token_bytes(body["Body"].read())
    assert (token, meta["class_id"], meta["dataset"]) == ("<dct-toy-00003>", "3", "toy") and vector.ndim == 1
    assert list(tmp_path.iterdir()) == []  # nothing on local disk (no ./s3:/bucket/...)
