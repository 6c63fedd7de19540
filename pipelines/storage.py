"""Where a run's files live: a local path, or any URI pyarrow has a filesystem for (s3://,
gs://, hdfs://, file://).

Object stores are reached with pyarrow's own settings, so the same environment serves the
driver, every Ray worker and Ray Data's checkpoints: AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_REGION, and AWS_ENDPOINT_URL (or AWS_ENDPOINT_URL_S3) for an
S3-compatible server, its scheme saying http or https (`AWS_ENDPOINT_URL=http://minio:9000`;
no other setting is needed for http). pyarrow honours the endpoint variables in
`FileSystem.from_uri` (as here and in Ray Data), not in a bare `S3FileSystem()`. The endpoint
travels with a pickled filesystem to Ray's workers; the credentials do not: each worker
resolves its own, from its environment or the node's instance role.

An object store's bucket is checked the first time a run names it, so that a store that does
not answer, refused credentials or a bucket that does not exist fail at start with a
ConfigError naming the setting, not with a traceback after the work.
"""

from __future__ import annotations

import os
import re

import pyarrow.fs as pafs

from offramp.config import ConfigError

URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
OBJECT_STORES = tuple(
    cls for cls in (getattr(pafs, "S3FileSystem", None), getattr(pafs, "GcsFileSystem", None)) if cls is not None
)
STORE_SETTINGS = (
    "check AWS_ENDPOINT_URL (with http:// for a server without TLS), AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY "
    "and AWS_REGION, on the driver and on every Ray node"
)
_seen_buckets: set[tuple] = set()  # (store, bucket) pairs that answered: checked once per process


def is_uri(path: str) -> bool:
    return bool(URI.match(path))


def filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem of `path` and the path within it (absolute for a local path). For an object
    store the bucket must exist and answer (ConfigError otherwise)."""
    if not is_uri(path):
        return pafs.LocalFileSystem(), os.path.abspath(path)
    try:
        fs, root = pafs.FileSystem.from_uri(path)
    except (ValueError, TypeError) as e:  # an unknown scheme or query parameter, no bucket
        raise ConfigError(f"{path} is not a URI pyarrow can open: {e}") from e
    except OSError as e:  # e.g. the bucket's region could not be looked up
        raise ConfigError(f"cannot open {path}: {e}; {STORE_SETTINGS}") from e
    if isinstance(fs, OBJECT_STORES):
        check_bucket(fs, root, path)
    return fs, root


def check_bucket(fs: pafs.FileSystem, root: str, uri: str) -> None:
    """The bucket of `root` exists and the store answers with these credentials."""
    bucket = root.split("/", 1)[0]
    if not bucket:
        raise ConfigError(f"{uri} names no bucket; write {uri.split(':')[0]}://BUCKET/path")
    key = (type(fs).__name__, endpoint(fs), bucket)
    if key in _seen_buckets:
        return
    try:
        info = fs.get_file_info(bucket)
    except OSError as e:  # connection refused, timeout, access denied, bad region
        raise ConfigError(
            f"cannot reach the object store of {uri} ({endpoint(fs) or 'the default endpoint'}): {e}; {STORE_SETTINGS}"
        ) from e
    if info.type == pafs.FileType.NotFound:
        raise ConfigError(
            f"bucket {bucket!r} of {uri} does not exist at {endpoint(fs) or 'the default endpoint'}; "
            "create it, or check the bucket name and AWS_ENDPOINT_URL"
        )
    _seen_buckets.add(key)


def endpoint(fs: pafs.FileSystem) -> str:
    """The endpoint an S3 filesystem talks to ('' for the provider's default)."""
    try:
        return fs.__reduce__()[1][0].get("endpoint_override", "") or ""
    except (AttributeError, IndexError, KeyError, TypeError):
        return ""


def is_local(path: str) -> bool:
    """True for a plain path or file:// URI: a path only the machine that reads it can see.
    Decided from the path alone (no store is contacted)."""
    return not is_uri(path) or path.lower().startswith(("file://", "local://"))
