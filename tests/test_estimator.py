"""The Python door: ``Decoder`` (xarray in, xarray out, scikit-learn's contract) and
``read_results`` (the inverse of the writer), issue 12."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from nwb_llmdecode import Decoder, FitConfig, load_session, read_results
from nwb_llmdecode.errors import ConfigError, DataError, NotFittedError
from nwb_llmdecode.synthetic import make_session

FAST = {"backbone": "lstm", "lstm": {"hidden": 32}, "epochs": 8, "seq_len": 10, "lr": 3e-3}


@pytest.fixture(scope="module")
def sessions(tmp_path_factory):
    """Two recordings of one synthetic animal (same ROIs and drivers), two planes."""
    d = tmp_path_factory.mktemp("estimator")
    kw = dict(frames=420, rois=16, planes=2, n_drivers=3, seed=5)
    a = make_session(d / "sub-fish_ses-1_ophys.nwb", **kw)
    b = make_session(d / "sub-fish_ses-2_ophys.nwb", recording=1, **kw)
    return a, b


@pytest.fixture(scope="module")
def fitted(sessions):
    a, _ = sessions
    ds = load_session(a.path)
    return ds, Decoder(**FAST).fit(ds)


def test_unfitted_decoder_says_fit_first(sessions):
    dec = Decoder(backbone="ridge")
    for call in (
        lambda: dec.predict(load_session(sessions[0].path)),
        lambda: dec.score(),
        lambda: dec.explain(),
        lambda: dec.save("x"),
        lambda: dec.history_,
    ):
        with pytest.raises(NotFittedError, match="call fit"):
            call()
    assert not dec.__sklearn_is_fitted__()
    assert isinstance(NotFittedError("x"), ValueError | AttributeError)  # sklearn's contract


def test_params_follow_scikit_learn(fitted):
    _, dec = fitted
    assert dec.__sklearn_is_fitted__()
    params = dec.get_params()
    assert params["backbone"] == "lstm" and params["seq_len"] == 10
    twin = type(dec)(**params)  # what sklearn.base.clone does: same options, unfitted
    assert twin.get_params() == params and not twin.__sklearn_is_fitted__()
    assert twin.set_params(seq_len=5) is twin and twin.config.seq_len == 5
    with pytest.raises(ConfigError, match="seq_len"):
        twin.set_params(seq_len=0)
    assert Decoder(FitConfig(epochs=3), seed=2).config == FitConfig(epochs=3, seed=2)
    assert repr(Decoder(seq_len=5)) == "Decoder(seq_len=5)"


def test_predict_keeps_coordinates_and_gaps(fitted):
    ds, dec = fitted
    pred = dec.predict(ds)
    assert isinstance(pred, xr.DataArray) and pred.dims == ("time", "channel")
    np.testing.assert_array_equal(pred["time"].values, ds["time"].values)
    assert pred["series"].values.tolist() == ds["series"].values.tolist()
    assert pred.attrs["units"] == "radians"
    splits = dec.splits_
    assert splits["split"].values.tolist() == ["train", "validation", "test"]
    gap = slice(
        int(splits["stop"].sel(split="train")), int(splits["start"].sel(split="validation"))
    )
    assert np.isnan(pred.values[gap]).all()  # no window reaches the gaps
    test = slice(int(splits["start"].sel(split="test")), int(splits["stop"].sel(split="test")))
    assert np.isfinite(pred.values[test]).all()
    assert len(dec.history_) >= 1 and dec.normalization_.activity_mean.shape == (16,)


def test_score_and_predict_on_another_recording(fitted, sessions):
    _, dec = fitted
    score = dec.score()
    assert set(score.data_vars) == {"rmse", "r2", "pearson", "n_frames"}
    assert score["r2"].dims == ("split", "channel")
    assert float(score["r2"].sel(split="test").mean()) > 0.3
    other = load_session(sessions[1].path)
    pred = dec.predict(other)
    assert np.isfinite(pred.values).all()  # a new session is one block: every frame
    new = dec.score(other)
    assert new["split"].values.tolist() == ["all"]
    # same animal, same drivers: the decoder transfers
    assert float(new["r2"].mean()) > 0.2, new["r2"].values
    with pytest.raises(DataError, match="ROIs"):
        dec.predict(other.isel(roi=slice(0, 10)))


def test_explain_gives_salience_on_the_rois(fitted, sessions):
    ds, dec = fitted
    sal = dec.explain(method="grad-x-input")
    assert set(sal.data_vars) == {"salience", "salience_by_output", "salience_timecourse", "rank"}
    for coord in ("plane", "roi_id", "x", "y", "z"):
        np.testing.assert_array_equal(sal[coord].values, ds[coord].values)
    assert sal.attrs["method"] == "grad-x-input"
    top = sal["roi"].values[sal["rank"].values <= 3]
    assert len(set(top) & set(sessions[0].driver_rois.tolist())) >= 2
    with pytest.raises(ConfigError, match="no gradients"):
        Decoder(backbone="ridge", seq_len=10).fit(ds).explain()


def test_explain_attributes_every_fourth_window_by_default(fitted):
    """``salience_stride=None`` attributes every ``seq_len // 4``-th window; 1 is every
    window. Both cover every frame of the test block, and the strided ranking keeps most of
    the full ranking's top 3 (the values differ: fewer windows are averaged)."""
    _, dec = fitted
    strided = dec.explain(method="grad-x-input")
    full = dec.explain(method="grad-x-input", stride=1)
    assert strided.attrs["stride"] == max(1, dec.config.seq_len // 4) > 1
    assert dec.config.salience_window_stride == strided.attrs["stride"]
    assert "stride" not in full.attrs
    frames = [np.isfinite(s["salience_timecourse"].values).all(axis=1) for s in (strided, full)]
    np.testing.assert_array_equal(frames[0], frames[1])  # the same frames: the whole block
    test = dec.splits_.sel(split="test")
    assert frames[0].sum() == int(test["stop"] - test["start"])
    assert not np.allclose(strided["salience"].values, full["salience"].values)
    top = lambda s: set(np.argsort(-s["salience"].values)[:3].tolist())  # noqa: E731
    assert len(top(strided) & top(full)) >= 2
    with pytest.raises(ConfigError, match="salience_stride"):
        FitConfig(salience_stride=0)


def test_notebook_flow_round_trips_through_nwb(fitted, tmp_path):
    """load -> fit -> explain -> ablate -> to_nwb -> read_results gives back what the
    Decoder returned, on every object of the results module."""
    ds, dec = fitted
    sal = dec.explain(method="grad-x-input")
    abl = dec.ablate(k=(2, 4), draws=3, salience=sal)
    assert abl["kind"].values.tolist().count("salient") == 2
    out = dec.to_nwb(ds, tmp_path / "r.nwb", salience=sal, ablation=abl)
    res = read_results(out)
    np.testing.assert_array_equal(res["predictions"].values, dec.predict(ds).values)
    np.testing.assert_array_equal(res["targets"].values, ds["behavior"].values)
    np.testing.assert_array_equal(res["activity"].values, ds["activity"].values)
    score = dec.score()
    for m in ("rmse", "r2", "pearson", "n_frames"):
        np.testing.assert_allclose(res[m].sel(split=score["split"]).values, score[m].values)
    for v in ("salience", "salience_by_output", "salience_timecourse", "rank"):
        np.testing.assert_allclose(res[v].values, sal[v].values, rtol=1e-6)
    np.testing.assert_array_equal(res["roi_id"].values, ds["roi_id"].values)
    np.testing.assert_allclose(res["ablation_delta_rmse"].values, abl["delta_rmse"].values)
    assert res["ablation_kind"].values.tolist() == abl["kind"].values.tolist()
    splits = dec.splits_
    np.testing.assert_array_equal(res["split_start"].values, splits["start"].values)
    np.testing.assert_array_equal(res["split_stop"].values, splits["stop"].values)
    np.testing.assert_allclose(res["split_start_time"].values, splits["start_time"].values)
    assert res.attrs["config"] == dec.config.to_dict()
    assert res.attrs["run"]["backbone"] == "lstm"
    assert res.attrs["salience"]["method"] == "grad-x-input"


def test_save_and_load(fitted, sessions, tmp_path):
    _, dec = fitted
    dec.save(tmp_path / "ckpt")
    back = Decoder.load(tmp_path / "ckpt")
    assert back.config == dec.config and back.session_ is None
    other = load_session(sessions[1].path)
    np.testing.assert_allclose(back.predict(other).values, dec.predict(other).values, atol=1e-5)
    with pytest.raises(NotFittedError, match="fitted session"):
        back.score()
