"""Results -> NWB: write, validate, inspect, read back, compare (every writer round-trips)."""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings

import h5py
import numpy as np
import pytest
import xarray as xr
from pynwb import NWBHDF5IO, validate

from nwb_llmdecode import load_session
from nwb_llmdecode.errors import OutputExistsError
from nwb_llmdecode.io.read import AlignmentWarning, read_session, run_config
from nwb_llmdecode.io.sources import open_nwb
from nwb_llmdecode.io.write import (
    DecodingResults,
    default_output_path,
    write_derived,
    write_in_place,
)


def _results(ds: xr.Dataset, seed: int = 0) -> DecodingResults:
    rng = np.random.default_rng(seed)
    t, c = ds.sizes["time"], ds.sizes["channel"]
    n = ds.sizes["roi"]
    pred = ds["behavior"].values + rng.normal(0, 0.05, size=(t, c)).astype(np.float32)
    pred[:5] = np.nan  # frames no window reached
    sal = xr.Dataset(
        {
            "salience": ("roi", rng.random(n)),
            "salience_by_output": (("roi", "channel"), rng.random((n, c))),
            "timecourse": (("time", "roi"), rng.random((t, n)).astype(np.float32)),
        },
        attrs={"method": "integrated-gradients"},
    )
    third = t // 3
    return DecodingResults(
        session=ds,
        predictions=pred.astype(np.float32),
        splits=[
            ("train", 0, third),
            ("validation", third + 5, 2 * third),
            ("test", 2 * third + 5, t),
        ],
        metrics=[
            {"channel": ch, "split": s, "rmse": 0.1 + ch, "r2": 0.5, "pearson": 0.7, "n_frames": 10}
            for ch in range(c)
            for s in ("train", "validation", "test")
        ],
        run={
            "backbone": "minilm",
            "init": "pretrained",
            "train_mode": "frozen",
            "seq_len": 20,
            "epochs": 3,
            "seed": seed,
            "salience_method": "integrated-gradients",
            "package_version": "test",
            "device": "cpu",
            "duration_s": 1.5,
            "config_json": json.dumps({"backbone": "minilm"}),
        },
        salience=sal,
        ablation=[
            {"k": 10, "kind": "salient", "draw": 0, "rmse": 1.2, "delta_rmse": 0.3},
            {"k": 10, "kind": "random", "draw": 0, "rmse": 0.95, "delta_rmse": 0.05},
        ],
    )


def _check_module(path, res: DecodingResults, several_planes: bool) -> None:
    ds = res.session
    with NWBHDF5IO(str(path), "r") as io:
        f = io.read()
        mod = f.processing["llmdecode"]
        pred = mod["predictions"].time_series["tail_angles"]
        targ = mod["targets"].time_series["tail_angles"]
        assert pred.unit == targ.unit == "radians"
        np.testing.assert_array_equal(pred.data[:], res.predictions)
        np.testing.assert_array_equal(targ.data[:], ds["behavior"].values)
        np.testing.assert_allclose(pred.get_timestamps(), ds["time"].values, rtol=0, atol=1e-9)
        splits = mod["decoding_splits"].to_dataframe()
        assert splits["split_name"].tolist() == ["train", "validation", "test"]
        np.testing.assert_allclose(
            splits["start_time"].iloc[1], ds["time"].values[res.splits[1][1]]
        )
        metrics = mod["decoding_metrics"].to_dataframe()
        assert set(metrics.columns) >= {
            "behavior",
            "channel",
            "split",
            "rmse",
            "r2",
            "pearson",
            "n_frames",
        }
        assert len(metrics) == len(res.metrics)
        run = mod["decoding_run"].to_dataframe().iloc[0]
        assert run["backbone"] == "minilm"
        assert run_config(run["config_json"]) == {"backbone": "minilm"}
        ablation = mod["salience_ablation"].to_dataframe()
        assert ablation["kind"].tolist() == ["salient", "random"]

        # salience linked to the very ROIs of the PlaneSegmentation, ranks over all planes
        planes = sorted(set(ds["plane"].values))
        names = [f"roi_salience_{p}" if several_planes else "roi_salience" for p in planes]
        ranks = []
        for plane, name in zip(planes, names, strict=True):
            table = mod[name]
            sel = np.flatnonzero(ds["plane"].values == plane)
            region = table["roi"]
            assert region.table.name == plane
            np.testing.assert_array_equal(region.data[:], ds["roi_row"].values[sel])
            np.testing.assert_allclose(
                table["salience"].data[:], res.salience["salience"].values[sel]
            )
            np.testing.assert_allclose(
                table["salience_by_output"].data[:], res.salience["salience_by_output"].values[sel]
            )
            ranks.append(np.asarray(table["rank"].data[:]))
            course = mod[name.replace("roi_salience", "salience_timecourse")]
            assert course.unit == "a.u." and "not fluorescence" in course.description
            np.testing.assert_array_equal(course.data[:], res.salience["timecourse"].values[:, sel])
            assert course.rois.table.name == plane
        all_ranks = np.concatenate(ranks)
        assert sorted(all_ranks.tolist()) == list(range(1, ds.sizes["roi"] + 1))
        top = np.argmax(res.salience["salience"].values)
        assert all_ranks[top] == 1


def _no_new_violations(source, written) -> None:
    from nwbinspector import Importance, inspect_nwbfile

    def bad(path):
        return {
            (m.check_function_name, m.object_type)
            for m in inspect_nwbfile(nwbfile_path=str(path))
            if m.importance in (Importance.CRITICAL, Importance.BEST_PRACTICE_VIOLATION)
        }

    assert bad(written) <= bad(source), bad(written) - bad(source)


@pytest.mark.parametrize("fixture", ["multiplane_ts", "singleplane_rate", "voxel_session"])
def test_derived_file_round_trip(request, tmp_path, fixture):
    truth = request.getfixturevalue(fixture)
    src_copy = tmp_path / truth.path.name
    shutil.copy(truth.path, src_copy)
    before = hashlib.sha256(src_copy.read_bytes()).hexdigest()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AlignmentWarning)
        with open_nwb(src_copy) as src:
            ds = read_session(src)
            res = _results(ds)
            out = write_derived(src, res, default_output_path(src_copy))
    assert out.name == src_copy.stem + "_desc-llmdecode.nwb"
    assert hashlib.sha256(src_copy.read_bytes()).hexdigest() == before
    assert validate(path=str(out)) == []
    _check_module(out, res, several_planes=truth.n_planes > 1)
    _no_new_violations(src_copy, out)
    # stands on its own: the same session loads from it, metadata copied, no raw imaging
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AlignmentWarning)
        again = load_session(out)
    np.testing.assert_array_equal(again["activity"].values, ds["activity"].values)
    np.testing.assert_array_equal(again["behavior"].values, ds["behavior"].values)
    np.testing.assert_allclose(again["x"].values, ds["x"].values)
    with h5py.File(out, "r") as f, h5py.File(src_copy, "r") as g:
        assert "TwoPhotonSeries" not in f["acquisition"]
        assert f["identifier"][()] != g["identifier"][()]
        assert f["general/subject/species"][()] == g["general/subject/species"][()]
        assert f["session_description"][()] == g["session_description"][()]
    # a second run refuses to overwrite, unless asked
    with open_nwb(src_copy) as src:
        with pytest.raises(OutputExistsError, match="--overwrite"):
            write_derived(src, res, out)
        write_derived(src, res, out, overwrite=True)
    assert not list(tmp_path.glob(".*partial*"))


def test_predictions_open_in_pynapple(multiplane_ts, tmp_path):
    import pynapple as nap

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AlignmentWarning)
        with open_nwb(multiplane_ts.path) as src:
            ds = read_session(src)
            res = _results(ds)
            out = write_derived(src, res, tmp_path / "r.nwb")
    data = nap.load_file(str(out))
    key = next(k for k in data.keys() if "predictions" in k or k == "tail_angles")
    pred = data[key]
    assert isinstance(pred, nap.TsdFrame)
    assert pred.shape == res.predictions.shape


def test_in_place_appends_and_refuses_twice(singleplane_rate, tmp_path):
    path = tmp_path / "s.nwb"
    shutil.copy(singleplane_rate.path, path)
    ds = load_session(path)
    res = _results(ds)
    write_in_place(path, res)
    assert validate(path=str(path)) == []
    _check_module(path, res, several_planes=False)
    # original content still there
    np.testing.assert_array_equal(load_session(path)["activity"].values, ds["activity"].values)
    with pytest.raises(OutputExistsError, match="already has a processing/llmdecode"):
        write_in_place(path, res)
    res2 = _results(ds, seed=1)
    write_in_place(path, res2, overwrite=True)
    _check_module(path, res2, several_planes=False)
    assert not list(tmp_path.glob(".*partial*"))
