import pytest
import torch
from transformers import AutoModelForSequenceClassification

from offramp.config import ConfigError
from offramp.models.checkpoint import backbone_pooling, default_base_model, load_model, resolve_final_pooling
from offramp.models.heads import masked_mean
from offramp.models.profile import load_profile
from tests.conftest import LABELS, TEXTS, make_model


def test_save_load_round_trip_keeps_heads_labels_and_thresholds(model_dir, tokenizer):
    model = load_model(model_dir)
    assert model.labels == LABELS
    assert model.exit_layers == [1, 2, 3, 4]
    assert len(model.config.exit_thresholds) == 4 and model.config.exit_policy == "entropy"
    assert load_profile(model_dir)["dev_survival"][0] == 0.7
    again = load_model(model_dir)
    enc = tokenizer(TEXTS[:5], padding=True, return_tensors="pt")
    with torch.no_grad():
        a, b = model(**enc), again(**enc)
    for x, y in zip(a.exit_logits, b.exit_logits):
        torch.testing.assert_close(x, y, atol=0, rtol=0)


def test_plain_auto_model_loads_the_same_full_depth_classifier(model_dir, tokenizer):
    """The user's alternative (AutoModelForSequenceClassification) sees the same final classifier."""
    ours = load_model(model_dir)
    auto = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    enc = tokenizer(TEXTS[:6], padding=True, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(auto(**enc).logits, ours(**enc).logits, atol=1e-5, rtol=0)


def test_load_model_names_the_fix_for_wrong_directories(tmp_path):
    with pytest.raises(ConfigError, match="train_exits.py"):
        load_model(str(tmp_path))


def test_a_mean_pooled_final_head_reads_the_mean_of_the_real_tokens(tokenizer):
    """final_pooling mean: the stock pooler's dense + tanh and the classifier over the mean of the
    row's tokens, blind to padding; [CLS] pooling over the same weights answers differently."""
    mean, cls = make_model(seed=4, final_pooling="mean"), make_model(seed=4)
    enc = tokenizer(TEXTS[:6], padding=True, return_tensors="pt")
    with torch.no_grad():
        out = mean(**enc)
        hidden = mean.bert(**enc).last_hidden_state
        want = mean.classifier(torch.tanh(mean.bert.pooler.dense(masked_mean(hidden, enc["attention_mask"]))))
        torch.testing.assert_close(out.logits, want, atol=1e-5, rtol=0)
        alone = mean(**tokenizer(TEXTS[3:4], return_tensors="pt")).logits  # no padding
        torch.testing.assert_close(alone[0], out.logits[3], atol=1e-5, rtol=0)
        assert not torch.allclose(cls(**enc).logits, out.logits, atol=1e-3)


def test_backbone_pooling_is_read_from_the_checkpoint(tmp_path, model_dir):
    import json

    assert backbone_pooling(default_base_model()) == "mean"  # all-MiniLM-L6-v2 declares mean pooling
    assert backbone_pooling(model_dir) == "cls"  # an offramp model without the field: the first release's head
    st = tmp_path / "st"
    st.mkdir()
    (st / "config.json").write_text("{}")
    (st / "modules.json").write_text(json.dumps([{"path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    (st / "1_Pooling").mkdir()
    (st / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    assert backbone_pooling(str(st)) == "cls"
    (st / "config.json").write_text(json.dumps({"final_pooling": "mean"}))
    assert backbone_pooling(str(st)) == "mean"  # a model's own setting wins
    assert resolve_final_pooling("cls", str(st)) == "cls"
    with pytest.raises(ConfigError, match="auto, cls or mean"):
        resolve_final_pooling("max", str(st))
