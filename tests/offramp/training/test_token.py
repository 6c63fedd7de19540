"""Token-model training: the self-sampling loss covers exactly the words not yet halted, and
`offramp train`'s token path trains end to end and stores what the pipeline needs."""

from __future__ import annotations

import json

import mlflow
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torch.nn import functional as F
from transformers import AutoModelForTokenClassification

from offramp.config import ConfigError, ExitConfig, TagConfig, TokenExitConfig, load_config
from offramp.exits.token_pass import word_logits
from offramp.models.checkpoint import ModelInfo, load_model
from offramp.models.token import IGNORE
from offramp.quality.certificate import certificate_gaps
from offramp.tasks import get_task
from offramp.text.words import encode_words
from offramp.training import TrainConfig, save_trained, train_exits
from offramp.training.loop import head_groups
from offramp.training.token import TOKEN_HEADS, _batch, joint_loss, self_sampling_loss
from pipelines.tracking import log_train_run
from tests.conftest import SENTENCES, TAGS, make_model, make_token_model


class FixedDraws:
    """Stands in for the per-sentence random draws: window 0 and the largest threshold."""

    def randint(self, a, b):
        return a

    def uniform(self, a, b):
        return b


def gold_tags(sentences):
    return [[TAGS[(len(w) + i) % len(TAGS)] for i, w in enumerate(s)] for s in sentences]


@pytest.fixture(scope="module")
def batch(tokenizer):
    encoded = encode_words(tokenizer, SENTENCES, 64)
    label2id = {t: i for i, t in enumerate(TAGS)}
    gold = [torch.tensor([label2id[t] for t in s]).numpy() for s in gold_tags(SENTENCES)]
    return _batch(encoded, gold, list(range(len(encoded))))


def test_a_training_batch_is_built_on_the_models_device(tokenizer):
    """Token training on a GPU feeds the model batches built there. (No GPU here: the meta device
    stands in, and a tensor left behind on the CPU would show as such.)"""
    encoded = encode_words(tokenizer, SENTENCES[:3], 64)
    gold = [torch.zeros(len(s), dtype=torch.long).numpy() for s in SENTENCES[:3]]
    assert {t.device.type for t in _batch(encoded, gold, [0, 1, 2], torch.device("meta"))} == {"meta"}


def test_joint_training_moves_heads_at_head_lr_and_the_backbone_at_lr(batch):
    """Token training trains its heads (exit heads and the final classifier) at head_lr: at the
    backbone's lr the 6,000-sentence POS model's first head tagged 60% of words right.
    Adam's first step moves every parameter with a gradient by about its group's lr (|m / sqrt(v)|
    is 1 on step one; weight decay adds lr * 0.01 * |w|, hence the 10% margins)."""
    model = make_token_model(seed=1).train()
    cfg = TrainConfig(lr=1e-5, head_lr=1e-3)
    groups = head_groups(model, cfg, TOKEN_HEADS)
    named = {id(p): n for n, p in model.named_parameters()}
    heads, rest = ({named[id(p)] for p in g["params"]} for g in groups)
    assert heads and rest and not heads & rest and heads | rest == set(named.values())  # each parameter once
    assert all(n.startswith(("exit_heads.", "classifier.")) for n in heads) and "classifier.weight" in heads
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optim = torch.optim.AdamW(groups, weight_decay=0.01)
    joint_loss(model, batch).backward()
    optim.step()
    moved = {n: (p.detach() - before[n]).abs().max().item() for n, p in model.named_parameters()}
    first = f"exit_heads.{model.exit_layers[0]}.weight"
    assert 0.9e-3 < moved[first] < 1.1e-3
    assert 0.9e-3 < moved["classifier.weight"] < 1.1e-3
    assert 0.9e-5 < moved["bert.encoder.layer.0.attention.self.query.weight"] < 1.1e-5


def test_self_sampling_with_nothing_halted_is_the_joint_loss(batch):
    model = make_token_model(seed=1)
    torch.testing.assert_close(self_sampling_loss(model, batch, FixedDraws(), 0, 0.0), joint_loss(model, batch))


def test_self_sampling_loss_covers_only_words_still_active(batch):
    """A threshold above any normalized uncertainty halts every word at the first head: the loss is
    that head's CE alone, the deeper heads contribute nothing (and get no gradient)."""
    model = make_token_model(seed=1)
    ids, mask, _, starts, y = batch
    first = model.exit_layers[0]
    with torch.no_grad():
        h = model.layer_states(ids, mask)[first]
        want = F.cross_entropy(word_logits(model, first, h, starts).reshape(-1, len(TAGS)), y.reshape(-1),
                               ignore_index=IGNORE)
    loss = self_sampling_loss(model, batch, FixedDraws(), 0, 1.5)
    torch.testing.assert_close(loss, want)
    loss.backward()
    assert model.exit_heads[str(first)].weight.grad.abs().sum() > 0
    assert model.classifier.weight.grad is None or model.classifier.weight.grad.abs().sum() == 0


@pytest.fixture(scope="module")
def token_data(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("token_train")
    make_model(seed=3).bert.save_pretrained(root / "base")
    tokenizer.save_pretrained(root / "base")
    rows = pa.table({"tokens": SENTENCES * 2, "pos": gold_tags(SENTENCES) * 2})
    pq.write_table(rows, root / "train.parquet")
    pq.write_table(rows.slice(0, 8), root / "dev.parquet")
    return root


def token_config(root, out, **kw) -> TrainConfig:
    """Tiny token-task settings; `kw`: config keys, dotted inside a section."""
    fields = {
        "train": str(root / "train.parquet"), "eval": str(root / "dev.parquet"), "output": str(out),
        "base_model": str(root / "base"), "task": "token", "text_column": "tokens", "label_column": "pos",
        "stage1_epochs": 1, "token.self_sampling_epochs": 1, "max_length": 32, "batch_size": 8,
        "max_accuracy_drop": 0.02,
    }
    fields.update(kw)
    return load_config(TrainConfig, None, {k: v for k, v in fields.items() if v is not None})


def test_token_training_end_to_end_stores_thresholds_and_profile(token_data, tmp_path):
    cfg = token_config(token_data, tmp_path / "m", **{"mlflow.tracking_uri": f"sqlite:///{tmp_path}/mlflow.db"})
    trained, tok, report = train_exits(cfg)
    save_trained(trained, tok, report, cfg.output)
    # the training run in MLflow: the stored policy, and the dev-chosen point by alpha on a per-layer path
    logged = mlflow.MlflowClient(cfg.mlflow.tracking_uri).get_run(log_train_run(cfg, report, cfg.output)).data
    assert logged.params["policy"] == "max_prob"
    per_layer_point = report.chosen.get("alpha") is not None
    assert ("exit_alpha" in logged.metrics) == per_layer_point == ("exit_threshold" not in logged.metrics)
    assert {"dev_token_per_layer_alpha", "dev_token_per_layer_threshold"} & set(logged.metrics)

    saved = json.loads((tmp_path / "m" / "config.json").read_text())
    assert report.task == "token" and saved["task"] == "token" and saved["exit_policy"] == "max_prob"
    # too few held-out sentences to certify: the dev-chosen point of the path the dev curves chose is stored
    assert report.calibration is None and saved["exit_certified"] is False
    chosen = report.chosen
    K = len(trained.exit_layers)
    want = chosen.get("thresholds") or [chosen["threshold"] if chosen["threshold"] is not None else -1.0] * K
    assert saved["exit_thresholds"] == want
    assert chosen in (report.task_chosen["token"], report.task_chosen["token_per_layer"])
    profile = json.loads((tmp_path / "m" / "exit_profile.json").read_text())
    assert set(profile["token_curves"]) == {"token", "sentence", "token_per_layer"}
    per_layer = profile["token_curves"]["token_per_layer"]
    assert per_layer[0]["alpha"] is None
    assert all(len(p["thresholds"]) == K and p["thresholds"][-1] == 1.0 for p in per_layer[1:])
    assert len(profile["dev_survival"]) == trained.num_layers and profile["dev_survival"][0] == 1.0
    # stage 1 then self-sampling both ran: losses logged for both stages
    assert {l["stage"] for l in report.losses} == {1, 2}
    model = load_model(cfg.output)
    for name, p in trained.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], p, msg=f"{name} did not round-trip")
    hf = AutoModelForTokenClassification.from_pretrained(cfg.output)  # the full-depth tagger from the same directory
    assert hf.config.id2label == trained.config.id2label


def test_token_warm_start_keeps_the_models_tags_and_refuses_new_ones(token_data, token_model_dir, tmp_path):
    """--init-from reuses the tagger's classifier and heads: its tags, in its order, stay; training
    tags it has no class for fail at start. Also: the task is found from the data (lists of tags)
    and a per-word policy other than the default is stored."""
    trained, _, report = train_exits(token_config(
        token_data, tmp_path / "w", base_model=None, init_from=token_model_dir, task="auto", policy="max_prob",
        stage1_epochs=0, **{"token.self_sampling_epochs": 0}))
    assert report.task == "token" and trained.labels == TAGS != sorted(TAGS)
    assert trained.config.exit_policy == "max_prob"
    # 0 epochs of both stages: not one step; the loaded weights are re-measured and re-certified as they are
    assert report.losses == []
    for name, p in load_model(token_model_dir).state_dict().items():
        torch.testing.assert_close(trained.state_dict()[name], p, msg=f"{name} changed in a 0-epoch warm start")
    other = tmp_path / "other.parquet"
    pq.write_table(pa.table({"tokens": SENTENCES[:4], "pos": [["B-LOC"] * len(s) for s in SENTENCES[:4]]}), other)
    with pytest.raises(ConfigError, match=r"--init-from .* has no class for training labels \['B-LOC'\].*--base-model"):
        train_exits(token_config(token_data, tmp_path / "x", base_model=None, init_from=token_model_dir,
                                 train=str(other)))


@pytest.mark.parametrize("policy", ["patience", "learned", "hybrid"])
def test_token_training_refuses_a_policy_that_cannot_decide_per_word(token_data, tmp_path, policy):
    with pytest.raises(ConfigError, match=rf"{policy}.*cannot decide per word.*\['entropy', 'margin', 'max_prob'\]"):
        train_exits(token_config(token_data, tmp_path / "p", policy=policy))


def test_token_training_certifies_its_stored_threshold_on_held_out_sentences(token_data, tmp_path):
    """With enough held-out sentences the stored threshold is the certified one, and the
    certificate records how words leave; with too few it is stored uncertified, as the model says."""
    dev = tmp_path / "dev.parquet"
    pq.write_table(pa.table({"tokens": SENTENCES * 10, "pos": gold_tags(SENTENCES) * 10}), dev)  # 70 held out (half)
    cfg = token_config(token_data, tmp_path / "m", eval=str(dev), max_accuracy_drop=0.2)
    trained, tok, report = train_exits(cfg)
    save_trained(trained, tok, report, cfg.output)
    rec = json.loads((tmp_path / "m" / "exit_profile.json").read_text())["calibration"]
    saved = json.loads((tmp_path / "m" / "config.json").read_text())
    assert saved["exit_certified"] is True and saved["exit_thresholds"] == rec["thresholds"]
    assert rec["unit"] == "sentence" and rec["rows"] == 70 and rec["p_value"] <= 0.1
    # the path was chosen on the 70 dev sentences, which shape a per-layer path, and certified on the other 70
    if rec["path"] == "per-layer":
        assert rec["alpha"] > 0 and rec["family_rows"] == 70 and rec["thresholds"][-1] == 1.0
    else:
        assert rec["threshold"] > 0 and rec["family_rows"] == 0
        assert rec["thresholds"] == [rec["threshold"]] * len(trained.exit_layers)
    assert rec["risk_bound"] <= 0.2 and rec["mode"] == "accuracy" and report.eval_rows == 70
    assert (rec["token_exit_mode"], rec["exit_window"], rec["max_length"]) == ("token", 0, 32)
    # the certificate covers a tagging run with the model's own settings, and not one with another window
    info = ModelInfo.read(str(tmp_path / "m"))
    run = {"policy": info.policy, "mechanism": info.mechanism, "max_length": 32, "dtypes": {"float32"},
           "thresholds": info.thresholds, "stored": info.thresholds}
    token = get_task("token")
    assert certificate_gaps(rec, info.certified, **run, token=token.exit_conditions(TagConfig(), info)) == []
    other = TagConfig(exit=ExitConfig(token=TokenExitConfig(window=2)))
    assert certificate_gaps(rec, info.certified, **run, token=token.exit_conditions(other, info)) == [
        "exit_window is 2 but the certificate was made with 0"]

    small = token_config(token_data, tmp_path / "s")  # 8 dev sentences: 4 held out
    trained, _, report = train_exits(small)
    assert trained.config.exit_certified is False and report.calibration is None
