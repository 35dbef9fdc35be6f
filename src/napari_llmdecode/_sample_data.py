"""Sample data: a synthetic session with planted driver ROIs, and its decoding results.

Files are generated on first use into a cache directory (``$NAPARI_LLMDECODE_CACHE``, by
default ``<tempdir>/napari-llmdecode-samples``) in about a second and reused afterwards.

The results sample is the *planted readout* of the session: the exact function of the
driver ROIs that generated the behaviour, used as an oracle decoder, with its
gradient x input attribution on the test block as salience. It shows what the viewer
draws for a perfect decoder without training one; fit a real decoder with the *Fit
decoder* widget.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "cache_dir",
    "planted_results",
    "sample_results",
    "sample_session",
    "write_sample_files",
]

#: Size of the sample session: small enough to generate in about a second.
SAMPLE_KWARGS: dict[str, Any] = dict(frames=600, rois=240, planes=3, seed=7, n_drivers=8)
_VERSION = 1


def cache_dir() -> Path:
    """Where sample files are generated."""
    base = os.environ.get("NAPARI_LLMDECODE_CACHE")
    root = Path(base) if base else Path(tempfile.gettempdir()) / "napari-llmdecode-samples"
    return root / f"v{_VERSION}"


def planted_results(truth: Any, *, splits: tuple[float, float] = (0.7, 0.8)) -> Any:
    """Decoding results of the planted readout of a synthetic session (an oracle decoder).

    Parameters
    ----------
    truth
        :class:`nwb_llmdecode.synthetic.SyntheticTruth` of the session.
    splits
        Fractions of the session where validation and test start (contiguous blocks).

    Returns
    -------
    nwb_llmdecode.io.write.DecodingResults
        Predictions of the planted readout, splits, metrics, and salience: gradient x input
        of the readout per driver ROI (mean |attribution| over the test block), per output
        channel and per frame; zero for every other ROI.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from nwb_llmdecode.synthetic import make_session
    >>> truth = make_session(pathlib.Path(tempfile.mkdtemp()) / "s.nwb", frames=60, rois=10,
    ...                      planes=1, n_drivers=2)
    >>> res = planted_results(truth)
    >>> int((res.salience["salience"].values > 0).sum())
    2
    """
    import xarray as xr

    from nwb_llmdecode import __version__
    from nwb_llmdecode.io.read import read_session
    from nwb_llmdecode.io.sources import open_nwb
    from nwb_llmdecode.io.write import DecodingResults

    t0 = time.perf_counter()
    with open_nwb(truth.path) as src:
        ds = read_session(src, rois=list(truth.roi_series_paths), behavior=truth.behavior_path)
    x = np.asarray(ds["activity"].values, dtype=np.float64)
    y = np.asarray(ds["behavior"].values, dtype=np.float64)
    n_t, n_rois = x.shape
    drivers = np.asarray(truth.driver_rois, dtype=np.int64)
    weights = np.asarray(truth.weights, dtype=np.float64)  # (channels, drivers)
    lags = np.asarray(truth.lags, dtype=np.int64)

    z = (x[:, drivers] - x[:, drivers].mean(axis=0)) / x[:, drivers].std(axis=0).clip(1e-6)
    s = np.empty_like(z)
    for j, lag in enumerate(lags):
        s[:, j] = np.concatenate([np.full(lag, z[0, j]), z[: n_t - lag, j]]) if lag else z[:, j]
    u = s @ weights.T  # (time, channels)
    pred = 0.6 * np.tanh(1.2 * u)

    v0, t1 = int(splits[0] * n_t), int(splits[1] * n_t)
    blocks = [("train", 0, v0), ("validation", v0, t1), ("test", t1, n_t)]
    # gradient x input of pred_c with respect to each driver's (lagged) input
    grad = 0.72 * (1.0 - np.tanh(1.2 * u) ** 2)  # (time, channels)
    attr = np.abs(grad[:, :, None] * weights[None, :, :] * s[:, None, :])  # (time, ch, drv)
    test = slice(t1, n_t)
    by_output = np.zeros((n_rois, y.shape[1]))
    by_output[drivers] = attr[test].mean(axis=0).T
    course = np.full((n_t, n_rois), np.nan, dtype=np.float32)
    course[test] = 0.0
    per_frame = attr.mean(axis=1)  # (time, drivers)
    for j, (roi, lag) in enumerate(zip(drivers, lags, strict=True)):
        frames = np.arange(t1, n_t) - lag  # the input frame that drove output frame t
        course[frames, roi] = per_frame[t1:n_t, j]
    salience = xr.Dataset(
        {
            "salience": ("roi", by_output.mean(axis=1)),
            "salience_by_output": (("roi", "channel"), by_output),
            "timecourse": (("time", "roi"), course),
        },
        attrs={"method": "grad-x-input"},
    )

    metrics = []
    for c in range(y.shape[1]):
        for name, a, b in blocks:
            yt, yp = y[a:b, c], pred[a:b, c]
            ok = np.isfinite(yt) & np.isfinite(yp)
            yt, yp = yt[ok], yp[ok]
            rmse = float(np.sqrt(np.mean((yt - yp) ** 2)))
            var = float(np.var(yt))
            r2 = float(1.0 - np.mean((yt - yp) ** 2) / var) if var > 0 else float("nan")
            r = float(np.corrcoef(yt, yp)[0, 1]) if len(yt) > 1 else float("nan")
            metrics.append(
                {
                    "channel": c,
                    "split": name,
                    "rmse": rmse,
                    "r2": r2,
                    "pearson": r,
                    "n_frames": int(ok.sum()),
                }
            )
    config = {
        "sample": "planted readout of nwb_llmdecode.synthetic.make_session (oracle decoder)",
        "driver_rois": drivers.tolist(),
        "lags": lags.tolist(),
    }
    return DecodingResults(
        session=ds,
        predictions=pred.astype(np.float32),
        splits=blocks,
        metrics=metrics,
        run={
            "backbone": "planted-readout",
            "init": "none",
            "train_mode": "none",
            "seq_len": 1,
            "epochs": 0,
            "seed": 0,
            "salience_method": "grad-x-input",
            "package_version": __version__,
            "device": "cpu",
            "duration_s": time.perf_counter() - t0,
            "config_json": json.dumps(config),
        },
        salience=salience,
    )


def write_sample_files(directory: Path | None = None) -> tuple[Path, Path]:
    """Generate (or reuse) the sample session and its results file; return both paths."""
    from nwb_llmdecode.io.sources import open_nwb
    from nwb_llmdecode.io.write import write_derived
    from nwb_llmdecode.synthetic import make_session

    d = directory or cache_dir()
    d.mkdir(parents=True, exist_ok=True)
    session = d / "synthetic_session.nwb"
    results = d / "synthetic_session_desc-llmdecode.nwb"
    if session.exists() and results.exists():
        return session, results
    truth = make_session(session, overwrite=True, **SAMPLE_KWARGS)
    res = planted_results(truth)
    with open_nwb(session) as src:
        write_derived(src, res, results, overwrite=True)
    return session, results


def sample_session() -> list[Any]:
    """Sample: a synthetic 3-plane session with planted driver ROIs."""
    from ._layers import read_source, session_layers
    from ._viewer import show_on_insert

    session, _ = write_sample_files()
    layers = session_layers(read_source(session))
    show_on_insert(layers)
    return layers


def sample_results() -> list[Any]:
    """Sample: the synthetic session's results file (planted readout and its salience)."""
    from ._layers import read_source, session_layers
    from ._viewer import show_on_insert

    _, results = write_sample_files()
    layers = session_layers(read_source(results))
    show_on_insert(layers)
    return layers
