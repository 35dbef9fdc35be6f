"""Sliding windows, time-ordered splits with gaps, and stitching."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from nwb_llmdecode.errors import ConfigError, DataError
from nwb_llmdecode.windows import (
    Block,
    Stitcher,
    gather_windows,
    iter_batches,
    min_frames_for_split,
    split_blocks,
    stitch,
    window_indices,
    window_starts,
    window_view,
)


def test_window_view_is_a_zero_copy_view_of_every_window():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((50, 7)).astype(np.float32)
    v = window_view(x, 20)
    assert v.shape == (31, 20, 7)
    assert np.shares_memory(v, x)
    # strides step one frame per window and one frame per position: no copy was made
    assert v.strides == (x.strides[0], x.strides[0], x.strides[1])
    assert v.base is not None and not v.flags.writeable
    for i in (0, 13, 30):
        np.testing.assert_array_equal(v[i], x[i : i + 20])


def test_gather_windows_copies_only_the_batch_and_matches_slicing():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((200, 5)).astype(np.float32)
    starts = np.array([0, 17, 180, 3])
    batch = gather_windows(x, starts, 20)
    assert batch.shape == (4, 20, 5)
    assert not np.shares_memory(batch, x)
    assert batch.nbytes == 4 * 20 * 5 * 4  # the batch, not all windows
    for b, s in enumerate(starts):
        np.testing.assert_array_equal(batch[b], x[s : s + 20])
    t = torch.from_numpy(x)
    tb = gather_windows(t, starts, 20)
    assert isinstance(tb, torch.Tensor)
    np.testing.assert_array_equal(tb.numpy(), batch)
    np.testing.assert_array_equal(window_indices(starts, 3)[1], [17, 18, 19])
    with pytest.raises(TypeError, match="numpy array or torch tensor"):
        gather_windows([[1.0]], starts, 2)


def test_window_starts_cover_every_frame_of_the_block():
    s = window_starts(10, 55, 20, stride=7)
    assert s[0] == 10 and s[-1] == 35  # the last window ends exactly at the block end
    covered = np.zeros(60, bool)
    for st in s:
        covered[st : st + 20] = True
    assert covered[10:55].all() and not covered[:10].any() and not covered[55:].any()
    assert window_starts(0, 19, 20).size == 0
    with pytest.raises(ConfigError, match="stride"):
        window_starts(0, 10, 2, stride=0)


@pytest.mark.parametrize("n_frames", [235, 400, 1200, 5001])
def test_split_blocks_are_ordered_with_seq_len_gaps(n_frames):
    seq_len = 20
    blocks = split_blocks(n_frames, seq_len=seq_len, fractions=(0.7, 0.1, 0.2))
    assert [b.name for b in blocks] == ["train", "validation", "test"]
    assert blocks[0].start == 0 and blocks[-1].stop == n_frames
    for a, b in itertools.pairwise(blocks):
        assert b.start - a.stop == seq_len  # gap: no window can straddle two blocks
    assert all(b.n_frames >= seq_len for b in blocks)
    usable = n_frames - 2 * seq_len
    assert abs(blocks[0].n_frames - 0.7 * usable) <= 1
    assert abs(blocks[1].n_frames - 0.1 * usable) <= 1
    # every window of every block lies inside it
    for b in blocks:
        s = window_starts(b.start, b.stop, seq_len)
        assert s.min() >= b.start and s.max() + seq_len <= b.stop


def test_too_few_frames_says_the_minimum():
    need = min_frames_for_split(20, (0.7, 0.1, 0.2))
    split_blocks(need, seq_len=20)  # exactly enough works
    with pytest.raises(DataError, match=rf"need at least {need} frames") as e:
        split_blocks(need - 1, seq_len=20)
    assert f"{need - 1} frames are too few" in str(e.value)
    with pytest.raises(DataError, match="need at least"):
        split_blocks(30, seq_len=20)
    # fewer frames than seq_len x splits + gaps is always too few
    assert need >= 20 * 3 + 2 * 20


def test_bad_fractions_raise_config_error():
    with pytest.raises(ConfigError, match=r"\(0\.5, 0\.5\)"):
        split_blocks(1000, seq_len=10, fractions=(0.5, 0.5))
    with pytest.raises(ConfigError, match="sum to 1"):
        split_blocks(1000, seq_len=10, fractions=(0.5, 0.3, 0.3))


def _naive_stitch(starts, preds, n_frames):
    out = np.full((n_frames, preds.shape[-1]), np.nan)
    for t in range(n_frames):
        vals = [preds[w, t - s] for w, s in enumerate(starts) if s <= t < s + preds.shape[1]]
        if vals:
            out[t] = np.mean(vals, axis=0)
    return out


def test_stitch_averages_overlapping_windows_like_a_naive_loop():
    rng = np.random.default_rng(2)
    starts = np.sort(rng.choice(70, size=25, replace=False))
    preds = rng.standard_normal((25, 12, 3))
    got = stitch(starts, preds, 100)
    want = _naive_stitch(starts, preds, 100)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert got.dtype == np.float32
    # frames no window reached are NaN
    assert np.isnan(got[starts.max() + 12 :]).all()
    # adding in several batches gives the same as at once
    st = Stitcher(100, 3)
    st.add(starts[:10], preds[:10])
    st.add(starts[10:], preds[10:])
    np.testing.assert_array_equal(st.result(), got)
    assert st.counts.max() > 1
    with pytest.raises(DataError, match=r"Stitcher\.add"):
        st.add(starts[:2], preds[:3])


def test_iter_batches_is_deterministic_and_covers_all_windows():
    starts = np.arange(0, 103)
    a = list(iter_batches(starts, 10, rng=np.random.default_rng(5)))
    b = list(iter_batches(starts, 10, rng=np.random.default_rng(5)))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert sorted(np.concatenate(a).tolist()) == starts.tolist()
    assert [len(x) for x in a][-1] == 3
    assert not np.array_equal(np.concatenate(a), starts)  # shuffled
    capped = list(iter_batches(starts, 10, rng=np.random.default_rng(5), max_windows=25))
    assert sum(len(x) for x in capped) == 25
    ordered = np.concatenate(list(iter_batches(starts, 7)))
    np.testing.assert_array_equal(ordered, starts)


def test_block_tuple():
    assert Block("test", 3, 9).as_tuple() == ("test", 3, 9)
    assert Block("test", 3, 9).n_frames == 6
