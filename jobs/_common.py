"""What every job script needs first: the repo on sys.path, so `python jobs/x.py` works from a
checkout and from a Ray job's working directory without installing the package."""

from __future__ import annotations

import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from pipelines.cli import setup_logging  # noqa: E402


def fail(message: str):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


__all__ = ["REPO", "fail", "setup_logging"]
