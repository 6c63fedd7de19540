"""Sequence-labeling early exit: the sparse layer, the token shard's exits, word alignment."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers.masking_utils import create_bidirectional_mask

from offramp.exits.token_pass import pad
from offramp.models.checkpoint import load_model
from offramp.models.token import normalized_entropy, sparse_layer, window_max, word_of_token
from offramp.exits.token_shard import TokenShard
from offramp.text.words import encode_words, split_words
from tests.conftest import NUM_LAYERS, SENTENCES, make_token_model, token_thresholds

LONG = ["firmware", "0xFFFFdeadbeefcafe", "\n", "flasher"]  # a word of many sub-words, a word of none


@pytest.fixture(scope="module")
def model():
    return make_token_model(exit_window=1)


@pytest.fixture(scope="module")
def inputs(tokenizer):
    return pad(encode_words(tokenizer, SENTENCES + [LONG], 64))  # ids (B, T), lengths (B,), starts (B, W)


def full_tags(model, ids, lengths, starts) -> torch.Tensor:
    """(B, W) the full model's argmax at each word's first sub-word."""
    mask = (torch.arange(ids.shape[1])[None, :] < lengths[:, None]).long()
    with torch.no_grad():
        logits = model(ids, mask).logits  # (B, T, C)
    return torch.gather(logits.argmax(-1), 1, starts.clamp(min=0))


def test_sparse_layer_updates_active_tokens_as_the_stock_layer_and_leaves_the_rest(model):
    torch.manual_seed(1)
    layer = model.bert.encoder.layer[0]
    h = torch.randn(3, 10, 32)
    real = torch.arange(10)[None, :] < torch.tensor([10, 7, 4])[:, None]
    active = real & (torch.rand(3, 10) < 0.5)
    active[:, 0] = True
    with torch.no_grad():
        stock = layer(h, create_bidirectional_mask(config=model.config, inputs_embeds=h, attention_mask=real))
        out = sparse_layer(layer, h, active, real)
        h2 = h.clone()
        h2[~real] = 99.0  # padding is never a key
        out2 = sparse_layer(layer, h2, active, real)
    assert torch.allclose(out[active], stock[active], atol=1e-5)
    assert torch.equal(out[~active & real], h[~active & real])
    assert torch.allclose(out2[active], out[active], atol=1e-6)


def test_a_halted_token_keeps_its_state_in_later_layers(model, inputs, tokenizer):
    """Run layer by layer; the states of a word halted at layer l never change afterwards."""
    ids, lengths, starts = inputs
    th = token_thresholds(model, tokenizer, SENTENCES)
    shards = [TokenShard(model, l, l + 1, thresholds={k: th[k - 1] for k in model.exit_layers}) for l in range(NUM_LAYERS)]
    out = shards[0](lengths, starts, input_ids=ids)
    rows, hidden = out.survivors, out.hidden
    words = type(out.words)(*(x.clone() for x in vars(out.words).values()))  # writable outside inference mode
    seen_halted = 0
    for shard in shards[1:]:
        before = hidden.clone()
        halted = words.exit_layer[rows] > 0  # (S, W) halted before this layer
        nxt = shard(lengths[rows], starts[rows], words=type(words)(*(x[rows] for x in vars(words).values())), hidden=hidden)
        owner = word_of_token(starts[rows], lengths[rows], before.shape[1])  # (S, T)
        frozen = torch.gather(halted, 1, owner.clamp(min=0)) & (owner >= 0)  # tokens of halted words
        keep = nxt.survivors
        T = nxt.hidden.shape[1]
        assert torch.equal(nxt.hidden[frozen[keep][:, :T]], before[keep][:, :T][frozen[keep][:, :T]])
        seen_halted += int(frozen[keep].sum())
        for name in ("exit_layer", "label", "uncertainty"):  # write the shard's word state back
            getattr(words, name)[rows] = getattr(nxt.words, name)
        rows, hidden = rows[keep], nxt.hidden
        if len(rows) == 0:
            break
    assert seen_halted > 0, "thresholds should halt some words before the last layer"


@pytest.mark.parametrize("mode", ["token", "sentence"])
def test_thresholds_that_never_halt_give_the_full_models_tags(model, inputs, mode):
    ids, lengths, starts = inputs
    out = TokenShard(model, 0, NUM_LAYERS, mode=mode, thresholds={l: -1.0 for l in model.exit_layers})(
        lengths, starts, input_ids=ids)
    valid = starts >= 0
    assert torch.equal(out.words.label[valid], full_tags(model, ids, lengths, starts)[valid])
    assert (out.words.exit_layer[valid] == NUM_LAYERS).all() and (out.words.label[~valid] == -1).all()
    assert torch.equal(out.token_layers, lengths * NUM_LAYERS)


@pytest.mark.parametrize("mode", ["token", "sentence"])
def test_exit_decisions_are_batch_and_stage_invariant(model, inputs, tokenizer, mode):
    """A sentence's tags, word exit layers and cost are the same alone, in the batch, or over 2 stages."""
    ids, lengths, starts = inputs
    th = token_thresholds(model, tokenizer, SENTENCES)
    kw = dict(mode=mode, thresholds={l: th[l - 1] for l in model.exit_layers})
    batch = TokenShard(model, 0, NUM_LAYERS, **kw)(lengths, starts, input_ids=ids)
    assert batch.token_layers.sum() < (lengths * NUM_LAYERS).sum(), "some tokens should halt"
    first = TokenShard(model, 0, 2, **kw)(lengths, starts, input_ids=ids)
    r = first.survivors
    words = type(first.words)(*(x[r] for x in vars(first.words).values()))
    second = TokenShard(model, 2, NUM_LAYERS, **kw)(first.lengths, starts[r], words=words, hidden=first.hidden)
    assert torch.equal(second.words.label, batch.words.label[r])
    assert torch.equal(second.words.exit_layer, batch.words.exit_layer[r])
    assert torch.equal(first.token_layers[r] + second.token_layers, batch.token_layers[r])
    for i in range(len(ids)):
        n, w = int(lengths[i]), int(torch.nonzero(starts[i] >= 0).max()) + 1  # up to its last tagged word
        alone = TokenShard(model, 0, NUM_LAYERS, **kw)(lengths[i : i + 1], starts[i : i + 1, :w], input_ids=ids[i : i + 1, :n])
        assert torch.equal(alone.words.label[0], batch.words.label[i, :w])
        assert torch.equal(alone.words.exit_layer[0], batch.words.exit_layer[i, :w])
        assert alone.token_layers[0] == batch.token_layers[i]
    if mode == "sentence":  # SENTEE: one exit layer per sentence
        for i in range(len(ids)):
            layers = batch.words.exit_layer[i][starts[i] >= 0]
            assert len(set(layers.tolist())) <= 1


def test_window_max_pools_over_real_neighbours():
    u = torch.tensor([[0.1, 0.9, 0.1, 0.1, 0.1, 0.7]])
    valid = torch.tensor([[True, True, True, True, True, False]])
    assert window_max(u, valid, 1)[0].tolist() == pytest.approx([0.9, 0.9, 0.9, 0.1, 0.1, 0.1])
    assert torch.equal(window_max(u, valid, 0), u)


def test_sentee_pool_max_vs_mean(model, inputs):
    """With pool max a sentence leaves only when its least certain word is below the threshold; mean is laxer."""
    ids, lengths, starts = inputs
    mask = (torch.arange(ids.shape[1])[None, :] < lengths[:, None]).long()
    with torch.no_grad():
        h = model.layer_states(ids, mask)[1]
        u = normalized_entropy(model.head(1, torch.gather(h, 1, starts.clamp(min=0)[..., None].expand(-1, -1, 32))))
    valid = starts >= 0
    umax = torch.where(valid, u, 0).max(1).values
    umean = torch.where(valid, u, 0).sum(1) / valid.sum(1)
    t = float(umax.median())
    th = {l: (t if l == 1 else -1.0) for l in model.exit_layers}
    for pool, score in (("max", umax), ("mean", umean)):
        out = TokenShard(model, 0, NUM_LAYERS, mode="sentence", pool=pool, thresholds=th)(lengths, starts, input_ids=ids)
        assert torch.equal(out.row_exit == 1, score < t)


def test_word_of_token_maps_sub_words_to_their_word():
    starts = torch.tensor([[1, 2, 4, -1]])
    assert word_of_token(starts, torch.tensor([7]), 7).tolist() == [[-1, 0, 1, 1, 2, 2, -1]]


def test_words_and_sub_word_alignment(tokenizer):
    assert split_words("don't stop: it's v3.8, e.g. file.txt") == [
        "do", "n't", "stop", ":", "it", "'s", "v3.8", ",", "e.g", ".", "file.txt"]
    enc = encode_words(tokenizer, [LONG], 64)[0]
    assert enc.starts[2] == -1 and not enc.truncated  # the whitespace word has no sub-word
    assert enc.starts[3] - enc.starts[1] > 2  # 0xFFFF... spans several sub-words
    first = tokenizer.convert_ids_to_tokens(int(enc.ids[enc.starts[1]]))
    assert "0xffffdeadbeefcafe".startswith(first)
    cut = encode_words(tokenizer, [["word"] * 20], 8)[0]
    assert cut.truncated and len(cut.ids) == 8 and cut.ids[-1] == tokenizer.sep_token_id
    assert list(cut.starts[:6]) == [1, 2, 3, 4, 5, 6] and (cut.starts[6:] == -1).all()


def test_loss_reads_only_word_starts_and_save_load_keeps_the_exit_config(model, inputs, tmp_path):
    ids, lengths, starts = inputs
    labels = torch.full(ids.shape, -100)
    labels.scatter_(1, starts.clamp(min=0), 1)
    labels[:, 0] = -100
    with torch.no_grad():
        loss = model(ids, labels=labels).loss
    assert torch.isfinite(loss)
    model.config.token_exit_mode, model.config.exit_thresholds = "sentence", [0.3] * len(model.exit_layers)
    model.save_pretrained(tmp_path)
    back = load_model(str(tmp_path))
    assert back.config.token_exit_mode == "sentence" and back.config.exit_window == 1
    assert back.config.exit_thresholds == [0.3] * NUM_LAYERS
    with torch.no_grad():
        assert torch.equal(back(ids).logits, model(ids).logits)
    model.config.token_exit_mode = "token"


def test_tag_pass_takes_one_threshold_per_exit_layer(model, tokenizer):
    """Per-layer thresholds (the per-layer path over words): a list halts each word where the
    shard with that {layer: threshold} does, one value equals the same value at every layer, and
    a list of the wrong length is refused."""
    from offramp.exits.token_pass import tag_pass

    encoded = encode_words(tokenizer, SENTENCES + [LONG], 64)
    per_layer = token_thresholds(model, tokenizer, SENTENCES)
    got = tag_pass(model, encoded, "token", per_layer)
    ids, lengths, starts = pad(encoded)
    want = TokenShard(model, 0, NUM_LAYERS, mode="token", thresholds=dict(zip(model.exit_layers, per_layer)))(
        lengths, starts, input_ids=ids)
    for i, e in enumerate(encoded):
        w = len(e.starts)
        assert (got.exit_layers[i] == want.words.exit_layer[i, :w].numpy()).all()
        assert (got.labels[i] == want.words.label[i, :w].numpy()).all()
    layers = np.concatenate(got.exit_layers)
    assert len(np.unique(layers[layers > 0])) > 1  # the thresholds halt words at several layers: a real check
    one = tag_pass(model, encoded, "token", per_layer[1])
    same = tag_pass(model, encoded, "token", [per_layer[1]] * len(model.exit_layers))
    assert all((a == b).all() for a, b in zip(one.exit_layers, same.exit_layers))
    assert (one.token_layers == same.token_layers).all()
    with pytest.raises(ValueError, match="thresholds for"):
        tag_pass(model, encoded, "token", per_layer[:-1])
