"""The classification task's light steps: tokenize and finalize, with no model and no cluster."""

import numpy as np
import pyarrow as pa
import pytest

from offramp import schema
from offramp.config import ConfigError
from offramp.tasks import TASKS, finalize_step, get_task, tokenize_step
from tests.conftest import LABELS, TEXTS


def batch(model_dir, texts, gold=None):
    b = {"id": np.array([f"d{i}" for i in range(len(texts))], dtype=object), "text": np.array(texts, dtype=object)}
    if gold is not None:
        b["label"] = np.array(gold, dtype=object)
    return tokenize_step(b, "sequence", model_dir, 64, text_column="text")


def test_unknown_task_lists_the_valid_ones():
    with pytest.raises(ConfigError, match=str(sorted(TASKS))):
        get_task("ner")


def test_output_has_one_fixed_schema_whether_or_not_any_row_ran(model_dir):
    """A batch of only bad rows writes the same Arrow types as a normal one, so the files of
    one run always read back as one table."""
    good = finalize_step(batch(model_dir, TEXTS[:3], LABELS), "sequence", LABELS, "id", [], "label")
    bad = finalize_step(batch(model_dir, [None, "", "  "], [None] * 3), "sequence", LABELS, "id", [], "label")
    assert good.schema == bad.schema
    assert bad.column("label").to_pylist() == [None] * 3 and bad.column("status").to_pylist() == ["null", "empty", "empty"]
    assert pa.concat_tables([good, bad]).num_rows == 6


def test_integer_gold_labels_are_written_as_the_models_label_strings(model_dir):
    out = finalize_step(batch(model_dir, TEXTS[:3], [3, 4.0, None]), "sequence", LABELS, "id", [], "label")
    assert out.column("gold_label").to_pylist() == ["3", "4", None]


def test_tokenize_marks_the_audit_sample_by_id(model_dir):
    b = {"id": np.array([f"d{i}" for i in range(200)], dtype=object), "text": np.array(["x y"] * 200, dtype=object)}
    out = tokenize_step(b, "sequence", model_dir, 64, audit_fraction=0.25, audit_seed=3, text_column="text")
    np.testing.assert_array_equal(out[schema.AUDIT], schema.audit_mask(b["id"], 0.25, 3))
    assert 20 < out[schema.AUDIT].sum() < 80


def test_passthrough_columns_keep_their_input_type_in_a_batch_of_nulls(model_dir):
    """An all-null passthrough batch would otherwise become Arrow `null` in one file and `int64`
    in the next, and the output directory would not read back as one table."""
    types = {"id": pa.string(), "year": pa.int64()}
    full = batch(model_dir, TEXTS[:2])
    full["year"] = np.array([2021, 2022])
    empty = batch(model_dir, TEXTS[:2])
    empty["year"] = np.array([None, None], dtype=object)
    a = finalize_step(full, "sequence", LABELS, "id", ["year"], None, types)
    b = finalize_step(empty, "sequence", LABELS, "id", ["year"], None, types)
    assert a.schema == b.schema and b.schema.field("year").type == pa.int64()
    assert b.column("year").to_pylist() == [None, None]


def test_tokenize_by_length_sorts_whole_rows_by_token_count(model_dir):
    """The pipeline's tokenize sorts a block's rows by length, so that the stage batches sliced
    from it pad less: every column moves with its row, equal lengths keep their order."""
    texts = [TEXTS[i % len(TEXTS)] * (1 + i % 3) for i in range(30)] + [None, ""]
    b = {"id": np.array([f"d{i}" for i in range(len(texts))], dtype=object), "text": np.array(texts, dtype=object)}
    plain = tokenize_step(dict(b), "sequence", model_dir, 64, audit_fraction=0.3, audit_seed=1, text_column="text")
    out = tokenize_step(dict(b), "sequence", model_dir, 64, audit_fraction=0.3, audit_seed=1, text_column="text",
                        by_length=True)
    lengths = out[schema.NUM_TOKENS]
    assert (np.diff(lengths) >= 0).all() and len(set(lengths.tolist())) > 3  # sorted, and there was sorting to do
    assert sorted(out) == sorted(plain) and all(len(v) == len(texts) for v in out.values())
    row = {d: i for i, d in enumerate(plain["id"])}
    for j, d in enumerate(out["id"]):  # each row is the unsorted run's row, all columns together
        i = row[d]
        for column in (schema.TOKENS, schema.STATUS, schema.AUDIT, "text"):
            assert out[column][j] == plain[column][i], (d, column)
    for n in set(lengths.tolist()):  # stable: rows of one length keep the input's order
        same = [row[d] for d in out["id"][lengths == n]]
        assert same == sorted(same)
