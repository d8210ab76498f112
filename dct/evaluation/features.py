"""Features for FID/KID: the extractors (held-out evaluator or Inception), reference sets and the feature cache.

- ``EvaluationConfig.fid_features``: ``"evaluator"`` = the held-out evaluator's pooled penultimate features
  through its own preprocessing (:meth:`ImageClassifier.features`); ``"inception"`` = the standard FID network
  (torch-fidelity's TF-ported InceptionV3, 2048-d pool features), with weights from a local or store path
  because offline workers cannot download them (:func:`resolve_inception_weights`).
- Features are extracted once and cached in the store: the reference set's once per dataset + extractor +
  reference source, each class's samples once per ``eval_key`` + extractor.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import logging
import os
import posixpath
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from dct.artifacts.images import decode_image
from dct.artifacts.store import VARIANTS, ArtifactStore
from dct.config import RunConfig, short_hash
from dct.models.interface import ImageClassifier
from dct.results import ClassRecord

logger = logging.getLogger(__name__)

# Bump when the way features are extracted or cached changes: old cache entries are then ignored.
FEATURE_CACHE_VERSION = 1
# Per-class sample features: 2 = written by the shards, stamped with the sample set (run id + start).
SAMPLE_FEATURES_VERSION = 2


DEFAULT_MAX_REFERENCE_IMAGES = 50_000


TOY_REFERENCE_PER_CLASS = 128


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


# The standard FID network: torch-fidelity's InceptionV3 converted from the TensorFlow FID weights.
INCEPTION_WEIGHTS_ENV = "DCT_INCEPTION_WEIGHTS"


INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"


INCEPTION_WEIGHTS_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
)


INCEPTION_LICENCE = "Apache-2.0 (TensorFlow Inception-v3 FID weights, converted by torch-fidelity)"


INCEPTION_FEATURES = "2048"


class FeatureWeightsMissingError(FileNotFoundError):
    """The Inception weights for FID/KID are not available on this worker (no download on offline workers)."""


class FeatureExtractor(nn.Module):
    """Images ``(B, 3, H, W)`` float in [0, 1] → features ``(B, D)`` float32, frozen.

    Attributes:
        name: identifies the network and its weights (written to ``fid_feature_extractor``; keys the caches).
        num_features: ``D``.
        licence: licence of the weights (shown in the report).
    """

    name: str
    num_features: int
    licence: str


class ClassifierFeatures(FeatureExtractor):
    """A dataset classifier's pooled penultimate features, through the classifier's own preprocessing.

    Args:
        classifier: the (held-out) classifier; its ``features`` method does resize/crop/normalise.
        name: e.g. ``"evaluator:toy:evaluator@<revision>"``.
        input_img_size: ``(3, H, W)`` of the dummy image that determines ``num_features`` (the generated
            images' size; torchmetrics calls this ``input_img_size`` for custom extractors).
        licence: the classifier's licence.
    """

    def __init__(
        self,
        classifier: ImageClassifier,
        *,
        name: str,
        input_img_size: tuple[int, int, int] = (3, 224, 224),
        licence: str = "unknown",
    ) -> None:
        super().__init__()
        self.classifier = classifier
        self.name = name
        self.licence = licence
        device = next(classifier.parameters()).device
        with torch.no_grad():
            self.num_features = int(classifier.features(torch.rand(2, *input_img_size, device=device)).shape[-1])

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier.features(images).float()


class InceptionFeatures(FeatureExtractor):
    """torch-fidelity's InceptionV3 (``inception-v3-compat``, 2048-d pool features), the standard FID network.

    Images are quantised to uint8 first, as FID implementations do with generated images; the network
    resizes to 299×299 with TensorFlow-compatible bilinear interpolation.

    Args:
        state_dict: the weights (from :func:`load_inception_state_dict`).
        name: e.g. ``"inception-v3-compat:2048@sha256:1234abcd..."``.
    """

    def __init__(self, state_dict: Mapping[str, torch.Tensor], *, name: str) -> None:
        super().__init__()
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        # torch-fidelity only loads weights from a path, with torch.load(weights_only=False); the tensors
        # were already loaded safely (safetensors or weights_only=True), so re-save them to a private file.
        with tempfile.TemporaryDirectory(prefix="dct-inception-") as tmp:
            path = os.path.join(tmp, "weights.pth")
            torch.save(dict(state_dict), path)
            self.net = FeatureExtractorInceptionV3(
                "inception-v3-compat", [INCEPTION_FEATURES], feature_extractor_weights_path=path
            )
        self.name = name
        self.num_features = 2048
        self.licence = INCEPTION_LICENCE

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.clamp(0, 1) * 255).round().to(torch.uint8)
        return self.net(x)[0].reshape(x.shape[0], -1).float()


def _read_uri(store: ArtifactStore, uri: str) -> bytes:
    """Bytes of a file inside the store (any protocol) or of a local path / other fsspec URI."""
    try:
        path = store.to_path(uri)
    except ValueError:
        path = None
    if path is not None:
        return store.read_bytes(uri)
    import fsspec

    with fsspec.open(uri, "rb") as f:
        return f.read()


def _exists(store: ArtifactStore, uri: str) -> bool:
    try:
        return store.exists(uri)
    except ValueError:  # outside the store
        import fsspec

        fs, path = fsspec.core.url_to_fs(uri)
        return bool(fs.exists(path))


def inception_weight_candidates(
    store: ArtifactStore, weights: str | None = None, environ: Mapping[str, str] | None = None
) -> list[str]:
    """Where the Inception weights are looked for, in order.

    1. ``weights`` (a local path or URI), 2. ``$DCT_INCEPTION_WEIGHTS``, 3. the store's
    ``models/inception/`` folder (``.safetensors`` first, then torch-fidelity's ``.pth`` file).
    """
    env = os.environ if environ is None else environ
    out = [w for w in (weights, env.get(INCEPTION_WEIGHTS_ENV)) if w]
    stem = INCEPTION_WEIGHTS_FILE.removesuffix(".pth")
    out += [
        store.uri("models", "inception", stem + ".safetensors"),
        store.uri("models", "inception", INCEPTION_WEIGHTS_FILE),
    ]
    return out


def resolve_inception_weights(
    store: ArtifactStore, weights: str | None = None, environ: Mapping[str, str] | None = None
) -> str:
    """The first existing location of the Inception weights (see :func:`inception_weight_candidates`).

    Raises:
        FeatureWeightsMissingError: none exists; the message names every place looked and how to fill one.
    """
    candidates = inception_weight_candidates(store, weights, environ)
    for uri in candidates:
        if _exists(store, uri):
            return uri
    raise FeatureWeightsMissingError(
        "Inception weights for FID/KID (fid_features='inception') were not found; looked in: "
        + ", ".join(repr(c) for c in candidates)
        + f". Download {INCEPTION_WEIGHTS_URL} where the network is reachable and put it at "
        f"{candidates[-1]!r} (or point ${INCEPTION_WEIGHTS_ENV} at it), or set fid_features='evaluator' or 'none'"
    )


def load_inception_state_dict(data: bytes, what: str = "Inception weights") -> dict[str, torch.Tensor]:
    """Tensors of an Inception checkpoint: safetensors, or a torch file loaded with ``weights_only=True``.

    Raises:
        ValueError: the bytes are neither (a pickle with code objects is refused, never executed).
    """
    if data[:8] and data[8:9] == b"{":  # safetensors: 8-byte header length, then a JSON header
        from safetensors.torch import load as load_safetensors

        return load_safetensors(data)
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises several unrelated types for a bad/unsafe file
        raise ValueError(f"{what} could not be loaded as safetensors or a plain tensor checkpoint: {exc}") from None
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{what} is not a state dict of tensors")
    return obj


def load_inception_features(
    store: ArtifactStore, weights: str | None = None, environ: Mapping[str, str] | None = None
) -> InceptionFeatures:
    """The Inception feature extractor with weights from ``weights``, ``$DCT_INCEPTION_WEIGHTS`` or the store.

    Raises:
        FeatureWeightsMissingError: no weights anywhere (names where to put them).
    """
    uri = resolve_inception_weights(store, weights, environ)
    data = _read_uri(store, uri)
    digest = hashlib.sha256(data).hexdigest()
    if INCEPTION_WEIGHTS_FILE in uri and not digest.startswith("6726825d"):
        logger.warning("Inception weights %s do not match the published checksum prefix 6726825d", uri)
    return InceptionFeatures(
        load_inception_state_dict(data, uri), name=f"inception-v3-compat:2048@sha256:{digest[:16]}"
    )


def build_feature_extractor(
    config: RunConfig,
    store: ArtifactStore,
    device: torch.device | str = "cpu",
    *,
    evaluator: ImageClassifier | None = None,
    evaluator_revision: str | None = None,
    inception_weights: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> FeatureExtractor:
    """The extractor that ``config.evaluation.fid_features`` names, on ``device``.

    Args:
        evaluator: an already loaded held-out evaluator (else it is loaded from its config).
        evaluator_revision: its resolved revision, when ``evaluator`` is given.
        inception_weights: explicit Inception weights location (see :func:`inception_weight_candidates`).

    Raises:
        ValueError: ``fid_features`` is ``"none"``, or ``"evaluator"`` without an evaluator configured.
        FeatureWeightsMissingError: ``"inception"`` without weights on this worker.
    """
    kind = config.evaluation.fid_features
    if kind == "inception":
        return load_inception_features(store, inception_weights, environ).to(device)
    if kind == "evaluator":
        ev = config.evaluation.evaluator
        if ev is None:
            raise ValueError(
                f"fid_features='evaluator' but dataset {config.dataset!r} has no held-out evaluator; configure "
                "one (evaluation.evaluator) or use fid_features='inception' (or 'none')"
            )
        if evaluator is None:
            from dct.models.classifiers import load_classifier

            loaded = load_classifier(ev, device)
            evaluator, evaluator_revision = loaded.classifier, loaded.resolved_revision
        evaluator = evaluator.to(device)
        crop = getattr(getattr(evaluator.preprocess, "config", None), "crop", 224)
        size = (3, config.sampler.height or crop, config.sampler.width or crop)
        return ClassifierFeatures(
            evaluator,
            name=f"evaluator:{ev.kind}:{ev.model_id}@{evaluator_revision or 'unknown'}",
            input_img_size=size,
            licence=ev.licence,
        )
    raise ValueError(f"fid_features={kind!r}: no feature extractor; valid: 'evaluator', 'inception'")


def check_fid_features(
    config: RunConfig, store: ArtifactStore, *, weights: str | None = None, environ: Mapping[str, str] | None = None
) -> str | None:
    """Preflight of the pooled metrics, without loading a model: fail before any GPU work, not after it.

    Returns:
        None if FID/KID will be computed (given samples and a reference set), else why not: ``'none'``,
        or ``'evaluator'`` for a dataset without a held-out evaluator (e.g. cub and inat out of the box;
        not an error, so default configs still run — set ``fid_features='inception'`` for them).

    Raises:
        FeatureWeightsMissingError: ``fid_features='inception'`` and no Inception weights on this worker.
    """
    kind = config.evaluation.fid_features
    if kind == "inception":
        resolve_inception_weights(store, weights, environ)
        return None
    if kind == "none":
        return "fid_features='none' in the evaluation config"
    if config.evaluation.evaluator is None:
        return (
            f"fid_features='evaluator' but dataset {config.dataset!r} has no held-out evaluator; configure one "
            "(evaluation.evaluator) or use fid_features='inception'"
        )
    return None


@torch.no_grad()
def extract_features(extractor: FeatureExtractor, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Features ``(N, D)`` float32 on the CPU of images ``(N, 3, H, W)`` in [0, 1], in batches."""
    device = next(extractor.parameters()).device
    out = [extractor(images[i : i + batch_size].to(device)).cpu() for i in range(0, images.shape[0], batch_size)]
    return torch.cat(out) if out else torch.zeros(0, extractor.num_features)


def _same_size_batches(
    items: Iterator[tuple[torch.Tensor, int]], batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Group consecutive images of equal size into batches ``((B, 3, H, W), labels (B,))``."""
    imgs: list[torch.Tensor] = []
    labels: list[int] = []
    for img, label in items:
        if imgs and (img.shape != imgs[0].shape or len(imgs) == batch_size):
            yield torch.stack(imgs), torch.tensor(labels, dtype=torch.long)
            imgs, labels = [], []
        imgs.append(img)
        labels.append(label)
    if imgs:
        yield torch.stack(imgs), torch.tensor(labels, dtype=torch.long)


REFERENCE_SOURCES: dict[str, ReferenceSource] = {}
# Cheap checks that a registered source can deliver, run by the plan before any work (scheme -> check).
REFERENCE_CHECKS: dict[str, Callable[[str], None]] = {}


def register_reference_source(scheme: str) -> Callable[[ReferenceSource], ReferenceSource]:
    """Register a generator of reference images for ``reference_images = "{scheme}:..."``."""

    def deco(fn: ReferenceSource) -> ReferenceSource:
        REFERENCE_SOURCES[scheme] = fn
        return fn

    return deco


@register_reference_source("toy")
def _toy_reference(
    store: ArtifactStore, reference: str, max_images: int, batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The toy world's procedural generator (``toy:shapes``): labelled, regenerated bit-for-bit anywhere."""
    from dct.toy import shapes

    if reference != "toy:shapes":
        raise ValueError(f"unknown toy reference set {reference!r}; valid: 'toy:shapes'")
    per_class = max(1, min(TOY_REFERENCE_PER_CLASS, max_images // shapes.NUM_CLASSES))
    images = shapes.reference_images(per_class)
    labels = torch.arange(shapes.NUM_CLASSES).repeat(per_class)  # sample() cycles through the classes
    for i in range(0, images.shape[0], batch_size):
        yield images[i : i + batch_size], labels[i : i + batch_size]


@register_reference_source("fashion")
def _fashion_reference(
    store: ArtifactStore, reference: str, max_images: int, batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Fashion-MNIST's real test split (``fashion:test``), labelled: every image, or the first ``max_images``
    per class share of each class (the Debian package's files, checked by sha256: dct.fashion.data)."""
    from dct.fashion import data

    _check_fashion_reference(reference)
    images, labels = data.load("test")
    num_classes = len(data.LABELS)
    per_class = max(1, max_images // num_classes)
    rows = torch.cat([torch.from_numpy((labels == c).nonzero()[0][:per_class]) for c in range(num_classes)])
    rows = rows.sort().values.numpy()
    for i in range(0, len(rows), batch_size):
        chunk = rows[i : i + batch_size]
        yield data.to_tensor(images[chunk]), torch.from_numpy(labels[chunk].astype("int64"))


def _check_fashion_reference(reference: str) -> None:
    from dct.fashion import data

    if reference != "fashion:test":
        raise ValueError(f"unknown fashion reference set {reference!r}; valid: 'fashion:test'")
    data.data_dir()  # one line naming `apt-get install dataset-fashion-mnist` when the files are not there


REFERENCE_CHECKS["fashion"] = _check_fashion_reference


def check_reference(reference: str | None) -> None:
    """Before any work: a registered reference source can deliver (its check), a local reference folder exists.
    Remote folders are left to the evaluation (listing them here would cost requests on every plan).

    Raises:
        FileNotFoundError / ValueError: one line naming the reference and what to do.
    """
    if reference is None:
        return
    scheme = _reference_scheme(reference)
    if scheme in REFERENCE_CHECKS:
        REFERENCE_CHECKS[scheme](reference)
    elif scheme is None and "://" not in reference and not os.path.isdir(os.path.expanduser(reference)):
        raise FileNotFoundError(
            f"reference_images {reference!r} is not a directory; point it at a folder of real images (a path "
            "relative to the dataset file starts with ./) or remove it to run without FID/KID"
        )


def _reference_files(store: ArtifactStore, reference: str, max_images: int) -> tuple[Any, list[str], list[int]]:
    """``(filesystem, image paths, sizes in bytes)`` of a reference folder, capped to ``max_images``.

    More than ``max_images`` files: an evenly spaced subset of the sorted list (deterministic).
    """
    import fsspec

    opts = {"endpoint_url": store.endpoint_url} if reference.startswith("s3://") and store.endpoint_url else {}
    fs, root = fsspec.core.url_to_fs(reference, **opts)
    if not fs.exists(root):
        raise FileNotFoundError(f"reference_images {reference!r} does not exist")
    found = fs.find(root, detail=True)
    paths = sorted(p for p in found if p.lower().endswith(IMAGE_SUFFIXES))
    if not paths:
        raise ValueError(f"reference_images {reference!r} holds no {'/'.join(IMAGE_SUFFIXES)} files")
    if len(paths) > max_images:
        step = len(paths) / max_images
        paths = [paths[int(i * step)] for i in range(max_images)]
    return fs, paths, [int(found[p].get("size") or 0) for p in paths]


def reference_identity(store: ArtifactStore, reference: str, max_images: int) -> str:
    """What the reference set IS, for the cache key: a generator's name, or a hash of a folder's listing
    (relative paths and sizes), so adding or replacing files invalidates the cached features."""
    if _reference_scheme(reference) in REFERENCE_SOURCES:
        return reference
    _, paths, sizes = _reference_files(store, reference, max_images)
    root = os.path.commonpath(paths) if len(paths) > 1 else posixpath.dirname(paths[0])
    return f"{reference}#files={len(paths)}:" + short_hash(
        [[posixpath.relpath(p, root), n] for p, n in zip(paths, sizes, strict=True)]
    )


def _file_reference(
    store: ArtifactStore, reference: str, max_images: int, batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Image files under a folder (local path or URI); a parent folder named by digits is the class id."""
    fs, paths, _ = _reference_files(store, reference, max_images)

    def items() -> Iterator[tuple[torch.Tensor, int]]:
        for p in paths:
            parent = posixpath.basename(posixpath.dirname(p.replace(os.sep, "/")))
            yield decode_image(fs.cat_file(p)), int(parent) if parent.isdigit() else -1

    yield from _same_size_batches(items(), batch_size)


def _reference_scheme(reference: str) -> str | None:
    return reference.split(":", 1)[0] if ":" in reference and "://" not in reference else None


def reference_batches(
    store: ArtifactStore, reference: str, *, max_images: int = DEFAULT_MAX_REFERENCE_IMAGES, batch_size: int = 64
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Reference images as batches ``(images (B, 3, H, W) in [0, 1], class ids (B,), -1 = unlabelled)``.

    ``reference`` is ``DatasetSpec.reference_images``: ``"toy:shapes"`` (or another registered
    ``scheme:name``), or a folder of image files (local path, ``s3://``, ...).
    """
    scheme = _reference_scheme(reference)
    if scheme in REFERENCE_SOURCES:
        return REFERENCE_SOURCES[scheme](store, reference, max_images, batch_size)
    return _file_reference(store, reference, max_images, batch_size)


def load_class_samples(store: ArtifactStore, record: ClassRecord, variant: str) -> torch.Tensor:
    """The stored samples of one class and variant ``(N, 3, H, W)`` in [0, 1], sorted by seed."""
    uris = store.list_samples(record.dataset, record.eval_key, record.class_id, variant)
    if not uris:
        raise FileNotFoundError(
            f"class {record.class_id} ({variant}) has a finished record but no samples under "
            f"{store.samples_uri(record.dataset, record.eval_key, record.class_id)!r}"
        )
    return torch.stack([decode_image(store.read_bytes(u)) for u in uris])


def _save_tensors(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    from safetensors.torch import save

    return save({k: v.contiguous() for k, v in tensors.items()}, metadata=metadata)


def _load_tensors(data: bytes) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    import json
    import struct

    from safetensors.torch import load

    (header_len,) = struct.unpack("<Q", data[:8])  # safetensors: u64 header length, then a JSON header
    meta = json.loads(data[8 : 8 + header_len]).get("__metadata__") or {}
    return load(data), dict(meta)


def _reference_cache_uri(store: ArtifactStore, dataset: str, extractor_name: str, identity: str) -> str:
    key = short_hash({"v": FEATURE_CACHE_VERSION, "extractor": extractor_name, "reference": identity})
    return store.cache_uri(dataset, "fid-reference", f"{key}.safetensors")


def cached_reference_features(
    store: ArtifactStore,
    dataset: str,
    reference: str,
    extractor_name: str,
    *,
    max_images: int = DEFAULT_MAX_REFERENCE_IMAGES,
) -> tuple[torch.Tensor, torch.Tensor, str] | None:
    """The cached reference features for an extractor NAME (no network is loaded), or None if not cached.

    Returns:
        ``(features (N, D) float32, class ids (N,) int64, cache URI)`` as :func:`reference_features`.
    """
    identity = reference_identity(store, reference, max_images)
    uri = _reference_cache_uri(store, dataset, extractor_name, identity)
    try:
        tensors, meta = _load_tensors(store.read_bytes(uri))
    except FileNotFoundError:
        return None
    if meta.get("extractor") != extractor_name or meta.get("reference") != identity:
        return None
    logger.info("reference features from cache %s (%d images)", uri, tensors["features"].shape[0])
    return tensors["features"], tensors["class_ids"], uri


def reference_features(
    store: ArtifactStore,
    dataset: str,
    reference: str,
    extractor: FeatureExtractor,
    *,
    max_images: int = DEFAULT_MAX_REFERENCE_IMAGES,
    batch_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Features of the whole reference set, computed once per dataset + extractor + source and cached.

    The cache key holds the extractor's name (network + weights revision) and :func:`reference_identity`
    (a folder's listing hash), so a new extractor or changed reference files are recomputed.

    Returns:
        ``(features (N, D) float32, class ids (N,) int64 with -1 = unlabelled, cache URI)``.
    """
    identity = reference_identity(store, reference, max_images)
    cached = cached_reference_features(store, dataset, reference, extractor.name, max_images=max_images)
    if cached is not None:
        return cached
    uri = _reference_cache_uri(store, dataset, extractor.name, identity)
    feats, labels = [], []
    for images, ids in reference_batches(store, reference, max_images=max_images, batch_size=batch_size):
        feats.append(extract_features(extractor, images, batch_size))
        labels.append(ids)
    features, class_ids = torch.cat(feats), torch.cat(labels)
    meta = {"extractor": extractor.name, "reference": identity, "count": str(features.shape[0])}
    store.write_bytes(uri, _save_tensors({"features": features, "class_ids": class_ids}, meta))
    logger.info(
        "reference features: %d images of %r with %s, cached at %s", len(class_ids), reference, extractor.name, uri
    )
    return features, class_ids, uri


def sample_set_stamp(run_id: str, started_at: dt.datetime) -> str:
    """What identifies one class's sample set: the attempt that wrote it (run id + start time, UTC).

    A class re-run with ``force`` under the same ``eval_key`` writes new samples in a new attempt, so
    features cached for the old set no longer match its record and are recomputed.
    """
    return f"{run_id}@{started_at.astimezone(dt.UTC).isoformat()}"


def record_stamp(record: ClassRecord) -> str:
    """:func:`sample_set_stamp` of the attempt a finished record describes."""
    return sample_set_stamp(record.run_id, record.started_at)


def class_features_uri(store: ArtifactStore, dataset: str, eval_key: str, extractor_name: str, class_id: int) -> str:
    """Where one class's sample features are cached, per ``eval_key`` + extractor (name and weights)."""
    ext_key = short_hash({"v": SAMPLE_FEATURES_VERSION, "extractor": extractor_name})
    return store.cache_uri(dataset, "fid-samples", eval_key, ext_key, f"{class_id:05d}.safetensors")


def features_of_encoded(
    extractor: FeatureExtractor, encoded: Mapping[str, Sequence[bytes]], batch_size: int = 64
) -> dict[str, torch.Tensor]:
    """``{variant: features (N, D)}`` of encoded samples, decoded exactly as the stored files are read.

    Decoding the bytes (rather than using the float images) makes the features equal to the ones a
    reader of the stored samples gets: PNG quantises to 8 bits, JPEG/WebP are lossy.
    """
    return {
        v: extract_features(extractor, torch.stack([decode_image(b) for b in blobs]), batch_size)
        for v, blobs in encoded.items()
    }


def write_class_features(
    store: ArtifactStore,
    dataset: str,
    eval_key: str,
    class_id: int,
    extractor: FeatureExtractor,
    features: Mapping[str, torch.Tensor],
    *,
    stamp: str,
) -> str:
    """Cache one class's sample features ``{variant: (N, D)}`` for the sample set ``stamp``; returns the URI.

    Raises:
        ValueError: not exactly the variants :data:`VARIANTS`.
    """
    if set(features) != set(VARIANTS):
        raise ValueError(f"class features need the variants {VARIANTS}, got {sorted(features)!r}")
    uri = class_features_uri(store, dataset, eval_key, extractor.name, class_id)
    meta = {"samples": stamp, "extractor": extractor.name}
    return store.write_bytes(uri, _save_tensors(dict(features), meta))


def _valid_features(data: bytes | None, record: ClassRecord, extractor_name: str) -> dict[str, torch.Tensor] | None:
    if data is None:
        return None
    tensors, meta = _load_tensors(data)
    if meta.get("samples") != record_stamp(record) or meta.get("extractor") != extractor_name:
        return None  # features of another sample set (a forced re-run) or another extractor
    if set(tensors) != set(VARIANTS):
        return None
    return tensors


def read_class_features(
    store: ArtifactStore, records: Sequence[ClassRecord], extractor_name: str
) -> list[dict[str, torch.Tensor] | None]:
    """The cached sample features of each record's class (one parallel batch of reads); None where there
    is no entry or it belongs to another sample set or extractor. Never decodes an image."""
    uris = [class_features_uri(store, r.dataset, r.eval_key, extractor_name, r.class_id) for r in records]
    return [_valid_features(d, r, extractor_name) for r, d in zip(records, store.read_many(uris), strict=True)]


def class_sample_features(
    store: ArtifactStore, record: ClassRecord, extractor: FeatureExtractor, batch_size: int = 64
) -> dict[str, torch.Tensor]:
    """``{variant: features (N, D)}`` of one finished class's samples, cached per ``eval_key`` + extractor.

    Shards write this entry themselves while the images are in memory (:func:`write_class_features`);
    this reads it, or extracts from the stored samples where it is missing or stale (the cache entry
    names the sample set, :func:`record_stamp`: a class re-run with ``force`` is re-extracted).
    """
    (cached,) = read_class_features(store, [record], extractor.name)
    if cached is not None:
        return cached
    tensors = {v: extract_features(extractor, load_class_samples(store, record, v), batch_size) for v in VARIANTS}
    write_class_features(
        store, record.dataset, record.eval_key, record.class_id, extractor, tensors, stamp=record_stamp(record)
    )
    return tensors


def feature_extractor_identity(
    config: RunConfig,
    store: ArtifactStore,
    *,
    evaluator_revision: str | None,
    inception_weights: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> tuple[str, str]:
    """``(name, licence)`` of the extractor :func:`build_feature_extractor` would build, WITHOUT building it.

    The parent of a deployment run uses it to find the features its shards cached. ``inception``: the
    name holds the weights' hash, so the weights file is read (not run).

    Raises:
        ValueError / FeatureWeightsMissingError: as :func:`build_feature_extractor`.
    """
    kind = config.evaluation.fid_features
    if kind == "inception":
        uri = resolve_inception_weights(store, inception_weights, environ)
        digest = hashlib.sha256(_read_uri(store, uri)).hexdigest()
        return f"inception-v3-compat:2048@sha256:{digest[:16]}", INCEPTION_LICENCE
    if kind == "evaluator" and config.evaluation.evaluator is not None:
        ev = config.evaluation.evaluator
        return f"evaluator:{ev.kind}:{ev.model_id}@{evaluator_revision or 'unknown'}", ev.licence
    raise ValueError(f"fid_features={kind!r}: no feature extractor for dataset {config.dataset!r}")


ReferenceSource = Callable[[ArtifactStore, str, int, int], Iterator[tuple[torch.Tensor, torch.Tensor]]]
