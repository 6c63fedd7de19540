"""The corpus reader (pipelines/read.py): streamed lines, one fixed block schema, row keys,
and what each bad line becomes. The datasource is driven directly, file by file, as a Ray
read task drives it (constructing it needs Ray for its path list)."""

import gzip
import io
import json
import tracemalloc

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from ray.data import DataContext

from offramp import schema
from offramp.config import ConfigError, TagConfig
from offramp.tasks import get_task
from pipelines.read import BLOCK_ROWS, check_json_lines, corpus_source, iter_lines

pytestmark = pytest.mark.ray


@pytest.fixture(autouse=True)
def _ray(local_ray):
    """CorpusSource keeps its path list in the object store."""


def rows_of(path, fmt="jsonl", **kw):
    """Every row the reader makes of `path` (a file or directory), in file order."""
    cfg = TagConfig(input=str(path), model="unused", output="unused", **kw)
    source = corpus_source(cfg, get_task("sequence"))
    rows = []
    for p in sorted(source.file_paths()):
        with source._open_input_source(source._filesystem, p) as f:
            for block in source._read_stream(f, p):
                assert block.schema == source.schema  # one schema in every block and file
                rows += block.to_pylist()
    return rows


def test_lines_are_streamed_with_a_cap_a_bom_and_crlf_handled():
    data = b"\xef\xbb\xbfab\r\ncd\n\n" + b"x" * 25 + b"\nshort\ntail-without-newline"
    got = list(iter_lines(io.BytesIO(data), max_line_bytes=10, chunk=3))
    assert got == [(b"ab", False), (b"cd", False), (b"", False), (b"x" * 10, True), (b"short", False),
                   (b"tail-witho", True)]


def test_a_byte_order_mark_is_not_part_of_the_first_document(tmp_path):
    (tmp_path / "a.txt").write_bytes("\ufefffirst line\nsecond".encode())
    rows = rows_of(tmp_path / "a.txt")
    assert [r["text"] for r in rows] == ["first line", "second"] and rows[0][schema.READ_STATUS] == ""


def test_row_keys_and_ids_are_unique_across_subdirectories(tmp_path):
    for year in ("2024", "2025"):
        (tmp_path / year).mkdir()
        (tmp_path / year / "part.txt").write_text("x\ny\n")
    rows = rows_of(tmp_path)
    assert [r[schema.SOURCE_ROW] for r in rows] == ["2024/part.txt:1", "2024/part.txt:2", "2025/part.txt:1", "2025/part.txt:2"]
    assert [r["id"] for r in rows] == [r[schema.SOURCE_ROW] for r in rows]  # no id column: the row key


def test_a_replacement_character_is_text_but_bad_bytes_are_undecodable(tmp_path):
    (tmp_path / "a.txt").write_bytes("Noto \ufffd fonts\n".encode() + b"\xff\xfe\n")
    rows = rows_of(tmp_path / "a.txt")
    assert rows[0]["text"] == "Noto \ufffd fonts" and rows[0][schema.READ_STATUS] == ""
    assert rows[1][schema.READ_STATUS] == schema.UNDECODABLE


def test_gzip_jsonl_is_read_and_other_files_beside_it_are_not(tmp_path):
    with gzip.open(tmp_path / "part.jsonl.gz", "wt") as f:
        for i in range(3):
            f.write(json.dumps({"id": f"g{i}", "text": f"doc {i}", "label": i}) + "\n")
    (tmp_path / "README.md").write_text("# not a document\n")
    rows = rows_of(tmp_path, label_column="label")
    assert [(r["id"], r["text"], r["label"]) for r in rows] == [("g0", "doc 0", "0"), ("g1", "doc 1", "1"), ("g2", "doc 2", "2")]


def test_each_bad_json_line_is_one_row_with_a_status(tmp_path):
    lines = [b'{"id": "n", "text": null}', b'{"id": "num", "text": 5}', b"not json", b'"a string"',
             b'{"id": "nul", "text": "a\\u0000b"}', b"", b'{"id": "big", "text": "' + b"w " * 40_000 + b'"}',
             b'{"id": "after", "text": "fine"}']
    (tmp_path / "a.jsonl").write_bytes(b"\n".join(lines))
    rows = {r[schema.SOURCE_ROW]: r for r in rows_of(tmp_path / "a.jsonl", max_line_bytes=2**16)}
    status = {k: r[schema.READ_STATUS] for k, r in rows.items()}
    assert status == {"a.jsonl:1": schema.NULL, "a.jsonl:2": schema.UNDECODABLE, "a.jsonl:3": schema.UNDECODABLE,
                      "a.jsonl:4": schema.UNDECODABLE, "a.jsonl:5": "", "a.jsonl:7": schema.TOO_LONG, "a.jsonl:8": ""}
    assert rows["a.jsonl:8"]["id"] == "after"  # the line after an over-long one is read whole
    assert rows["a.jsonl:7"]["id"] == "a.jsonl:7"  # an unparsed line is keyed by where it is


def test_a_damaged_gzip_file_gives_its_rows_up_to_the_damage_then_one_undecodable_row(tmp_path):
    good = gzip.compress(b"".join(json.dumps({"id": f"r{i}", "text": "x " * 50}).encode() + b"\n" for i in range(2000)))
    (tmp_path / "cut.jsonl.gz").write_bytes(good[: len(good) // 2])  # a copy cut short
    rows = rows_of(tmp_path / "cut.jsonl.gz")
    assert 0 < len(rows) < 2001 and all(r[schema.READ_STATUS] == "" for r in rows[:-1])
    assert rows[-1][schema.READ_STATUS] == schema.UNDECODABLE and rows[-1]["id"] == f"cut.jsonl.gz:{len(rows)}"


def test_parquet_files_with_a_missing_column_or_another_type_read_in_the_first_files_schema(tmp_path):
    pq.write_table(pa.table({"id": ["a", "b"], "text": ["one", "two"], "label": ["x", "y"]}), tmp_path / "1.parquet")
    pq.write_table(pa.table({"id": ["c"], "label": pa.array([7], pa.int64())}), tmp_path / "2.parquet")  # no text
    rows = rows_of(tmp_path, label_column="label")
    assert [(r["id"], r["text"], r["label"], r[schema.SOURCE_ROW]) for r in rows] == [
        ("a", "one", "x", "1.parquet:1"), ("b", "two", "y", "1.parquet:2"), ("c", None, "7", "2.parquet:1")]


def test_a_large_file_is_read_in_bounded_memory(tmp_path):
    """A 128 MB JSONL file: the reader holds a read buffer, a chunk and a block, not the file
    (the old reader held the whole file's bytes and all its rows in one worker)."""
    line = json.dumps({"text": "lorem ipsum " * 40}).encode() + b"\n"
    with gzip.open(tmp_path / "big.jsonl.gz", "wb", compresslevel=1) as f:
        for _ in range(128 * 2**20 // len(line)):
            f.write(line)
    cfg = TagConfig(input=str(tmp_path / "big.jsonl.gz"), model="unused", output="unused")
    source = corpus_source(cfg, get_task("sequence"))
    path = source.file_paths()[0]
    tracemalloc.start()
    rows, arrow_peak = 0, 0
    with source._open_input_source(source._filesystem, path) as f:
        for block in source._read_stream(f, path):
            assert block.num_rows <= BLOCK_ROWS
            rows += block.num_rows
            arrow_peak = max(arrow_peak, pa.total_allocated_bytes())
            del block
    python_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert rows == 128 * 2**20 // len(line)
    # Python: a 4 MB chunk and a block of ~8192 rows x 500 B = 4 MB as dicts (x ~2 overhead).
    # Arrow: Ray's streaming read buffer (DataContext.streaming_read_buffer_size, 32 MiB) plus
    # a block. Both bounds are far below the file's 128 MB.
    buffer = DataContext.get_current().streaming_read_buffer_size
    assert python_peak < 24 * 2**20 and arrow_peak < buffer + 16 * 2**20, (python_peak, arrow_peak)


def test_a_json_file_that_is_not_json_lines_is_refused_at_start_naming_it(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"id": "1", "text": "x"}\n')
    (tmp_path / "part.json").write_text('{"id": "2", "text": "y"}\n{"id": "3", "text": "z"}\n')  # JSON Lines as `datasets` names it
    with gzip.open(tmp_path / "more.json.gz", "wt") as f:
        f.write('\n{"id": "4", "text": "w"}\n')
    (tmp_path / "_manifest.json").write_text(json.dumps({"complete": True}, indent=2))  # skipped: a leading '_'
    check_json_lines(str(tmp_path))
    assert sorted(r["id"] for r in rows_of(tmp_path)) == ["1", "2", "3", "4"]
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "manifest.json").write_text(json.dumps({"complete": True, "rows": 4}, indent=2))
    with pytest.raises(ConfigError, match=r"sub/manifest.json is not JSON Lines.*jq -c"):
        check_json_lines(str(tmp_path))
    (tmp_path / "sub" / "manifest.json").write_text(json.dumps([{"id": "5", "text": "v"}]))  # an array
    with pytest.raises(ConfigError, match="manifest.json is not JSON Lines"):
        check_json_lines(str(tmp_path))
