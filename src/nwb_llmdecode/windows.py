"""Sliding windows over a (frames x ROIs) array, time-ordered splits, and stitching.

Windows are never materialised as a (windows x seq_len x ROIs) copy. A window is named by
its first frame; a batch of windows is gathered from the (frames x ROIs) array with one
fancy-indexing operation on a (batch x seq_len) index array, so only the batch is copied.
:func:`window_view` gives the same windows as a zero-copy strided view for code that
wants to look at them as an array.

The frames are split into contiguous, time-ordered blocks (train, validation, test) with a
gap of ``seq_len`` frames between consecutive blocks, so that no window straddles two
blocks and no training window sees a frame next to a test frame. Predictions of
overlapping windows are put back on frames by averaging (:class:`Stitcher`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from .errors import ConfigError, DataError

__all__ = [
    "SPLIT_NAMES",
    "Block",
    "Stitcher",
    "gather_windows",
    "iter_batches",
    "min_frames_for_split",
    "split_blocks",
    "stitch",
    "window_indices",
    "window_starts",
    "window_view",
]

#: Names of the three blocks, in time order.
SPLIT_NAMES: tuple[str, str, str] = ("train", "validation", "test")

_A = TypeVar("_A")


@dataclass(frozen=True)
class Block:
    """A contiguous block of frames ``[start, stop)`` used as one split.

    Attributes
    ----------
    name
        ``"train"``, ``"validation"`` or ``"test"``.
    start, stop
        First frame and one past the last frame.
    """

    name: str
    start: int
    stop: int

    @property
    def n_frames(self) -> int:
        """Number of frames in the block."""
        return self.stop - self.start

    def as_tuple(self) -> tuple[str, int, int]:
        """``(name, start, stop)``, the form stored in results."""
        return (self.name, self.start, self.stop)


def _check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    if len(fractions) != 3:
        raise ConfigError(
            f"split must have 3 fractions (train, validation, test), got {tuple(fractions)!r}"
        )
    fr = tuple(float(f) for f in fractions)
    if any(not math.isfinite(f) or f <= 0 for f in fr) or abs(sum(fr) - 1.0) > 1e-6:
        raise ConfigError(
            f"split fractions must be > 0 and sum to 1 (train, validation, test), "
            f"got {tuple(fractions)!r}"
        )
    return fr  # type: ignore[return-value]


def _block_sizes(n_frames: int, seq_len: int, fractions: Sequence[float]) -> list[int]:
    fr = _check_fractions(fractions)
    usable = n_frames - seq_len * (len(fr) - 1)
    if usable <= 0:
        return [0, 0, 0]
    sizes = [math.floor(f * usable + 0.5) for f in fr[:-1]]
    sizes.append(usable - sum(sizes))
    return sizes


def min_frames_for_split(seq_len: int, fractions: Sequence[float] = (0.7, 0.1, 0.2)) -> int:
    """Fewest frames for which every block of :func:`split_blocks` holds one window.

    Parameters
    ----------
    seq_len
        Window length in frames (also the gap between blocks).
    fractions
        Fractions of the usable frames given to train, validation and test.

    Returns
    -------
    int
        The minimum number of frames.

    Examples
    --------
    >>> min_frames_for_split(20, (0.7, 0.1, 0.2))
    235
    """
    if seq_len < 1:
        raise ConfigError(f"seq_len must be >= 1, got {seq_len!r}")
    fr = _check_fractions(fractions)
    n = seq_len * (len(fr) + len(fr) - 1)
    while min(_block_sizes(n, seq_len, fr)) < seq_len:
        n += 1
    # sizes are monotone in n up to rounding; step back while the smaller n still works
    while n > 1 and min(_block_sizes(n - 1, seq_len, fr)) >= seq_len:
        n -= 1
    return n


def split_blocks(
    n_frames: int, *, seq_len: int, fractions: Sequence[float] = (0.7, 0.1, 0.2)
) -> list[Block]:
    """Split frames into contiguous train / validation / test blocks separated by gaps.

    The ``seq_len`` frames between two blocks belong to no block: a window lies entirely
    inside one block, and the last training frame is ``seq_len`` frames away from the
    first validation frame.

    Parameters
    ----------
    n_frames
        Number of imaging frames.
    seq_len
        Window length, also the length of each gap.
    fractions
        Fractions (train, validation, test) of the frames that are not gaps.

    Returns
    -------
    list of Block
        Three blocks in time order.

    Raises
    ------
    DataError
        If a block would hold fewer than ``seq_len`` frames; the message gives the minimum.

    Examples
    --------
    >>> [b.as_tuple() for b in split_blocks(1200, seq_len=20)]
    [('train', 0, 812), ('validation', 832, 948), ('test', 968, 1200)]
    """
    sizes = _block_sizes(n_frames, seq_len, fractions)
    if min(sizes) < seq_len:
        need = min_frames_for_split(seq_len, fractions)
        raise DataError(
            f"{n_frames} frames are too few for a train/validation/test split of "
            f"{tuple(fractions)} with windows of seq_len={seq_len} and gaps of {seq_len} "
            f"frames between blocks: need at least {need} frames (use a shorter --seq-len "
            f"or a longer recording)"
        )
    blocks = []
    start = 0
    for name, size in zip(SPLIT_NAMES, sizes, strict=True):
        blocks.append(Block(name, start, start + size))
        start += size + seq_len
    return blocks


def window_starts(start: int, stop: int, seq_len: int, stride: int = 1) -> np.ndarray:
    """First frames of the windows that lie inside ``[start, stop)``.

    The last window always ends at ``stop`` (it is added if ``stride`` skips it), so every
    frame of the block is covered.

    Examples
    --------
    >>> window_starts(0, 10, 4, stride=3)
    array([0, 3, 6])
    >>> window_starts(0, 10, 4, stride=4)
    array([0, 4, 6])
    """
    if seq_len < 1 or stride < 1:
        raise ConfigError(f"seq_len and stride must be >= 1, got {seq_len!r} and {stride!r}")
    last = stop - seq_len
    if last < start:
        return np.empty(0, dtype=np.int64)
    starts = np.arange(start, last + 1, stride, dtype=np.int64)
    if starts[-1] != last:
        starts = np.append(starts, last)
    return starts


def window_indices(starts: np.ndarray, seq_len: int) -> np.ndarray:
    """Frame index array of shape (len(starts), seq_len) for a batch of windows."""
    return np.asarray(starts, dtype=np.int64)[:, None] + np.arange(seq_len, dtype=np.int64)


def gather_windows(data: _A, starts: np.ndarray, seq_len: int) -> _A:
    """Copy one batch of windows out of a (frames x features) array or tensor.

    Parameters
    ----------
    data
        numpy array or torch tensor of shape (frames, features).
    starts
        First frame of each window in the batch.
    seq_len
        Window length.

    Returns
    -------
    array or tensor
        Shape (len(starts), seq_len, features); only this batch is copied.

    Examples
    --------
    >>> x = np.arange(12.0).reshape(6, 2)
    >>> gather_windows(x, np.array([0, 3]), 2)[:, :, 0]
    array([[0., 2.],
           [6., 8.]])
    """
    idx = window_indices(starts, seq_len)
    if isinstance(data, np.ndarray):
        return data[idx]  # type: ignore[return-value]
    import torch

    if isinstance(data, torch.Tensor):
        return data[torch.as_tensor(idx, device=data.device)]  # type: ignore[return-value]
    raise TypeError(f"gather_windows: expected a numpy array or torch tensor, got {type(data)}")


def window_view(data: np.ndarray, seq_len: int) -> np.ndarray:
    """All windows of a (frames x features) array as a read-only zero-copy view.

    Returns shape (frames - seq_len + 1, seq_len, features); ``view[i]`` is
    ``data[i:i + seq_len]``. No memory is allocated for the windows.

    Examples
    --------
    >>> x = np.zeros((100, 5), dtype=np.float32)
    >>> v = window_view(x, 20)
    >>> v.shape, np.shares_memory(v, x)
    ((81, 20, 5), True)
    """
    if data.ndim != 2:
        raise DataError(f"window_view: expected a (frames, features) array, got {data.shape}")
    v = np.lib.stride_tricks.sliding_window_view(data, seq_len, axis=0)  # (W, F, L)
    return v.transpose(0, 2, 1)


def iter_batches(
    starts: np.ndarray,
    batch_size: int,
    *,
    rng: np.random.Generator | None = None,
    max_windows: int | None = None,
) -> Iterator[np.ndarray]:
    """Yield batches of window starts, shuffled by ``rng`` when given.

    Parameters
    ----------
    starts
        Window starts (from :func:`window_starts`).
    batch_size
        Windows per batch (the last batch may be smaller).
    rng
        Shuffle with this generator (deterministic for a given seed); keep order if None.
    max_windows
        Use at most this many windows (a random subset when shuffling).
    """
    order = rng.permutation(len(starts)) if rng is not None else np.arange(len(starts))
    if max_windows is not None:
        order = order[:max_windows]
    for i in range(0, len(order), batch_size):
        yield starts[order[i : i + batch_size]]


class Stitcher:
    """Average overlapping seq-to-seq window predictions onto frames.

    Parameters
    ----------
    n_frames
        Number of frames of the output.
    n_channels
        Number of output channels.

    Examples
    --------
    >>> s = Stitcher(5, 1)
    >>> s.add(np.array([0, 2]), np.array([[[1.0], [1.0], [1.0]], [[3.0], [3.0], [3.0]]]))
    >>> s.result()[:, 0]
    array([1., 1., 2., 3., 3.], dtype=float32)
    """

    def __init__(self, n_frames: int, n_channels: int) -> None:
        self._sum = np.zeros((n_frames, n_channels), dtype=np.float64)
        self._count = np.zeros(n_frames, dtype=np.int64)

    def add(
        self,
        starts: np.ndarray,
        predictions: np.ndarray,
        *,
        warmup: int = 0,
        block_start: int | Sequence[int] | None = None,
    ) -> None:
        """Add predictions (batch, seq_len, channels) of the windows starting at ``starts``.

        With ``warmup > 0`` the first ``warmup`` positions of each window are left out
        (they lack history), except in windows that start at ``block_start`` (one start
        or one per block), the only ones that reach a block's first frames: every frame
        of a block is still covered, and each by positions with as much history as the
        block has.
        """
        predictions = np.asarray(predictions)
        if predictions.ndim != 3 or predictions.shape[0] != len(starts):
            raise DataError(
                f"Stitcher.add: predictions must be (len(starts)={len(starts)}, seq_len, "
                f"channels), got {predictions.shape}"
            )
        starts = np.asarray(starts)
        length = predictions.shape[1]
        idx = window_indices(starts, length)
        keep = np.ones(idx.shape, dtype=bool)
        if warmup > 0:
            keep[:, : min(warmup, length - 1)] = False
            if block_start is not None:
                keep[np.isin(starts, np.atleast_1d(block_start))] = True
        np.add.at(self._sum, idx[keep], predictions[keep])
        np.add.at(self._count, idx[keep], 1)

    def reduce(self, fn: Callable[[np.ndarray], np.ndarray]) -> None:
        """Replace the per-frame sums and counts by ``fn`` of them: with a sum over
        processes, processes that each stitched their share of the windows all end with
        the whole result (:mod:`nwb_llmdecode.engine.distributed`)."""
        self._sum = np.asarray(fn(self._sum), dtype=np.float64)
        self._count = np.asarray(fn(self._count), dtype=np.int64)

    @property
    def counts(self) -> np.ndarray:
        """How many windows reached each frame."""
        return self._count.copy()

    def result(self) -> np.ndarray:
        """Mean prediction per frame, float32, NaN where no window reached."""
        out = np.full(self._sum.shape, np.nan, dtype=np.float32)
        hit = self._count > 0
        out[hit] = (self._sum[hit] / self._count[hit, None]).astype(np.float32)
        return out


def stitch(starts: np.ndarray, predictions: np.ndarray, n_frames: int) -> np.ndarray:
    """Average window predictions (windows, seq_len, channels) onto ``n_frames`` frames.

    Frames no window reached are NaN. See :class:`Stitcher` to add batches one at a time.

    Examples
    --------
    >>> p = np.ones((2, 3, 1))
    >>> stitch(np.array([0, 1]), p, 5)[:, 0]
    array([ 1.,  1.,  1.,  1., nan], dtype=float32)
    """
    predictions = np.asarray(predictions)
    st = Stitcher(n_frames, predictions.shape[-1])
    st.add(np.asarray(starts), predictions)
    return st.result()
