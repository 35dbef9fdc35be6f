"""NWB -> xarray readers on generated sessions, checked against independent computations."""

from __future__ import annotations

import io
import shutil
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest

from nwb_llmdecode import inspect_source, load_session
from nwb_llmdecode.errors import AlignmentError, SelectionError
from nwb_llmdecode.io.read import AlignmentWarning, read_session, roi_label_volume
from nwb_llmdecode.io.sources import NWBSource, _read_nwb, open_nwb


def _independent_frame_mean(t: np.ndarray, x: np.ndarray, frame_t: np.ndarray) -> np.ndarray:
    """Frame-interval averages by an explicit loop (the reference for alignment)."""
    step = np.median(np.diff(frame_t))
    out = np.full((len(frame_t), x.shape[1]), np.nan)
    for k, start in enumerate(frame_t):
        stop = frame_t[k + 1] if k + 1 < len(frame_t) else start + step
        inside = (t >= start) & (t < stop)
        if inside.any():
            out[k] = x[inside].mean(axis=0)
    return out


def test_multiplane_timestamped_behaviour(multiplane_ts):
    path = multiplane_ts.path
    with pytest.warns(AlignmentWarning, match="have no behaviour sample"):
        ds = load_session(path)
    assert ds["activity"].dims == ("time", "roi")
    assert ds["behavior"].dims == ("time", "channel")
    assert ds.sizes == {"time": 240, "roi": 40, "channel": 3}
    assert ds["activity"].dtype == np.float32
    # planes concatenated in order, with their own ids and offsets
    assert list(np.unique(ds["plane"].values)) == [
        "PlaneSegmentation_plane0",
        "PlaneSegmentation_plane1",
    ]
    assert (ds["plane"].values[:20] == "PlaneSegmentation_plane0").all()
    np.testing.assert_array_equal(ds["roi_id"].values, np.r_[np.arange(20), np.arange(20)])
    np.testing.assert_allclose(ds["time_offset"].values[20:], 0.25)

    with h5py.File(path, "r") as f:
        g0 = f["processing/ophys/DfOverF/RoiResponseSeries_plane0"]
        g1 = f["processing/ophys/DfOverF/RoiResponseSeries_plane1"]
        raw = np.concatenate([g0["data"][:], g1["data"][:]], axis=1)
        t0 = g0["starting_time"][()] + np.arange(240) / g0["starting_time"].attrs["rate"]
        beh = f["processing/behavior/BehavioralTimeSeries/tail_angles"]
        bt, bx = beh["timestamps"][:], beh["data"][:]
    np.testing.assert_array_equal(ds["activity"].values, raw)
    np.testing.assert_allclose(ds["time"].values, t0)
    expected = _independent_frame_mean(bt, bx.astype(np.float64), t0)
    np.testing.assert_allclose(ds["behavior"].values, expected, rtol=1e-5, atol=1e-6)
    # the tracking gap (40-44 s) leaves NaN frames, and they are counted
    gap = (t0 >= 40.0) & (t0 + 0.5 <= 44.0)
    assert gap.sum() >= 6
    assert np.isnan(ds["behavior"].values[gap]).all()
    assert ds.attrs["frames_without_behavior"] == int(np.isnan(expected).all(axis=1).sum())


def test_singleplane_rate_behaviour(singleplane_rate):
    path = singleplane_rate.path
    with warnings.catch_warnings():
        warnings.simplefilter("error", AlignmentWarning)
        ds = load_session(path)
    with h5py.File(path, "r") as f:
        beh = f["acquisition/tail_angles"]
        rate = beh["starting_time"].attrs["rate"]
        bt = beh["starting_time"][()] + np.arange(beh["data"].shape[0]) / rate
        bx = beh["data"][:].astype(np.float64)
    expected = _independent_frame_mean(bt, bx, ds["time"].values)
    assert not np.isnan(expected).any()
    np.testing.assert_allclose(ds["behavior"].values, expected, rtol=1e-5, atol=1e-6)
    # ~100 samples per 0.5 s frame at 200 Hz, all averaged
    assert ds.attrs["frame_rate"] == pytest.approx(2.0)
    assert ds["series"].values.tolist() == ["tail_angles"] * 3
    assert ds["unit"].values.tolist() == ["radians"] * 3


def _mask_centroids_reference(f: h5py.File, ps_path: str, kind: str) -> np.ndarray:
    ps = f[ps_path]
    if kind == "image":
        m = ps["image_mask"][:].astype(np.float64)
        yy, xx = np.mgrid[0 : m.shape[1], 0 : m.shape[2]]
        tot = m.sum(axis=(1, 2))
        return np.column_stack([(m * xx).sum(axis=(1, 2)) / tot, (m * yy).sum(axis=(1, 2)) / tot])
    rec = ps[f"{kind}_mask"][:]
    ends = ps[f"{kind}_mask_index"][:]
    out = []
    start = 0
    for end in ends:
        r = rec[start:end]
        w = r["weight"]
        out.append(
            [(r[k] * w).sum() / w.sum() for k in ("x", "y", "z")[: 3 if kind == "voxel" else 2]]
        )
        start = end
    return np.asarray(out)


@pytest.mark.parametrize(
    "fixture,kind",
    [
        ("multiplane_ts", "image"),
        ("singleplane_rate", "pixel"),
        ("voxel_session", "voxel"),
    ],
)
def test_mask_centroids_and_labels(request, fixture, kind):
    truth = request.getfixturevalue(fixture)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AlignmentWarning)
        with open_nwb(truth.path) as src:
            ds = read_session(src)
            ps_paths = __import__("json").loads(ds.attrs["plane_segmentations"])
            labels = roi_label_volume(src, ps_paths)
    with h5py.File(truth.path, "r") as f:
        ref = np.concatenate([_mask_centroids_reference(f, p, kind) for p in ps_paths])
    np.testing.assert_allclose(ds["x"].values, ref[:, 0], rtol=1e-6)
    np.testing.assert_allclose(ds["y"].values, ref[:, 1], rtol=1e-6)
    if kind == "voxel":
        np.testing.assert_allclose(ds["z"].values, ref[:, 2], rtol=1e-6)
    else:
        planes = ds["plane"].values
        expected_z = np.searchsorted(np.unique(planes), planes)
        np.testing.assert_array_equal(ds["z"].values, expected_z)
    # every ROI appears in the label volume, near its centroid, on its own z slice
    assert labels.ndim == 3 and labels.dtype == np.int32
    assert set(np.unique(labels)) - {0} <= set(range(1, ds.sizes["roi"] + 1))
    for roi in range(ds.sizes["roi"]):
        zz, yy, xx = np.nonzero(labels == roi + 1)
        if len(zz) == 0:  # fully covered by a later, overlapping ROI
            continue
        assert np.all(zz == round(float(ds["z"].values[roi])))
        assert abs(xx.mean() - ds["x"].values[roi]) < 4
        assert abs(yy.mean() - ds["y"].values[roi]) < 4
    visible = len(set(np.unique(labels)) - {0})
    assert visible >= 0.8 * ds.sizes["roi"]


class _CountingFile(io.RawIOBase):
    """A real file whose reads are counted (h5py reads through Python file objects)."""

    def __init__(self, path: Path) -> None:
        self.f = open(path, "rb")
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.f.seek(offset, whence)

    def tell(self) -> int:
        return self.f.tell()

    def readinto(self, b) -> int:  # type: ignore[override]
        n = self.f.readinto(b)
        self.bytes_read += n or 0
        return n

    def close(self) -> None:
        self.f.close()
        super().close()


def test_reading_is_lazy_raw_imaging_costs_nothing(session_dir):
    from nwb_llmdecode.synthetic import make_session

    truth = make_session(
        session_dir / "raw_heavy.nwb",
        frames=300,
        rois=400,
        planes=1,
        seed=5,
        raw_imaging=True,
        mask="pixel",
        fluorescence=False,
    )
    size = truth.path.stat().st_size
    with h5py.File(truth.path, "r") as f:
        raw = f["acquisition/TwoPhotonSeries/data"]
        raw_bytes = raw.size * raw.dtype.itemsize
    assert raw_bytes > 0.8 * size  # raw imaging dominates the file
    counter = _CountingFile(truth.path)
    with h5py.File(counter, "r") as h5:
        nwb_io, nwbfile = _read_nwb(h5, str(truth.path))
        ds = read_session(NWBSource(nwbfile=nwbfile, label="counted"))
        nwb_io.close()
    assert ds.sizes["roi"] == 400
    assert counter.bytes_read < 0.10 * size, (counter.bytes_read, size)


def test_selection_by_path_name_and_container(multiplane_ts):
    path = multiplane_ts.path
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AlignmentWarning)
        one = load_session(path, rois="processing/ophys/DfOverF/RoiResponseSeries_plane1")
        assert one.sizes["roi"] == 20
        assert set(one["plane"].values) == {"PlaneSegmentation_plane1"}
        fluo = load_session(path, rois="Fluorescence")
        assert fluo.sizes["roi"] == 40
        assert fluo["activity"].attrs["long_name"] == "fluorescence"
        default = load_session(path)
        assert default["activity"].attrs["long_name"] == "ΔF/F"
        by_name = load_session(path, behavior="tail_angles")
        np.testing.assert_array_equal(by_name["behavior"].values, default["behavior"].values)
    with pytest.raises(SelectionError, match=r"no ROI series 'nope'.*available: processing/ophys"):
        load_session(path, rois="nope")
    # the same name exists in DfOverF and Fluorescence: both refer to one ROI table
    with pytest.raises(SelectionError, match="same ROI table"):
        load_session(path, rois="RoiResponseSeries_plane0")
    with pytest.raises(SelectionError, match=r"no behaviour series 'speed'.*tail_angles"):
        load_session(path, behavior="speed")


@pytest.fixture(scope="module")
def many_behaviours(singleplane_rate, tmp_path_factory):
    """A copy of a session with Position, CompassDirection and PupilTracking added."""
    from pynwb import NWBHDF5IO, TimeSeries
    from pynwb.behavior import CompassDirection, Position, PupilTracking, SpatialSeries

    path = tmp_path_factory.mktemp("beh") / "many.nwb"
    shutil.copy(singleplane_rate.path, path)
    with NWBHDF5IO(str(path), "a") as nwb_io:
        f = nwb_io.read()
        mod = f.create_processing_module("behavior", "Tracking.")
        pos = Position(name="Position")
        pos.add_spatial_series(
            SpatialSeries(
                name="head",
                data=np.random.default_rng(0).random((500, 2)),
                reference_frame="tank corner",
                rate=5.0,
                starting_time=1.0,
                description="head xy",
            )
        )
        mod.add(pos)
        comp = CompassDirection(name="CompassDirection")
        comp.add_spatial_series(
            SpatialSeries(
                name="heading",
                data=np.random.default_rng(1).random(500),
                reference_frame="north",
                unit="radians",
                rate=5.0,
                starting_time=1.0,
                description="heading",
            )
        )
        mod.add(comp)
        pupil = PupilTracking(name="PupilTracking")
        pupil.add_timeseries(
            TimeSeries(
                name="pupil_radius",
                data=np.random.default_rng(2).random(500),
                unit="m",
                rate=5.0,
                starting_time=1.0,
                description="pupil",
            )
        )
        mod.add(pupil)
        f.add_acquisition(
            TimeSeries(
                name="late",
                data=np.random.default_rng(3).random(100),
                unit="a.u.",
                rate=10.0,
                starting_time=10_000.0,
                description="late",
            )
        )
        nwb_io.write(f)
    return path


def test_inspect_lists_everything(many_behaviours):
    info = inspect_source(many_behaviours)
    assert {"roi_series", "behavior_series", "images", "imaging_planes"} <= set(info)
    rois = info["roi_series"]
    assert [r["path"] for r in rois] == ["processing/ophys/DfOverF/RoiResponseSeries_plane0"]
    assert rois[0]["n_rois"] == 24 and rois[0]["n_frames"] == 200 and rois[0]["rate"] == 2.0
    assert rois[0]["plane_segmentation"].endswith("PlaneSegmentation_plane0")
    beh = {b["path"]: b for b in info["behavior_series"]}
    assert set(beh) == {
        "acquisition/tail_angles",
        "acquisition/late",
        "processing/behavior/Position/head",
        "processing/behavior/CompassDirection/heading",
        "processing/behavior/PupilTracking/pupil_radius",
    }
    assert beh["processing/behavior/Position/head"]["n_channels"] == 2
    assert beh["processing/behavior/Position/head"]["type"] == "SpatialSeries"
    assert beh["acquisition/tail_angles"]["n_samples"] > 20000
    assert beh["acquisition/tail_angles"]["rate"] == 200.0
    assert {i["name"] for i in info["images"]} == {"mean", "correlation"}
    assert info["imaging_planes"][0]["grid_spacing"] == [1.0, 1.0]


def test_ambiguous_behaviour_lists_choices_and_several_concatenate(many_behaviours):
    with pytest.raises(SelectionError, match=r"5 behaviour series.*Position/head"):
        load_session(many_behaviours)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AlignmentWarning)
        ds = load_session(many_behaviours, behavior=["tail_angles", "head"])
    assert ds["series"].values.tolist() == ["tail_angles"] * 3 + ["head"] * 2
    assert ds["series_channel"].values.tolist() == [0, 1, 2, 0, 1]
    with pytest.raises(AlignmentError, match="does not overlap imaging"):
        load_session(many_behaviours, behavior="late")


def test_read_warnings_are_logged_once_each(caplog):
    """Lenient on read: pynwb/hdmf warnings become one log record per distinct message."""
    import logging
    import warnings

    from nwb_llmdecode.io.sources import _lenient

    with caplog.at_level(logging.INFO, logger="nwb_llmdecode.io.sources"):
        with _lenient("f.nwb"):
            for _ in range(3):
                warnings.warn("column 'x' has odd length", UserWarning, stacklevel=1)
            warnings.warn(
                "Ignoring cached namespace 'core' version 2.5.0", UserWarning, stacklevel=1
            )
    records = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert records == [
        ("WARNING", "f.nwb: UserWarning: column 'x' has odd length"),
        ("INFO", "f.nwb: UserWarning: Ignoring cached namespace 'core' version 2.5.0"),
    ]
