"""The stage codec of carried states: the bytes on the wire equal the plain per-row ones, in every carry dtype.
And what a run is told about its stages' compute dtype on a CPU."""

import logging

import pytest
import torch

from offramp.exits.shard import trim
from offramp.exits.stage import blobs_to_hidden, cpu_dtype_advice, cpu_flags, hidden_to_blobs

# on an accelerator the states are gathered there before they cross to the host
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bit patterns, so that NaN and -0.0 compare exactly."""
    return t.view(torch.int16 if t.element_size() == 2 else torch.int32)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("carry_dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("n", [0, 1, 23])
def test_hidden_round_trips_bit_for_bit(carry_dtype, n, device):
    g = torch.Generator().manual_seed(n)
    lengths = torch.randint(0, 12, (n,), generator=g)
    if n:
        lengths[0] = 0
    hidden = torch.randn(n, 16, 8, generator=g) * 1e3  # wide range: fp16 overflows to inf, bf16 rounds
    if n:
        hidden[-1, 0, :3] = torch.tensor([float("nan"), -0.0, 1e-40])
    hidden = trim(hidden.to(device), lengths.to(device))  # survivors' states come trimmed: a non-contiguous view
    carried = bits(hidden.to(getattr(torch, carry_dtype)).cpu())  # the per-row reference converts the same way
    blobs = hidden_to_blobs(hidden, lengths.to(device), carry_dtype)
    assert blobs.dtype == object and all(type(b) is bytes for b in blobs)
    assert list(blobs) == [carried[i, :length].numpy().tobytes() for i, length in enumerate(lengths.tolist())]
    back = bits(blobs_to_hidden(blobs, lengths.numpy(), 8, carry_dtype))  # (S, T', H), zero-padded
    expected = torch.zeros_like(back)
    for i, length in enumerate(lengths.tolist()):
        expected[i, :length] = carried[i, :length]
    assert torch.equal(back, expected)


def levels_of(advice):
    return [level for level, _ in advice]


def test_cpu_dtype_advice_names_the_fix(tmp_path):
    # float16 on a CPU without float16 math: a warning that names bfloat16 and float32
    (level, message), = cpu_dtype_advice({"float16"}, {"avx2", "avx512_bf16"})
    assert level == logging.WARNING and "bfloat16" in message and "float32" in message
    assert cpu_dtype_advice({"float16"}, {"avx512_fp16"}) == []
    # on a cluster the stages' CPUs are unknown: only float16, slow on most CPUs, is warned about
    assert levels_of(cpu_dtype_advice({"float16", "bfloat16", "float32"}, None)) == [logging.WARNING]
    # bfloat16 where this CPU emulates it; and the hint where it does not
    assert "Set dtype: float32" in cpu_dtype_advice({"bfloat16"}, {"avx2"})[0][1]
    assert cpu_dtype_advice({"bfloat16"}, {"amx_bf16"}) == []
    assert levels_of(cpu_dtype_advice({"float32"}, {"avx512_bf16"})) == [logging.INFO]
    assert cpu_dtype_advice({"float32"}, {"avx2"}) == []
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512_bf16\n\nprocessor\t: 1\nflags\t\t: fpu\n")
    assert cpu_flags(str(info)) == {"fpu", "avx2", "avx512_bf16"}
    assert cpu_flags(str(tmp_path / "missing")) is None
