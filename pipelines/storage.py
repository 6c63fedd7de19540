"""Where a run's files live: a local path, or any URI pyarrow has a filesystem for (s3://,
gs://, hdfs://, file://).

Object stores are reached with pyarrow's own settings, so the same environment serves the
driver, every Ray worker and Ray Data's checkpoints: AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_REGION, and AWS_ENDPOINT_URL for an S3-compatible server.
"""

from __future__ import annotations

import os

import pyarrow.fs as pafs


def filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem of `path` and the path within it (absolute for a local path)."""
    try:
        return pafs.FileSystem.from_uri(path)
    except (ValueError, TypeError):  # a plain local path, not a URI
        return pafs.LocalFileSystem(), os.path.abspath(path)


def is_local(path: str) -> bool:
    """True for a plain path or file:// URI: a path only the machine that reads it can see."""
    return isinstance(filesystem(path)[0], pafs.LocalFileSystem)
