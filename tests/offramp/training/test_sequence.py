"""Each mechanism trains end to end on a tiny model, and what it trained is stored with the model."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from offramp.config import ConfigError, load_config
from offramp.models.checkpoint import ModelInfo, load_model
from offramp.exits.sequence_shard import LayerShard
from offramp.training import TrainConfig, save_trained, train_exits
from offramp.training.loop import pooled_features
from tests.conftest import LABELS, NUM_LAYERS, TEXTS, make_model

DEFAULT_POLICY = {"deebert": "entropy", "pabee": "patience", "berxit": "learned", "de3": "hybrid", "smartbert": "entropy"}


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("mech_train")
    make_model(seed=3).bert.save_pretrained(root / "base")
    tokenizer.save_pretrained(root / "base")
    rows = pa.table({"text": TEXTS * 2, "label": [LABELS[i % 3] for i in range(len(TEXTS) * 2)]})
    pq.write_table(rows, root / "train.parquet")
    pq.write_table(rows.slice(0, 12), root / "dev.parquet")
    pq.write_table(pa.concat_tables([rows, rows]), root / "dev_big.parquet")  # 144 rows: 43 held out to certify
    return root


def train(root, mechanism, out, **kw):
    """Train and save with tiny settings; `kw`: config keys, dotted inside a section."""
    fields = {
        "train": str(root / "train.parquet"), "eval": str(root / "dev.parquet"), "output": str(out),
        "base_model": str(root / "base"), "mechanism": mechanism, "stage1_epochs": 1, "stage2_epochs": 2,
        "max_length": 32, "batch_size": 8,
        "smartbert.hard_weight_epochs": 0.5, "de3.prototype_dim": 8, "berxit.predictor_epochs": 2,
    }
    fields.update(kw)
    cfg = load_config(TrainConfig, None, {k: v for k, v in fields.items() if v is not None})
    model, tokenizer, report = train_exits(cfg)
    save_trained(model, tokenizer, report, cfg.output)
    return model, report


@pytest.mark.parametrize("mechanism", list(DEFAULT_POLICY))
def test_each_mechanism_trains_and_is_stored_with_the_model(mechanism, tiny_data, tmp_path, tokenizer):
    """...with certified thresholds: a slice of the eval rows is held out and certifies them
    (a loose 30-point target: 43 held-out rows of a random tiny model)."""
    out = tmp_path / mechanism
    trained, report = train(tiny_data, mechanism, out, eval=str(tiny_data / "dev_big.parquet"), max_accuracy_drop=0.3)
    saved = json.loads((out / "config.json").read_text())
    assert saved["exit_mechanism"] == mechanism and saved["exit_policy"] == DEFAULT_POLICY[mechanism]
    info = ModelInfo.read(str(out))
    assert info.mechanism == mechanism and info.policy == DEFAULT_POLICY[mechanism]
    assert saved["exit_certified"] is True and info.certified
    rec = info.calibration
    assert (rec["mode"], rec["target"], rec["confidence"]) == ("accuracy", 0.3, 0.9)
    assert (rec["mechanism"], rec["policy"], rec["max_length"], rec["dtype"]) == (mechanism, info.policy, 32, "float32")
    assert saved["exit_thresholds"] == rec["thresholds"] and report.eval_rows == 144 - rec["rows"]
    assert rec["path"] == "global" if mechanism == "pabee" else rec["family_rows"] == report.eval_rows
    model = load_model(str(out))
    for name, p in trained.state_dict().items():  # everything trained, incl. gates and prototypes, reloads
        torch.testing.assert_close(model.state_dict()[name], p, msg=f"{name} did not round-trip")
    assert (model.gates is not None) == (mechanism == "smartbert")
    assert (model.prototypes is not None) == (mechanism == "de3")
    assert (model.exit_predictor is not None) == (mechanism == "berxit")
    assert np.isfinite(report.chosen["threshold"]) or report.chosen["threshold"] in (float("inf"), float("-inf"))
    assert all(np.isfinite(rec["loss"]) for rec in report.losses), "no NaN losses in any stage"
    refit = json.loads((out / "exit_profile.json").read_text())["final_head_refit"]  # the final head's own stage 2
    assert refit["kept"] == (refit["after"] > refit["before"]) and 4 in {r["stage"] for r in report.losses}
    LayerShard(model, 0, NUM_LAYERS)  # the stored policy fits the stored modules
    if mechanism == "de3":  # each prototype sits nearest to the mean of its own class's mapped rows
        feats = pooled_features(model, tokenizer, TEXTS, 32)  # (N, K-1, H)
        y = torch.tensor([i % 3 for i in range(len(TEXTS))])
        for k, net in enumerate(model.prototypes.values()):
            emb = net.embed(feats[:, k])
            means = torch.stack([emb[y == c].mean(0) for c in range(len(LABELS))])
            assert torch.cdist(net.prototypes, means).argmin(1).tolist() == [0, 1, 2]
    if mechanism == "smartbert":
        assert report.skip_rate is not None and len(report.skip_rate) == NUM_LAYERS
        assert {r["stage"] for r in report.losses} == {1, 2, 4}
    if mechanism == "berxit":
        assert 3 in {r["stage"] for r in report.losses}, "the exit predictor trains in its own stage"


def test_without_a_certificate_the_model_says_so(tiny_data, tmp_path, caplog):
    """Too few held-out rows to certify (or calibration_fraction 0): the dev-chosen thresholds are
    stored, marked uncertified in config.json, with a warning that names the fix."""
    for fraction in (0.3, 0.0):
        out = tmp_path / f"m{fraction}"
        with caplog.at_level("WARNING"):
            train(tiny_data, "deebert", out, calibration_fraction=fraction)
        saved = json.loads((out / "config.json").read_text())
        assert saved["exit_certified"] is False and not ModelInfo.read(str(out)).certified
        assert "UNCERTIFIED" in caplog.text and "jobs/calibrate.py" in caplog.text
        caplog.clear()


def test_policy_auto_stores_the_policy_its_thresholds_were_certified_for(tiny_data, tmp_path):
    out = tmp_path / "auto"
    train(tiny_data, "deebert", out, eval=str(tiny_data / "dev_big.parquet"), max_accuracy_drop=0.3, policy="auto")
    saved, info = json.loads((out / "config.json").read_text()), ModelInfo.read(str(out))
    assert info.certified and saved["exit_policy"] == info.calibration["policy"] == info.policy
    assert info.policy in {"entropy", "max_prob", "margin", "patience"}
    assert saved["exit_thresholds"] == info.calibration["thresholds"]
    LayerShard(load_model(str(out)), 0, NUM_LAYERS)  # the chosen policy runs on the stored model
    with pytest.raises(ConfigError, match="policy=auto is for classifiers"):
        load_and_train_token(tiny_data, tmp_path)


def load_and_train_token(root, tmp_path):
    words = pa.table({"tokens": [t.split() for t in TEXTS], "pos": [["X"] * len(t.split()) for t in TEXTS]})
    pq.write_table(words, tmp_path / "words.parquet")
    train_exits(load_config(TrainConfig, None, {
        "train": str(tmp_path / "words.parquet"), "eval": str(tmp_path / "words.parquet"),
        "output": str(tmp_path / "tok"), "base_model": str(root / "base"), "task": "token", "text_column": "tokens",
        "label_column": "pos", "policy": "auto"}))


def test_final_pooling_follows_the_backbone_and_is_stored(tiny_data, tmp_path):
    """auto: a checkpoint whose sentence-transformers Pooling config says mean gets a mean-pooled
    final head; a plain BERT checkpoint [CLS]; an explicit setting wins."""
    import shutil

    base = tmp_path / "st_base"
    shutil.copytree(tiny_data / "base", base)
    config = json.loads((base / "config.json").read_text())
    config.pop("final_pooling", None)  # saved from an offramp model's backbone; a stock checkpoint has no such key
    (base / "config.json").write_text(json.dumps(config))
    (base / "modules.json").write_text(json.dumps([{"idx": 0, "path": "", "type": "sentence_transformers.models.Transformer"},
                                                   {"idx": 1, "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    (base / "1_Pooling").mkdir()
    (base / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True, "pooling_mode_cls_token": False}))
    plain = tmp_path / "plain_base"
    shutil.copytree(base, plain)
    (plain / "modules.json").unlink()
    for base_dir, setting, want in ((base, "auto", "mean"), (plain, "auto", "cls"), (base, "cls", "cls")):
        out = tmp_path / f"{want}_{setting}_{base_dir.name}"
        model, _ = train(tiny_data, "deebert", out, base_model=str(base_dir), final_pooling=setting, stage2_epochs=0)
        assert json.loads((out / "config.json").read_text())["final_pooling"] == want
        assert load_model(str(out)).final_head().pooling == want


def test_a_half_precision_base_trains_in_float32(tiny_data, tmp_path, tokenizer):
    """Hub checkpoints are often saved in float16; transformers would load them as float16, and the
    optimizer's small steps would round away. Training loads float32 and saves float32."""
    base = tmp_path / "fp16_base"
    make_model(seed=3).bert.half().save_pretrained(base)
    tokenizer.save_pretrained(base)
    model, _ = train(tiny_data, "pabee", tmp_path / "out", base_model=str(base))
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    saved = load_model(str(tmp_path / "out"))
    assert {p.dtype for p in saved.parameters()} == {torch.float32}
    torch.testing.assert_close(saved.bert.embeddings.word_embeddings.weight, model.bert.embeddings.word_embeddings.weight)


def test_warm_start_keeps_the_backbone_and_refuses_other_labels(tiny_data, tmp_path):
    first, _ = train(tiny_data, "deebert", tmp_path / "a")
    warm, _ = train(tiny_data, "pabee", tmp_path / "b", base_model=None, init_from=str(tmp_path / "a"), stage1_epochs=0)
    assert warm.labels == first.labels
    for name, p in first.bert.state_dict().items():
        torch.testing.assert_close(warm.bert.state_dict()[name], p)  # stage1_epochs=0: backbone untouched
    other = tmp_path / "other.parquet"
    pq.write_table(pa.table({"text": TEXTS[:6], "label": ["zeta"] * 3 + ["alpha"] * 3}), other)
    with pytest.raises(ConfigError, match=r"no class for training labels \['zeta'\]"):
        train(tiny_data, "de3", tmp_path / "c", train=str(other), base_model=None, init_from=str(tmp_path / "a"))


def test_a_mechanism_with_a_policy_it_cannot_feed_fails_at_start(tiny_data, tmp_path):
    with pytest.raises(ConfigError, match="--mechanism de3"):
        train(tiny_data, "deebert", tmp_path / "x", policy="hybrid")


def test_a_mechanism_option_set_in_its_section_reaches_the_recipe(tiny_data, tmp_path):
    """--set smartbert.sparsity_weight=W weights SmartBERT's skipping reward lambda / sum of mean
    gates: gates lie in (0, 1), so with 4 layers each stage-1 loss is at least about W / 4."""
    _, report = train(tiny_data, "smartbert", tmp_path / "s", stage2_epochs=0, **{"smartbert.sparsity_weight": 1000.0})
    assert report.task == "sequence"
    stage1 = [r["loss"] for r in report.losses if r["stage"] == 1]
    assert stage1 and min(stage1) >= (1 - 0.01) * 1000.0 / NUM_LAYERS  # 0.01: layer_contrastive_weight


def test_the_final_head_refit_is_kept_only_when_it_is_right_more_often():
    """On features the stage-1 head gets wrong, the refit learns them and is kept; on features it
    already gets all right, the refit cannot do better and the stage-1 weights stay bit for bit."""
    from offramp.config import TrainSettings
    from offramp.training.loop import TrainRun, refit_final_head

    model = make_model(seed=1)
    n, hidden = 200, model.config.hidden_size
    y = torch.arange(n) % len(LABELS)
    feats = torch.randn(n, 1, hidden) * 0.1 + torch.nn.functional.one_hot(y, hidden).float()[:, None] * 3.0
    run = TrainRun(model, None, [""] * n, y, TrainSettings(stage2_epochs=20, head_lr=1e-2, batch_size=16), [])
    refit = refit_final_head(run, feats)
    assert refit["kept"] and refit["after"] > refit["before"] and refit["after"] == 1.0 and refit["rows"] == 20

    before = {k: v.clone() for k, v in model.state_dict().items()}
    again = refit_final_head(run, feats)  # already right on every held-out row
    assert again["before"] == 1.0 and not again["kept"]
    for name, p in model.state_dict().items():
        assert torch.equal(p, before[name]), f"{name} changed though the refit was not kept"
    run.cfg = TrainSettings(stage2_epochs=0)  # no stage 2 (and --heads-only, which freezes the classifier): no refit
    assert refit_final_head(run, feats) is None
