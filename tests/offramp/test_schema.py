"""Packing of variable-length rows into blobs: the vectorised codec equals a plain per-row one, byte for byte."""

import numpy as np
import pytest

from offramp import schema


def reference_unpad(array, lengths):
    return [array[i, : int(lengths[i])].tobytes() for i in range(len(lengths))]


def reference_pad(blobs, lengths, dtype, width):
    out = np.zeros((len(blobs), int(lengths.max()) if len(lengths) else 0, width), dtype=dtype)
    for i, blob in enumerate(blobs):
        out[i, : lengths[i]] = np.frombuffer(blob, dtype=dtype).reshape(-1, width)
    return out


def random_rows(rng, n, T, H, dtype):
    lengths = rng.integers(0, T + 1, n)
    if n:
        lengths[0], lengths[-1] = 0, T  # an empty row and a full one
    bits = rng.integers(0, 256, (n, T, H * np.dtype(dtype).itemsize), dtype=np.uint8)
    array = bits.view(dtype)  # any bit pattern (NaNs, -0.0, subnormals) must survive unchanged
    array[..., -1] = 0  # trailing zero bytes must not be stripped from a blob
    return array, lengths


# int16 stands for bfloat16, which is carried as its raw 16-bit patterns
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.int16, np.int32])
@pytest.mark.parametrize("n", [0, 1, 37])
def test_unpad_then_pad_equals_the_per_row_reference(dtype, n):
    rng = np.random.default_rng(n)
    array, lengths = random_rows(rng, n, T=9, H=5, dtype=dtype)
    blobs = schema.unpad_to_blobs(array, lengths)
    assert blobs.dtype == object and blobs.shape == (n,) and all(type(b) is bytes for b in blobs)
    assert list(blobs) == reference_unpad(array, lengths)
    padded = schema.pad_blobs(blobs, lengths, dtype, width=5)
    ref = reference_pad(list(blobs), lengths, dtype, 5)
    assert padded.dtype == ref.dtype and padded.tobytes() == ref.tobytes()
    again = schema.unpad_to_blobs(padded, lengths)
    assert list(again) == list(blobs)


def test_blobs_keep_the_column_contract_when_assigned_into_a_column():
    """One object array of bytes per row: writing the blobs into a column changes no byte."""
    array = np.array([[[1, 0], [0, 0]], [[0, 0], [0, 0]], [[2, 3], [4, 0]]], dtype=np.int16)  # (3, 2, 2)
    lengths = np.array([2, 0, 1])
    column = np.array([b"keep", b"x", b"y", b"z"], dtype=object)
    column[[3, 1, 2]] = schema.unpad_to_blobs(array, lengths)
    assert list(column) == [b"keep", b"", array[2, :1].tobytes(), array[0].tobytes()]


def test_flat_to_blobs_cuts_fixed_width_rows():
    states = np.arange(12, dtype=np.float32).reshape(4, 3)
    blobs = schema.flat_to_blobs(states, np.ones(4, dtype=np.int64))
    assert list(blobs) == [row.tobytes() for row in states]
    with pytest.raises(AssertionError):
        schema.flat_to_blobs(states, np.ones(3, dtype=np.int64))


def test_concat_blobs_gives_the_bytes_and_sizes_of_each_row():
    blobs = np.array([b"ab", b"", b"\x00c\x00", b""], dtype=object)
    flat, sizes = schema.concat_blobs(blobs)
    assert flat.tobytes() == b"ab\x00c\x00" and sizes.tolist() == [2, 0, 3, 0]
    flat, sizes = schema.concat_blobs(np.array([], dtype=object))
    assert flat.size == 0 and sizes.size == 0
