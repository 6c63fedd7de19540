"""The online tagger, no cluster: rows from several requests batched together get the answers
each request gets alone, exits vary per row inside one batch, and bad texts get a status."""

import dataclasses

import numpy as np
import pytest

from offramp import schema
from offramp.exits.stage import StageSpec
from offramp.serving.stats import ReplicaStats
from offramp.serving.tagger import OnlineTagger, ServingPlan, batch_tokens
from offramp.text.words import split_words
from offramp.models.checkpoint import load_model
from offramp.text.tokenize import load_tokenizer
from tests.conftest import LABELS, MECHANISM_FIELDS, NUM_LAYERS, SENTENCES, TAGS, TEXTS, token_thresholds


def streamed_run(tagger, rows, per_layer) -> tuple[list[dict], object, list[tuple]]:
    """A streaming run that records, in order, ("layer", k) as module per_layer[k-1] is called and
    ("answer", i, answer) as row i is answered -> (answers, stats, events)."""
    events = []
    hooks = [m.register_forward_pre_hook(lambda module, args, k=k: events.append(("layer", k)))
             for k, m in enumerate(per_layer, 1)]
    try:
        answers, stats = tagger.run(rows, lambda i, a: events.append(("answer", i, a)))
    finally:
        for hook in hooks:
            hook.remove()
    return answers, stats, events


@pytest.fixture(scope="module")
def tagger(model_dir):
    return OnlineTagger(ServingPlan(model_dir, "sequence", tuple(LABELS), StageSpec(0, 0, NUM_LAYERS), 64,
                                    {"text_column": "text"}))


def test_rows_of_several_requests_in_one_batch_get_the_answers_each_request_gets_alone(tagger):
    requests = [list(TEXTS[:5]), list(TEXTS[5:12]), ["   ", TEXTS[3]]]
    alone = [tagger.run(tagger.tokenize(texts))[0] for texts in requests]
    rows = [row for texts in requests for row in tagger.tokenize(texts)]
    together, stats = tagger.run(rows)
    flat = [a for answers in alone for a in answers]
    assert [a["exit_layer"] for a in together] == [a["exit_layer"] for a in flat]
    assert [a["label"] for a in together] == [a["label"] for a in flat]
    np.testing.assert_allclose([a["confidence"] or 0 for a in together], [a["confidence"] or 0 for a in flat],
                               atol=1e-5)  # padding to another batch's longest row moves float32 sums by ~1e-7
    layers = {a["exit_layer"] for a in together if a["status"] == "ok"}
    assert len(layers) > 1, "rows of one batch exit at different layers"
    assert stats.rows_in == len(rows) - 1  # the blank text never ran


def test_an_answer_holds_the_tagging_run_output_columns_and_blank_texts_get_status_empty(tagger):
    answers, _ = tagger.run(tagger.tokenize(["fonts", "", " \n", "word " * 200]))
    assert set(answers[0]) == {"label", "confidence", "exit_layer", "status", "num_tokens", "skipped_layers"}
    first = answers[0]
    assert first["status"] == "ok" and first["label"] in LABELS and 1 <= first["exit_layer"] <= NUM_LAYERS
    for blank in answers[1:3]:
        assert blank == {"label": None, "confidence": None, "exit_layer": 0, "status": "empty", "num_tokens": 0,
                         "skipped_layers": 0}
    assert answers[3]["status"] == schema.TRUNCATED and answers[3]["num_tokens"] == 64


def test_a_batch_is_counted_in_tokens(tagger):
    rows = tagger.tokenize(["fonts", "", TEXTS[0]])
    assert [r.tokens for r in rows][1] == 0
    assert batch_tokens(rows) == sum(int(r.columns[schema.NUM_TOKENS][0]) for r in rows) > 3


def test_a_token_model_answers_words_tags_and_each_word_layer(token_model_dir):
    plan = ServingPlan(token_model_dir, "token", tuple(TAGS), StageSpec(0, 0, NUM_LAYERS, task="token"), 64,
                       {"words_column": None, "text_column": "text", "gold": None})
    tagger = OnlineTagger(plan)
    texts = [" ".join(words) for words in SENTENCES[:4]] + [""]
    answers, _ = tagger.run(tagger.tokenize(texts))
    for text, a in zip(texts, answers[:4]):
        assert a["words"] == split_words(text) and len(a["tags"]) == len(a["words"]) and set(a["tags"]) <= set(TAGS)
        assert all(1 <= layer <= NUM_LAYERS for layer in a["tag_layers"])
    assert answers[4]["status"] == "empty" and answers[4]["tags"] is None
    # streaming: the blank text at once, then each sentence right after the layer its last word
    # halted at (before the next layer starts), with the answers of the plain batch run
    spread = token_thresholds(load_model(token_model_dir), load_tokenizer(token_model_dir), SENTENCES)
    thresholds = dict(zip(range(1, NUM_LAYERS + 1), spread))
    tagger = OnlineTagger(dataclasses.replace(plan, spec=dataclasses.replace(plan.spec, thresholds=thresholds)))
    texts = [" ".join(words) for words in SENTENCES] + [""]
    rows = tagger.tokenize(texts)
    plain, _ = tagger.run(rows)
    heads = tagger.runner.shard.heads  # layer k is seen as its head reads it (a sparse layer is no module call)
    streamed, _, events = streamed_run(tagger, rows, [heads[str(k)] for k in range(1, NUM_LAYERS + 1)])
    answered = [e for e in events if e[0] == "answer"]
    assert streamed == plain and sorted(i for _, i, _ in answered) == list(range(len(rows)))
    assert answered[0][1] == len(texts) - 1, "the blank text first"
    finished = []
    for n, event in enumerate(events):
        if event[0] == "answer" and event[2]["tag_layers"]:  # after its last word's layer, before the next
            last = max(l for l in event[2]["tag_layers"] if l is not None)
            assert sum(e[0] == "layer" for e in events[:n]) == last, event
            finished.append(last)
    assert min(finished) < NUM_LAYERS, "some sentence is answered while the batch runs on"


def test_replica_stats_add_up_the_batches(tagger):
    stats = ReplicaStats()
    rows = tagger.tokenize(list(TEXTS[:6]) + [""])
    answers, stage = tagger.run(rows)
    for a in answers:
        stats.add_answer(a)
    stats.add_batch(len(answers), batch_tokens(rows), stage)
    d = stats.to_dict()
    assert d["texts"] == 7 and d["batches"] == 1 and d["statuses"] == {"empty": 1, "ok": 6}
    assert sum(d["exit_layers"].values()) == 7 and d["exit_layers"]["0"] == 1
    assert d["largest_batch_tokens"] == batch_tokens(rows)


def test_a_streaming_run_answers_each_row_right_after_its_exit_layer_with_the_batch_runs_answer(tagger):
    rows = tagger.tokenize(list(TEXTS) + [""])
    plain, plain_stats = tagger.run(rows)
    streamed, stats, events = streamed_run(tagger, rows, tagger.runner.shard.layers)
    answered = [e for e in events if e[0] == "answer"]
    assert sorted(i for _, i, _ in answered) == list(range(len(rows))), "every row answered once"
    assert streamed == plain  # the very answers (label, confidence, exit layer, status) the batch run gives
    untimed = dict(seconds=0, ended=0)  # when the calls ran differs; what they did must not
    assert dataclasses.replace(stats, **untimed) == dataclasses.replace(plain_stats, **untimed)
    for n, event in enumerate(events):
        if event[0] == "answer":  # answered after its exit layer ran and before the next one started
            assert sum(e[0] == "layer" for e in events[:n]) == event[2]["exit_layer"], event
    layers = [a["exit_layer"] for _, _, a in answered]
    assert layers == sorted(layers) and layers[0] == 0 and min(set(layers) - {0}) < NUM_LAYERS == layers[-1], \
        "the blank text first, then rows in exit order, the batch running on after the early ones"


@pytest.mark.parametrize("name", sorted(MECHANISM_FIELDS))
def test_every_mechanism_streams_the_answers_of_its_batch_run(name, mechanism_dirs):
    """Patience state, BERxiT's predictor, DE³'s prototypes and SmartBERT's skipped layers: an
    answer given as its row leaves equals the batch run's."""
    tagger = OnlineTagger(ServingPlan(mechanism_dirs[name], "sequence", tuple(LABELS), StageSpec(0, 0, NUM_LAYERS),
                                      64, {"text_column": "text"}))
    rows = tagger.tokenize(list(TEXTS))
    plain, _ = tagger.run(rows)
    given = []
    streamed, _ = tagger.run(rows, lambda i, a: given.append(a))
    assert streamed == plain and len(given) == len(rows)
    assert [a["exit_layer"] for a in given] == sorted(a["exit_layer"] for a in plain)
