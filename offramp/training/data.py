"""Labeled (or unlabeled) rows for training and calibration, read with `datasets`
(local Parquet/JSONL/CSV or a hub name)."""

from __future__ import annotations

import os

from datasets import load_dataset

from offramp.config import ConfigError

_BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv"}


def load_labeled(
    path: str,
    text_column: str,
    label_column: str | None,
    max_rows: int | None = None,
    seed: int = 0,
    flag: str = "--train/--eval",
):
    """Return (texts, labels) with rows lacking text or label dropped; label_column None -> labels None.

    `flag` is the option that named `path`, for the error message."""
    ext = os.path.splitext(path)[1].lower()
    # a hub name is "owner/name": anything with a file extension, absolute or ./-relative is a local path
    local = ext in _BUILDERS or os.path.exists(path) or os.path.isabs(path) or path.startswith(".")
    if local:
        if not os.path.exists(path):
            raise ConfigError(f"data file {path} not found; pass an existing file to {flag}")
        ds = load_dataset(_BUILDERS.get(ext, "parquet"), data_files=path, split="train")
    else:  # a hub dataset name: works only where the machine is online
        ds = load_dataset(path, split="train")
    for col, option in ((text_column, "--text-column"), (label_column, "--label-column")):
        if col is not None and col not in ds.column_names:
            raise ConfigError(f"column {col!r} not found in {path}; columns are {ds.column_names}; set {option}")
    if max_rows is not None and len(ds) > max_rows:
        ds = ds.shuffle(seed=seed).select(range(max_rows))
    if label_column is None:
        return [t for t in ds[text_column] if isinstance(t, str) and t.strip()], None
    texts, labels = [], []
    for t, y in zip(ds[text_column], ds[label_column]):
        if isinstance(t, str) and t.strip() and y is not None:
            texts.append(t)
            labels.append(str(y))
    return texts, labels
