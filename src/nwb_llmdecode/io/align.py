"""Put behaviour onto imaging frames: average every sample inside a frame's interval.

This is the NLP4Neuro alignment: tail angles recorded at 200 Hz are averaged over each
~1 s imaging volume. Frame ``k`` covers ``[t_k, t_{k+1})``; the last frame covers one
median frame interval. Frames that receive no sample are NaN.
"""

from __future__ import annotations

import numpy as np

__all__ = ["frame_average", "frame_edges", "regular_timing", "sample_range"]


def frame_edges(frame_times: np.ndarray) -> np.ndarray:
    """Interval edges (n_frames + 1) of frames starting at ``frame_times``.

    Examples
    --------
    >>> frame_edges(np.array([0.0, 1.0, 2.0]))
    array([0., 1., 2., 3.])
    """
    t = np.asarray(frame_times, dtype=np.float64)
    if t.ndim != 1 or t.size == 0:
        raise ValueError("frame_times must be a non-empty 1-D array")
    if not np.isfinite(t).all() or (np.diff(t) <= 0).any():
        raise ValueError("frame_times must be finite and strictly increasing")
    step = float(np.median(np.diff(t))) if t.size > 1 else 1.0
    return np.append(t, t[-1] + step)


def sample_range(
    edges: np.ndarray, *, start: float, rate: float, n_samples: int
) -> tuple[int, int]:
    """Indices ``[i0, i1)`` of the regularly sampled points that fall inside ``edges``.

    Used to read only the needed part of a rate-based series.
    """
    i0 = int(np.clip(np.ceil((edges[0] - start) * rate - 1e-6), 0, n_samples))
    i1 = int(np.clip(np.ceil((edges[-1] - start) * rate - 1e-6), 0, n_samples))
    return i0, max(i0, i1)


def frame_average(
    sample_times: np.ndarray, samples: np.ndarray, edges: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Average ``samples`` over the frame intervals given by ``edges``.

    Parameters
    ----------
    sample_times
        (n_samples,) sample times in seconds, finite (any order: each sample is placed
        by its own time; :func:`~nwb_llmdecode.io.read.read_session` sorts unsorted
        behaviour timestamps with a warning before reading a time range).
    samples
        (n_samples,) or (n_samples, n_channels) values; NaN samples are ignored.
    edges
        (n_frames + 1,) interval edges, from :func:`frame_edges`.

    Returns
    -------
    mean
        (n_frames, n_channels) float64 averages, NaN where a frame got no valid sample.
    counts
        (n_frames, n_channels) number of valid samples averaged.

    Examples
    --------
    >>> t = np.array([0.1, 0.6, 1.2, 1.7, 3.5])
    >>> x = np.array([1.0, 3.0, 10.0, 20.0, 99.0])
    >>> mean, n = frame_average(t, x, np.array([0.0, 1.0, 2.0, 3.0]))
    >>> mean[:, 0]
    array([ 2., 15., nan])
    """
    t = np.asarray(sample_times, dtype=np.float64)
    x = np.asarray(samples, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    n_frames = len(edges) - 1
    # A sample within a millionth of a sample period of an edge counts as on it: times
    # computed from a rate carry rounding error that must not move samples across frames.
    tol = 1e-6 * abs(float(np.median(np.diff(t)))) if len(t) > 1 else 0.0
    frame = np.searchsorted(edges, t + tol, side="right") - 1
    inside = (frame >= 0) & (frame < n_frames)
    frame, x = frame[inside], x[inside]
    mean = np.full((n_frames, x.shape[1]), np.nan)
    counts = np.zeros((n_frames, x.shape[1]), dtype=np.int64)
    for c in range(x.shape[1]):
        valid = ~np.isnan(x[:, c])
        n = np.bincount(frame[valid], minlength=n_frames)
        s = np.bincount(frame[valid], weights=x[valid, c], minlength=n_frames)
        counts[:, c] = n
        np.divide(s, n, out=mean[:, c], where=n > 0)
    return mean, counts


def regular_timing(times: np.ndarray) -> dict[str, object]:
    """``rate``/``starting_time`` for regularly spaced times (NWB best practice), else
    ``timestamps``: keyword arguments for a pynwb TimeSeries.

    Examples
    --------
    >>> regular_timing(np.array([1.0, 1.5, 2.0, 2.5]))
    {'rate': 2.0, 'starting_time': 1.0}
    """
    t = np.asarray(times, dtype=np.float64)
    if len(t) > 2:
        steps = np.diff(t)
        step = float(np.median(steps))
        if step > 0 and np.all(np.abs(steps - step) <= 1e-6 * step + 1e-9):
            # 12 significant digits: 1 / 0.005000000000000001 is 200 Hz, not 199.99999999999997
            return {"rate": float(f"{1.0 / step:.12g}"), "starting_time": float(t[0])}
    return {"timestamps": t}
