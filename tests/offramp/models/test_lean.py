"""The lean modules a stage runs (torch alone) against transformers' own: the same outputs from the
same checkpoint on every backbone, task and mechanism; the stage's process never imports
transformers' modeling code; and what they do not cover runs on the stock modules instead."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import BertConfig, DistilBertConfig, ElectraConfig, RobertaConfig, XLMRobertaConfig
from transformers.activations import ACT2FN

from offramp.exits.sequence_shard import LayerShard
from offramp.exits.token_pass import pad
from offramp.exits.token_shard import TokenShard
from offramp.models import lean
from offramp.models.base import SEQUENCE, TOKEN
from offramp.models.checkpoint import load_lean_model, load_model, load_stage_model
from tests.backbones import BACKBONE_TYPES, backbone_tokenizer, save_stock_model
from offramp.text.words import encode_words
from tests.conftest import MECHANISM_FIELDS, NUM_LAYERS, SENTENCES, TEXTS, spread_thresholds
from tests.offramp.models.test_backbones import load_ours, zero_padded

# Lean and stock run the same torch operators in the same order on the same fp32 weights; the one
# difference is SDPA's mask, (B, 1, 1, T) here against the stock (B, 1, T, T), which may pick
# another kernel blocking: a few ulps. 1e-5 is far above that and far below any label's margin.
TOL = 1e-5
ROOT = Path(__file__).resolve().parents[3]


def offramp_dir(model_type: str, task: str, tmp_path) -> str:
    """A tiny offramp model of `model_type` for `task`, saved as training saves one: a stock
    checkpoint loaded into our class (exit heads added), then `save_pretrained`."""
    save_stock_model(model_type, tmp_path / "stock", task=task, seed=5)
    ours = load_ours(tmp_path / "stock", task)
    ours.config.exit_thresholds = [0.3] * (len(ours.exit_layers) - 1) + [float("-inf")]  # written as {"__float__": ...}
    ours.save_pretrained(tmp_path / "ours")
    return str(tmp_path / "ours")


def full_outputs(model, ids, mask) -> list[torch.Tensor]:
    with torch.no_grad():
        return list(model(ids, mask).exit_logits)


def padded_batch(model_type: str, task: str):
    tokenizer = backbone_tokenizer(model_type)
    texts = TEXTS[:12] if task == SEQUENCE else [" ".join(s) for s in SENTENCES]
    return zero_padded(tokenizer, texts)


@pytest.mark.parametrize("task", [SEQUENCE, TOKEN])
@pytest.mark.parametrize("model_type", BACKBONE_TYPES)
def test_lean_model_gives_the_stock_models_outputs(model_type, task, tmp_path):
    directory = offramp_dir(model_type, task, tmp_path)
    stock, ours = load_model(directory), load_lean_model(directory)
    assert type(ours).__name__.startswith("LeanEarlyExit") and isinstance(ours, lean.LeanModel)
    assert ours.config.exit_thresholds == stock.config.exit_thresholds and ours.labels == stock.labels
    ids, mask = padded_batch(model_type, task)
    assert (mask == 0).any(), "the batch should hold padded rows"
    for want, got in zip(full_outputs(stock, ids, mask), full_outputs(ours, ids, mask), strict=True):
        torch.testing.assert_close(got, want, atol=TOL, rtol=0)
        assert torch.equal(got.argmax(-1), want.argmax(-1))


@pytest.mark.parametrize("model_type", ["bert", "distilbert"])
def test_shards_with_exits_decide_alike_on_lean_and_stock_layers(model_type, tmp_path):
    """What a stage runs: the same shards over either kind of layer exit the same rows (and words)
    at the same layers with the same labels, in two stages that hand states on."""
    tokenizer = backbone_tokenizer(model_type)
    directory = offramp_dir(model_type, SEQUENCE, tmp_path / "seq")
    stock, ours = load_model(directory), load_lean_model(directory)
    thresholds = dict(zip(stock.exit_layers, spread_thresholds(stock, tokenizer, TEXTS)))
    ids, mask = zero_padded(tokenizer, TEXTS)
    outs = []
    for model in (stock, ours):
        first = LayerShard(model, 0, 2, thresholds=thresholds)(mask.sum(1), input_ids=ids)
        second = LayerShard(model, 2, NUM_LAYERS, thresholds=thresholds)(first.lengths, hidden=first.hidden,
                                                                         state=first.state)
        outs.append((first, second))
    (a1, a2), (b1, b2) = outs
    assert len(set(a1.exit_layer.tolist())) >= 2, "thresholds should spread exits over layers"
    for a, b in ((a1, b1), (a2, b2)):
        assert torch.equal(a.exit_layer, b.exit_layer) and torch.equal(a.logits.argmax(-1), b.logits.argmax(-1))
        torch.testing.assert_close(b.logits, a.logits, atol=TOL, rtol=0)

    directory = offramp_dir(model_type, TOKEN, tmp_path / "tok")
    stock, ours = load_model(directory), load_lean_model(directory)
    ids, lengths, starts = pad(encode_words(tokenizer, SENTENCES, 64))
    halting = {l: 0.5 for l in stock.exit_layers}  # normalized uncertainty: random heads halt some words, not all
    a, b = (TokenShard(m, 0, NUM_LAYERS, thresholds=halting)(lengths, starts, input_ids=ids) for m in (stock, ours))
    assert torch.equal(a.words.exit_layer, b.words.exit_layer) and torch.equal(a.words.label, b.words.label)
    assert torch.equal(a.token_layers, b.token_layers) and len(set(a.words.exit_layer[starts >= 0].tolist())) >= 2


@pytest.mark.parametrize("mechanism", sorted(MECHANISM_FIELDS))
def test_lean_model_gives_the_stock_outputs_for_every_mechanism(mechanism, mechanism_dirs, tokenizer):
    """Gates, prototypes and the exit predictor load into the lean class and decide as the stock one."""
    stock, ours = load_model(mechanism_dirs[mechanism]), load_lean_model(mechanism_dirs[mechanism])
    ids, mask = zero_padded(tokenizer, TEXTS[:12])
    with torch.no_grad():
        want, got = stock(ids, mask), ours(ids, mask)
    for w, g in zip(want.exit_logits, got.exit_logits, strict=True):
        torch.testing.assert_close(g, w, atol=TOL, rtol=0)
    for w, g in zip(want.signal, got.signal, strict=True):
        assert (w is None) == (g is None) and (w is None or torch.allclose(g, w, atol=TOL, rtol=0))
    assert (want.skipped is None and got.skipped is None) or torch.equal(want.skipped, got.skipped)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_lean_model_in_half_precision_labels_as_the_stock_one(dtype, tmp_path):
    """Loaded in a half dtype both cast every weight alike; the labels agree row for row."""
    directory = offramp_dir("bert", SEQUENCE, tmp_path)
    stock, ours = load_model(directory, dtype), load_lean_model(directory, dtype)
    assert {p.dtype for p in ours.parameters()} == {dtype}
    ids, mask = padded_batch("bert", SEQUENCE)
    for want, got in zip(full_outputs(stock, ids, mask), full_outputs(ours, ids, mask), strict=True):
        # half precision rounds each op to 8 (bf16) or 11 (fp16) bits; 0.05 on logits of magnitude ~1-10
        torch.testing.assert_close(got.float(), want.float(), atol=0.05, rtol=0)


def test_a_stage_process_never_imports_transformers(model_dir, token_model_dir):
    """The point of the lean modules: a stage actor's imports and model stay clear of transformers."""
    code = (
        "import sys\n"
        "from offramp.exits.stage import StageSpec\n"
        "from offramp.tasks import get_task\n"
        "for task, d in (('sequence', sys.argv[1]), ('token', sys.argv[2])):\n"
        "    runner = get_task(task).runner_cls()(d, StageSpec(0, 0, 4, task=task))\n"
        "    print(type(runner.shard.layers[0]).__module__)\n"
        "print('transformers' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, model_dir, token_model_dir], capture_output=True, text=True,
                         cwd=ROOT, check=True)
    assert out.stdout.split() == ["offramp.models.lean", "offramp.models.lean", "False"], out.stderr[-2000:]


def test_a_checkpoint_the_lean_modules_do_not_cover_runs_on_the_stock_ones(tmp_path):
    directory = offramp_dir("bert", SEQUENCE, tmp_path)
    ids, mask = padded_batch("bert", SEQUENCE)
    want = full_outputs(load_model(directory), ids, mask)

    config_path = tmp_path / "ours" / "config.json"
    config = json.loads(config_path.read_text())
    config["hidden_act"] = "gelu_10"  # a transformers activation with no lean form
    config_path.write_text(json.dumps(config))
    with pytest.raises(lean.NotLean, match="gelu_10"):
        load_lean_model(directory)
    model = load_stage_model(directory)
    assert not isinstance(model, lean.LeanModel)

    config["hidden_act"] = "gelu"
    config_path.write_text(json.dumps(config))
    weights = load_file(str(tmp_path / "ours" / "model.safetensors"))
    weights["bert.embeddings.position_ids"] = torch.arange(512)[None]  # a buffer older transformers saved
    save_file(weights, str(tmp_path / "ours" / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(lean.NotLean, match="position_ids"):
        load_lean_model(directory)
    model = load_stage_model(directory)
    assert not isinstance(model, lean.LeanModel)
    for w, g in zip(want, full_outputs(model, ids, mask), strict=True):
        torch.testing.assert_close(g, w, atol=0, rtol=0)


def test_stock_layers_can_be_asked_for_to_measure_the_two(model_dir, monkeypatch):
    assert isinstance(load_stage_model(model_dir), lean.LeanModel)
    monkeypatch.setenv("OFFRAMP_STOCK_LAYERS", "1")
    model = load_stage_model(model_dir)
    assert not isinstance(model, lean.LeanModel) and type(model).__name__ == "EarlyExitBertForSequenceClassification"


STOCK_CONFIGS = {"bert": BertConfig, "roberta": RobertaConfig, "xlm-roberta": XLMRobertaConfig,
                 "electra": ElectraConfig, "distilbert": DistilBertConfig}


@pytest.mark.parametrize("model_type", sorted(lean.DEFAULTS))
def test_lean_defaults_are_transformers_defaults(model_type):
    """A hand-written config.json that leaves a field out gets the value transformers would give it."""
    stock = STOCK_CONFIGS[model_type]()
    assert {k: getattr(stock, k) for k in lean.DEFAULTS[model_type]} == lean.DEFAULTS[model_type]
    ours = lean.LeanConfig({"model_type": model_type})
    assert (ours.hidden_size, ours.num_hidden_layers, ours.num_attention_heads, ours.num_labels) == (
        stock.hidden_size, stock.num_hidden_layers, stock.num_attention_heads, stock.num_labels)


@pytest.mark.parametrize("name", sorted(lean.ACTIVATIONS))
def test_lean_activations_are_transformers(name):
    x = torch.linspace(-6, 6, 1001)
    torch.testing.assert_close(lean.activation(name)(x), ACT2FN[name](x), atol=1e-6, rtol=0)
