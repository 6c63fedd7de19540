import pytest
import torch
from transformers import AutoModelForSequenceClassification

from offramp.config import ConfigError
from offramp.models.checkpoint import load_model
from offramp.models.profile import load_profile
from tests.conftest import LABELS, TEXTS


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
