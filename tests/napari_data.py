"""Real NWB files for the napari plugin tests: a synthetic session with planted drivers
and results files written by the real writer (``write_derived``).

The salience of the first results file is the planted readout's attribution (nonzero
exactly on the driver ROIs); the second uses another method (|correlation| of each ROI
with each behaviour channel on the test block) so that switching methods is testable.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr

from napari_llmdecode._sample_data import planted_results
from nwb_llmdecode.io.sources import open_nwb
from nwb_llmdecode.io.write import DecodingResults, write_derived
from nwb_llmdecode.synthetic import SyntheticTruth, make_session


@dataclass
class PlantedFiles:
    truth: SyntheticTruth
    session: Path
    results: Path
    results_corr: Path
    planted: DecodingResults
    corr: DecodingResults


def correlation_results(res: DecodingResults) -> DecodingResults:
    """The same decoding with |corr(ROI, channel)| on the test block as salience."""
    ds = res.session
    x = np.asarray(ds["activity"].values, dtype=np.float64)
    y = np.asarray(ds["behavior"].values, dtype=np.float64)
    start = next(a for name, a, _ in res.splits if name == "test")
    xt, yt = x[start:], y[start:]
    xt = (xt - xt.mean(0)) / xt.std(0).clip(1e-9)
    yt = (yt - yt.mean(0)) / yt.std(0).clip(1e-9)
    by_output = np.abs(xt.T @ yt) / len(xt)  # (roi, channel)
    course = np.full(x.shape, np.nan, dtype=np.float32)
    course[start:] = np.abs(xt * yt.mean(1, keepdims=True))
    sal = xr.Dataset(
        {
            "salience": ("roi", by_output.mean(1)),
            "salience_by_output": (("roi", "channel"), by_output),
            "timecourse": (("time", "roi"), course),
        },
        attrs={"method": "abs-correlation"},
    )
    return dataclasses.replace(
        res, salience=sal, run={**res.run, "salience_method": "abs-correlation"}
    )


def make_planted_files(directory: Path, **kwargs) -> PlantedFiles:
    opts = dict(frames=200, rois=60, planes=2, seed=11, n_drivers=5)
    opts.update(kwargs)
    directory.mkdir(parents=True, exist_ok=True)
    truth = make_session(directory / "planted.nwb", **opts)
    planted = planted_results(truth)
    corr = correlation_results(planted)
    with open_nwb(truth.path) as src:
        results = write_derived(src, planted, directory / "planted_desc-llmdecode.nwb")
        results_corr = write_derived(src, corr, directory / "planted_desc-corr.nwb")
    return PlantedFiles(truth, truth.path, results, results_corr, planted, corr)
