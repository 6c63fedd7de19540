"""The sequence-labeling task's light steps, with no model and no cluster."""

import numpy as np
import pyarrow as pa

from offramp.tasks import finalize_step, tokenize_step
from tests.conftest import SENTENCES, TAGS, gold_tags


def batch(model_dir, sentences):
    return tokenize_step(
        {"id": np.array([f"s{i}" for i in range(len(sentences))], dtype=object),
         "tokens": np.array(list(sentences) + [None], dtype=object)[:-1],
         "ner": np.array([gold_tags(s) if s else None for s in sentences] + [None], dtype=object)[:-1]},
        "token", model_dir, 64, words_column="tokens", text_column="text", gold="ner",
    )


def test_output_has_one_fixed_schema_whether_or_not_any_row_ran(token_model_dir):
    good = finalize_step(batch(token_model_dir, SENTENCES[:2]), "token", TAGS, "id", [], "ner")
    bad = finalize_step(batch(token_model_dir, [None, []]), "token", TAGS, "id", [], "ner")
    assert good.schema == bad.schema
    assert good.schema.field("full_depth_tags").type == pa.list_(pa.string())
    assert bad.column("tags").to_pylist() == [None, None] and bad.column("audited").to_pylist() == [False, False]
