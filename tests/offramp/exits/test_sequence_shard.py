import numpy as np
import pytest
import torch

from offramp.exits.sequence_shard import LayerShard, state_from_blobs
from offramp.exits.syncs import HostReads
from tests.conftest import NUM_LAYERS, TEXTS, make_model, spread_thresholds

# fp32 on CPU: the sharded path runs the same modules as BertModel.forward, only on
# compacted sub-batches; differences come from BLAS blocking on other shapes (~1e-6).
TOL = 1e-4


def full(model, ids, mask):
    with torch.no_grad():
        return model(ids, mask)


def encode(tokenizer, texts):
    enc = tokenizer(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


@pytest.fixture(scope="module", params=["cls", "mean"])
def model(request):
    """Every shard test on both final heads: [CLS]-pooled and mean-pooled."""
    return make_model(seed=1, final_pooling=request.param)


def test_exits_disabled_reproduces_full_model_logits(model, tokenizer):
    ids, mask = encode(tokenizer, TEXTS)
    ref = full(model, ids, mask).logits
    out = LayerShard(model, 0, NUM_LAYERS, exits_enabled=False)(mask.sum(1), input_ids=ids)
    assert (out.exit_layer == NUM_LAYERS).all()
    torch.testing.assert_close(out.logits, ref, atol=TOL, rtol=0)


def test_chained_shards_equal_one_shard_with_fp32_carry(model, tokenizer):
    ids, mask = encode(tokenizer, TEXTS)
    ref = full(model, ids, mask).logits
    first = LayerShard(model, 0, 1, exits_enabled=False)(mask.sum(1), input_ids=ids)
    second = LayerShard(model, 1, NUM_LAYERS, exits_enabled=False)(first.lengths, hidden=first.hidden)
    torch.testing.assert_close(second.logits, ref[first.survivors], atol=TOL, rtol=0)


def test_rows_exit_at_different_layers_and_exited_rows_cost_nothing(model, tokenizer):
    thresholds = dict(zip(model.exit_layers, spread_thresholds(model, tokenizer, TEXTS)))
    ids, mask = encode(tokenizer, TEXTS)
    out = LayerShard(model, 0, NUM_LAYERS, thresholds=thresholds)(mask.sum(1), input_ids=ids)
    layers = out.exit_layer.tolist()
    assert len(set(layers)) >= 3, layers
    assert all(1 <= l <= NUM_LAYERS for l in layers)
    # a row that exits after layer l ran exactly l layers: no compute after its exit
    assert out.row_layers == sum(layers)
    # an early exit predicts what that layer's head says, not the final head
    ref = full(model, ids, mask)
    for i, l in enumerate(layers):
        head = ref.exit_logits[model.exit_layers.index(l)][i]
        assert out.logits[i].argmax() == head.argmax()


def test_batch_invariance(model, tokenizer):
    """run(batch)[i] == run([x_i])[0]: same exit layer, logits within TOL."""
    thresholds = dict(zip(model.exit_layers, spread_thresholds(model, tokenizer, TEXTS)))
    shard = LayerShard(model, 0, NUM_LAYERS, thresholds=thresholds)
    texts = TEXTS[:12]
    ids, mask = encode(tokenizer, texts)
    batched = shard(mask.sum(1), input_ids=ids)
    for i, text in enumerate(texts):
        ids1, mask1 = encode(tokenizer, [text])
        alone = shard(mask1.sum(1), input_ids=ids1)
        assert alone.exit_layer[0] == batched.exit_layer[i], text
        torch.testing.assert_close(alone.logits[0], batched.logits[i], atol=TOL, rtol=0)
    # and in a shuffled, differently padded batch
    order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(0))
    ids2, mask2 = encode(tokenizer, [texts[j] for j in order])
    shuffled = shard(mask2.sum(1), input_ids=ids2)
    assert torch.equal(shuffled.exit_layer, batched.exit_layer[order])


def test_shard_rejects_bad_ranges(model):
    with pytest.raises(ValueError, match="outside"):
        LayerShard(model, 2, NUM_LAYERS + 1)


def test_state_from_blobs_takes_carried_rows_and_keeps_fresh_ones():
    fresh = torch.tensor([[-1.0, 0.0]]).repeat(5, 1)  # (S, state_size)
    carried = {1: [3.0, 2.0], 2: [float("nan"), -0.0], 4: [7.0, 1.0]}
    blobs = np.empty(5, dtype=object)
    blobs[:] = [np.array(carried[i], dtype=np.float32).tobytes() if i in carried else b"" for i in range(5)]
    state = state_from_blobs(blobs, fresh)
    expected = fresh.clone()
    for i, row in carried.items():
        expected[i] = torch.tensor(row)
    assert torch.equal(state.view(torch.int32), expected.view(torch.int32))  # bitwise: NaN and -0.0 included
    assert torch.equal(fresh, torch.tensor([[-1.0, 0.0]]).repeat(5, 1)), "fresh is not written to"
    assert torch.equal(state_from_blobs(np.array([b""] * 5, dtype=object), fresh), fresh)
    assert state_from_blobs(np.array([], dtype=object), fresh[:0]).shape == (0, 2)


def test_the_host_reads_from_the_device_once_per_exit_head_and_never_per_layer_at_full_depth(model, tokenizer):
    """On a GPU every read of a device value stalls the host until the queued kernels finish, and
    the GPU idles while the host queues the next ones. `HostReads` counts those reads on the CPU.
    With exits, a layer with an exit head reads once (which rows stay); at full depth no layer
    reads. The one read per call is the audited rows' work, summed on the device."""
    ids, mask = encode(tokenizer, TEXTS)
    thresholds = dict(zip(model.exit_layers, spread_thresholds(model, tokenizer, TEXTS)))
    with HostReads() as reads:
        out = LayerShard(model, 0, NUM_LAYERS, thresholds=thresholds)(mask.sum(1), input_ids=ids)
    assert out.exit_layer.max() == NUM_LAYERS  # some rows ran every layer: every internal head decided
    assert reads.by_reason == {"copy to host": NUM_LAYERS - 1, "scalar read": 1}, reads.by_reason
    with HostReads() as reads:
        LayerShard(model, 0, NUM_LAYERS, exits_enabled=False)(mask.sum(1), input_ids=ids)
    assert reads.by_reason == {"scalar read": 1}, reads.by_reason


def test_host_reads_counts_what_would_wait_for_a_device():
    """The counter itself: each kind of read it names, and plain device work it does not count."""
    t = torch.arange(6)
    with torch.inference_mode(), HostReads() as reads:
        int(t.max())
        t.nonzero()
        t[t > 2]
        t.to("cpu", copy=True)
        (t * 2 + 1).sum(0)  # device work only
        t[torch.tensor([0, 2])]  # an integer index: no read
    assert reads.by_reason == {"scalar read": 1, "nonzero": 1, "boolean index": 1, "copy to host": 1}
