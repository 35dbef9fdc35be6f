"""Property-based fuzzing of NWB structure (hypothesis): a correct result or one clean
error, never a traceback.

Each example writes a real NWB file with pynwb: a random subset of ophys objects (planes,
ROI tables, ΔF/F or fluorescence series, any of them missing) and behaviour objects (in
``acquisition`` or a ``BehavioralTimeSeries``), random shapes and dtypes, NaN/inf in the
data, rate-based or timestamped timing with timestamps that may be unsorted, duplicated,
NaN or outside the imaging. The library is called in process (``inspect_source``,
``load_session`` and, when the session loads, a ridge ``fit``): every call either returns
a result that satisfies its contract or raises one of our errors
(:class:`~nwb_llmdecode.errors.LLMDecodeError`), whose message is one line.
"""

from __future__ import annotations

import datetime as dt
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from nwb_llmdecode.errors import LLMDecodeError

DTYPES = ("float32", "float64", "int16", "uint8")


@st.composite
def timing(draw: st.DrawFn, n: int, *, start: float, rate: float) -> dict:
    kind = draw(
        st.sampled_from(["rate", "timestamps", "unsorted", "rate", "dupes", "nan", "shifted"])
    )
    if kind == "rate" or n == 0:
        return {"rate": rate, "starting_time": start}
    t = start + np.arange(n) / rate
    if kind == "unsorted" and n > 2:
        i = draw(st.integers(0, n - 2))
        t[i], t[i + 1] = t[i + 1], t[i]
    elif kind == "dupes" and n > 2:
        t[draw(st.integers(1, n - 1))] = t[0]
    elif kind == "nan":
        t[draw(st.integers(0, n - 1))] = draw(st.sampled_from([np.nan, np.inf]))
    elif kind == "shifted":
        t = t + draw(st.sampled_from([-1e4, 1e4, 0.37]))
    return {"timestamps": t}


def _data(draw: st.DrawFn, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    x = rng.standard_normal(shape) * 3
    if dtype.startswith("float") and x.size and draw(st.sampled_from([False, False, True])):
        flat = x.reshape(-1)
        for _ in range(draw(st.integers(1, 3))):
            flat[draw(st.integers(0, flat.size - 1))] = draw(
                st.sampled_from([np.nan, np.inf, -np.inf])
            )
    return x.astype(dtype) if dtype.startswith("float") else np.abs(x).astype(dtype)


@st.composite
def nwb_files(draw: st.DrawFn, directory: Path) -> Path:
    from pynwb import NWBHDF5IO, NWBFile, TimeSeries
    from pynwb.behavior import BehavioralTimeSeries
    from pynwb.ophys import (
        DfOverF,
        Fluorescence,
        ImageSegmentation,
        OpticalChannel,
        RoiResponseSeries,
    )

    # half the examples are sane sessions with one odd detail, half anything goes
    sane = draw(st.booleans())

    def pick(good: list, wild: list):
        return draw(st.sampled_from(good if sane else wild))

    nwb = NWBFile(
        session_description="fuzz",
        identifier="fuzz",
        session_start_time=dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc),
    )
    n_frames = pick([60, 40], [60, 40, 12, 3, 2, 1, 0])
    frame_rate = draw(st.sampled_from([1.0, 2.0, 30.0]))
    n_planes = pick([1, 2], [1, 2, 1, 0])
    if n_planes:
        device = nwb.create_device(name="scope")
        ophys = nwb.create_processing_module("ophys", "ophys")
        seg = ImageSegmentation(name="ImageSegmentation")
        ophys.add(seg)
        container = pick([DfOverF, Fluorescence], [DfOverF, Fluorescence, None])
        holder = container(name=container.__name__) if container else None
        if holder is not None:
            ophys.add(holder)
        for p in range(n_planes):
            plane = nwb.create_imaging_plane(
                name=f"plane{p}",
                optical_channel=OpticalChannel(name="c", description="c", emission_lambda=500.0),
                description="p",
                device=device,
                excitation_lambda=900.0,
                indicator="GCaMP",
                location="brain",
                imaging_rate=frame_rate,
            )
            n_rois = draw(st.integers(1, 5))
            ps = seg.create_plane_segmentation(
                name=f"PlaneSegmentation{p}", description="ps", imaging_plane=plane
            )
            for _ in range(n_rois):
                mask = np.zeros((8, 8), dtype=np.float32)
                mask[draw(st.integers(0, 7)), draw(st.integers(0, 7))] = 1.0
                ps.add_roi(image_mask=mask)
            if holder is not None and pick([True], [True, True, True, False]):
                frames_p = max(0, n_frames - pick([0], [0, 1, 0]))
                region = ps.create_roi_table_region(region=list(range(n_rois)), description="all")
                shape = (frames_p, n_rois) if n_rois > 1 or draw(st.booleans()) else (frames_p,)
                holder.add_roi_response_series(
                    RoiResponseSeries(
                        name=f"rrs{p}",
                        data=_data(draw, shape, draw(st.sampled_from(DTYPES))),
                        rois=region,
                        unit="n.a.",
                        **draw(timing(frames_p, start=0.5, rate=frame_rate)),
                    )
                )
    n_beh = pick([1], [1, 2, 1, 0])
    if n_beh:
        where = draw(st.sampled_from(["acquisition", "module"]))
        bts = None
        if where == "module":
            bts = BehavioralTimeSeries(name="BehavioralTimeSeries")
            nwb.create_processing_module("behavior", "behaviour").add(bts)
        for b in range(n_beh):
            rate = draw(st.sampled_from([frame_rate, 10.0, 200.0]))
            cover = int(n_frames / frame_rate * rate) + 2
            n = pick([cover], [cover, cover, 5, 1, 0])
            channels = draw(st.sampled_from([None, 1, 3]))
            shape = (n,) if channels is None else (n, channels)
            ts = TimeSeries(
                name=f"beh{b}",
                data=_data(draw, shape, draw(st.sampled_from(DTYPES))),
                unit="rad",
                **draw(timing(n, start=pick([0.5, 0.0], [0.5, 0.0, 500.0]), rate=rate)),
            )
            if bts is None:
                nwb.add_acquisition(ts)
            else:
                bts.add_timeseries(ts)
    path = directory / f"fuzz_{draw(st.integers(0, 10**9))}.nwb"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with NWBHDF5IO(str(path), "w") as io:
            io.write(nwb)
    return path


def _clean(exc: LLMDecodeError) -> None:
    msg = str(exc)
    assert msg.strip(), f"{type(exc).__name__} without a message"
    assert "Traceback" not in msg


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_random_nwb_structure_gives_a_result_or_one_clean_error(fuzz_dir: Path, data) -> None:
    from nwb_llmdecode.config import FitConfig
    from nwb_llmdecode.io.read import inspect_source, load_session
    from nwb_llmdecode.pipeline import fit

    path = data.draw(nwb_files(fuzz_dir))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # odd but readable input warns; that is allowed
        try:
            info = inspect_source(path)
        except LLMDecodeError as e:
            _clean(e)
        else:
            assert isinstance(info["roi_series"], list)
            assert isinstance(info["behavior_series"], list)
        try:
            ds = load_session(path)
        except LLMDecodeError as e:
            _clean(e)
            event(f"load_session: {type(e).__name__}")
            return
        # the contract of a loaded session
        n_t, n_r = ds["activity"].shape
        assert n_t >= 2 and n_r >= 1
        assert ds["behavior"].shape[0] == n_t
        t = ds["time"].values
        assert np.all(np.isfinite(t)) and np.all(np.diff(t) > 0)
        assert ds["activity"].dtype == np.float32
        assert not np.isnan(ds["behavior"].values).all()
        out = path.with_name(path.stem + "_out.nwb")
        try:
            report = fit(
                path,
                config=FitConfig(backbone="ridge", seq_len=2, salience="none"),
                out=out,
                checkpoint=False,
            )
        except LLMDecodeError as e:
            _clean(e)
            event(f"fit: {type(e).__name__}")
            assert not out.exists()
            return
        event("fit: written")
        assert report.output == out and out.is_file()
        assert report.results is not None
        assert report.results.predictions.shape == (n_t, ds["behavior"].shape[1])
        assert {r["split"] for r in report.metrics} == {"train", "validation", "test"}
        out.unlink()
