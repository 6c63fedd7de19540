"""Labeled (or unlabeled) rows for training and calibration, read with `datasets`
(local Parquet/JSONL/CSV or a hub name)."""

from __future__ import annotations

import os

from datasets import load_dataset

from offramp.config import ConfigError

_BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv"}


def load_labeled(path: str, text_column: str, label_column: str | None, max_rows: int | None = None, seed: int = 0):
    """Return (texts, labels) with rows lacking text or label dropped; label_column None -> labels None."""
    ext = os.path.splitext(path)[1].lower()
    if ext in _BUILDERS or os.path.isdir(path):
        builder = _BUILDERS.get(ext, "parquet")
        if not os.path.exists(path):
            raise ConfigError(f"training data {path} not found; pass an existing file to --train/--eval")
        ds = load_dataset(builder, data_files=path, split="train")
    else:  # a hub dataset name: works only where the machine is online
        ds = load_dataset(path, split="train")
    for col, flag in ((text_column, "--text-column"), (label_column, "--label-column")):
        if col is not None and col not in ds.column_names:
            raise ConfigError(f"column {col!r} not found in {path}; columns are {ds.column_names}; set {flag}")
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
