import numpy as np
import pytest

from offramp.exits.token_shard import pad_words


def reference_pad_words(blobs, counts, dtype, fill):
    out = np.full((len(blobs), max(1, int(counts.max()) if len(counts) else 1)), fill, dtype=dtype)
    for i, blob in enumerate(blobs):
        if blob:
            out[i, : counts[i]] = np.frombuffer(blob, dtype=dtype)
    return out


@pytest.mark.parametrize("dtype, fill", [(np.int32, -1), (np.int16, 0), (np.float32, 1.0)])
def test_pad_words_equals_the_per_row_reference(dtype, fill):
    """An empty blob is a fresh row (all `fill`) even when the row has words; a row of no words stays `fill`."""
    rng = np.random.default_rng(0)
    counts = np.array([3, 0, 5, 2, 4, 0])
    fresh = [False, False, False, True, False, True]
    blobs = np.array(
        [b"" if f else rng.integers(-9, 9, c).astype(dtype).tobytes() for c, f in zip(counts, fresh)], dtype=object
    )
    out = pad_words(blobs, counts, dtype, fill)
    ref = reference_pad_words(blobs, counts, dtype, fill)
    assert out.dtype == ref.dtype and out.tobytes() == ref.tobytes()
    assert (out[3] == fill).all()
    empty = pad_words(np.array([], dtype=object), np.array([], dtype=np.int64), dtype, fill)
    assert empty.shape == (0, 1)
