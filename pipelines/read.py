"""Read a corpus into a Ray Dataset with one row per document, whatever its format.

Parquet is read with Ray's reader. JSONL and plain text are read as raw bytes per
file and split into rows here, so that a line that is not valid UTF-8 or not valid
JSON becomes a row with a status instead of failing the whole file.
"""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import ray

from offramp import schema
from offramp.config import ConfigError, TagConfig
from offramp.tasks import Task
from pipelines.storage import filesystem

READ_STATUS = schema.READ_STATUS
EXTENSIONS = {".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".json": "jsonl", ".txt": "text"}


def detect_format(path: str, declared: str = "auto") -> str:
    """parquet / jsonl / text from the declared format or the files' extensions."""
    if declared != "auto":
        return declared
    fs, root = filesystem(path)
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise ConfigError(f"input {path} does not exist; pass --input with a file or directory")
    names = [root]
    if info.type == pafs.FileType.Directory:
        names = [f.path for f in fs.get_file_info(pafs.FileSelector(root, recursive=True)) if f.is_file]
    kinds = {EXTENSIONS.get(os.path.splitext(n)[1].lower()) for n in names if not os.path.basename(n).startswith(".")}
    kinds.discard(None)
    if len(kinds) != 1:
        raise ConfigError(
            f"cannot tell the format of {path} from its file extensions ({sorted(k or '?' for k in kinds)}); "
            "set --input-format parquet|jsonl|text"
        )
    return kinds.pop()


BOM = b"\xef\xbb\xbf"  # a UTF-8 byte-order mark some editors write at the start of a file


def _source_name(path: str, root: str) -> str:
    """The file's path relative to the input directory (its name for a single-file input): ids
    built from it stay unique across subdirectories."""
    rel = os.path.relpath(path, root) if root and path.startswith(root.rstrip("/") + "/") else os.path.basename(path)
    return rel.replace(os.sep, "/")


def _lines(data: bytes) -> list[bytes]:
    return (data[len(BOM):] if data.startswith(BOM) else data).splitlines()


def _text_rows(row: dict, id_column: str, text_column: str, root: str = "") -> list[dict]:
    name = _source_name(row["path"], root)
    out = []
    for lineno, raw in enumerate(_lines(row["bytes"]), start=1):
        try:
            text, status = raw.decode("utf-8"), ""
        except UnicodeDecodeError:
            text, status = "", schema.UNDECODABLE
        out.append({id_column: f"{name}:{lineno}", text_column: text, READ_STATUS: status})
    return out


def _cell(value, as_list: bool):
    """A JSON value for a column: a string, or for list columns (token models' words and tags)
    a list of strings; anything else None."""
    if as_list:
        return [str(v) for v in value] if isinstance(value, list) and all(isinstance(v, str) for v in value) else None
    return None if value is None else str(value)


def _jsonl_rows(row: dict, id_column: str, text_column: str, extra: tuple, lists: tuple = (), root: str = "") -> list[dict]:
    """One row per JSON line. `lists`: columns that hold a list of strings per row (for token
    models the words column, which then stands in `text_column`'s place, and the tags column)."""
    name = _source_name(row["path"], root)
    words = text_column in lists
    out = []
    for lineno, raw in enumerate(_lines(row["bytes"]), start=1):
        if not raw.strip():
            continue  # blank separator lines are not documents
        rec, status = {}, ""
        try:
            rec = json.loads(raw.decode("utf-8"))
            if not isinstance(rec, dict):
                rec, status = {}, schema.UNDECODABLE
        except (UnicodeDecodeError, json.JSONDecodeError):
            status = schema.UNDECODABLE
        text = rec.get(text_column)
        if not status and text is None:
            status = schema.NULL
        elif not status and (_cell(text, True) is None if words else not isinstance(text, str)):
            status = schema.UNDECODABLE
        ident = rec.get(id_column)
        out.append(
            {
                id_column: str(ident) if ident is not None else f"{name}:{lineno}",
                text_column: (_cell(text, True) or []) if words else (text if isinstance(text, str) else ""),
                READ_STATUS: status,
                **{c: _cell(rec.get(c), c in lists) for c in extra},
            }
        )
    return out


def input_schema(cfg: TagConfig) -> pa.Schema | None:
    """The Arrow schema of a Parquet input, read from its footers before Ray starts (None for
    JSONL and text, whose fields are only known row by row)."""
    if detect_format(cfg.input, cfg.input_format) != "parquet":
        return None
    fs, root = filesystem(cfg.input)
    return pads.dataset(root, format="parquet", filesystem=fs).schema


def kept_types(cfg: TagConfig, schema: pa.Schema | None) -> dict[str, pa.DataType]:
    """The Arrow type each id and passthrough column keeps in the output: the input's for
    Parquet; strings for JSONL and text, whose reader makes every kept value a string."""
    kept = [cfg.id_column or "id", *cfg.passthrough_columns]
    if schema is None:
        return {c: pa.string() for c in kept}
    return {c: schema.field(c).type for c in kept if c in schema.names}


def check_columns(cfg: TagConfig, task: Task, names: list[str]) -> None:
    """Every column the run reads exists in the Parquet input; else fail naming the flag to set."""
    source, source_flag = task.source_column(cfg)
    flags = {source: source_flag, cfg.id_column: "--id-column", cfg.label_column: "--label-column"}
    needed = [source, *([cfg.id_column] if cfg.id_column else []), *cfg.passthrough_columns,
              *([cfg.label_column] if cfg.label_column else [])]
    missing = [c for c in dict.fromkeys(needed) if c not in names]
    if missing:
        fixes = ", ".join(f"{c!r} ({flags.get(c, 'passthrough_columns')})" for c in missing)
        raise ConfigError(f"column(s) {fixes} not found in {cfg.input}; columns are {names}")
    if not cfg.id_column:
        raise ConfigError(f"Parquet input needs an id column; columns are {names}; set --id-column")


def read_corpus(cfg: TagConfig, task: Task) -> ray.data.Dataset:
    """One row per document with the id, the task's source column (text or words), the
    passthrough and label columns. The columns were checked by `check_columns` at start."""
    fmt = detect_format(cfg.input, cfg.input_format)
    source, _ = task.source_column(cfg)
    id_column = cfg.id_column or "id"
    extra = tuple(dict.fromkeys([*cfg.passthrough_columns, *([cfg.label_column] if cfg.label_column else [])]))
    if fmt == "parquet":
        return ray.data.read_parquet(cfg.input).select_columns(list(dict.fromkeys([source, id_column, *extra])))
    root = filesystem(cfg.input)[1]
    # auto-detected: only the files of that format (a README or a .gz beside them is not a document)
    suffixes = None if cfg.input_format != "auto" else [e[1:] for e, kind in EXTENSIONS.items() if kind == fmt]
    files = ray.data.read_binary_files(cfg.input, include_paths=True, file_extensions=suffixes)
    if fmt == "text":
        if extra:
            raise ConfigError("plain-text input has no columns to pass through or label; use JSONL or Parquet")
        return files.flat_map(_text_rows, fn_kwargs=dict(id_column=id_column, text_column=source, root=root))
    lists = task.list_columns(cfg)
    return files.flat_map(_jsonl_rows, fn_kwargs=dict(id_column=id_column, text_column=source, extra=extra, lists=lists,
                                                      root=root))
