"""Classifier loaders on tiny random-weight models, through the same code path as real hub ids."""

from __future__ import annotations

import pytest
import torch
from hub_models import NUM_LABELS, put_in_hf_cache, save_tiny_timm, save_tiny_vit
from safetensors.torch import save_file

from dct.config import ClassifierConfig
from dct.models.classifiers import load_classifier
from dct.models.hub import ModelNotAvailableError


def images(b: int = 3, size: int = 48, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_hf_local_dir_matches_the_model_and_hashes_content(tmp_path):
    from transformers import ViTForImageClassification

    path = save_tiny_vit(tmp_path / "vit")
    loaded = load_classifier(ClassifierConfig(kind="hf", model_id=str(path)))
    clf = loaded.classifier
    assert clf.num_classes == NUM_LABELS and clf.labels[1] == "square"
    x = images()
    ref = ViTForImageClassification.from_pretrained(path).eval()
    with torch.no_grad():
        expected = ref(pixel_values=clf.preprocess(x)).logits
        assert torch.allclose(clf(x), expected, atol=1e-5)
    assert loaded.resolved_revision.startswith("sha256:")
    assert (
        load_classifier(ClassifierConfig(kind="hf", model_id=str(path))).resolved_revision == loaded.resolved_revision
    )
    assert not any(p.requires_grad for p in clf.parameters())
    # differentiable w.r.t. the images (the token's gradient flows through here)
    x.requires_grad_(True)
    clf(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_hf_hub_id_loads_offline_from_cache_with_the_commit_sha(tmp_path, hf_cache):
    src = save_tiny_vit(tmp_path / "vit")
    put_in_hf_cache(src, hf_cache, "google/tiny-vit", sha="1234567890" * 4)
    loaded = load_classifier(ClassifierConfig(kind="hf", model_id="google/tiny-vit"))
    assert loaded.resolved_revision == "1234567890" * 4
    assert loaded.classifier(images()).shape == (3, NUM_LABELS)


def test_uncached_model_with_hub_down_names_the_model_and_the_pull_command(hf_cache):
    with pytest.raises(
        ModelNotAvailableError, match=r"'google/vit-large-patch16-224'.*dct models pull --dataset"
    ) as info:
        load_classifier(ClassifierConfig(kind="hf", model_id="google/vit-large-patch16-224"))
    assert info.value.model_id == "google/vit-large-patch16-224"
    assert "`dct models pull --dataset inet`" in str(info.value.for_dataset("inet"))


def test_vit_mae_head_is_mean_of_patch_tokens_then_layernorm_then_linear(tmp_path):
    from transformers import ViTForImageClassification

    path = save_tiny_vit(tmp_path / "vit-mae")
    clf = load_classifier(ClassifierConfig(kind="vit-mae", model_id=str(path))).classifier
    x = images(b=4)
    stock = ViTForImageClassification.from_pretrained(path).eval()
    with torch.no_grad():
        pixels = clf.preprocess(x)
        # Direct computation, block by block: embeddings -> encoder layers -> mean of PATCH tokens
        # (CLS excluded) -> the checkpoint's `vit.layernorm` (MAE's fc_norm) -> `classifier` (MAE's head).
        h = stock.vit.embeddings(pixels)
        for layer in stock.vit.layers:
            h = layer(h, None)
            h = h[0] if isinstance(h, tuple) else h
        direct = stock.classifier(stock.vit.layernorm(h[:, 1:].mean(dim=1)))
        ours = clf(x)
        assert torch.allclose(ours, direct, atol=1e-5)
        # A stock ViT classifier loads the same weights without complaint but reads the CLS token.
        assert not torch.allclose(ours, stock(pixel_values=pixels).logits, atol=1e-3)
        assert clf.features(x).shape == (4, 32)


def test_timm_local_dir_and_hf_hub_id_use_the_same_factory(tmp_path, hf_cache):
    import timm

    path = save_tiny_timm(tmp_path / "timm")
    local = load_classifier(ClassifierConfig(kind="timm", model_id=str(path)))
    put_in_hf_cache(path, hf_cache, "timm/tiny-vit.test", sha="b" * 40)
    hub = load_classifier(ClassifierConfig(kind="timm", model_id="hf-hub:timm/tiny-vit.test"))
    assert hub.resolved_revision == "b" * 40
    assert local.classifier.labels == hub.classifier.labels == ["circle", "square", "triangle", "cross", "ring"]
    x = images()
    ref = timm.create_model(f"local-dir:{path}", pretrained=True).eval()
    with torch.no_grad():
        assert torch.allclose(local.classifier(x), ref(local.classifier.preprocess(x)), atol=1e-5)
        assert torch.allclose(local.classifier(x), hub.classifier(x), atol=1e-6)
    assert local.classifier.features(x).shape[0] == 3


def test_local_kind_dispatches_on_the_config_layout(tmp_path):
    vit = load_classifier(ClassifierConfig(kind="local", model_id=str(save_tiny_vit(tmp_path / "vit"))))
    tim = load_classifier(ClassifierConfig(kind="local", model_id=str(save_tiny_timm(tmp_path / "timm"))))
    assert vit.classifier.num_classes == tim.classifier.num_classes == NUM_LABELS


@pytest.mark.parametrize("name", ["model.pt", "pytorch_model.bin", "last.ckpt", "weights.pth"])
def test_pickle_checkpoints_are_refused(tmp_path, name):
    d = tmp_path / "pickled"
    d.mkdir()
    torch.save({"w": torch.zeros(1)}, d / name)
    (d / "config.json").write_text("{}")
    for target in (d, d / name):
        with pytest.raises(ValueError, match="refusing pickle checkpoint"):
            load_classifier(ClassifierConfig(kind="local", model_id=str(target)))
    with pytest.raises(ValueError, match="refusing pickle checkpoint"):
        load_classifier(ClassifierConfig(kind="hf", model_id=str(d)))


def test_safetensors_without_config_is_a_clear_error(tmp_path):
    d = tmp_path / "bare"
    d.mkdir()
    save_file({"w": torch.zeros(1)}, d / "model.safetensors")
    with pytest.raises(ValueError, match=r"no config\.json"):
        load_classifier(ClassifierConfig(kind="local", model_id=str(d)))


def test_unknown_kind_lists_the_valid_kinds():
    with pytest.raises(ValueError, match=r"unknown classifier kind 'keras'; valid kinds: .*hf.*local.*timm.*vit-mae"):
        load_classifier(ClassifierConfig(kind="keras", model_id="x"))


def test_hub_repo_with_only_pytorch_model_bin_loads_with_weights_only(tmp_path, hf_cache):
    """The one non-safetensors path (README, "Secrets stay secret"): a hub repo (like the paper's ViT-MAE ones)
    that has only pytorch_model.bin is read with torch's weights_only unpickler — tensors load, a crafted file
    that would run code is refused without running it; a LOCAL pickle is refused outright."""
    from safetensors.torch import load_file

    src = save_tiny_vit(tmp_path / "vit")
    state = load_file(src / "model.safetensors")
    (src / "model.safetensors").unlink()
    torch.save(state, src / "pytorch_model.bin")
    put_in_hf_cache(src, hf_cache, "vesteinn/tiny-vit-mae", sha="7" * 40)
    hub = load_classifier(ClassifierConfig(kind="vit-mae", model_id="vesteinn/tiny-vit-mae"))
    assert hub.resolved_revision == "7" * 40
    assert torch.isfinite(hub.classifier(images())).all()
    with pytest.raises(ValueError, match="refusing pickle"):
        load_classifier(ClassifierConfig(kind="vit-mae", model_id=str(src)))

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):  # unpickling this calls exec(...): what a malicious checkpoint does
            return (exec, (f"open({str(marker)!r}, 'w').write('code ran')",))

    torch.save({**state, "payload": Payload()}, src / "pytorch_model.bin")
    for kind, repo in (("vit-mae", "vesteinn/evil-vit-mae"), ("hf", "someone/evil-vit")):
        put_in_hf_cache(src, hf_cache, repo, sha="6" * 40)
        with pytest.raises(Exception, match=r"(?i)weights.only"):
            load_classifier(ClassifierConfig(kind=kind, model_id=repo))
    assert not marker.exists()
