"""The rebatching actor (E3): survivors of several input batches merged into one pass per stage
boundary give every batch exactly the rows a plain stage gives, in its own order."""

import asyncio

import numpy as np
import pytest
import torch

from actors.rebatch import RebatchingStageActor
from actors.stage import StageActor
from offramp import schema
from offramp.exits.rebatch import DeviceCarry, Rebatcher
from offramp.exits.stage import BlobCarry, StageSpec
from offramp.tasks.sequence import tokenize_batch
from offramp.tasks.token import tokenize_batch as tokenize_words
from offramp.text.tokenize import load_tokenizer
from tests.conftest import NUM_LAYERS, SENTENCES, TEXTS


def batches(model_dir, count: int, size: int) -> list[dict]:
    """`count` batches of `size` rows cut from TEXTS (twice over) plus a null and an empty text."""
    texts = (TEXTS * 2)[: count * size]
    out = []
    for b in range(count):
        cells = np.array(texts[b * size:(b + 1) * size] + [None, ""], dtype=object)
        ids = np.arange(len(cells)) + 1000 * b
        out.append(tokenize_batch({"id": ids, "text": cells}, load_tokenizer(model_dir), "text", 64))
    return out


def specs(split: int, **kw) -> list[StageSpec]:
    return [StageSpec(0, 0, split, carry_dtype="float32", **kw),
            StageSpec(1, split, NUM_LAYERS, carry_dtype="float32", **kw)]


class Spy(RebatchingStageActor):
    """Records each pass: its stage and how many input batches its rows came from."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.passes, self.stats = [], []

    def run_pass(self, k, parts):
        self.passes.append((k, len({id(p.ticket) for p in parts})))
        self.stats.extend(self.rebatcher.run(k, parts))


async def call_all(actor, inputs):
    return await asyncio.gather(*(actor(b) for b in inputs))


@pytest.mark.parametrize("split", [1, 2])
@pytest.mark.parametrize("keep_states", [True, False], ids=["states-on-device", "states-as-blobs"])
def test_merged_passes_give_each_batch_the_rows_of_a_whole_model_stage(model_dir, split, keep_states):
    """States kept on the device (what a GPU actor does) or carried as blobs (a CPU actor)."""
    inputs = batches(model_dir, count=4, size=10)
    actor = Spy(model_dir, specs(split), pass_rows=1000, keep_states=keep_states)  # a pass takes every survivor
    outputs = asyncio.run(call_all(actor, inputs))
    whole = StageActor(model_dir, StageSpec(0, 0, NUM_LAYERS, carry_dtype="float32"))
    for batch, out in zip(inputs, outputs):
        one = whole(batch)
        assert set(out) == set(one)
        np.testing.assert_array_equal(out["id"], batch["id"])  # every row, once, in the batch's order
        np.testing.assert_array_equal(out[schema.EXIT_LAYER], one[schema.EXIT_LAYER])
        np.testing.assert_array_equal(out[schema.LABEL_ID], one[schema.LABEL_ID])
        # tolerance: per-row float32 results of passes padded to other lengths (as a plain stage's groups)
        np.testing.assert_allclose(out[schema.CONFIDENCE], one[schema.CONFIDENCE], atol=1e-5)
        assert list(out[schema.STATUS][-2:]) == ["null", "empty"] and list(out[schema.LABEL_ID][-2:]) == [-1, -1]
        assert all(b == b"" for b in out[schema.HIDDEN])  # no state leaves the actor
    if keep_states:
        assert actor.rebatcher.carry.rows_held() == 0 and not actor.rebatcher.carry.sources, "no state stays in it"
    survivors = [e > split for e in np.concatenate([o[schema.EXIT_LAYER] for o in outputs])]
    assert any(survivors) and not all(survivors), "rows must exit in both stages"
    deep = [n for k, n in actor.passes if k == 1]
    assert deep and max(deep) > 1, "a stage-1 pass must hold survivors of several input batches"
    assert len(deep) < len(inputs)
    # every stage accounts for every row, run there or finished before it
    total = sum(len(b["id"]) for b in inputs)
    for k in (0, 1):
        assert sum(s.rows_seen for s in actor.stats if s.stage == k) == total
    assert sum(s.rows_in for s in actor.stats if s.stage == 1) == int(np.sum(survivors))
    assert sum(s.passes for s in actor.stats if s.stage == 1) == len(deep)


def test_a_pass_is_capped_at_pass_rows_and_deep_full_queues_run_first(model_dir):
    """With passes of 8 running rows, no pass merges more batches than it needs."""
    inputs = batches(model_dir, count=3, size=12)
    actor = Spy(model_dir, specs(1, exits_enabled=False), pass_rows=8)  # every row survives into stage 1
    outputs = asyncio.run(call_all(actor, inputs))
    assert [len(o["id"]) for o in outputs] == [14, 14, 14]
    assert all((o[schema.EXIT_LAYER][:-2] == NUM_LAYERS).all() for o in outputs)
    # each batch has 12 running rows, more than a pass: passes take one batch's rows at a time
    assert all(n == 1 for _, n in actor.passes)
    assert [k for k, _ in actor.passes][:2] == [0, 1], "a full stage-1 queue runs before the next input"


def test_a_failed_pass_fails_its_batches_and_leaves_the_others(model_dir):
    inputs = batches(model_dir, count=3, size=6)

    class FailsStage1Once(RebatchingStageActor):
        failed = False

        def run_pass(self, k, parts):
            if k == 1 and not self.failed:
                self.failed = True
                self.rebatcher.carry.put(torch.zeros(2, 3, 4), torch.tensor([3, 1]))  # stored before it failed
                raise RuntimeError("stage 1 failed")
            super().run_pass(k, parts)

    actor = FailsStage1Once(model_dir, specs(1), pass_rows=4, keep_states=True)

    async def each():
        return await asyncio.gather(*(actor(b) for b in inputs), return_exceptions=True)

    results = asyncio.run(each())
    failed = [r for r in results if isinstance(r, RuntimeError)]
    assert failed, "the batch in the failed pass gets the error (Ray Data retries it)"
    for batch, r in zip(inputs, results):
        if not isinstance(r, Exception):
            np.testing.assert_array_equal(r["id"], batch["id"])
    assert not any(actor.rebatcher.queues), "no row of a failed batch stays queued"
    assert not actor.rebatcher.carry.sources, "nor its states on the device"
    assert actor.driver is None and not actor.waiting


@pytest.mark.parametrize("mode", ["token", "sentence"])
def test_a_tagger_gets_the_same_tags_and_word_exits_through_merged_passes(token_model_dir, mode):
    """Sequence labeling through the same actor: per word, the tag and exit layer one stage gives."""
    words = list(SENTENCES) + [[], None]
    inputs = []
    for b in range(3):
        part = words[b::3]
        cells = np.empty(len(part), dtype=object)
        cells[:] = part
        batch = {"id": np.arange(len(part)) + 100 * b, "tokens": cells}
        inputs.append(tokenize_words(batch, load_tokenizer(token_model_dir), "tokens", "text", 64, None))
    spec = dict(task="token", carry_dtype="float32", exit_mode=mode)
    actor = Spy(token_model_dir, [StageSpec(0, 0, 2, **spec), StageSpec(1, 2, NUM_LAYERS, **spec)], pass_rows=1000,
                keep_states=True)
    outputs = asyncio.run(call_all(actor, inputs))
    whole = StageActor(token_model_dir, StageSpec(0, 0, NUM_LAYERS, **spec))
    for batch, out in zip(inputs, outputs):
        one = whole(batch)
        np.testing.assert_array_equal(out["id"], batch["id"])
        for column in (schema.WORD_LABEL, schema.WORD_EXIT, schema.STATUS):
            assert list(out[column]) == list(one[column]), column
        np.testing.assert_array_equal(out[schema.TOKEN_LAYERS], one[schema.TOKEN_LAYERS])
        np.testing.assert_array_equal(out[schema.EXIT_LAYER], one[schema.EXIT_LAYER])
    assert max(n for k, n in actor.passes if k == 1) > 1, "stage 1 merged survivors of several batches"
    assert not actor.rebatcher.carry.sources


@pytest.mark.parametrize("carry_dtype", ["float16", "bfloat16", "float32"])
def test_states_kept_on_the_device_read_back_as_blobs_between_actors_do(carry_dtype):
    """Rows gathered from several passes' states equal, bit for bit, what the blobs between stage
    actors give: the same rounding, zero-padded to the new pass's longest row."""
    g = torch.Generator().manual_seed(0)
    blobs, device = BlobCarry(8, carry_dtype), DeviceCarry(carry_dtype)
    passes = [(torch.randn(5, 7, 8, generator=g), torch.tensor([7, 3, 5, 1, 6])),
              (torch.randn(3, 4, 8, generator=g), torch.tensor([4, 2, 4]))]
    handles = np.concatenate([device.put(h, n) for h, n in passes])
    carried = np.concatenate([blobs.put(h, n) for h, n in passes])
    lengths = np.concatenate([n.numpy() for _, n in passes])
    assert device.rows_held() == 8
    pick = np.array([6, 0, 3, 7])  # rows of both passes, out of order, one longer than the other pass's padding
    got = device.get(handles[pick], lengths[pick], torch.device("cpu"))
    want = blobs.get(carried[pick], lengths[pick], torch.device("cpu"))
    assert got.dtype == want.dtype and got.shape == want.shape == (4, 7, 8)
    assert torch.equal(got, want)
    assert device.rows_held() == 4 and set(device.sources) == {0, 1}
    device.get(handles[[1, 2, 4]], lengths[[1, 2, 4]], torch.device("cpu"))
    assert set(device.sources) == {1}, "a pass's states are freed once every row of it was read"
    device.release(np.array([handles[5], b""], dtype=object))  # a failed batch's row (and a finished one)
    assert not device.sources and device.rows_held() == 0
    device.put(*passes[1])
    device.discard_since(2)
    assert not device.sources


def test_pass_rows_must_be_positive():
    with pytest.raises(ValueError, match="pass_rows"):
        Rebatcher([], 0)
