"""The sequence-labeling task's light steps, with no model and no cluster."""

import numpy as np
import pyarrow as pa

from offramp.exits.stage import StageSpec
from offramp.tasks import finalize_step, get_task, tokenize_step
from tests.conftest import NUM_LAYERS, SENTENCES, TAGS, gold_tags


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


def test_a_huge_document_costs_what_its_head_does_and_keeps_every_word(token_model_dir):
    """The stages see at most max_length - 2 words of a million-word document; the output still
    lists every word, the ones past the limit untagged, and the row is counted as truncated."""
    text = " ".join(["word"] * 200_000)
    b = tokenize_step({"id": np.array(["big"], dtype=object), "text": np.array([text], dtype=object)},
                      "token", token_model_dir, 64, text_column="text", drop=("text",))
    assert "text" not in b, "the raw text does not ride through the stages"
    assert b["_status"][0] == "truncated" and b["_num_words"][0] <= 62
    b, _ = get_task("token").runner_cls()(token_model_dir, StageSpec(0, 0, NUM_LAYERS, task="token"))(b)
    out = finalize_step(b, "token", TAGS, "id", [], None).to_pylist()[0]
    assert out["num_words"] == 200_000 and out["words_untagged"] == 200_000 - int(b["_num_words"][0])
    assert all(t is not None for t in out["tags"][:62]) and out["tags"][62] is None


def test_integer_gold_tags_compare_with_the_models_tags(token_model_dir):
    b = tokenize_step({"id": np.array(["a"], dtype=object), "tokens": np.array([["x", "y"]] + [None], dtype=object)[:1],
                       "ner": np.array([[0, 3.0]] + [None], dtype=object)[:1]},
                      "token", token_model_dir, 64, words_column="tokens", text_column="text", gold="ner")
    assert finalize_step(b, "token", TAGS, "id", [], "ner").column("gold_tags").to_pylist() == [["0", "3"]]
