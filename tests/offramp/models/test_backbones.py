"""Every backbone adapter: a team's stock fine-tuned checkpoint loads into the early-exit class of
its backbone, and at full depth gives the stock model's logits; exits are batch invariant; the
token task's sparse layer and word alignment hold for each backbone's layers and tokenizer."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from transformers.masking_utils import create_bidirectional_mask

from offramp.config import ConfigError
from offramp.exits.sequence_shard import LayerShard
from offramp.exits.token_pass import pad
from offramp.exits.token_shard import TokenShard
from offramp.models.base import SEQUENCE, TOKEN
from offramp.models.checkpoint import checkpoint_config, model_class
from offramp.models.token import sparse_layer
from offramp.text.tokenize import encode_texts, load_tokenizer
from offramp.text.words import encode_words
from tests.backbones import BACKBONE_TYPES, backbone_tokenizer, save_stock_model, tokenizer_dir
from tests.conftest import NUM_LAYERS, SENTENCES, TEXTS, spread_thresholds

# fp32 on CPU: the shard runs the stock layers on compacted, differently padded sub-batches;
# BLAS blocking on other shapes moves logits by ~1e-6.
TOL = 1e-4


def load_ours(directory, task=SEQUENCE):
    config = checkpoint_config(str(directory))
    return model_class(task, config).from_pretrained(str(directory), use_safetensors=True).eval()


def zero_padded(tokenizer, texts):
    """Ids as the pipeline carries them: right-padded with 0, whatever the pad id; and the mask."""
    enc = tokenizer(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
    mask = enc["attention_mask"]
    return torch.where(mask.bool(), enc["input_ids"], 0), mask


@pytest.fixture(scope="module", params=BACKBONE_TYPES)
def sequence_pair(request, tmp_path_factory):
    """(model_type, the stock classifier, ours loaded from its directory, its tokenizer)."""
    directory = tmp_path_factory.mktemp(request.param)
    stock = save_stock_model(request.param, directory, seed=2)
    return request.param, stock, load_ours(directory), backbone_tokenizer(request.param)


def test_full_depth_gives_the_stock_classifiers_logits(sequence_pair):
    model_type, stock, ours, tokenizer = sequence_pair
    assert type(ours).__name__.startswith("EarlyExit") and ours.base_model_prefix == stock.base_model_prefix
    enc = tokenizer(TEXTS, padding=True, truncation=True, max_length=64, return_tensors="pt")
    with torch.no_grad():
        want = stock(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
    ids, mask = zero_padded(tokenizer, TEXTS)
    out = LayerShard(ours, 0, NUM_LAYERS, exits_enabled=False)(mask.sum(1), input_ids=ids)
    torch.testing.assert_close(out.logits, want, atol=TOL, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(ours(ids, mask).logits, want, atol=TOL, rtol=0)


def test_exits_are_batch_invariant_and_shards_chain(sequence_pair):
    model_type, _, ours, tokenizer = sequence_pair
    thresholds = dict(zip(ours.exit_layers, spread_thresholds(ours, tokenizer, TEXTS)))
    shard = LayerShard(ours, 0, NUM_LAYERS, thresholds=thresholds)
    texts = TEXTS[:12]
    ids, mask = zero_padded(tokenizer, texts)
    batched = shard(mask.sum(1), input_ids=ids)
    assert len(set(batched.exit_layer.tolist())) >= 2, "thresholds should spread exits over layers"
    for i, text in enumerate(texts):
        ids1, mask1 = zero_padded(tokenizer, [text])
        alone = shard(mask1.sum(1), input_ids=ids1)
        assert alone.exit_layer[0] == batched.exit_layer[i], (model_type, text)
        torch.testing.assert_close(alone.logits[0], batched.logits[i], atol=TOL, rtol=0)
    first = LayerShard(ours, 0, 2, thresholds=thresholds)(mask.sum(1), input_ids=ids)
    second = LayerShard(ours, 2, NUM_LAYERS, thresholds=thresholds)(first.lengths, hidden=first.hidden, state=first.state)
    assert torch.equal(first.exit_layer[first.exit_layer > 0], batched.exit_layer[first.exit_layer > 0])
    assert torch.equal(second.exit_layer, batched.exit_layer[first.survivors])


@pytest.mark.parametrize("model_type", BACKBONE_TYPES)
def test_token_model_at_full_depth_tags_as_the_stock_tagger(model_type, tmp_path):
    stock = save_stock_model(model_type, tmp_path, task=TOKEN, seed=3)
    ours = load_ours(tmp_path, TOKEN)
    tokenizer = backbone_tokenizer(model_type)
    ids, lengths, starts = pad(encode_words(tokenizer, SENTENCES, 64))
    mask = (torch.arange(ids.shape[1])[None, :] < lengths[:, None]).long()
    with torch.no_grad():
        want = stock(input_ids=torch.where(mask.bool(), ids, tokenizer.pad_token_id), attention_mask=mask).logits.argmax(-1)
    want = torch.gather(want, 1, starts.clamp(min=0))
    never = {l: -1.0 for l in ours.exit_layers}
    out = TokenShard(ours, 0, NUM_LAYERS, thresholds=never)(lengths, starts, input_ids=ids)
    valid = starts >= 0
    assert valid.sum() > 0 and torch.equal(out.words.label[valid], want[valid])


@pytest.mark.parametrize("model_type", BACKBONE_TYPES)
def test_sparse_layer_updates_active_tokens_as_the_stock_layer(model_type, tmp_path):
    save_stock_model(model_type, tmp_path, task=TOKEN, seed=4)
    ours = load_ours(tmp_path, TOKEN)
    layer = ours.encoder_layers[0]
    torch.manual_seed(1)
    h = torch.randn(3, 10, 32)
    real = torch.arange(10)[None, :] < torch.tensor([10, 7, 4])[:, None]
    active = real & (torch.rand(3, 10) < 0.5)
    active[:, 0] = True
    with torch.no_grad():
        stock = layer(h, create_bidirectional_mask(config=ours.config, inputs_embeds=h, attention_mask=real))
        out = sparse_layer(layer, h, active, real, ours.adapter)
    torch.testing.assert_close(out[active], stock[active], atol=1e-5, rtol=0)
    assert torch.equal(out[~active & real], h[~active & real])


WORDS = [["Debian", "packages", "pythonic", "bindings", "."], ["x86-64", "firmware", "0xFFFFdeadbeef"]]


def running_text_words(hf, words):
    """The reference for a byte-level BPE: each word tokenized as it appears inside running text
    (after a space), between the checkpoint's own start and end tokens -> (ids, first positions)."""
    ids, starts = [hf.cls_token_id], []
    for w in words:
        starts.append(len(ids))
        ids += hf(" " + w, add_special_tokens=False)["input_ids"]
    return ids + [hf.sep_token_id], starts


@pytest.mark.parametrize("model_type", BACKBONE_TYPES)
def test_words_start_at_their_first_sub_word_as_in_running_text(model_type):
    """The light word encoder (tokenizers only) gives the ids and first-sub-word positions that
    transformers gives for pre-split words; for RoBERTa's byte-level BPE, those of each word as it
    appears inside running text ("Ġword", what `add_prefix_space=True` asks of transformers)."""
    hf = backbone_tokenizer(model_type)
    encoded = encode_words(load_tokenizer(tokenizer_dir(model_type)), WORDS, 64)
    for words, e in zip(WORDS, encoded):
        if model_type == "roberta":
            want_ids, want_starts = running_text_words(hf, words)
        else:
            want = hf(words, is_split_into_words=True)
            want_ids, first = want["input_ids"], {}
            for pos, w in enumerate(want.word_ids()):
                if w is not None:
                    first.setdefault(w, pos)
            want_starts = [first[w] for w in range(len(words))]
        assert e.ids.tolist() == want_ids, model_type
        assert e.starts.tolist() == want_starts, model_type


@pytest.mark.parametrize("model_type", BACKBONE_TYPES)
def test_light_tokenizer_matches_the_checkpoints_and_truncates_with_its_end_token(model_type):
    light = load_tokenizer(tokenizer_dir(model_type))
    hf = backbone_tokenizer(model_type)
    rows = encode_texts(light, TEXTS[:6], max_length=12)
    for text, (ids, truncated) in zip(TEXTS[:6], rows):
        want = hf(text)["input_ids"]
        assert truncated == (len(want) > 12)
        assert ids.tolist() == (want if not truncated else want[:11] + [hf.sep_token_id])
        assert ids[0] == hf.cls_token_id and ids[-1] == hf.sep_token_id


def test_unsupported_backbone_and_unsafe_checkpoints_fail_at_start(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    save_file({"x": torch.zeros(1)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(ConfigError, match=r"no offramp backbone adapter; supported: \['bert', 'distilbert'"):
        checkpoint_config(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "auto_map": {"AutoModel": "m.Model"}}))
    with pytest.raises(ConfigError, match="trust_remote_code"):
        checkpoint_config(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"auto_map": {"AutoTokenizer": ["t.Tok", None]}}))
    with pytest.raises(ConfigError, match="auto_map in tokenizer_config.json"):
        checkpoint_config(str(tmp_path))
    (tmp_path / "tokenizer_config.json").unlink()
    (tmp_path / "model.safetensors").unlink()
    (tmp_path / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(ConfigError, match="safetensors only"):
        checkpoint_config(str(tmp_path))


@pytest.mark.parametrize("model_type", ["roberta", "xlm-roberta"])
def test_the_light_tokenize_step_imports_no_torch_for_bpe_and_sentencepiece(model_type):
    import subprocess
    import sys

    code = (
        "import sys; from offramp.text.tokenize import load_tokenizer, encode_texts; from offramp.text.words import encode_words\n"
        f"t = load_tokenizer({tokenizer_dir(model_type)!r}); encode_texts(t, ['a text'], 32); encode_words(t, [['a', 'b']], 32)\n"
        "print(type(t).__name__, 'torch' in sys.modules, 'transformers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["_FastTokenizer", "False", "False"]
