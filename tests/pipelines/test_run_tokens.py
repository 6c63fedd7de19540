"""Sequence labeling through the pipeline: the words step, the token stage, finalize, and the
real Ray Data pipeline end to end with its MLflow run."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from offramp.exits.stage import StageSpec
from actors.stage import StageActor
from offramp import schema
from offramp.config import AuditConfig, ConfigError, ExitConfig, MlflowConfig, StageConfig, TagConfig, TokenExitConfig
from offramp.models.checkpoint import ModelInfo
from offramp.exits.token_pass import pad
from offramp.models.checkpoint import load_model
from offramp.tasks import get_task
from offramp.tasks.token import tokenize_batch as tokenize_words_batch
from offramp.text.tokenize import load_tokenizer
from offramp.text.words import encode_words
from pipelines.run import run_tagging
from pipelines.tracking import log_tag_run
from tests.conftest import NUM_LAYERS, SENTENCES, crash_once, gold_tags


def bad_rows() -> list[dict]:
    """Real sentences plus every kind of bad row a corpus has."""
    rows = [{"id": f"s{i}", "tokens": w, "ner": gold_tags(w)} for i, w in enumerate(SENTENCES)]
    rows += [
        {"id": "empty", "tokens": [], "ner": []},
        {"id": "null", "tokens": None, "ner": None},
        {"id": "blank", "tokens": [" ", "\n"], "ner": ["O", "O"]},
        {"id": "long", "tokens": ["word"] * 90, "ner": ["O"] * 90},  # past max_length 64: truncated
        {"id": "mismatch", "tokens": ["Only", "two"], "ner": ["O"]},  # gold ignored, row still tagged
    ]
    return rows


@pytest.fixture
def corpus(tmp_path) -> str:
    path = tmp_path / "words.parquet"
    pq.write_table(pa.Table.from_pylist(bad_rows()), path)
    return str(path)


def words_batch(model_dir, rows=None, max_length=64) -> dict:
    rows = rows or bad_rows()
    batch = {"id": np.array([r["id"] for r in rows], dtype=object),
             "tokens": np.array([r["tokens"] for r in rows] + [None], dtype=object)[:-1],
             "ner": np.array([r["ner"] for r in rows] + [None], dtype=object)[:-1]}
    return tokenize_words_batch(batch, load_tokenizer(model_dir), "tokens", "text", max_length, "ner")


# ---------------------------------------------------------------- steps, no cluster


def test_words_step_gives_every_bad_row_a_status(token_model_dir):
    """Empty, null, blank and over-long sentences get a status; a tag list of the wrong length is not used as gold."""
    b = words_batch(token_model_dir)
    status = dict(zip(b["id"], b[schema.STATUS]))
    assert status["empty"] == schema.EMPTY and status["null"] == schema.NULL and status["blank"] == schema.EMPTY
    assert status["long"] == schema.TRUNCATED and status["s0"] == schema.OK and status["mismatch"] == schema.OK
    i = list(b["id"]).index("long")
    # [CLS] + 62 one-token words + [SEP]: the stages see those 62; the other 28 stay in the words, untagged
    assert b[schema.NUM_TOKENS][i] == 64 and b[schema.NUM_WORDS][i] == 62
    assert (np.frombuffer(b[schema.WORD_STARTS][i], dtype=np.int32) >= 0).all()
    assert len(schema.split_blob(b[schema.WORDS][i])) == 90
    assert b[schema.GOLD_TAGS][list(b["id"]).index("mismatch")] == b""
    assert schema.split_blob(b[schema.GOLD_TAGS][0]) == gold_tags(SENTENCES[0])


def test_raw_text_is_split_into_words_by_the_documented_rule(token_model_dir):
    batch = {"id": np.array(["a"], dtype=object), "text": np.array(["It's v3.8, don't panic."], dtype=object)}
    b = tokenize_words_batch(batch, load_tokenizer(token_model_dir), None, "text", 64)
    assert schema.split_blob(b[schema.WORDS][0]) == ["It", "'s", "v3.8", ",", "do", "n't", "panic", "."]


def run_stages(model_dir, batch, ranges, carry="float32", **kw) -> dict:
    for k, (s, e) in enumerate(ranges):
        spec = StageSpec(k, s, e, task="token", carry_dtype=carry, max_tokens=kw.get("max_tokens", 0),
                         exit_mode=kw.get("mode"), window=kw.get("window"), sentence_pool=kw.get("pool"),
                         exits_enabled=kw.get("exits", True), policy=kw.get("policy"))
        batch = StageActor(model_dir, spec)(batch)
    return batch


@pytest.mark.parametrize("mode", ["token", "sentence"])
def test_stage_split_changes_no_tag_and_no_exit_layer(token_model_dir, mode):
    """One stage of all layers, two stages, or four give the same tags, word exit layers and cost."""
    runs = [run_stages(token_model_dir, words_batch(token_model_dir), r, mode=mode)
            for r in ([(0, NUM_LAYERS)], [(0, 2), (2, NUM_LAYERS)], [(l, l + 1) for l in range(NUM_LAYERS)])]
    for other in runs[1:]:
        for col in (schema.WORD_LABEL, schema.WORD_EXIT):
            assert list(other[col]) == list(runs[0][col])
        assert np.array_equal(other[schema.TOKEN_LAYERS], runs[0][schema.TOKEN_LAYERS])
        assert np.array_equal(other[schema.EXIT_LAYER], runs[0][schema.EXIT_LAYER])
    exits = np.concatenate([np.frombuffer(x, dtype=np.int16) for x in runs[0][schema.WORD_EXIT] if x])
    assert len(set(exits[exits > 0])) >= 2, "thresholds should halt words at several layers"


@pytest.mark.parametrize("ranges", [[(0, NUM_LAYERS)], [(0, 1), (1, 3), (3, NUM_LAYERS)]])
def test_audited_sentences_keep_their_answer_and_get_the_full_depth_tags(token_model_dir, ranges):
    """An audited sentence is answered exactly as if it were not audited, and its full-depth lane
    gives every word the tag the model gives with exits off, over one stage or several."""
    plain = run_stages(token_model_dir, words_batch(token_model_dir), ranges)
    batch = words_batch(token_model_dir)
    batch[schema.AUDIT] = np.ones(len(batch["id"]), dtype=bool)
    audited = run_stages(token_model_dir, batch, ranges)
    full = run_stages(token_model_dir, words_batch(token_model_dir), ranges, exits=False)
    for col in (schema.WORD_LABEL, schema.WORD_EXIT):
        assert list(audited[col]) == list(plain[col])
    assert np.array_equal(audited[schema.TOKEN_LAYERS], plain[schema.TOKEN_LAYERS]), "the audit is not the answer's cost"
    assert np.array_equal(audited[schema.EXIT_LAYER], plain[schema.EXIT_LAYER])
    ran = np.isin(audited[schema.STATUS], schema.RUNNABLE)
    assert list(audited[schema.FULL_WORD_LABEL][ran]) == list(full[schema.WORD_LABEL][ran])
    assert audited[schema.FULL_DONE][ran].all() and not audited[schema.FULL_DONE][~ran].any()
    assert all(h == b"" for h in audited[schema.FULL_HIDDEN]), "a finished lane drops its states"
    differs = [a != f for a, f in zip(audited[schema.WORD_LABEL][ran], audited[schema.FULL_WORD_LABEL][ran])]
    assert any(differs), "the thresholds should make some early tags differ from full depth"

    # the task's audit: per-word agreement of the answers with the full-depth lane, with an interval
    info = ModelInfo.read(token_model_dir)
    table = get_task("token").finalize(audited, info.labels, "id", [], "ner")
    cfg = TagConfig(label_column="ner")
    a = get_task("token").audit(table, info, cfg)
    rows = [r for r in table.to_pylist() if r["audited"]]
    pairs = [(t, f) for r in rows for t, f in zip(r["tags"], r["full_depth_tags"]) if t is not None]
    assert a["unit"] == "words" and a["sentences"] == len(rows) == int(ran.sum())
    assert a["rows"] == len(pairs) and a["agree"] == sum(t == f for t, f in pairs)
    assert a["lower"] <= a["agreement"] <= a["upper"]
    assert sum(v["rows"] for v in a["by_layer"].values()) == len(pairs)


def test_token_models_take_per_word_policies_from_the_registry(token_model_dir):
    """max_prob decides words by 1 - top probability; with a threshold of 1 every word halts at the
    first head, with 0 none does before the last layer."""
    batch = words_batch(token_model_dir)
    ran = np.isin(batch[schema.STATUS], schema.RUNNABLE)
    spec = dict(task="token", carry_dtype="float32", policy="max_prob")
    early = StageActor(token_model_dir, StageSpec(0, 0, NUM_LAYERS, thresholds={l: 1.01 for l in range(1, 5)}, **spec))(batch)
    late = StageActor(token_model_dir, StageSpec(0, 0, NUM_LAYERS, thresholds={l: 0.0 for l in range(1, 5)}, **spec))(batch)
    tagged = lambda out, i: np.frombuffer(out[schema.WORD_EXIT][i], dtype=np.int16)  # noqa: E731
    starts = [np.frombuffer(batch[schema.WORD_STARTS][i], dtype=np.int32) for i in range(len(ran))]
    for i in np.flatnonzero(ran):
        assert set(tagged(early, i)[starts[i] >= 0]) <= {1}
        assert set(tagged(late, i)[starts[i] >= 0]) <= {NUM_LAYERS}
    with pytest.raises(ConfigError, match="cannot decide per word"):
        StageActor(token_model_dir, StageSpec(0, 0, NUM_LAYERS, task="token", policy="patience"))


def test_finished_sentences_drop_their_states_and_ride_on(token_model_dir):
    b = run_stages(token_model_dir, words_batch(token_model_dir), [(0, 2)])
    finished = b[schema.EXIT_LAYER] > 0
    assert finished.any() and (~finished & np.isin(b[schema.STATUS], schema.RUNNABLE)).any()
    assert all(h == b"" for h in b[schema.HIDDEN][finished])
    assert all(h != b"" for h in b[schema.HIDDEN][~finished & np.isin(b[schema.STATUS], schema.RUNNABLE)])


def test_pipeline_steps_equal_the_full_model_when_nothing_halts(token_model_dir):
    """With exits off every word's tag is the full model's argmax at its first sub-word."""
    b = words_batch(token_model_dir)
    spec = StageSpec(0, 0, NUM_LAYERS, task="token", carry_dtype="float32", exits_enabled=False)
    out = StageActor(token_model_dir, spec)(b)
    model = load_model(token_model_dir)
    tok = load_tokenizer(token_model_dir)
    for i, r in enumerate(bad_rows()[: len(SENTENCES)]):
        ids, lengths, starts = pad(encode_words(tok, [r["tokens"]], 64))
        with torch.no_grad():
            full = model(ids, torch.ones_like(ids)).logits[0].argmax(-1)
        want = full[starts[0]].numpy()
        assert np.array_equal(np.frombuffer(out[schema.WORD_LABEL][i], dtype=np.int16), want)
        assert set(np.frombuffer(out[schema.WORD_EXIT][i], dtype=np.int16)) == {NUM_LAYERS}
        assert out[schema.TOKEN_LAYERS][i] == len(ids[0]) * NUM_LAYERS


def test_finalize_writes_one_row_per_input_with_tags_per_word(token_model_dir):
    b = run_stages(token_model_dir, words_batch(token_model_dir), [(0, NUM_LAYERS)])
    info = ModelInfo.read(token_model_dir)
    t = get_task("token").finalize(b, info.labels, "id", [], "ner")
    rows = {r["id"]: r for r in t.to_pylist()}
    assert len(rows) == t.num_rows == len(bad_rows())
    assert rows["null"]["tags"] is None and rows["null"]["status"] == schema.NULL
    assert len(rows["s1"]["tags"]) == len(SENTENCES[1]) and all(tag in info.labels for tag in rows["s1"]["tags"])
    long = rows["long"]
    assert long["words_untagged"] == 28 and long["tags"][-1] is None and long["tag_layers"][-1] is None
    assert long["tags"][0] is not None
    assert rows["mismatch"]["gold_tags"] is None and rows["s0"]["gold_tags"] == gold_tags(SENTENCES[0])
    assert t.schema.field("tags").type == pa.list_(pa.string())


# ---------------------------------------------------------------- the real pipeline under Ray


def tag_config(tmp_path, corpus, model_dir, **kw) -> TagConfig:
    base = dict(
        input=corpus, model=model_dir, output=str(tmp_path / "out"), words_column="tokens", label_column="ner",
        max_length=64, batch_size=4, tokenize_batch_size=4,
        stages=(StageConfig(layers=(0, 2), batch_size=4), StageConfig(layers=(2, NUM_LAYERS), batch_size=4)),
        mlflow=MlflowConfig(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", experiment="test"),
    )
    base.update(kw)
    return TagConfig(**base)


@pytest.mark.ray
@pytest.mark.slow
def test_token_pipeline_end_to_end_under_ray(tmp_path, corpus, token_model_dir, local_ray, caplog):
    """Two stage pools under real Ray: one output row per input, tags per word, metrics that match
    the output, sentences leaving in both stages, the audit, the stage plan and per-stage rates
    as for classification, and the run read back from MLflow."""
    audit = AuditConfig(fraction=1.0, target_agreement=0.5)
    cfg = tag_config(tmp_path, corpus, token_model_dir, full_depth_eval_rows=-1, audit=audit)
    with caplog.at_level("INFO", logger="pipelines.run"):
        result = run_tagging(cfg)
    assert "stage 1: layers [2, 4)" in caplog.text, "the stage plan is logged"
    out = pq.read_table(cfg.output).to_pylist()
    ids = [r["id"] for r in out]
    assert sorted(ids) == sorted(r["id"] for r in bad_rows()), "every input row exactly once"
    by_id = {r["id"]: r for r in out}
    m = result.metrics
    assert m["rows"] == len(out) and m["rows_status_truncated"] == 1 and m["rows_status_empty"] == 2
    assert m["token_layers"] == sum(r["token_layers"] for r in out if r["status"] in schema.RUNNABLE)
    assert m["token_layers_full_depth"] == NUM_LAYERS * sum(r["num_tokens"] for r in out if r["status"] in schema.RUNNABLE)
    assert 0 < m["token_layer_saving"] < 1
    assert m["words_untagged"] == by_id["long"]["words_untagged"] == 28
    assert m["stage0_rows_exited"] > 0 and m["stage1_rows_exited"] > 0
    assert m["stage0_rows_exited"] + m["stage1_rows_exited"] == m["rows_labeled"]
    halted = [l for r in out for l in (r["tag_layers"] or []) if l]
    assert sum(m[f"words_halted_layer{l}"] for l in range(1, NUM_LAYERS + 1)) == len(halted)
    gold = [(r["tags"], r["gold_tags"]) for r in out if r["gold_tags"]]
    right = sum(p == g for ts, gs in gold for p, g in zip(ts, gs))
    assert m["accuracy"] == pytest.approx(right / sum(len(gs) for _, gs in gold))
    assert "entity_f1" in m and "accuracy_full_depth" in m and "entity_f1_full_depth" in m
    for k in (0, 1):
        assert m[f"stage{k}_docs_per_busy_second"] > 0 and m[f"stage{k}_busy_seconds"] > 0
    assert m["stage1_audit_token_layers"] > 0, "the full-depth lane's work is reported"
    # every tagged word of every sentence is audited: agreement counted from the output itself
    pairs = [(t, f) for r in out if r["audited"] for t, f in zip(r["tags"], r["full_depth_tags"]) if t is not None]
    assert all(r["audited"] == (r["status"] in schema.RUNNABLE) for r in out)
    assert m["audit_rows"] == len(pairs) and m["audit_agreement"] == pytest.approx(sum(t == f for t, f in pairs) / len(pairs))
    assert result.audit["status"] in ("pass", "below_target") and result.audit["unit"] == "words"

    run_id = log_tag_run(cfg, result, NUM_LAYERS)
    mlflow.set_tracking_uri(cfg.mlflow.tracking_uri)
    logged = mlflow.get_run(run_id).data.metrics
    assert logged["token_layer_saving"] == pytest.approx(m["token_layer_saving"])
    assert logged["stage1_rows_exited"] == m["stage1_rows_exited"]
    assert logged["audit_agreement"] == pytest.approx(m["audit_agreement"])
    assert mlflow.get_run(run_id).data.tags["offramp.audit"] == result.audit["status"]


@pytest.mark.ray
@pytest.mark.slow
def test_token_pipeline_without_exits_matches_full_model_and_reads_jsonl(tmp_path, token_model_dir, local_ray):
    """JSONL with word lists, run at full depth: every tag is the plain full model's."""
    path = tmp_path / "words.jsonl"
    with open(path, "w") as f:
        for i, w in enumerate(SENTENCES):
            f.write(json.dumps({"id": f"s{i}", "tokens": w, "ner": gold_tags(w)}) + "\n")
        f.write('{"id": "broken", "tokens": "not a list"}\n')
        f.write(b"\xff\xfe not json\n".decode("latin-1"))
    cfg = tag_config(tmp_path, str(path), token_model_dir, exit=ExitConfig(disabled=True))
    out = {r["id"]: r for r in pq.read_table(run_tagging(cfg).output).to_pylist()}
    assert len(out) == len(SENTENCES) + 2 and out["broken"]["status"] == schema.UNDECODABLE
    model, tok = load_model(token_model_dir), load_tokenizer(token_model_dir)
    for i, w in enumerate(SENTENCES):
        ids, _, starts = pad(encode_words(tok, [w], 64))
        with torch.no_grad():
            want = [model.labels[j] for j in model(ids).logits[0].argmax(-1)[starts[0]]]
        assert out[f"s{i}"]["tags"] == want
        assert set(out[f"s{i}"]["tag_layers"]) == {NUM_LAYERS}


@pytest.mark.ray
@pytest.mark.slow
def test_crashed_token_stage_actor_loses_and_duplicates_no_rows(tmp_path, corpus, token_model_dir, local_ray):
    """The deeper stage's actor dies mid-batch once: Ray Data restarts it and retries the batch,
    and every input row comes out exactly once with the tags an uncrashed run gives."""
    marker = tmp_path / "crashed"
    cfg = tag_config(tmp_path, corpus, token_model_dir)
    run_tagging(cfg, stage_cls=crash_once(StageActor, marker))
    assert marker.exists(), "the fault was injected"
    out = pq.read_table(cfg.output).to_pylist()
    assert sorted(r["id"] for r in out) == sorted(r["id"] for r in bad_rows())
    # what an uncrashed run of the same two stages gives each row (batch invariance makes it comparable)
    clean = run_stages(token_model_dir, words_batch(token_model_dir), [(0, 2), (2, NUM_LAYERS)], carry="float16")
    table = get_task("token").finalize(clean, ModelInfo.read(token_model_dir).labels, "id", [], "ner")
    want = {r["id"]: (r["tags"], r["tag_layers"]) for r in table.to_pylist()}
    assert {r["id"]: (r["tags"], r["tag_layers"]) for r in out} == want


def test_bad_token_configuration_fails_at_start_naming_the_fix(tmp_path, corpus, token_model_dir):
    with pytest.raises(ConfigError, match="cannot decide per word"):
        run_tagging(tag_config(tmp_path, corpus, token_model_dir, exit=ExitConfig(policy="patience")))
    with pytest.raises(ConfigError, match="token = TOKEE"):
        TokenExitConfig(mode="word")
    with pytest.raises(ConfigError, match="--words-column"):
        run_tagging(tag_config(tmp_path, corpus, token_model_dir, words_column="words"))
