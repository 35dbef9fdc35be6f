"""Timestamps a file gets wrong: unsorted behaviour is sorted (with a warning naming the
series) and gives the same result as the sorted file; bad imaging times are refused."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest

from nwb_llmdecode.errors import AlignmentError
from nwb_llmdecode.io.read import AlignmentWarning, load_session
from nwb_llmdecode.synthetic import make_session

BEH = "processing/behavior/BehavioralTimeSeries/tail_angles"


@pytest.fixture(scope="module")
def sorted_session(tmp_path_factory: pytest.TempPathFactory):
    d = tmp_path_factory.mktemp("ts")
    return make_session(
        d / "sorted.nwb", frames=80, rois=6, planes=1, n_drivers=2, behavior_timestamps=True
    ).path


def test_unsorted_behaviour_is_sorted_with_a_warning(sorted_session, tmp_path):
    shuffled = tmp_path / "shuffled.nwb"
    shutil.copy2(sorted_session, shuffled)
    with h5py.File(shuffled, "r+") as f:
        t, x = f[f"{BEH}/timestamps"][:], f[f"{BEH}/data"][:]
        order = np.random.default_rng(0).permutation(len(t))
        f[f"{BEH}/timestamps"][:] = t[order]  # the same samples, stored out of order
        f[f"{BEH}/data"][:] = x[order]
    with pytest.warns(AlignmentWarning, match="tail_angles.*not in increasing order"):
        got = load_session(shuffled)
    want = load_session(sorted_session)
    np.testing.assert_array_equal(got["behavior"].values, want["behavior"].values)
    np.testing.assert_array_equal(got["activity"].values, want["activity"].values)


@pytest.mark.parametrize("bad", ["backwards", "nan"])
def test_bad_imaging_times_are_refused(sorted_session, tmp_path, bad):
    broken = tmp_path / "broken.nwb"
    shutil.copy2(sorted_session, broken)
    with h5py.File(broken, "r+") as f:
        rrs = next(g for name, g in f["processing/ophys/DfOverF"].items() if name.startswith("Roi"))
        n = rrs["data"].shape[0]
        rate = float(rrs["starting_time"].attrs["rate"])
        t = float(rrs["starting_time"][()]) + np.arange(n) / rate
        if bad == "backwards":
            t[20], t[21] = t[21], t[20]
        else:
            t[20] = np.nan
        del rrs["starting_time"]
        rrs["timestamps"] = t
        rrs["timestamps"].attrs["unit"] = "seconds"
        rrs["timestamps"].attrs["interval"] = 1
    match = "not strictly increasing" if bad == "backwards" else "NaN/inf"
    with pytest.raises(AlignmentError, match=match):
        load_session(broken)
