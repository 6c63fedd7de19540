"""Bring your own classifier: exits trained onto a team's fine-tuned checkpoint of each backbone
(`--heads-only`) leave the original model untouched, so full depth gives its predictions; and
every mechanism whose parts fit trains on every backbone."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

from offramp.config import ConfigError, load_config
from offramp.exits.sequence_shard import LayerShard
from offramp.exits.token_pass import pad
from offramp.exits.token_shard import TokenShard
from offramp.models.checkpoint import ModelInfo, load_model
from offramp.text.words import encode_words
from offramp.training import TrainConfig, save_trained, train_exits
from tests.backbones import BACKBONE_TYPES, backbone_tokenizer, save_stock_model
from tests.conftest import LABELS, NUM_LAYERS, SENTENCES, TAGS, TEXTS, gold_tags

TOL = 1e-4  # fp32 CPU: the same modules on differently padded batches (~1e-6)


def write_sequence_data(root):
    rows = pa.table({"text": TEXTS * 2, "label": [LABELS[i % 3] for i in range(len(TEXTS) * 2)]})
    pq.write_table(rows, root / "train.parquet")
    pq.write_table(pa.concat_tables([rows, rows]), root / "dev.parquet")


def train(root, out, base, **kw):
    fields = {"train": str(root / "train.parquet"), "eval": str(root / "dev.parquet"), "output": str(out),
              "base_model": str(base), "stage1_epochs": 1, "stage2_epochs": 2, "max_length": 32, "batch_size": 8,
              "max_accuracy_drop": 0.3, "de3.prototype_dim": 8, "berxit.predictor_epochs": 2,
              "smartbert.hard_weight_epochs": 0.5, **kw}
    cfg = load_config(TrainConfig, None, fields)
    model, tokenizer, report = train_exits(cfg)
    save_trained(model, tokenizer, report, cfg.output)
    return report


@pytest.mark.parametrize("model_type", BACKBONE_TYPES)
def test_heads_only_keeps_the_fine_tuned_classifier_and_its_labels(model_type, tmp_path):
    base = tmp_path / "classifier"
    stock = save_stock_model(model_type, base, seed=5)
    stock.config.id2label = {0: "gamma", 1: "alpha", 2: "beta"}  # its own label order, not the sorted one
    stock.config.label2id = {v: k for k, v in stock.config.id2label.items()}
    stock.save_pretrained(str(base))
    write_sequence_data(tmp_path)
    train(tmp_path, tmp_path / "m", base, heads_only=True, stage2_epochs=40)  # heads on cached features: cheap
    info = ModelInfo.read(str(tmp_path / "m"))
    assert info.labels == ["gamma", "alpha", "beta"] and info.certified
    ours = load_model(str(tmp_path / "m"))
    for name, p in stock.state_dict().items():  # backbone and classifier exactly as fine-tuned
        torch.testing.assert_close(ours.state_dict()[name], p, rtol=0, atol=0, msg=name)
    tok = backbone_tokenizer(model_type)
    enc = tok(TEXTS, padding=True, truncation=True, max_length=32, return_tensors="pt")
    with torch.no_grad():
        want = stock(**{k: enc[k] for k in ("input_ids", "attention_mask")}).logits
    out = LayerShard(ours, 0, NUM_LAYERS, exits_enabled=False)(enc["attention_mask"].sum(1), input_ids=enc["input_ids"])
    torch.testing.assert_close(out.logits, want, atol=TOL, rtol=0)
    # the exit heads did train: the first one beats chance on its training rows
    with torch.no_grad():
        first = ours(enc["input_ids"], enc["attention_mask"]).exit_logits[0].argmax(-1)
    gold = torch.tensor([["gamma", "alpha", "beta"].index(LABELS[i % 3]) for i in range(len(TEXTS))])
    assert (first == gold).float().mean() > 0.5


def test_heads_only_trains_token_exits_onto_a_fine_tuned_tagger(tmp_path):
    base = tmp_path / "tagger"
    stock = save_stock_model("xlm-roberta", base, task="token", seed=6)
    rows = pa.table({"tokens": SENTENCES * 3, "tags": [gold_tags(s) for s in SENTENCES] * 3})
    pq.write_table(rows, tmp_path / "train.parquet")
    pq.write_table(rows, tmp_path / "dev.parquet")
    train(tmp_path, tmp_path / "m", base, heads_only=True, text_column="tokens", label_column="tags",
          stage1_epochs=2, **{"token.self_sampling_epochs": 1})
    ours = load_model(str(tmp_path / "m"))
    assert json.loads((tmp_path / "m" / "config.json").read_text())["task"] == "token"
    for name, p in stock.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[name], p, rtol=0, atol=0, msg=name)
    tok = backbone_tokenizer("xlm-roberta")
    ids, lengths, starts = pad(encode_words(tok, SENTENCES, 32))
    mask = (torch.arange(ids.shape[1])[None, :] < lengths[:, None]).long()
    with torch.no_grad():
        want = torch.gather(stock(input_ids=ids, attention_mask=mask).logits.argmax(-1), 1, starts.clamp(min=0))
    out = TokenShard(ours, 0, NUM_LAYERS, thresholds={l: -1.0 for l in ours.exit_layers})(lengths, starts, input_ids=ids)
    valid = starts >= 0
    assert torch.equal(out.words.label[valid], want[valid])
    assert [ours.config.id2label[i] for i in range(ours.config.num_labels)] == TAGS


def test_heads_only_refuses_what_it_cannot_keep(tmp_path):
    bare = tmp_path / "bare"
    save_stock_model("roberta", bare).base_model.save_pretrained(str(bare))  # an encoder without a classifier
    write_sequence_data(tmp_path)
    with pytest.raises(ConfigError, match=r"drop --heads-only to fine-tune it"):
        train(tmp_path, tmp_path / "m", bare, heads_only=True)
    clf = tmp_path / "clf"
    save_stock_model("roberta", clf)
    pq.write_table(pa.table({"text": TEXTS, "label": ["delta"] * len(TEXTS)}), tmp_path / "train.parquet")
    with pytest.raises(ConfigError, match=r"no class for training labels \['delta'\]; its classes are"):
        train(tmp_path, tmp_path / "m", clf, heads_only=True)
    with pytest.raises(ConfigError, match="smartbert"):
        load_config(TrainConfig, None, {"base_model": str(clf), "heads_only": True, "mechanism": "smartbert"})
    with pytest.raises(ConfigError, match="--base-model DIR"):
        load_config(TrainConfig, None, {"heads_only": True})


@pytest.mark.parametrize("mechanism", ["deebert", "pabee", "berxit", "de3", "smartbert"])
@pytest.mark.parametrize("model_type", ["roberta", "xlm-roberta", "electra", "distilbert"])
def test_every_mechanism_trains_on_every_backbone(mechanism, model_type, tmp_path):
    """(BERT runs every mechanism in test_sequence.py.) The stored model reloads, its shard at full
    depth reproduces its own forward, and its policy fits its modules."""
    base = tmp_path / "base"
    save_stock_model(model_type, base, seed=7)
    write_sequence_data(tmp_path)
    train(tmp_path, tmp_path / "m", base, mechanism=mechanism, stage2_epochs=1)
    model = load_model(str(tmp_path / "m"))
    assert type(model).__name__.lower().startswith(f"earlyexit{model_type.replace('-', '')}")
    assert ModelInfo.read(str(tmp_path / "m")).mechanism == mechanism
    tok = backbone_tokenizer(model_type)
    enc = tok(TEXTS[:12], padding=True, truncation=True, max_length=32, return_tensors="pt")
    with torch.no_grad():
        ref = model(enc["input_ids"], enc["attention_mask"]).logits
    out = LayerShard(model, 0, NUM_LAYERS, exits_enabled=False)(enc["attention_mask"].sum(1), input_ids=enc["input_ids"])
    torch.testing.assert_close(out.logits, ref, atol=TOL, rtol=0)
