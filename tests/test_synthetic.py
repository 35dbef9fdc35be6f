"""Synthetic sessions plant what they say (the ground truth the other tests rely on)."""

from __future__ import annotations

import numpy as np
import pytest

from nwb_llmdecode import load_session
from nwb_llmdecode.config import FitConfig
from nwb_llmdecode.engine import fit_arrays
from nwb_llmdecode.errors import ConfigError
from nwb_llmdecode.synthetic import make_session

KW = dict(frames=400, rois=40, planes=2, n_drivers=4, seed=7)


def _activity(truth):
    return load_session(truth.path)["activity"].values


def test_recordings_of_one_animal_share_rois_and_drivers(tmp_path):
    a = make_session(tmp_path / "a.nwb", **KW)
    b = make_session(tmp_path / "b.nwb", recording=1, **KW)
    assert a.driver_rois.tolist() == b.driver_rois.tolist()
    np.testing.assert_array_equal(a.weights, b.weights)
    da, db = load_session(a.path), load_session(b.path)
    np.testing.assert_array_equal(da["x"].values, db["x"].values)
    assert not np.allclose(da["activity"].values, db["activity"].values)


def test_decoys_share_a_drivers_slow_activity(tmp_path):
    t = make_session(tmp_path / "d.nwb", decoys=6, **KW)
    assert len(t.decoy_rois) == 6 and not set(t.decoy_rois) & set(t.driver_rois)
    x = _activity(t)
    c = np.corrcoef(x.T)
    others = np.setdiff1d(np.arange(40), np.r_[t.decoy_rois, t.driver_rois])
    best_decoy = np.abs(c[np.ix_(t.decoy_rois, t.driver_rois)]).max(axis=1)
    best_other = np.abs(c[np.ix_(others, t.driver_rois)]).max(axis=1)
    assert np.median(best_decoy) > np.median(best_other) + 0.15


def test_noise_models(tmp_path):
    base = _activity(make_session(tmp_path / "i.nwb", **KW))
    corr = _activity(make_session(tmp_path / "c.nwb", noise="correlated", **KW))
    het = _activity(make_session(tmp_path / "h.nwb", noise="heteroscedastic", **KW))

    def mean_corr(x):
        c = np.corrcoef(x.T)
        return c[np.triu_indices_from(c, 1)].mean()

    assert mean_corr(corr) > mean_corr(base) + 0.1
    resid = het - base  # the added noise grows with the signal level
    high = base > np.median(base, axis=0)
    assert resid[high].std() > 1.5 * resid[~high].std()


def test_spread_drivers_cover_every_plane(tmp_path):
    t = make_session(tmp_path / "s.nwb", spread_drivers=True, **{**KW, "planes": 4})
    planes = load_session(t.path)["plane"].values[t.driver_rois]
    assert len(set(planes)) == 4


def test_the_interaction_readout_is_beyond_a_linear_decoder(tmp_path):
    """Same activity, two readouts: lagged ridge (lags and penalty chosen on validation)
    nearly solves the linear one and loses most of the interaction one."""
    r2 = {}
    for readout in ("linear", "interaction"):
        t = make_session(tmp_path / f"{readout}.nwb", readout=readout, **{**KW, "frames": 800})
        ds = load_session(t.path)
        cfg = FitConfig(backbone="ridge")
        res = fit_arrays(ds["activity"].values, ds["behavior"].values, config=cfg)
        r2[readout] = float(res.metric("r2", "test").mean())
    assert r2["linear"] > 0.7, r2
    assert r2["interaction"] < r2["linear"] - 0.3, r2


def test_bad_options_are_refused(tmp_path):
    for kw, needle in (
        ({"readout": "cubic"}, "readout"),
        ({"noise": "pink"}, "noise"),
        ({"decoys": 39}, "decoys"),
        ({"population": -1.0}, "population"),
    ):
        with pytest.raises(ConfigError, match=needle):
            make_session(tmp_path / "x.nwb", **{**KW, **kw})
