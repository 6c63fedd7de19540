"""One corpus with every bad input a nightly job meets, through the real job: each row comes
out once with a clear status, the manifest's counts match the output, and each bad setting
fails at start with its fix."""

from __future__ import annotations

import gzip
import json

import pyarrow.parquet as pq
import pytest

from offramp import schema
from pipelines.output import MANIFEST
from tests.conftest import LABELS, TEXTS

pytestmark = [pytest.mark.ray, pytest.mark.slow]
MEGABYTE_DOC = "word " * (2**20 // 5)


def jl(**rec) -> bytes:
    return json.dumps(rec).encode()


@pytest.fixture(scope="module")
def bad_corpus(tmp_path_factory):
    """(directory, {source_row: expected status}) for every row the reader makes."""
    root = tmp_path_factory.mktemp("bad") / "corpus"
    (root / "sub").mkdir(parents=True)
    expected = {}

    def write(name, lines, statuses, opener=open, sep=b"\n", prefix=b""):
        with opener(root / name, "wb") as f:
            f.write(prefix + sep.join(lines) + sep)
        expected.update({f"{name}:{i}": s for i, s in statuses.items()})

    ok = schema.OK
    lines = [jl(id="ok", text=TEXTS[0], label=LABELS[0]),       # 1 (after a BOM)
             jl(id="null", text=None, label=LABELS[1]),          # 2
             jl(id="empty", text="", label=1),                    # 3 integer gold label
             jl(id="blank", text="  \t ", label=LABELS[2]),       # 4 whitespace only
             b'{"id": "latin1", "text": "caf\xe9"}',              # 5 not UTF-8
             jl(id="nul", text="a\u0000b nul inside"),            # 6 NUL escaped in JSON: text
             jl(id="fffd", text="Noto \ufffd fonts"),             # 7 U+FFFD is text
             jl(id="mega", text=MEGABYTE_DOC),                    # 8 a 1 MB document
             jl(id="dup", text=TEXTS[1]),                         # 9 duplicate ids: both kept
             jl(id="dup", text=TEXTS[2]),                         # 10
             b"this is not json",                                 # 11
             b"[1, 2, 3]",                                        # 12 JSON but not an object
             jl(id="number", text=42),                            # 13 not a string
             jl(id="raw-nul", text="x") + b"\x00"]                # 14 a NUL byte outside the JSON
    statuses = {1: ok, 2: schema.NULL, 3: schema.EMPTY, 4: schema.EMPTY, 5: schema.UNDECODABLE, 6: ok, 7: ok,
                8: schema.TRUNCATED, 9: ok, 10: ok, 11: schema.UNDECODABLE, 12: schema.UNDECODABLE,
                13: schema.UNDECODABLE, 14: schema.UNDECODABLE}
    write("a.jsonl", lines, statuses, sep=b"\r\n", prefix=b"\xef\xbb\xbf")
    # another file's schema: other fields, no label, the text under another key
    write("b.jsonl", [jl(doc_id=1, body="elsewhere", lang="en"), jl(id=7, text=TEXTS[3], extra={"k": 1})],
          {1: schema.NULL, 2: ok})
    write("sub/a.jsonl", [jl(text=TEXTS[4])], {1: ok})  # same name in a subdirectory, no id
    (root / "empty.jsonl").write_bytes(b"")
    write("c.jsonl.gz", [jl(id="gz", text=TEXTS[5])], {1: ok}, opener=gzip.open)
    good = gzip.compress(b"\n".join(jl(id=f"cut{i}", text=TEXTS[i % len(TEXTS)]) for i in range(400)))
    (root / "d.jsonl.gz").write_bytes(good[: len(good) // 2])  # a copy cut short
    (root / "README.md").write_text("# not a document\n")
    return root, expected


def test_every_bad_row_comes_out_once_with_a_clear_status(tmp_path, bad_corpus, model_dir, command, local_ray):
    root, expected = bad_corpus
    out = tmp_path / "out"
    status, stdout, err = command("tag", "--input", str(root), "--model", model_dir, "--output", str(out),
                                  "--label-column", "label", "--set", "max_length=64",
                                  "--set", f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db")
    assert status == 0, err
    table = pq.read_table(out)
    rows = {r[schema.SOURCE_ROW]: r for r in table.to_pylist()}
    assert len(rows) == table.num_rows  # each source row once
    damaged = {k: r["status"] for k, r in rows.items() if k.startswith("d.jsonl.gz:")}
    assert damaged and list(damaged.values())[-1] == schema.UNDECODABLE  # rows up to the damage, then one marker
    assert set(v for v in list(damaged.values())[:-1]) <= {schema.OK}
    assert {k: r["status"] for k, r in rows.items() if k in expected} == expected
    assert set(rows) - set(expected) == set(damaged)  # no row from README.md or the empty file
    assert [r["id"] for r in rows.values()].count("dup") == 2
    assert rows["sub/a.jsonl:1"]["id"] == "sub/a.jsonl:1" and rows["b.jsonl:2"]["id"] == "7"
    assert rows["a.jsonl:3"]["gold_label"] == "1" and rows["a.jsonl:8"]["num_tokens"] == 64
    assert all((r["label"] is None) == (r["status"] not in schema.RUNNABLE) for r in rows.values())
    manifest = json.loads((out / MANIFEST).read_text())
    by_status = {s: sum(r["status"] == s for r in rows.values()) for s in schema.STATUSES}
    assert manifest["rows_in"] == manifest["rows_out"] == len(rows) and manifest["rows_by_status"] == by_status
    assert f"{by_status['truncated']} truncated" in stdout


@pytest.mark.parametrize(
    "args, fix",
    [
        (["--input-format", "parquet"], "--input-format"),
        (["--passthrough", "lang", "--input-format", "text"], "use JSONL or Parquet"),
        (["--resume"], "drop --resume"),
        (["--resume", "--overwrite"], "give one"),
        (["--set", "max_errored_blocks=-2"], "use -1 (no limit)"),
        (["--set", "min_rows_per_file=10", "--set", "max_rows_per_file=5"], "min_rows_per_file"),
        (["--set", "max_line_bytes=100"], "max_line_bytes"),
        (["--set", "ray.object_store_fraction=0"], "ray.object_store_fraction"),
        (["--policy", "max_prob"], "give --threshold"),
        (["--model", "/nonexistent/model"], "/nonexistent/model"),
    ],
)
def test_each_bad_setting_fails_at_start_with_its_fix(tmp_path, bad_corpus, model_dir, command, args, fix):
    root, _ = bad_corpus
    argv = ["tag", "--input", str(root), "--model", model_dir, "--output", str(tmp_path / "out"), *args]
    status, _, err = command(*argv)
    assert status == 2 and fix in err, err
    assert not (tmp_path / "out").exists()  # nothing was started


def test_an_output_inside_the_input_is_refused(bad_corpus, model_dir, command):
    root, _ = bad_corpus
    status, _, err = command("tag", "--input", str(root), "--model", model_dir, "--output", str(root / "out"))
    assert status == 2 and "outside the input" in err and not (root / "out").exists()
