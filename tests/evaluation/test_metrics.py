"""FID/KID on real image features: sanity, agreement with a direct scipy computation, sample minimums,
feature caches, and the Inception weights' "missing → clear error" path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import linalg

from dct.artifacts.store import ArtifactStore
from dct.evaluation.features import (
    ClassifierFeatures,
    FeatureWeightsMissingError,
    extract_features,
    load_inception_state_dict,
    reference_batches,
    reference_features,
    resolve_inception_weights,
)
from dct.evaluation.metrics import fid_from_features, kid_from_features, kid_subset_size, min_fid_samples


def scipy_fid(a: torch.Tensor, b: torch.Tensor) -> float:
    """FID the textbook way (Heusel et al. 2017): Gaussian fits, scipy's matrix square root."""
    a, b = a.double().numpy(), b.double().numpy()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean, _ = linalg.sqrtm(cov_a @ cov_b, disp=False)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * covmean.real))


@pytest.fixture(scope="module")
def evaluator_features():
    """The toy world's held-out evaluator (its shipped weights), else the same architecture at a fixed
    random init: features of a real network on the toy world's real (procedural) images."""
    from dct.config import PreprocessConfig
    from dct.models.interface import ImageClassifier
    from dct.models.preprocess import DifferentiablePreprocess
    from dct.toy.models import ToyConvNet, classifier_path

    if classifier_path("evaluator").is_file():
        from dct.config import ClassifierConfig
        from dct.models.classifiers import load_classifier

        clf = load_classifier(ClassifierConfig(kind="toy", model_id="evaluator")).classifier
        name = "toy evaluator (shipped weights)"
    else:
        torch.manual_seed(0)
        pre = PreprocessConfig(resize=32, crop=32, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
        clf = ImageClassifier(ToyConvNet(10, width=32), DifferentiablePreprocess(pre), [str(i) for i in range(10)])
        name = "toy evaluator architecture, random init (weights not shipped yet)"
    return ClassifierFeatures(clf, name=name, input_img_size=(3, 32, 32))


@pytest.fixture(scope="module")
def reference_and_noise(evaluator_features):
    store = ArtifactStore("memory://unused")
    images = torch.cat([imgs for imgs, _ in reference_batches(store, "toy:shapes", max_images=320)])
    noise = torch.rand(images.shape[0] // 2, *images.shape[1:], generator=torch.Generator().manual_seed(0))
    return extract_features(evaluator_features, images), extract_features(evaluator_features, noise)


def test_fid_sanity_halves_vs_noise(reference_and_noise, evaluator_features):
    ref, noise = reference_and_noise
    # The generator cycles through the classes, so the first and second halves hold every class equally.
    half_a, half_b = ref[: ref.shape[0] // 2], ref[ref.shape[0] // 2 :]
    fid_ab = fid_from_features(half_a, half_b)
    fid_noise = fid_from_features(ref, noise)
    kid_ab, kid_ab_std, size = kid_from_features(half_a, half_b)
    kid_noise, kid_noise_std, _ = kid_from_features(ref, noise)
    print(
        f"\n[{evaluator_features.name}; {ref.shape[1]}-d, {half_a.shape[0]}+{half_b.shape[0]} reference, "
        f"{noise.shape[0]} noise]\nFID(ref A, ref B) = {fid_ab:.4g}   FID(ref, noise) = {fid_noise:.4g}   "
        f"ratio {fid_ab / fid_noise:.2g}\n"
        f"KID(ref A, ref B) = {kid_ab:.4g} ± {kid_ab_std:.2g}   KID(ref, noise) = {kid_noise:.4g} ± "
        f"{kid_noise_std:.2g}   (subset size {size}, 100 subsets)"
    )
    assert fid_ab < 0.05 * fid_noise
    assert kid_ab < 0.05 * kid_noise and kid_noise > 3 * kid_noise_std > 0


def test_torchmetrics_fid_equals_scipy(reference_and_noise):
    ref, noise = reference_and_noise
    for a, b in ((ref[:160], ref[160:]), (ref, noise)):
        ours, direct = fid_from_features(a, b), scipy_fid(a, b)
        rel = abs(ours - direct) / abs(direct)
        print(f"\ntorchmetrics {ours:.10g}  scipy {direct:.10g}  relative difference {rel:.2e}")
        assert rel < 1e-3


def test_kid_reports_std_is_deterministic_and_leaves_global_rng_alone(reference_and_noise):
    ref, noise = reference_and_noise
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    first = kid_from_features(ref, noise)
    after = torch.rand(1)
    assert torch.equal(before, after)  # the subsets' RNG is forked
    assert first == kid_from_features(ref, noise)
    _mean, std, size = first
    assert std > 0 and size == kid_subset_size(ref.shape[0], noise.shape[0]) < min(ref.shape[0], noise.shape[0])
    with pytest.raises(ValueError, match="subset_size"):
        kid_from_features(ref, noise[:10], subset_size=11)


def test_fid_refuses_fewer_samples_than_feature_dimensions():
    d = 16
    assert min_fid_samples(d) == 17
    ok = torch.randn(17, d)
    fid_from_features(ok, torch.randn(17, d))
    with pytest.raises(ValueError, match=r"needs at least 17 images per set, got 17 reference and 16 generated"):
        fid_from_features(ok, torch.randn(16, d))
    with pytest.raises(ValueError, match="same D"):
        fid_from_features(ok, torch.randn(20, d + 1))


def test_reference_features_are_cached_in_the_store(evaluator_features, tmp_path, monkeypatch):
    store = ArtifactStore(str(tmp_path / "store"))
    feats, ids, uri = reference_features(store, "toy", "toy:shapes", evaluator_features, max_images=100)
    assert uri.startswith(store.cache_uri("toy")) and store.exists(uri)
    assert feats.shape == (100, evaluator_features.num_features) and sorted(set(ids.tolist())) == list(range(10))

    def boom(*a, **k):
        raise AssertionError("reference features must come from the cache")

    monkeypatch.setattr(evaluator_features, "forward", boom)
    again, again_ids, again_uri = reference_features(store, "toy", "toy:shapes", evaluator_features, max_images=100)
    assert again_uri == uri and torch.equal(again, feats) and torch.equal(again_ids, ids)


def test_folder_reference_labels_from_class_folders(tmp_path):
    from eval_world import write_reference_folder

    folder = write_reference_folder(tmp_path / "ref", [2, 5], 3)
    (tmp_path / "ref" / "notes.txt").write_text("not an image")
    batches = list(reference_batches(ArtifactStore(str(tmp_path / "s")), str(folder), batch_size=4))
    labels = torch.cat([b[1] for b in batches]).tolist()
    assert labels == [2, 2, 2, 5, 5, 5]
    assert all(b[0].shape[1:] == (3, 32, 32) and b[0].min() >= 0 and b[0].max() <= 1 for b in batches)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list(reference_batches(ArtifactStore(str(tmp_path / "s")), str(tmp_path / "nope")))


def test_inception_weights_missing_names_where_to_put_them(tmp_path):
    store = ArtifactStore(str(tmp_path / "store"))
    with pytest.raises(FeatureWeightsMissingError) as err:
        resolve_inception_weights(store, environ={})
    msg = str(err.value)
    expected = store.uri("models", "inception", "weights-inception-2015-12-05-6726825d.pth")
    assert expected in msg and "DCT_INCEPTION_WEIGHTS" in msg and "github.com/toshas/torch-fidelity" in msg
    assert "fid_features='evaluator'" in msg

    # Found: an explicit path, then the environment variable, then the store location.
    local = tmp_path / "w.safetensors"
    local.write_bytes(b"x")
    assert resolve_inception_weights(store, environ={"DCT_INCEPTION_WEIGHTS": str(local)}) == str(local)
    store.write_bytes(expected, b"x")
    assert resolve_inception_weights(store, environ={}) == expected


def test_inception_config_without_weights_fails_before_any_work(tmp_path):
    from tiny import tiny_run_config

    from dct.evaluation.features import build_feature_extractor, check_fid_features
    from dct.evaluation.metrics import pooled_metrics

    config = tiny_run_config()
    config = config.model_copy(
        update={"evaluation": config.evaluation.model_copy(update={"fid_features": "inception"})}
    )
    store = ArtifactStore(str(tmp_path / "store"))
    with pytest.raises(FeatureWeightsMissingError, match="models/inception"):
        check_fid_features(config, store, environ={})  # the preflight: no model is loaded
    with pytest.raises(FeatureWeightsMissingError, match="models/inception"):
        build_feature_extractor(config, store, environ={})
    no_eval = config.model_copy(
        update={"evaluation": config.evaluation.model_copy(update={"fid_features": "evaluator"})}
    )
    assert "has no held-out evaluator" in check_fid_features(no_eval, store)  # skipped with a reason, not fatal
    assert pooled_metrics(store, no_eval, [], reference_images="toy:shapes").notes == [
        check_fid_features(no_eval, store)
    ]
    with pytest.raises(ValueError, match="has no held-out evaluator"):
        build_feature_extractor(no_eval, store)


def test_inception_checkpoint_loading_never_unpickles_code(tmp_path):
    import io
    import pickle

    from safetensors.torch import save

    tensors = {"fc.weight": torch.ones(2, 2)}
    assert torch.equal(load_inception_state_dict(save(tensors))["fc.weight"], tensors["fc.weight"])
    buf = io.BytesIO()
    torch.save(tensors, buf)
    assert torch.equal(load_inception_state_dict(buf.getvalue())["fc.weight"], tensors["fc.weight"])

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with pytest.raises(ValueError, match="could not be loaded"):
        load_inception_state_dict(pickle.dumps({"x": Evil()}))


def test_inception_extractor_from_store_weights(tmp_path, monkeypatch):
    """The whole Inception path with RANDOM weights (the real ones cannot be downloaded here): weights found
    in the store, loaded without unpickling code, handed to torch-fidelity, 2048-d features out."""
    import torch_fidelity.feature_extractor_inceptionv3 as fe
    from safetensors.torch import save

    from dct.evaluation.features import load_inception_features

    with monkeypatch.context() as m:  # build the architecture without its (unavailable) download
        m.setattr(fe, "load_state_dict_from_url", lambda *a, **k: {})
        m.setattr(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, *a, **k: None)
        torch.manual_seed(0)
        random_weights = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"]).state_dict()
    store = ArtifactStore(str(tmp_path / "store"))
    uri = store.write_bytes(
        store.uri("models", "inception", "weights-inception-2015-12-05-6726825d.safetensors"), save(random_weights)
    )
    assert resolve_inception_weights(store, environ={}) == uri
    extractor = load_inception_features(store, environ={})
    assert extractor.num_features == 2048 and extractor.name.startswith("inception-v3-compat:2048@sha256:")
    assert torch.equal(extractor.net.state_dict()["fc.weight"], random_weights["fc.weight"])
    feats = extract_features(extractor, torch.rand(3, 3, 32, 32), batch_size=2)
    assert feats.shape == (3, 2048) and feats.dtype == torch.float32 and torch.isfinite(feats).all()


def test_folder_reference_cache_follows_the_files(evaluator_features, tmp_path):
    from eval_world import write_reference_folder

    store = ArtifactStore(str(tmp_path / "store"))
    folder = write_reference_folder(tmp_path / "ref", [0, 1], 4)
    feats, _, uri = reference_features(store, "toy", str(folder), evaluator_features)
    assert reference_features(store, "toy", str(folder), evaluator_features)[2] == uri  # unchanged: same entry
    write_reference_folder(folder, [2], 4)  # new reference images: new cache entry, recomputed
    more, ids, uri2 = reference_features(store, "toy", str(folder), evaluator_features)
    assert uri2 != uri and more.shape[0] == feats.shape[0] + 4 and sorted(set(ids.tolist())) == [0, 1, 2]
