"""The papers' mechanisms: registry, toy problems with known answers, SmartBERT's gates,
patience per row, and per-row decisions that do not depend on the batch or the stage split."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from actors.stage import StageActor

from offramp.exits.stage import StageSpec
from offramp import schema
from offramp.exits import simulate
from offramp.config import ConfigError
from offramp.models.modules import PrototypeNet
from offramp.training.mechanisms import MECHANISMS, get_mechanism
from offramp.models.checkpoint import load_model
from offramp.policies import get_policy
from offramp.policies.hybrid import distance_ratio
from offramp.exits.sequence_shard import LayerShard
from offramp.tasks.sequence import tokenize_batch
from offramp.text.tokenize import load_tokenizer
from offramp.training.loop import full_pass
from tests.conftest import MECHANISM_FIELDS, NUM_LAYERS, TEXTS, make_mechanism_model, make_model


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(ConfigError, match=r"valid mechanisms: \['berxit', 'de3', 'deebert', 'pabee', 'smartbert'\]"):
        get_mechanism("fastbert")
    with pytest.raises(ConfigError, match="valid policies"):
        get_policy("oracle")
    assert sorted(MECHANISMS) == sorted(MECHANISM_FIELDS)


def test_a_policy_that_reads_a_module_refuses_a_model_without_it():
    with pytest.raises(ConfigError, match="--mechanism de3"):
        LayerShard(make_model(), 0, NUM_LAYERS, policy="hybrid")
    with pytest.raises(ConfigError, match="--mechanism berxit"):
        LayerShard(make_model(), 0, NUM_LAYERS, policy="learned")


def test_prototype_distances_and_the_hybrid_score_on_a_toy_problem():
    net = PrototypeNet(hidden_size=2, dim=2, num_classes=3)
    with torch.no_grad():
        net.map.weight.copy_(torch.eye(2))
        net.map.bias.zero_()
        net.prototypes.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]))
    pooled = torch.tensor([[2.0, 0.0], [1.0, 1.0], [0.0, -3.0]])
    d = net.distances(pooled)
    s = 1 / math.sqrt(2)
    expected = torch.tensor([[0.0, 1.0, 2.0], [1 - s, 1 - s, 1 + s], [1.0, 2.0, 1.0]])
    torch.testing.assert_close(d, expected)
    # on a prototype -> 0; equidistant from the two nearest -> 0.5 (the least confident)
    torch.testing.assert_close(distance_ratio(d), torch.tensor([0.0, 0.5, 0.5]))
    # EDR = (lambda + 1) / (lambda / DR + 1 / normalized entropy), lambda = 1: a harmonic mean
    logits = torch.tensor([[0.0, 0.0, 0.0], [4.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    signal = torch.tensor([[0.2, 1.0, 2.0], [0.3, 0.6, 1.0], [0.0, 1.0, 1.0]])
    ent = -(torch.softmax(logits, -1) * torch.log_softmax(logits, -1)).sum(-1) / math.log(3)
    dr = torch.tensor([0.1, 0.25, 0.0])
    score = get_policy("hybrid").score(logits, signal)
    torch.testing.assert_close(score[:2], 2 / (1 / dr[:2] + 1 / ent[:2]))
    assert score[2] < 1e-9  # a row on a prototype is certain whatever its softmax
    assert score[0] < ent[0]  # near one prototype: more confident than entropy alone


def test_prototypes_move_toward_their_class_mean():
    net = PrototypeNet(hidden_size=2, dim=2, num_classes=2)
    emb = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    net.update(emb, torch.tensor([0, 1, 1]), momentum=1.0)
    torch.testing.assert_close(net.prototypes, torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    net.update(torch.tensor([[0.0, 1.0]]), torch.tensor([0]), momentum=0.25)
    torch.testing.assert_close(net.prototypes, torch.tensor([[0.75, 0.25], [0.0, 1.0]]))


def test_patience_is_counted_per_row():
    # heads' predictions per row (4 heads, 2 classes): patience 2 = exit when 3 heads in a row agree
    preds = np.array([[0, 0, 0, 1], [0, 1, 1, 1], [1, 0, 1, 0], [1, 1, 0, 0]])
    logits = np.zeros((4, 4, 2), dtype=np.float32)
    logits[np.arange(4)[:, None], np.arange(4)[None, :], preds] = 3.0
    policy = get_policy("patience")
    scores = simulate.head_scores(policy, logits)
    np.testing.assert_array_equal(scores, [[0, 1, 2, 0], [0, 0, 1, 2], [0, 0, 0, 0], [0, 1, 0, 1]])
    layers, pred = simulate.simulate(scores, preds, [1, 2, 3, 4], policy, 2.0)
    np.testing.assert_array_equal(layers, [3, 4, 4, 4])
    np.testing.assert_array_equal(pred, [0, 1, 0, 0])
    # the same through decide(), head by head, with the state each row carries
    state = policy.initial_state(4)
    exited_at = np.zeros(4, dtype=int)
    for k in range(4):
        d, state = policy.decide(torch.from_numpy(logits[:, k]), 2.0, state)
        newly = d.exited.numpy() & (exited_at == 0)
        exited_at[newly] = k + 1
    np.testing.assert_array_equal(exited_at, [3, 4, 0, 0])


def tokenized(model_dir, texts):
    cells = np.array(list(texts) + [None, ""], dtype=object)
    return tokenize_batch({"id": np.arange(len(cells)), "text": cells}, load_tokenizer(model_dir), "text", 64)


def run_stages(model_dir, batch, cuts):
    """Run `batch` through stages split at `cuts` (e.g. [2] = [0,2) + [2,L))."""
    bounds = [0, *cuts, NUM_LAYERS]
    for k, (a, b) in enumerate(zip(bounds, bounds[1:])):
        batch = StageActor(model_dir, StageSpec(k, a, b, carry_dtype="float32"))(batch)
    return batch


@pytest.mark.parametrize("name", list(MECHANISM_FIELDS))
def test_exits_are_per_row_whatever_the_batch_or_the_stage_split(name, mechanism_dirs, tokenizer):
    """One stage, two stages and three stages, the whole batch or each row alone: the same exit
    layer and label per row, and the same as simulating the exits offline from one full pass.
    For patience this checks that the counter travels with the row between stages."""
    model_dir = mechanism_dirs[name]
    batch = tokenized(model_dir, TEXTS)
    one = run_stages(model_dir, batch, [])
    n = len(TEXTS)
    for cuts in ([2], [1, 3]):
        split = run_stages(model_dir, batch, cuts)
        np.testing.assert_array_equal(split[schema.EXIT_LAYER], one[schema.EXIT_LAYER])
        np.testing.assert_array_equal(split[schema.LABEL_ID], one[schema.LABEL_ID])
        np.testing.assert_array_equal(split[schema.SKIPPED], one[schema.SKIPPED])
    for i in range(0, n, 5):
        alone = run_stages(model_dir, tokenized(model_dir, [TEXTS[i]]), [2])
        assert alone[schema.EXIT_LAYER][0] == one[schema.EXIT_LAYER][i] and alone[schema.LABEL_ID][0] == one[schema.LABEL_ID][i]
    assert len(one[schema.EXIT_LAYER]) == n + 2 and list(one[schema.STATUS][-2:]) == ["null", "empty"]

    model = load_model(model_dir)
    policy = get_policy(model.config.exit_policy)
    hp = full_pass(model, tokenizer, TEXTS, max_length=64)
    scores = simulate.head_scores(policy, hp, model.exit_layers)
    thresholds = np.array(model.config.exit_thresholds)
    passes = policy.passes(scores, thresholds[None, :])  # per-head thresholds
    passes[:, -1] = True
    first = passes.argmax(1)
    np.testing.assert_array_equal(one[schema.EXIT_LAYER][:n], np.array(model.exit_layers)[first])
    np.testing.assert_array_equal(one[schema.LABEL_ID][:n], hp.preds[np.arange(n), first])
    exit_layers = one[schema.EXIT_LAYER][:n]
    assert len(set(exit_layers)) >= 2, f"{name}: rows must exit at several layers for the test to mean anything"
    if hp.skipped is not None:
        skipped_before_exit = [int(hp.skipped[i, : exit_layers[i]].sum()) for i in range(n)]
        np.testing.assert_array_equal(one[schema.SKIPPED][:n], skipped_before_exit)


def test_smartbert_gate_at_inference_is_the_hard_decision_of_training(tokenizer):
    model = make_mechanism_model("smartbert", tokenizer)
    enc = tokenizer(TEXTS, truncation=True, max_length=64, padding=True, return_tensors="pt")
    mask = enc["attention_mask"]
    emb = model.bert.embeddings(input_ids=enc["input_ids"])
    with torch.no_grad():
        hard = model.run_layers(emb, mask, "hard")
        ste = model.run_layers(emb, mask, "straight_through")  # the hard weight mechanism of training
        soft = model.run_layers(emb, mask, "soft")
    for a, b in zip(hard.states, ste.states):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert not torch.allclose(hard.states[-1], soft.states[-1]), "soft gating blends; it must differ"
    skipped = hard.skipped  # (N, L)
    assert skipped.any() and not skipped.all(), "the toy must have rows that skip and rows that run"
    # straight-through: backward gives the gate the soft gradient although the forward was hard
    emb2 = emb.detach()
    trace = model.run_layers(emb2, mask, "straight_through")
    trace.states[-1].sum().backward()
    assert any(g.grad is not None and g.grad.abs().sum() > 0 for g in model.gates.parameters())

    # inference: only non-skipping rows are computed, as a compacted sub-batch, and the
    # result equals the hard-gated full forward
    shard = LayerShard(model, 0, NUM_LAYERS, exits_enabled=False)
    lengths = mask.sum(1)
    out = shard(lengths, input_ids=enc["input_ids"])
    ref = model(**enc)
    torch.testing.assert_close(out.logits, ref.logits.float(), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(out.skipped.numpy(), skipped.sum(1).numpy())
    assert out.row_layers == int((~skipped).sum()), "a skipped layer must cost its row nothing"


def test_gates_off_runs_every_layer(tokenizer):
    model = make_mechanism_model("smartbert", tokenizer)
    enc = tokenizer(TEXTS, truncation=True, max_length=64, padding=True, return_tensors="pt")
    out = LayerShard(model, 0, NUM_LAYERS, exits_enabled=False, gates_enabled=False)(
        enc["attention_mask"].sum(1), input_ids=enc["input_ids"]
    )
    assert out.skipped is None and out.row_layers == len(TEXTS) * NUM_LAYERS
