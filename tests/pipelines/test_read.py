"""The JSONL and text readers' row splitting (pipelines/read.py), without a cluster."""

import json

from offramp import schema
from pipelines.read import _jsonl_rows, _text_rows


def test_a_byte_order_mark_is_not_part_of_the_first_document():
    rows = _text_rows({"path": "/c/a.txt", "bytes": "\ufefffirst line\nsecond".encode("utf-8")}, "id", "text", "/c")
    assert [r["text"] for r in rows] == ["first line", "second"] and rows[0][schema.READ_STATUS] == ""
    data = b"\xef\xbb\xbf" + json.dumps({"id": "x", "text": "hello"}).encode()
    assert _jsonl_rows({"path": "/c/a.jsonl", "bytes": data}, "id", "text", ())[0][schema.READ_STATUS] == ""


def test_ids_without_an_id_column_are_unique_across_subdirectories():
    a = _text_rows({"path": "/corpus/2024/part.txt", "bytes": b"x"}, "id", "text", "/corpus")
    b = _text_rows({"path": "/corpus/2025/part.txt", "bytes": b"x"}, "id", "text", "/corpus")
    assert (a[0]["id"], b[0]["id"]) == ("2024/part.txt:1", "2025/part.txt:1")
    single = _text_rows({"path": "/corpus/one.txt", "bytes": b"x"}, "id", "text", "/corpus/one.txt")
    assert single[0]["id"] == "one.txt:1"


def test_a_replacement_character_is_text_but_bad_bytes_are_undecodable():
    rows = _text_rows({"path": "/c/a.txt", "bytes": "Noto \ufffd fonts\n".encode() + b"\xff\xfe\n"}, "id", "text", "/c")
    assert rows[0]["text"] == "Noto \ufffd fonts" and rows[0][schema.READ_STATUS] == ""
    assert rows[1][schema.READ_STATUS] == schema.UNDECODABLE
