"""Read a corpus into a Ray Dataset with one row per document, whatever its format.

One Ray Data datasource (`CorpusSource`) reads Parquet, JSONL and plain text, each file as
a stream: a Parquet file a row batch at a time, a JSONL or text file a chunk of bytes at a
time (gzip and other compressed files by their extension), so a multi-GB file never sits
whole in a worker. Every block it yields has one fixed schema:

- the id column, the model's source column (text, or words for token models), the label and
  passthrough columns;
- `_read_status`: "" or a status the reader decided (a line that is not UTF-8, not JSON, or
  too long), so that a bad line becomes a row with a status instead of failing its file;
- `source_row`: "<file relative to the input>:<line or row number>", unique per input row.
  Ray Data's checkpoints are keyed on it (`--resume`), and it says where a row came from.

At the end of each file the reader reports the file's row count to the run's collector, so
the run knows how many rows came in without reading the corpus twice.
"""

from __future__ import annotations

import json
import os
from typing import Iterator

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray
from ray.data.datasource import FileBasedDatasource

from offramp import schema
from offramp.config import ConfigError, TagConfig
from offramp.tasks import Task
from pipelines.storage import filesystem

READ_STATUS, SOURCE_ROW = schema.READ_STATUS, schema.SOURCE_ROW
EXTENSIONS = {".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".json": "jsonl", ".txt": "text"}
COMPRESSED = (".gz", ".bz2", ".zst")  # read through pyarrow's codecs, chosen by the extension
BOM = b"\xef\xbb\xbf"  # a UTF-8 byte-order mark some editors write at the start of a file
BLOCK_ROWS = 8192  # rows per block the reader yields
CHUNK_BYTES = 4 * 2**20  # bytes read from a JSONL/text stream at a time


def uncompressed_name(name: str) -> tuple[str, bool]:
    """(the lower-cased name without a compression extension, whether it had one)."""
    base, ext = os.path.splitext(name.lower())
    return (base, True) if ext in COMPRESSED else (name.lower(), False)


def file_format(name: str) -> str | None:
    """parquet / jsonl / text from a file's extension (`.jsonl.gz` is jsonl), None if unknown."""
    base, compressed = uncompressed_name(name)
    kind = EXTENSIONS.get(os.path.splitext(base)[1])
    return None if compressed and kind == "parquet" else kind


def input_files(path: str) -> list[str]:
    """The files of an input, a file or a directory walked recursively, without the hidden and
    `_`-prefixed ones that Ray's reader skips too."""
    fs, root = filesystem(path)
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise ConfigError(f"input {path} does not exist; pass --input with a file or directory")
    if info.type != pafs.FileType.Directory:
        return [root]
    return [f.path for f in fs.get_file_info(pafs.FileSelector(root, recursive=True))
            if f.is_file and not os.path.basename(f.path).startswith((".", "_"))]


def detect_format(path: str, declared: str = "auto", files: list[str] | None = None) -> str:
    """parquet / jsonl / text from the declared format or the files' extensions (`files`: the
    input's, when the caller listed them already)."""
    if declared != "auto":
        return declared
    kinds = {file_format(n) for n in (input_files(path) if files is None else files)}
    kinds.discard(None)
    if len(kinds) != 1:
        raise ConfigError(
            f"cannot tell the format of {path} from its file extensions ({sorted(k or '?' for k in kinds)}); "
            "set --input-format parquet|jsonl|text"
        )
    return kinds.pop()


def check_json_lines(path: str, files: list[str] | None = None, peek_bytes: int = 2**20) -> None:
    """A `.json` file is read as JSON Lines (what `datasets` and pandas write under that name),
    so its first line must be one whole JSON object. A pretty-printed document or an array (a
    manifest, a config) would otherwise become a run of `undecodable` rows: refuse it at start."""
    fs, _ = filesystem(path)
    for name in input_files(path) if files is None else files:
        plain, compressed = uncompressed_name(name)
        if not plain.endswith(".json"):
            continue
        with fs.open_input_stream(name, compression="detect" if compressed else None) as f:
            head = f.read(peek_bytes)
        head = head[len(BOM):] if head.startswith(BOM) else head
        first = next((line for line in head.splitlines() if line.strip()), b"")
        try:
            whole = isinstance(json.loads(first), dict)
        except ValueError:
            whole = not first  # an empty file is an empty corpus file
        if not whole:
            raise ConfigError(
                f"{name} is not JSON Lines (its first line is not one JSON object): a pretty-printed document or "
                "an array. Move it out of the input directory, name it with a leading '_' (skipped), or convert it "
                "to one object per line (jq -c '.[]' FILE > FILE.jsonl)"
            )


def extensions_of(fmt: str) -> list[str]:
    """The file extensions read as `fmt` (compressed ones included for JSONL and text)."""
    plain = [e[1:] for e, kind in EXTENSIONS.items() if kind == fmt]
    return plain if fmt == "parquet" else plain + [f"{e}{c}" for e in plain for c in COMPRESSED]


def source_name(path: str, root: str) -> str:
    """The file's path relative to the input directory (its name for a single-file input): row
    keys and ids built from it stay unique across subdirectories."""
    rel = os.path.relpath(path, root) if root and path.startswith(root.rstrip("/") + "/") else os.path.basename(path)
    return rel.replace(os.sep, "/")


# ---------------------------------------------------------------- lines


def iter_lines(f, max_line_bytes: int, chunk: int = CHUNK_BYTES) -> Iterator[tuple[bytes, bool]]:
    """(line, cut) for each line of a byte stream, holding at most one chunk plus one line.
    A line longer than max_line_bytes keeps its first max_line_bytes bytes (cut=True) and the
    rest of it is read past, not held. A leading BOM and a line's trailing CR are dropped."""
    buf, held, first = b"", None, True  # held: the head of an over-long line not ended yet
    while data := f.read(chunk):
        if first:
            data, first = (data[len(BOM):] if data.startswith(BOM) else data), False
        buf += data
        start = 0
        while (end := buf.find(b"\n", start)) >= 0:
            if held is not None:
                yield held, True
                held = None
            else:
                line = buf[start:end]
                yield (line[:max_line_bytes], True) if len(line) > max_line_bytes else (line.rstrip(b"\r"), False)
            start = end + 1
        buf = buf[start:]
        if held is not None:
            buf = b""  # still inside the over-long line
        elif len(buf) > max_line_bytes:
            held, buf = buf[:max_line_bytes], b""
    if held is not None:
        yield held, True
    elif buf:
        yield buf.rstrip(b"\r"), False


def decode_head(raw: bytes) -> str | None:
    """A cut line's bytes as text, minus a character the cut split; None if not UTF-8."""
    for trim in range(4):
        try:
            return raw[: len(raw) - trim].decode("utf-8")
        except UnicodeDecodeError:
            continue
    return None


def _cell(value, as_list: bool):
    """A JSON value for a column: a string, or for list columns (token models' words and tags)
    a list of strings; anything else None."""
    if as_list:
        return [str(v) for v in value] if isinstance(value, list) and all(isinstance(v, str) for v in value) else None
    return None if value is None else str(value)


# ---------------------------------------------------------------- the datasource


class CorpusSource(FileBasedDatasource):
    """Parquet, JSONL or text files -> blocks of the fixed reader schema (see module doc)."""

    def __init__(self, paths: str, *, fmt: str, root: str, id_column: str, source: str, extra: tuple,
                 lists: tuple = (), types: dict | None = None, max_line_bytes: int = 16 * 2**20,
                 report: str | None = None, file_extensions: list[str] | None = None):
        super().__init__(paths, file_extensions=file_extensions)
        self.fmt, self.root, self.report = fmt, root, report
        self.id_column, self.source, self.extra, self.lists = id_column, source, extra, lists
        self.max_line_bytes = max_line_bytes
        self.schema = self.block_schema(types or {})

    def block_schema(self, types: dict) -> pa.Schema:
        """id, source, extra columns (Parquet: the input's types; JSONL: strings or lists of
        strings), then the reader's two columns."""
        def type_of(c):
            return types.get(c) or (pa.list_(pa.string()) if c in self.lists else pa.string())
        names = list(dict.fromkeys([self.id_column, self.source, *self.extra]))
        return pa.schema([(c, type_of(c)) for c in names] + [(READ_STATUS, pa.string()), (SOURCE_ROW, pa.string())])

    def file_paths(self) -> list[str]:
        """The files this source reads, as its reports name them."""
        return self._paths()

    def _open_input_source(self, filesystem, path: str, **open_args):
        if self.fmt == "parquet":  # Parquet needs random access to its footer
            return filesystem.open_input_file(path)
        return super()._open_input_source(filesystem, path, **open_args)

    def _read_stream(self, f, path: str) -> Iterator[pa.Table]:
        name = source_name(path, self.root)
        blocks = self.parquet_blocks(f, name) if self.fmt == "parquet" else self.line_blocks(f, name)
        rows = 0
        for block in blocks:
            rows += block.num_rows
            yield block
        pa.default_memory_pool().release_unused()  # a worker that read a file keeps no idle heap (~30 MiB)
        if self.report:  # waited for (once a file): the driver reads the counts once the dataset is done
            ray.get(ray.get_actor(self.report).file_read.remote(path, rows))

    # ---- Parquet

    def parquet_blocks(self, f, name: str) -> Iterator[pa.Table]:
        """Row batches; a column a file lacks is null, one of another type is cast to the
        type the run was planned with (the first file's)."""
        pf = pq.ParquetFile(f)
        have = set(pf.schema_arrow.names)
        wanted = [c for c in self.schema.names if c not in (READ_STATUS, SOURCE_ROW)]
        first = 1
        for batch in pf.iter_batches(batch_size=BLOCK_ROWS, columns=[c for c in wanted if c in have]):
            n = batch.num_rows
            cols = [batch.column(c).cast(self.schema.field(c).type) if c in have else pa.nulls(n, self.schema.field(c).type)
                    for c in wanted]
            cols += [pa.array([""] * n, pa.string()), pa.array([f"{name}:{first + i}" for i in range(n)], pa.string())]
            first += n
            yield pa.Table.from_arrays(cols, schema=self.schema)

    # ---- JSONL and text

    def line_blocks(self, f, name: str) -> Iterator[pa.Table]:
        """Blocks of BLOCK_ROWS rows. A compressed file damaged part-way (a copy cut short)
        gives its rows up to the damage, then one row with status undecodable."""
        rows, lineno = [], 0
        lines = iter_lines(f, self.max_line_bytes)
        while True:
            try:
                raw, cut = next(lines)
            except StopIteration:
                break
            except OSError as e:
                if not is_damaged_stream(name, e):
                    raise  # an I/O error Ray Data retries
                raw, cut, row = b"", False, self.bad_row(schema.UNDECODABLE)
                lines = iter(())
            else:
                row = self.text_row(raw, cut) if self.fmt == "text" else self.jsonl_row(raw, cut)
            lineno += 1
            if row is None:
                continue  # a blank line between JSON records is not a document
            row[SOURCE_ROW] = f"{name}:{lineno}"
            if row.get(self.id_column) is None:
                row[self.id_column] = row[SOURCE_ROW]
            rows.append(row)
            if len(rows) == BLOCK_ROWS:
                yield pa.Table.from_pylist(rows, schema=self.schema)
                rows = []
        if rows:
            yield pa.Table.from_pylist(rows, schema=self.schema)

    def text_row(self, raw: bytes, cut: bool) -> dict:
        """A line of text: its text, or status undecodable. A cut line keeps its head: the
        tokenizer truncates it like any long document (status truncated)."""
        text = decode_head(raw) if cut else _decode(raw)
        return {self.source: text or "", READ_STATUS: "" if text is not None else schema.UNDECODABLE}

    def jsonl_row(self, raw: bytes, cut: bool) -> dict | None:
        """A JSON line: its fields, or status too_long / undecodable / null with empty fields."""
        if cut:
            return self.bad_row(schema.TOO_LONG)
        if not raw.strip():
            return None
        try:
            rec = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return self.bad_row(schema.UNDECODABLE)
        if not isinstance(rec, dict):
            return self.bad_row(schema.UNDECODABLE)
        words = self.source in self.lists
        text, status = rec.get(self.source), ""
        if text is None:
            status = schema.NULL
        elif _cell(text, True) is None if words else not isinstance(text, str):
            status = schema.UNDECODABLE
        ident = rec.get(self.id_column)
        return {
            self.id_column: str(ident) if ident is not None else None,
            self.source: (_cell(text, True) or []) if words else (text if isinstance(text, str) else ""),
            READ_STATUS: status,
            **{c: _cell(rec.get(c), c in self.lists) for c in self.extra},
        }

    def bad_row(self, status: str) -> dict:
        return {self.source: [] if self.source in self.lists else "", READ_STATUS: status}


def is_damaged_stream(name: str, error: OSError) -> bool:
    """A compressed file whose bytes do not decompress (not a network or disk error)."""
    words = ("inflate", "deflate", "decompress", "zlib", "gzip", "bz2", "zstd", "corrupt", "truncated")
    return name.lower().endswith(COMPRESSED) and any(w in str(error).lower() for w in words)


def _decode(raw: bytes) -> str | None:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


# ---------------------------------------------------------------- before Ray starts


def input_schema(cfg: TagConfig, fmt: str | None = None) -> pa.Schema | None:
    """The Arrow schema of a Parquet input, read from its first footer before Ray starts (None
    for JSONL and text, whose fields are only known row by row); `fmt`: the format if known."""
    if (fmt or detect_format(cfg.input, cfg.input_format)) != "parquet":
        return None
    fs, root = filesystem(cfg.input)
    try:
        return pads.dataset(root, format="parquet", filesystem=fs).schema
    except (pa.ArrowInvalid, OSError) as e:
        raise ConfigError(f"cannot read {cfg.input} as Parquet ({e}); check --input-format "
                          "(parquet, jsonl or text) or the files") from None


def check_format(cfg: TagConfig, fmt: str, files: list[str] | None = None) -> None:
    """Settings the input's format cannot serve, and `.json` files that are not JSON Lines
    (`files`: the input's, when the caller listed them already)."""
    if fmt == "text" and (cfg.passthrough_columns or cfg.label_column):
        raise ConfigError("plain-text input has no columns to pass through or label; use JSONL or Parquet")
    if fmt == "jsonl":
        check_json_lines(cfg.input, files)


def kept_types(cfg: TagConfig, schema: pa.Schema | None) -> dict[str, pa.DataType]:
    """The Arrow type each id and passthrough column keeps in the output: the input's for
    Parquet; strings for JSONL and text, whose reader makes every kept value a string."""
    kept = [cfg.id_column or "id", *cfg.passthrough_columns]
    if schema is None:
        return {c: pa.string() for c in kept}
    return {c: schema.field(c).type for c in kept if c in schema.names}


def check_columns(cfg: TagConfig, task: Task, names: list[str], types: dict | None = None) -> None:
    """Every column the run reads exists in the Parquet input, and the text or words column holds
    what its flag reads (`types`: column -> Arrow type, where known); else fail naming the flag."""
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
    kind = (types or {}).get(source)
    if not isinstance(kind, pa.DataType):  # unknown, or a pandas-backed Dataset's numpy type
        return
    lists = pa.types.is_list(kind) or pa.types.is_large_list(kind)
    if source_flag == "--text-column" and lists:
        fix = f"--words-column {source}" if task.per_word else "--text-column with a column of one text per row"
        raise ConfigError(f"column {source!r} holds lists ({kind}), not text, so every row would be undecodable; "
                          f"use {fix}")
    if source_flag == "--words-column" and not lists:
        raise ConfigError(f"--words-column {source!r} holds {kind}, not lists of words; pass --text-column {source} "
                          "to split its text into words")


def corpus_source(cfg: TagConfig, task: Task, report: str | None = None, fmt: str | None = None,
                  found: pa.Schema | None = None) -> CorpusSource:
    """The datasource of cfg.input (the columns were checked by `check_columns` at start);
    `report`: the name of the actor told each file's row count; `fmt`, `found`: the input's
    format and Parquet schema when the caller already has them (listing an object store's
    directory and reading a footer cost a round trip each)."""
    fmt = fmt or detect_format(cfg.input, cfg.input_format)
    source, _ = task.source_column(cfg)
    extra = tuple(dict.fromkeys([*cfg.passthrough_columns, *([cfg.label_column] if cfg.label_column else [])]))
    fs, root = filesystem(cfg.input)
    types = {}
    if fmt == "parquet":
        found = found if found is not None else input_schema(cfg, fmt)
        types = {c: found.field(c).type for c in [cfg.id_column or "id", source, *extra] if c in found.names}
    # auto-detected: only the files of that format (a README beside them is not a document)
    suffixes = extensions_of(fmt) if cfg.input_format == "auto" else None
    return CorpusSource(cfg.input, fmt=fmt, root=root if fs.get_file_info(root).type == pafs.FileType.Directory else "",
                        id_column=cfg.id_column or "id", source=source, extra=extra, lists=task.list_columns(cfg),
                        types=types, max_line_bytes=cfg.max_line_bytes, report=report, file_extensions=suffixes)
