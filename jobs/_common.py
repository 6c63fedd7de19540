"""Shared CLI plumbing for the job scripts: logging and turning ConfigError into exit code 2."""

from __future__ import annotations

import logging
import os
import sys
from typing import NoReturn

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # run as `python jobs/x.py` from a checkout or a Ray job's working dir
    sys.path.insert(0, REPO)


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)
