import os

import numpy as np
import pytest
import torch

from actors.stage import StageActor

from offramp.exits.stage import StageSpec
from offramp import schema
from offramp.models.checkpoint import load_model
from offramp.tasks.sequence import tokenize_batch
from offramp.text.tokenize import load_tokenizer
from tests.conftest import NUM_LAYERS, TEXTS


def tokenized(model_dir, texts):
    cells = np.array(list(texts) + [None, ""], dtype=object)
    batch = {"id": np.arange(len(cells)), "text": cells}
    return tokenize_batch(batch, load_tokenizer(model_dir), "text", 64)


def test_two_stages_equal_one_stage_and_keep_every_row(model_dir):
    batch = tokenized(model_dir, TEXTS)
    one = StageActor(model_dir, StageSpec(0, 0, NUM_LAYERS, carry_dtype="float32"))(batch)
    s0 = StageActor(model_dir, StageSpec(0, 0, 2, carry_dtype="float32"))
    s1 = StageActor(model_dir, StageSpec(1, 2, NUM_LAYERS, carry_dtype="float32"))
    mid = s0(batch)
    two = s1(mid)
    n = len(batch["id"])
    assert all(len(v) == n for v in two.values())
    np.testing.assert_array_equal(two["id"], batch["id"])
    np.testing.assert_array_equal(two[schema.EXIT_LAYER], one[schema.EXIT_LAYER])
    np.testing.assert_array_equal(two[schema.LABEL_ID], one[schema.LABEL_ID])
    np.testing.assert_allclose(two[schema.CONFIDENCE], one[schema.CONFIDENCE], atol=1e-5)
    exit_layers = two[schema.EXIT_LAYER][:-2]
    assert (exit_layers <= 2).any() and (exit_layers > 2).any(), "rows must exit in both stages"
    # after stage 0: exited rows dropped their states, survivors carry exactly their own length
    for i in range(n - 2):
        blob = mid[schema.HIDDEN][i]
        if mid[schema.EXIT_LAYER][i]:
            assert blob == b""
        else:
            assert len(blob) == mid[schema.NUM_TOKENS][i] * 32 * 4  # tokens x hidden x fp32
    assert all(b == b"" for b in two[schema.HIDDEN])
    # bad rows pass through untouched, with no label
    assert list(two[schema.STATUS][-2:]) == ["null", "empty"] and list(two[schema.LABEL_ID][-2:]) == [-1, -1]


def test_the_last_stage_actor_returns_the_output_table_the_finalize_step_makes(model_dir):
    """The last stage's actor writes the user's output rows itself (no finalize task after it):
    the same table, row for row, as finalize_step on the stage's own output; a deeper stage's
    columns are left for the next one; the report counts the table's time as busy time."""
    from actors.stage import Reports
    from offramp.tasks import finalize_step

    batch = tokenized(model_dir, TEXTS)
    labels = load_model(model_dir).config.id2label
    labels = [labels[i] for i in range(len(labels))]
    finalize = dict(task="sequence", labels=labels, id_column="id", keep=[], gold=None)
    spec = StageSpec(0, 0, NUM_LAYERS, carry_dtype="float32")
    expected = finalize_step(StageActor(model_dir, spec)(batch), **finalize)
    actor = StageActor(model_dir, spec, finalize=finalize)
    sent = []
    actor.reports = Reports()
    actor.reports.send = sent.append
    table = actor(batch)
    assert table.schema.equals(expected.schema) and table.num_rows == len(batch["id"])
    assert table.to_pandas().equals(expected.to_pandas()), "the same values (NaN where no label: the bad rows)"
    assert sent[0].seconds > 0 and sent[0].rows_seen == len(batch["id"])
    assert isinstance(StageActor(model_dir, StageSpec(0, 0, 2), finalize=None)(batch), dict), "a deeper stage follows"


def test_fp16_carry_halves_the_bytes_and_keeps_decisions_close(model_dir):
    batch = tokenized(model_dir, TEXTS)
    mid = StageActor(model_dir, StageSpec(0, 0, 1, carry_dtype="float16"))(batch)
    alive = [i for i in range(len(TEXTS)) if not mid[schema.EXIT_LAYER][i]]
    assert alive and all(len(mid[schema.HIDDEN][i]) == mid[schema.NUM_TOKENS][i] * 32 * 2 for i in alive)


def test_stage_checks_its_input_columns(model_dir):
    with pytest.raises(ValueError, match="lacks columns"):
        StageActor(model_dir, StageSpec(0, 0, 1))({"id": np.arange(2)})


def test_stage_output_matches_direct_model_prediction(model_dir, tokenizer):
    """The label a stage writes is the argmax of the exiting head's logits."""
    batch = tokenized(model_dir, TEXTS[:12])
    out = StageActor(model_dir, StageSpec(0, 0, NUM_LAYERS))(batch)
    model = load_model(model_dir)
    enc = tokenizer(TEXTS[:12], padding=True, truncation=True, max_length=64, return_tensors="pt")
    with torch.no_grad():
        heads = model(**enc).exit_logits
    for i in range(12):
        layer = int(out[schema.EXIT_LAYER][i])
        assert out[schema.LABEL_ID][i] == heads[model.exit_layers.index(layer)][i].argmax().item()


def test_forward_groups_sort_by_length_and_respect_the_token_budget():
    from offramp.exits.stage import forward_groups

    lengths = np.array([50, 3, 40, 4, 5, 60])
    groups = forward_groups(lengths, max_tokens=100)
    assert sorted(np.concatenate(groups).tolist()) == list(range(6))  # every row exactly once
    for g in groups:
        assert len(g) * lengths[g].max() <= 100 or len(g) == 1
    assert [sorted(lengths[g].tolist()) for g in groups][0] == [3, 4, 5]
    assert len(forward_groups(lengths, 0)) == 1


def test_grouped_forward_passes_give_the_same_rows_as_one_pass(model_dir):
    batch = tokenized(model_dir, TEXTS)
    one = StageActor(model_dir, StageSpec(0, 0, NUM_LAYERS, max_tokens=0))(batch)
    grouped = StageActor(model_dir, StageSpec(0, 0, NUM_LAYERS, max_tokens=64))(batch)
    np.testing.assert_array_equal(grouped[schema.EXIT_LAYER], one[schema.EXIT_LAYER])
    np.testing.assert_array_equal(grouped[schema.LABEL_ID], one[schema.LABEL_ID])
    np.testing.assert_allclose(grouped[schema.CONFIDENCE], one[schema.CONFIDENCE], atol=1e-4)


@pytest.mark.parametrize("split", [None, 1, 2])
def test_audited_rows_keep_their_answer_and_get_the_full_depth_label(model_dir, split):
    """Auditing changes no answer; an audited row's full-depth label is what running without
    exits gives; audited rows keep running after their answer, in later stages too."""
    texts = TEXTS
    plain = tokenized(model_dir, texts)
    audit = np.zeros(len(plain["id"]), dtype=bool)
    audit[::2] = True
    audited = tokenize_batch({"id": plain["id"], "text": plain["text"]}, load_tokenizer(model_dir), "text", 64, audit)

    def run(batch, exits=True):
        if split is None:
            return StageActor(model_dir, StageSpec(0, 0, NUM_LAYERS, carry_dtype="float32", exits_enabled=exits))(batch)
        s0 = StageActor(model_dir, StageSpec(0, 0, split, carry_dtype="float32", exits_enabled=exits))
        s1 = StageActor(model_dir, StageSpec(1, split, NUM_LAYERS, carry_dtype="float32", exits_enabled=exits))
        return s1(s0(batch))

    base, out, full = run(plain), run(audited), run(plain, exits=False)
    np.testing.assert_array_equal(out[schema.EXIT_LAYER], base[schema.EXIT_LAYER])
    np.testing.assert_array_equal(out[schema.LABEL_ID], base[schema.LABEL_ID])
    np.testing.assert_allclose(out[schema.CONFIDENCE], base[schema.CONFIDENCE], atol=1e-5)
    ok = np.isin(out[schema.STATUS], schema.RUNNABLE)
    np.testing.assert_array_equal(out[schema.FULL_LABEL_ID][audit & ok], full[schema.LABEL_ID][audit & ok])
    assert (out[schema.FULL_LABEL_ID][~audit | ~ok] == -1).all()
    early = audit & ok & (out[schema.EXIT_LAYER] < NUM_LAYERS)
    assert early.any(), "some audited rows must exit early for the check to mean anything"
    assert all(b == b"" for b in out[schema.HIDDEN])


def test_audit_selection_is_reproducible_and_near_its_fraction():
    ids = np.array([f"doc{i}" for i in range(20000)], dtype=object)
    a = schema.audit_mask(ids, 0.05, seed=7)
    assert (a == schema.audit_mask(ids, 0.05, seed=7)).all()
    assert (a[5000:] == schema.audit_mask(ids[5000:], 0.05, seed=7)).all()  # per row, not per batch
    assert abs(a.mean() - 0.05) < 0.01
    assert (a != schema.audit_mask(ids, 0.05, seed=8)).any()
    assert not schema.audit_mask(ids, 0.0, 0).any() and schema.audit_mask(ids, 1.0, 0).all()


# ---------------------------------------------------------------- GPU branches, tested on any machine

def test_token_budget_on_cpu_and_sized_from_gpu_memory():
    from offramp.exits.stage import CPU_TOKEN_BUDGET, GPU_TOKEN_BUDGET_CAP, token_budget

    cuda = torch.device("cuda")  # a device object needs no GPU; total_memory is given
    assert token_budget(torch.device("cpu"), 768, 3072, torch.float16) == CPU_TOKEN_BUDGET
    # 1 GiB card, BERT-base in fp16: a quarter of it over (8*768 + 2*3072) * 2 bytes per token
    assert token_budget(cuda, 768, 3072, torch.float16, total_memory=2**30) == 2**30 // 4 // 24576
    # an H200's 141 GB would allow far more than a pass needs: capped
    assert token_budget(cuda, 768, 3072, torch.float16, total_memory=141 * 10**9) == GPU_TOKEN_BUDGET_CAP
    # fp32 halves the tokens that fit; never below the CPU budget on a tiny card
    assert token_budget(cuda, 768, 3072, torch.float32, total_memory=2**30) == 2**30 // 4 // 49152
    assert token_budget(cuda, 768, 3072, torch.float16, total_memory=2**20) == CPU_TOKEN_BUDGET


def test_unset_max_tokens_takes_the_device_budget(model_dir, tokenizer):
    from offramp.exits.stage import CPU_TOKEN_BUDGET

    runner = StageActor(model_dir, StageSpec(0, 0, NUM_LAYERS, max_tokens=None)).runner
    assert runner.spec.max_tokens == CPU_TOKEN_BUDGET
    batch = tokenized(model_dir, TEXTS)
    grouped = StageActor(model_dir, StageSpec(0, 0, NUM_LAYERS, max_tokens=64))(batch)
    auto = runner(batch)[0]
    assert np.array_equal(auto[schema.EXIT_LAYER], grouped[schema.EXIT_LAYER])
    assert np.array_equal(auto[schema.LABEL_ID], grouped[schema.LABEL_ID])


def test_to_device_keeps_cpu_tensors_and_configure_device_turns_off_cudnn_attention():
    from offramp.exits.stage import configure_device, to_device

    t = torch.arange(6, dtype=torch.int32)
    assert to_device(t, torch.device("cpu")) is t
    before = torch.backends.cuda.cudnn_sdp_enabled()
    try:
        configure_device(torch.device("cpu"))
        assert torch.backends.cuda.cudnn_sdp_enabled() == before  # a CPU stage changes nothing
        configure_device(torch.device("cuda"))
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        torch.backends.cuda.enable_cudnn_sdp(True)
        os.environ["OFFRAMP_CUDNN_SDP"] = "1"  # the benchmark's A/B keeps it on
        configure_device(torch.device("cuda"))
        assert torch.backends.cuda.cudnn_sdp_enabled()
    finally:
        os.environ.pop("OFFRAMP_CUDNN_SDP", None)
        torch.backends.cuda.enable_cudnn_sdp(before)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU: pinned, non-blocking copy")
def test_to_device_on_a_gpu_copies_through_pinned_memory():
    from offramp.exits.stage import to_device

    t = torch.arange(1000, dtype=torch.float16)
    out = to_device(t, torch.device("cuda"))
    assert out.device.type == "cuda" and torch.equal(out.cpu(), t)


def test_a_bfloat16_stage_labels_as_float32_does_within_its_rounding(model_dir):
    """`dtype: bfloat16` computes every layer in bfloat16 (a CPU with AVX512-BF16 or AMX runs it
    about 2x faster) and answers as float32 does, up to bfloat16's rounding."""
    batch = tokenized(model_dir, TEXTS)
    full = {dtype: StageActor(model_dir, StageSpec(0, 0, NUM_LAYERS, dtype=dtype, exits_enabled=False))(dict(batch))
            for dtype in ("float32", "bfloat16")}
    f32, b16 = full["float32"], full["bfloat16"]
    np.testing.assert_array_equal(b16["id"], f32["id"])
    np.testing.assert_array_equal(b16[schema.STATUS], f32[schema.STATUS])
    np.testing.assert_array_equal(b16[schema.LABEL_ID], f32[schema.LABEL_ID])
    gap = np.nanmax(np.abs(b16[schema.CONFIDENCE] - f32[schema.CONFIDENCE]))
    # bfloat16 keeps 8 significant bits: each op's output is rounded by up to 0.4%, and over
    # 4 layers of about ten ops the top probability moved by 0.009 at most on these rows
    assert 0 < gap < 0.03, "a bfloat16 stage must compute in bfloat16 (gap 0 = it did not), and only round"
