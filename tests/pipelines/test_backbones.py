"""Every backbone through the real pipeline: a team's fine-tuned classifier (and tagger) of each
backbone gets exits with --heads-only, is certified, tags a corpus over two Ray stages with the
audit on every row, and wherever a row runs to full depth it gets the original model's label."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from offramp.config import AuditConfig, MlflowConfig, StageConfig, TagConfig
from offramp.exits.token_pass import pad
from offramp.models.checkpoint import ModelInfo
from offramp.text.words import encode_words
from pipelines import run_tagging
from tests.backbones import BACKBONE_TYPES, backbone_tokenizer, save_stock_model
from tests.conftest import LABELS, NUM_LAYERS, SENTENCES, TEXTS, gold_tags

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(autouse=True)
def _ray(local_ray):
    """Every test here runs on the module's local Ray."""


def stages(batch):
    return (StageConfig(layers=(0, 2), batch_size=batch), StageConfig(layers=(2, NUM_LAYERS), batch_size=batch))


@pytest.mark.parametrize("model_type", BACKBONE_TYPES)
def test_classifier_of_each_backbone_through_train_calibrate_and_two_ray_stages(model_type, tmp_path, command):
    stock = save_stock_model(model_type, tmp_path / "clf", seed=8)
    rows = pa.table({"id": [f"d{i}" for i in range(len(TEXTS) * 2)], "text": TEXTS * 2,
                     "label": [LABELS[i % 3] for i in range(len(TEXTS) * 2)]})
    pq.write_table(rows, tmp_path / "train.parquet")
    pq.write_table(pa.concat_tables([rows, rows]), tmp_path / "dev.parquet")
    status, _, err = command("train", "--train", str(tmp_path / "train.parquet"), "--eval", str(tmp_path / "dev.parquet"),
                             "--output", str(tmp_path / "m"), "--base-model", str(tmp_path / "clf"), "--heads-only",
                             "--stage2-epochs", "40", "--max-length", "32", "--max-accuracy-drop", "0.3", "--no-mlflow.enabled")
    assert status == 0, err
    # calibration on the backbone: a loose target, so that rows exit early on a random tiny model
    status, _, err = command("calibrate", "--model", str(tmp_path / "m"), "--data", str(tmp_path / "dev.parquet"),
                             "--label-column", "label", "--max-accuracy-drop", "0.5", "--max-length", "32",
                             "--no-mlflow.enabled")
    assert status == 0, err
    assert ModelInfo.read(str(tmp_path / "m")).calibration["max_length"] == 32

    cfg = TagConfig(input=str(tmp_path / "train.parquet"), model=str(tmp_path / "m"), output=str(tmp_path / "out"),
                    id_column="id", label_column="label", max_length=32, batch_size=8, tokenize_batch_size=8,
                    stages=stages(8), audit=AuditConfig(fraction=1.0, target_agreement=None),
                    mlflow=MlflowConfig(enabled=False))
    result = run_tagging(cfg)
    out = pq.read_table(cfg.output).to_pandas().set_index("id")
    assert sorted(out.index) == sorted(rows.column("id").to_pylist()), "every input row exactly once"
    assert result.metrics["rows_labeled"] == len(out)
    tok = backbone_tokenizer(model_type)
    enc = tok(rows.column("text").to_pylist(), padding=True, truncation=True, max_length=32, return_tensors="pt")
    with torch.no_grad():
        original = [LABELS[i] for i in stock(**{k: enc[k] for k in ("input_ids", "attention_mask")}).logits.argmax(-1)]
    original = dict(zip(rows.column("id").to_pylist(), original))
    # the audit ran every row to full depth: that is the original classifier, row for row
    assert all(out.loc[i, "full_depth_label"] == original[i] for i in out.index)
    full = out[out["exit_layer"] == NUM_LAYERS]
    assert all(full.loc[i, "label"] == original[i] for i in full.index)
    assert (out["exit_layer"] < NUM_LAYERS).any(), "some rows leave early"


@pytest.mark.parametrize("model_type", BACKBONE_TYPES)
def test_tagger_of_each_backbone_through_two_ray_stages(model_type, tmp_path, command):
    """Sequence labeling on the byte-level BPE and SentencePiece tokenizers (and DistilBERT's
    layers): word alignment through the pipeline, tags at full depth equal the original tagger's."""
    stock = save_stock_model(model_type, tmp_path / "tagger", task="token", seed=9)
    rows = pa.table({"id": [f"s{i}" for i in range(len(SENTENCES))], "tokens": SENTENCES,
                     "ner": [gold_tags(s) for s in SENTENCES]})
    pq.write_table(pa.concat_tables([rows] * 3), tmp_path / "train.parquet")
    pq.write_table(rows, tmp_path / "corpus.parquet")
    status, _, err = command("train", "--train", str(tmp_path / "train.parquet"), "--eval", str(tmp_path / "train.parquet"),
                             "--output", str(tmp_path / "m"), "--base-model", str(tmp_path / "tagger"), "--heads-only",
                             "--text-column", "tokens", "--label-column", "ner", "--stage1-epochs", "2",
                             "--max-length", "64", "--no-mlflow.enabled")
    assert status == 0, err
    assert json.loads((tmp_path / "m" / "config.json").read_text())["model_type"] == model_type
    cfg = TagConfig(input=str(tmp_path / "corpus.parquet"), model=str(tmp_path / "m"), output=str(tmp_path / "out"),
                    words_column="tokens", label_column="ner", max_length=64, batch_size=4, tokenize_batch_size=4,
                    stages=stages(4), audit=AuditConfig(fraction=1.0, target_agreement=None), mlflow=MlflowConfig(enabled=False),
                    carry_dtype="float32")  # no rounding between stages: exact parity with the stock tagger
    run_tagging(cfg)
    out = {r["id"]: r for r in pq.read_table(cfg.output).to_pylist()}
    assert sorted(out) == sorted(rows.column("id").to_pylist())
    tok = backbone_tokenizer(model_type)
    for i, words in enumerate(SENTENCES):
        ids, lengths, starts = pad(encode_words(tok, [words], 64))
        with torch.no_grad():
            tags = stock(input_ids=ids).logits[0].argmax(-1)[starts[0].clamp(min=0)]
        # words cut off by the 64-token limit (the tiny BPE splits words finely) are untagged
        want = [stock.config.id2label[int(t)] if s >= 0 else None for t, s in zip(tags, starts[0])]
        assert out[f"s{i}"]["full_depth_tags"] == want, (model_type, words)
        # a sentence none of whose words halted early is the original tagger's (a word that runs on
        # beside halted neighbours reads their frozen states, as TOKEE does: not the full model's)
        if all(l in (None, NUM_LAYERS) for l in out[f"s{i}"]["tag_layers"]):
            assert out[f"s{i}"]["tags"] == want
        assert [t is None for t in out[f"s{i}"]["tags"]] == [w is None for w in want]
