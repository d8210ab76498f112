"""The artifact store: every file the product keeps, under ONE fsspec root URI.

Layout under the root (docs/storage.md has the full contract)::

    tokens/{dataset}/{token_key}/{class_id:05d}.safetensors           learned token (keyed by token_key)
    samples/{dataset}/{eval_key}/{class_id:05d}/{variant}/{seed:06d}.{ext}
    records/{dataset}/{eval_key}/{class_id:05d}.json                 per-class record = "finished" marker
    attempts/{dataset}/{eval_key}/{class_id:05d}/{run_id}.json       failed attempts (NOT a marker)
    runs/{dataset}/{run_id}/...                                       run record, bundle, report
    results/{table}/dataset={dataset}/run_date={YYYY-MM-DD}/part-{run_id}-{i}.parquet
    cache/{dataset}/...                                               reusable derived data (FID statistics)
    synthetic/{dataset}/{synth_key}/...                               synthetic training sets (docs/synthesis.md)
    _dct/preflight/{name}.json                                        write probes (tiny, never user data)

Rules this module enforces (docs/design.md, "Storage contract"):

- One method builds each location, and the same method is used to write it and to ask "is it there?".
- Every path component that comes from a user (dataset, run id, variant, keys, ...) is validated, so no
  value can escape the root (``..``, ``/``, NUL, absolute paths, over-long names).
- Writes are atomic to readers: locally a temporary name in the same directory, then ``os.replace``; on
  S3 one PUT (multipart uploads, for very large objects, also only appear on completion).
- Nothing here deletes anything. A write replaces only its exact key.
- Buckets are never created: a missing bucket is a configuration error the preflight reports.
- Credentials come only from the environment / the standard AWS chain; they are never parameters of
  this module and never logged.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import re
import threading
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import fsspec

from dct.config import StorageConfig

logger = logging.getLogger(__name__)

STORE_ENV = "DCT_STORE"
DEFAULT_STORE_DIR = "dct-store"
# Endpoint variables in the order botocore itself prefers them (service-specific first).
ENDPOINT_ENVS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
SUPPORTED_PROTOCOLS = ("file", "s3", "memory")

MAX_COMPONENT_LEN = 128
_COMPONENT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
VARIANTS = ("baseline", "dct")
SAMPLE_FORMATS = ("png", "jpeg", "jpg", "webp")
RESULT_TABLES = ("classes", "runs", "probe")
# Parallel reads in the parent (records, tokens, feature files of 10k classes): enough requests in flight
# to hide a 20-50 ms object-store latency, few enough for one process's sockets and memory.
DEFAULT_READ_CONCURRENCY = 64
# Folders of a synthetic set: kept DCT images, the baseline arm, images the filter rejected.
SYNTHETIC_ARMS = ("train", "baseline", "filtered")
# The run report's folder; the probe writes its page beside the report's index so each can link the other.
REPORT_DIR = "report"
PROBE_PAGE = "probe.html"


# ---------------------------------------------------------------------------------------------------------
# Validation of path components
# ---------------------------------------------------------------------------------------------------------


def validate_component(value: object, what: str) -> str:
    """Check that ``value`` is safe as ONE path component under the store root.

    Allowed: 1-128 characters from ``[A-Za-z0-9._-]``, starting with a letter or digit. This rules out
    ``..``, ``/`` and ``\\``, NUL and other control characters, absolute paths, drive letters, hidden or
    temporary names (a leading ``.``) and the ``=`` of hive partition syntax (and anything a URI would percent-encode).

    Args:
        value: the candidate (a dataset name, run id, key, variant, ...).
        what: what the value is, for the error message.

    Returns:
        ``value`` unchanged.

    Raises:
        ValueError: naming the value and the rule.
    """
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, got {value!r} ({type(value).__name__})")
    if not value or len(value) > MAX_COMPONENT_LEN or not _COMPONENT_RE.match(value):
        shown = value if len(value) <= 80 else value[:80] + "..."
        raise ValueError(
            f"{what} {shown!r} is not a safe storage name: use 1-{MAX_COMPONENT_LEN} characters from "
            "[A-Za-z0-9._-] starting with a letter or digit (no '/', '..', NUL, spaces or absolute paths)"
        )
    return value


def validate_class_id(class_id: object) -> int:
    """A class id is a non-negative ``int`` (0-based, equal to the classifier's label id)."""
    if isinstance(class_id, bool) or not isinstance(class_id, int) or class_id < 0:
        raise ValueError(f"class_id must be a non-negative int (0-based label id), got {class_id!r}")
    return class_id


def _class_name(class_id: int) -> str:
    return f"{validate_class_id(class_id):05d}"


# ---------------------------------------------------------------------------------------------------------
# Root resolution
# ---------------------------------------------------------------------------------------------------------


def resolve_store_root(
    store: str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    cwd: str | None = None,
) -> str:
    """The store root URI: ``store`` if given, else ``$DCT_STORE``, else ``./dct-store`` made absolute.

    Local roots (plain paths or ``file://`` URIs) are made absolute once, here, so that nothing later
    depends on the working directory. Remote roots keep their protocol (``s3://bucket/prefix``).

    Args:
        store: the ``--store`` option / flow parameter, or None.
        environ: environment to read ``DCT_STORE`` from (default ``os.environ``).
        cwd: directory relative local roots are resolved against (default: the current directory).

    Returns:
        ``/abs/path`` for local roots, ``PROTOCOL://...`` without a trailing slash otherwise.

    Raises:
        ValueError: an empty root, a NUL character, an unsupported protocol or an S3 URI without a bucket.
    """
    env = os.environ if environ is None else environ
    raw = store if store not in (None, "") else env.get(STORE_ENV) or None
    if raw is None:
        raw = DEFAULT_STORE_DIR
    if "\x00" in raw:
        raise ValueError(f"store root {raw!r} contains a NUL character")
    protocol, _, rest = raw.partition("://") if "://" in raw else ("file", "", raw)
    protocol = protocol.lower()
    if protocol == "s3a":
        protocol = "s3"
    if protocol not in SUPPORTED_PROTOCOLS:
        raise ValueError(
            f"store root {raw!r} uses protocol {protocol!r}; supported: {', '.join(SUPPORTED_PROTOCOLS)} "
            "(e.g. s3://bucket/prefix or a local directory)"
        )
    if protocol == "file":
        path = os.path.expanduser(rest)
        if not os.path.isabs(path):
            path = os.path.join(cwd or os.getcwd(), path)
        return os.path.normpath(path)
    if ".." in rest.split("/"):
        raise ValueError(f"store root {raw!r} contains '..'; give the bucket and prefix directly")
    rest = posixpath.normpath("/" + rest).lstrip("/")  # collapse '//'
    if protocol == "s3" and (not rest or rest == "."):
        raise ValueError(f"store root {raw!r} has no bucket; use s3://BUCKET[/prefix]")
    return f"{protocol}://{rest}" if rest != "." else f"{protocol}://"


def resolve_endpoint_url(storage: StorageConfig | None = None, environ: Mapping[str, str] | None = None) -> str | None:
    """S3 endpoint: ``StorageConfig.endpoint_url``, else ``$AWS_ENDPOINT_URL_S3``, else ``$AWS_ENDPOINT_URL``.

    botocore >= 1.31 reads these variables itself (verified with s3fs 2026.9 against a moto server, see
    tests/artifacts/test_store_s3.py); we still pass the endpoint explicitly so that behaviour does not
    depend on the botocore version or on a shared AWS config file.
    """
    if storage is not None and storage.endpoint_url:
        return storage.endpoint_url
    env = os.environ if environ is None else environ
    for name in ENDPOINT_ENVS:
        if env.get(name):
            return env[name]
    return None


# ---------------------------------------------------------------------------------------------------------
# The store
# ---------------------------------------------------------------------------------------------------------


class StoreUnavailableError(OSError):
    """The store could not be reached (endpoint down, DNS, timeout): a configuration or outage problem."""


class ArtifactStore:
    """All reads and writes of artifacts, under one root URI.

    Methods take and return URIs (``s3://bucket/prefix/...`` or absolute local paths). Locations are
    built only by the ``*_uri`` methods below; every writer and every "finished?" check goes through them.

    Args:
        root: a root as returned by :func:`resolve_store_root`.
        endpoint_url: S3 endpoint (None = AWS default); only for ``s3://`` roots.
        path_style: S3 path-style addressing (MinIO/Ceph behind one DNS name).
        connect_timeout: seconds for one connection attempt to the S3 endpoint.
        max_attempts: botocore attempts per request, the first included (standard retry mode: before
            attempt k+1 it sleeps a random time in [0, 2**(k-1)) s).
        retries: s3fs's tries of the whole call when the attempts run out on a transient error (it sleeps
            0.1 * 1.7**i s after try i).

    Raises:
        ValueError: an unsupported root.
    """

    def __init__(
        self,
        root: str,
        *,
        endpoint_url: str | None = None,
        path_style: bool = False,
        connect_timeout: float = 10.0,
        max_attempts: int = 3,
        retries: int = 3,
    ) -> None:
        self.root = resolve_store_root(root)
        self.protocol = "file" if "://" not in self.root else self.root.split("://", 1)[0]
        if self.protocol == "s3":
            import s3fs  # imported here: local-only users do not pay for aiobotocore

            config: dict[str, Any] = {
                "connect_timeout": connect_timeout,
                # total_max_attempts counts the first request; botocore's "max_attempts" would count only
                # the retries (3 meant 4 attempts).
                "retries": {"total_max_attempts": max_attempts, "mode": "standard"},
                # botocore's default pool of 10 connections would cap read_many at 10 requests in flight.
                "max_pool_connections": DEFAULT_READ_CONCURRENCY,
            }
            if path_style:
                config["s3"] = {"addressing_style": "path"}
            # use_listings_cache=False: "finished?" must see objects written by other processes.
            # Bounded retries with backoff: botocore's standard mode (max_attempts per call, exponential
            # backoff) inside s3fs's own retries of transient errors; then the error reaches the caller,
            # which records the class as failed.
            self.fs = s3fs.S3FileSystem(endpoint_url=endpoint_url, config_kwargs=config, use_listings_cache=False)
            self.fs.retries = retries  # s3fs's own retry count is an attribute (class default 5)
            self._base = self.root[len("s3://") :]
        elif self.protocol == "memory":
            self.fs = fsspec.filesystem("memory")
            self._base = "/" + self.root[len("memory://") :].strip("/")
        else:
            self.fs = fsspec.filesystem("file")
            self._base = self.root
        self.endpoint_url = endpoint_url if self.protocol == "s3" else None
        # Requests this object made, by (operation, top-level folder): what the scale benchmark and the
        # tests count ("the parent reads no sample image"). One lock: reads run in threads.
        self.requests: Counter[tuple[str, str]] = Counter()
        self._requests_lock = threading.Lock()

    def _count(self, op: str, path: str, n: int = 1) -> None:
        rel = path[len(self._base) :].lstrip("/" + os.sep)
        kind = re.split(r"[/\\]", rel, maxsplit=1)[0] or "."
        with self._requests_lock:
            self.requests[(op, kind)] += n

    @classmethod
    def from_config(
        cls,
        storage: StorageConfig | None = None,
        store: str | None = None,
        *,
        environ: Mapping[str, str] | None = None,
    ) -> ArtifactStore:
        """Open the store: root from ``store``, else ``storage.root``, else ``$DCT_STORE``, else ./dct-store.

        The endpoint comes from ``storage.endpoint_url`` or the AWS environment variables; credentials
        only from the environment / AWS credential chain.
        """
        storage = storage or StorageConfig()
        root = resolve_store_root(store or storage.root, environ=environ)
        return cls(root, endpoint_url=resolve_endpoint_url(storage, environ), path_style=storage.path_style)

    def __repr__(self) -> str:  # never includes credentials: the store holds none
        return f"ArtifactStore({self.root!r})"

    @property
    def is_local(self) -> bool:
        """True for a directory on this machine (refused in deployment mode: the parent could not read it)."""
        return self.protocol == "file"

    # -- URIs <-> filesystem paths ------------------------------------------------------------------------

    def _path(self, *parts: str) -> str:
        return posixpath.join(self._base, *parts) if self.protocol != "file" else os.path.join(self._base, *parts)

    def _uri(self, path: str) -> str:
        if self.protocol == "file":
            return path
        if self.protocol == "memory":
            return "memory://" + path
        return "s3://" + path

    def to_path(self, uri: str) -> str:
        """The filesystem path (protocol stripped) of a URI inside this store.

        Raises:
            ValueError: the URI is outside the store root (or climbs out of it with ``..``).
        """
        if "\x00" in uri:
            raise ValueError(f"URI {uri!r} contains a NUL character")
        if self.protocol == "file":
            path = uri[len("file://") :] if uri.startswith("file://") else uri
            path = os.path.normpath(path)
            inside = path == self._base or path.startswith(self._base.rstrip(os.sep) + os.sep)
        else:
            prefix = self.protocol + "://"
            path = uri[len(prefix) :] if uri.startswith(prefix) else uri
            path = posixpath.normpath(("/" if self.protocol == "memory" else "") + path.lstrip("/"))
            if self.protocol == "s3":
                path = path.lstrip("/")
            inside = path == self._base or path.startswith(self._base.rstrip("/") + "/")
        if not inside:
            raise ValueError(f"URI {uri!r} is outside the store root {self.root!r}")
        return path

    def uri(self, *parts: str) -> str:
        """URI of a path under the root; every part must pass :func:`validate_component`."""
        for p in parts:
            validate_component(p, "path component")
        return self._uri(self._path(*parts))

    # -- locations: one method per kind, used for writing AND for checking --------------------------------

    def token_uri(self, dataset: str, token_key: str, class_id: int) -> str:
        """Learned token of one class, keyed by ``token_key`` (a changed token setting writes beside it)."""
        return self._uri(
            self._path(
                "tokens", validate_component(dataset, "dataset"), validate_component(token_key, "token_key"),
                _class_name(class_id) + ".safetensors",
            )
        )

    def samples_uri(self, dataset: str, eval_key: str, class_id: int) -> str:
        """Folder of one class's samples for ``eval_key`` (both variants below it)."""
        return self._uri(
            self._path(
                "samples", validate_component(dataset, "dataset"), validate_component(eval_key, "eval_key"),
                _class_name(class_id),
            )
        )

    def sample_uri(self, dataset: str, eval_key: str, class_id: int, variant: str, seed: int, ext: str = "png") -> str:
        """One sample image; named by its noise seed so baseline and DCT images pair up by name."""
        if variant not in VARIANTS:
            raise ValueError(f"variant {variant!r} is not one of {VARIANTS}")
        if ext not in SAMPLE_FORMATS:
            raise ValueError(f"sample format {ext!r} is not one of {SAMPLE_FORMATS}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        base = self.to_path(self.samples_uri(dataset, eval_key, class_id))
        return self._uri(self._join(base, variant, f"{seed:06d}.{ext}"))

    def records_uri(self, dataset: str, eval_key: str) -> str:
        """Folder holding the finished-markers (per-class records) of one ``eval_key``."""
        return self._uri(
            self._path("records", validate_component(dataset, "dataset"), validate_component(eval_key, "eval_key"))
        )

    def record_uri(self, dataset: str, eval_key: str, class_id: int) -> str:
        """The per-class record: written LAST; its existence means "this class is finished"."""
        return self._uri(self._join(self.to_path(self.records_uri(dataset, eval_key)), _class_name(class_id) + ".json"))

    def attempt_uri(self, dataset: str, eval_key: str, class_id: int, run_id: str) -> str:
        """Record of an attempt that did not finish the class (status 'failed'); never a finished marker."""
        return self._uri(
            self._path(
                "attempts", validate_component(dataset, "dataset"), validate_component(eval_key, "eval_key"),
                _class_name(class_id), validate_component(run_id, "run_id") + ".json",
            )
        )

    def run_uri(self, dataset: str, run_id: str, *parts: str) -> str:
        """Folder (or a file below it) of one run: run record, token bundle, report."""
        for p in parts:
            validate_component(p, "run artifact name")
        return self._uri(
            self._path("runs", validate_component(dataset, "dataset"), validate_component(run_id, "run_id"), *parts)
        )

    def probe_page_uri(self, dataset: str, run_id: str) -> str:
        """The probe's HTML page of a run, in the run's report folder (the report links it when it exists)."""
        return self.run_uri(dataset, run_id, REPORT_DIR, PROBE_PAGE)

    def results_uri(self, table: str) -> str:
        """Root of a hive-partitioned Parquet table (``classes``, ``runs`` or ``probe``)."""
        if table not in RESULT_TABLES:
            raise ValueError(f"results table {table!r} is not one of {RESULT_TABLES}")
        return self._uri(self._path("results", table))

    def results_file_uri(self, table: str, dataset: str, run_date: str, run_id: str, index: int = 0) -> str:
        """One Parquet file of ``table``: ``dataset=D/run_date=YYYY-MM-DD/part-{run_id}-{index}.parquet``."""
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", run_date or ""):
            raise ValueError(f"run_date {run_date!r} must be an ISO date YYYY-MM-DD")
        return self._uri(
            self._join(
                self.to_path(self.results_uri(table)),
                f"dataset={validate_component(dataset, 'dataset')}",
                f"run_date={run_date}",
                f"part-{validate_component(run_id, 'run_id')}-{int(index)}.parquet",
            )
        )

    def cache_uri(self, dataset: str, *parts: str) -> str:
        """Reusable derived data of a dataset (e.g. reference FID statistics per feature extractor)."""
        for p in parts:
            validate_component(p, "cache entry name")
        return self._uri(self._path("cache", validate_component(dataset, "dataset"), *parts))

    def synthetic_uri(self, dataset: str, synth_key: str, *parts: str) -> str:
        """Root of one synthetic training set (or a file/folder below it; docs/synthesis.md, "Layout")."""
        for p in parts:
            validate_component(p, "synthetic artifact name")
        return self._uri(
            self._path(
                "synthetic", validate_component(dataset, "dataset"), validate_component(synth_key, "synth_key"), *parts
            )
        )

    def synthetic_image_uri(
        self, dataset: str, synth_key: str, arm: str, class_folder: str, seed: int, ext: str = "png"
    ) -> str:
        """One synthetic image: ``{arm}/{class_folder}/{seed}.{ext}`` (arm: train, baseline or filtered)."""
        if arm not in SYNTHETIC_ARMS:
            raise ValueError(f"synthetic arm {arm!r} is not one of {SYNTHETIC_ARMS}")
        if ext not in SAMPLE_FORMATS:
            raise ValueError(f"image format {ext!r} is not one of {SAMPLE_FORMATS}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        return self.synthetic_uri(dataset, synth_key, arm, class_folder, f"{seed}.{ext}")

    def synthetic_part_uri(self, dataset: str, synth_key: str, class_id: int) -> str:
        """A class's manifest part: written LAST; its existence means "this class is finished"."""
        return self.synthetic_uri(dataset, synth_key, "parts", _class_name(class_id) + ".parquet")

    def synthetic_finished_class_ids(self, dataset: str, synth_key: str) -> set[int]:
        """Classes of a synthetic set whose manifest part exists, from ONE listing."""
        done: set[int] = set()
        for uri in self.list_files(self.synthetic_uri(dataset, synth_key, "parts")):
            stem, ext = posixpath.splitext(posixpath.basename(uri))
            if ext == ".parquet" and stem.isdigit() and uri == self.synthetic_part_uri(dataset, synth_key, int(stem)):
                done.add(int(stem))
        return done

    def stored_token_class_ids(self, dataset: str, token_key: str) -> set[int]:
        """Classes with a token file for ``token_key``, from ONE listing (checked when read)."""
        found: set[int] = set()
        for uri in self.list_files(self.uri("tokens", validate_component(dataset, "dataset"), token_key)):
            stem, ext = posixpath.splitext(posixpath.basename(uri))
            if ext == ".safetensors" and stem.isdigit() and uri == self.token_uri(dataset, token_key, int(stem)):
                found.add(int(stem))
        return found

    def _join(self, base: str, *parts: str) -> str:
        return os.path.join(base, *parts) if self.protocol == "file" else posixpath.join(base, *parts)

    # -- primitive I/O --------------------------------------------------------------------------------------

    def write_bytes(self, uri: str, data: bytes) -> str:
        """Write ``data`` to exactly ``uri``, atomically to readers; returns ``uri``.

        Local: written to a hidden temporary name in the same folder, fsynced, then ``os.replace``d, so a
        reader (or a crash) sees the old object or the complete new one, never a prefix. S3: one PUT.
        """
        path = self.to_path(uri)
        if self.protocol == "file":
            folder = os.path.dirname(path)
            os.makedirs(folder, exist_ok=True)
            tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        else:
            self.fs.pipe_file(path, bytes(data))
        self._count("put", path)
        logger.debug("wrote %d bytes to %s", len(data), uri)
        return uri

    def read_bytes(self, uri: str) -> bytes:
        """The whole object at ``uri``. Raises ``FileNotFoundError`` if there is none."""
        path = self.to_path(uri)
        self._count("get", path)
        return self.fs.cat_file(path)

    def read_many(
        self, uris: Sequence[str], *, max_concurrency: int = DEFAULT_READ_CONCURRENCY
    ) -> list[bytes | None]:
        """The objects at ``uris``, read in parallel with at most ``max_concurrency`` requests in flight.

        S3: one batched call of s3fs's async ``cat`` (each GET under s3fs's and botocore's retry policy,
        as :meth:`read_bytes`); locally a thread pool. 10,000 records at 20 ms each take 200 s one by
        one and about 3 s like this.

        Args:
            uris: locations inside this store (duplicates are read once).
            max_concurrency: requests in flight at once (>= 1).

        Returns:
            The bytes of each URI in order; None where there is no object.

        Raises:
            ValueError: ``max_concurrency`` < 1 or a URI outside the store.
            OSError: any read error other than a missing object (after the retries).
        """
        if isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int) or max_concurrency < 1:
            raise ValueError(f"max_concurrency={max_concurrency!r} must be a positive int")
        paths = [self.to_path(u) for u in uris]
        unique = list(dict.fromkeys(paths))
        for p in unique:
            self._count("get", p)
        found: dict[str, bytes | None] = {}
        if self.protocol == "s3" and unique:
            # max_concurrency=1 per object: these are small files, and s3fs would otherwise send a HEAD
            # before every GET to decide on a chunked download (two requests per object).
            out = self.fs.cat(unique, on_error="return", batch_size=max_concurrency, max_concurrency=1)
            if len(unique) == 1 and not isinstance(out, dict):  # fsspec returns bare bytes for one path
                out = {unique[0]: out}
            for p in unique:
                value = out.get(p, out.get(self.fs._strip_protocol(p), FileNotFoundError(p)))
                if isinstance(value, FileNotFoundError):
                    found[p] = None
                elif isinstance(value, BaseException):
                    raise value
                else:
                    found[p] = value
        else:

            def one(p: str) -> bytes | None:
                try:
                    return self.fs.cat_file(p)
                except FileNotFoundError:
                    return None

            with ThreadPoolExecutor(max_workers=min(max_concurrency, max(1, len(unique)))) as pool:
                found = dict(zip(unique, pool.map(one, unique), strict=True))
        return [found[p] for p in paths]

    def exists_many(self, uris: Sequence[str], *, max_concurrency: int = DEFAULT_READ_CONCURRENCY) -> list[bool]:
        """:meth:`exists` of each URI, in parallel (a thread pool; s3fs's sync calls are thread-safe)."""
        if isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int) or max_concurrency < 1:
            raise ValueError(f"max_concurrency={max_concurrency!r} must be a positive int")
        if not uris:
            return []
        with ThreadPoolExecutor(max_workers=min(max_concurrency, len(uris))) as pool:
            return list(pool.map(self.exists, uris))

    def exists(self, uri: str) -> bool:
        path = self.to_path(uri)
        self._count("head", path)
        return bool(self.fs.exists(path))

    def write_json(self, uri: str, obj: Any) -> str:
        """Write JSON (sorted keys, UTF-8) atomically; see :meth:`write_bytes`."""
        return self.write_bytes(uri, json.dumps(obj, sort_keys=True, indent=1, ensure_ascii=False).encode())

    def read_json(self, uri: str) -> Any:
        return json.loads(self.read_bytes(uri))

    def list_files(self, uri: str) -> list[str]:
        """URIs of the files directly in folder ``uri`` (sorted; hidden temporaries excluded; [] if absent)."""
        return self._list(uri, "file")

    def list_folders(self, uri: str) -> list[str]:
        """URIs of the folders directly in folder ``uri`` (sorted; hidden ones excluded; [] if absent)."""
        return self._list(uri, "directory")

    def _list(self, uri: str, kind: str) -> list[str]:
        """One counted listing of folder ``uri``: the URIs of its entries of ``kind`` ("file" or "directory")."""
        path = self.to_path(uri)
        self._count("list", path)
        try:
            listed = self.fs.ls(path, detail=True)
        except FileNotFoundError:
            return []
        names = [p["name"].rstrip("/") for p in listed if p["type"] == kind]
        return sorted(self._uri(n) for n in names if not posixpath.basename(n).startswith("."))

    def glob(self, pattern: str) -> list[str]:
        """Paths (not URIs) matching an fsspec glob ``pattern`` of paths under the root: one listing request."""
        self._count("list", pattern.split("*", 1)[0])
        return self.fs.glob(pattern)

    def count_reads(self, paths: Sequence[str]) -> None:
        """Count a read of each path that a library handed this store's filesystem makes itself (pyarrow's
        Parquet footers and datasets, DuckDB), so :attr:`requests` sees every object read."""
        for p in paths:
            self._count("get", p)

    # -- typed artifacts ------------------------------------------------------------------------------------

    def write_token(self, dataset: str, token_key: str, class_id: int, data: bytes) -> str:
        """Store a token file (bytes from ``dct.artifacts.token_file.token_file_bytes``); returns its URI."""
        return self.write_bytes(self.token_uri(dataset, token_key, class_id), data)

    def read_token(self, dataset: str, token_key: str, class_id: int) -> bytes:
        """Bytes of a stored token file (parse with ``dct.artifacts.token_file.read_token_bytes``)."""
        return self.read_bytes(self.token_uri(dataset, token_key, class_id))

    def has_token(self, dataset: str, token_key: str, class_id: int) -> bool:
        """A token for these keys exists (it can be reused when only evaluation settings changed)."""
        return self.exists(self.token_uri(dataset, token_key, class_id))

    def write_sample(
        self, dataset: str, eval_key: str, class_id: int, variant: str, seed: int, data: bytes, ext: str = "png"
    ) -> str:
        """Store one encoded sample image; returns its URI."""
        return self.write_bytes(self.sample_uri(dataset, eval_key, class_id, variant, seed, ext), data)

    def list_samples(self, dataset: str, eval_key: str, class_id: int, variant: str) -> list[str]:
        """URIs of the stored samples of one class and variant, sorted by seed."""
        if variant not in VARIANTS:
            raise ValueError(f"variant {variant!r} is not one of {VARIANTS}")
        folder = self._join(self.to_path(self.samples_uri(dataset, eval_key, class_id)), variant)
        return self.list_files(self._uri(folder))

    def is_finished(self, dataset: str, eval_key: str, class_id: int) -> bool:
        """The class is finished for ``eval_key``: its record exists (records are written last)."""
        return self.exists(self.record_uri(dataset, eval_key, class_id))

    def finished_class_ids(self, dataset: str, eval_key: str, class_ids: Iterable[int] | None = None) -> set[int]:
        """Finished classes of ``eval_key`` from ONE listing (10k HEAD requests would take minutes).

        Args:
            class_ids: restrict the answer to these ids (None = all finished ones).
        """
        wanted = None if class_ids is None else {validate_class_id(c) for c in class_ids}
        done: set[int] = set()
        for uri in self.list_files(self.records_uri(dataset, eval_key)):
            stem, ext = posixpath.splitext(posixpath.basename(uri))
            if ext == ".json" and stem.isdigit() and self._uri(self.to_path(uri)) == self.record_uri(
                dataset, eval_key, int(stem)
            ):
                done.add(int(stem))
        return done if wanted is None else done & wanted

    def finished_among(self, dataset: str, eval_key: str, class_ids: Iterable[int]) -> set[int]:
        """Which of ``class_ids`` are finished, by key: one HEAD per class, in parallel, no listing.

        For a few classes (one shard) in a folder of thousands of records: a listing would cost
        ``records / 1000`` requests and grow with the dataset, this costs ``len(class_ids)``.
        """
        ids = [validate_class_id(c) for c in class_ids]
        there = self.exists_many([self.record_uri(dataset, eval_key, c) for c in ids])
        return {c for c, ok in zip(ids, there, strict=True) if ok}

    # -- preflight ------------------------------------------------------------------------------------------

    def preflight(self, name: str | None = None) -> str:
        """Prove the store is reachable and writable: write a small probe object and read it back.

        The probe stays (``_dct/preflight/{name}.json``; a few hundred bytes per run) so the check needs
        no delete permission. Runs before any GPU work; fails fast (short connect timeout, few attempts).

        Args:
            name: probe name, e.g. the run id (default: a random id).

        Returns:
            The probe's URI.

        Raises:
            StoreUnavailableError: the endpoint cannot be reached.
            FileNotFoundError / PermissionError / OSError: from the filesystem, e.g. a missing bucket or
                no write permission; RuntimeError if the read-back differs.
        """
        nonce = uuid.uuid4().hex
        probe_name = validate_component(name or nonce, "preflight probe name") + ".json"
        uri = self._uri(self._path("_dct", "preflight", probe_name))
        payload = json.dumps({"nonce": nonce, "pid": os.getpid()}).encode()
        unreachable: tuple[type[BaseException], ...] = ()
        if self.protocol == "s3":
            # Connection-level failures are BotoCoreErrors, not OSErrors (service errors are translated
            # to OSError subclasses by s3fs already: a missing bucket is a FileNotFoundError).
            from botocore.exceptions import BotoCoreError

            unreachable = (BotoCoreError,)
        try:
            self.write_bytes(uri, payload)
            back = self.read_bytes(uri)
        except unreachable as exc:
            raise StoreUnavailableError(
                f"store {self.root!r} is unreachable (endpoint {self.endpoint_url or 'AWS default'}): {exc}; "
                "check AWS_ENDPOINT_URL_S3 / storage.endpoint_url and the network"
            ) from exc
        if back != payload:
            raise RuntimeError(f"store {self.root!r} returned different bytes for probe {uri!r}; check the endpoint")
        return uri


def open_store(store: str | None = None, storage: StorageConfig | None = None) -> ArtifactStore:
    """Shorthand for :meth:`ArtifactStore.from_config` (notebooks: ``open_store("s3://bucket/prefix")``)."""
    return ArtifactStore.from_config(storage, store)
