"""convert-nlp4neuro: the paper's NumPy files -> a valid NWB session that fit can decode."""

from __future__ import annotations

import numpy as np
import pytest
from pynwb import NWBHDF5IO, validate

from nwb_llmdecode import load_session
from nwb_llmdecode.errors import DataError, SourceError
from nwb_llmdecode.io.convert import convert_nlp4neuro


@pytest.fixture()
def fish(tmp_path):
    rng = np.random.default_rng(0)
    neural = rng.standard_normal((40, 150 + 2)).astype(np.float32)
    tail = rng.standard_normal((150, 6)).astype(np.float32)
    t = np.arange(150 * 100) / 200.0  # 75 s at 200 Hz = 150 frames at 2 Hz
    full = np.column_stack([rng.standard_normal((len(t), 6)), t, np.floor(t / 0.5)])
    paths = {}
    for name, arr in (("neural", neural), ("tail", tail), ("full", full)):
        paths[name] = tmp_path / f"fish9_{name}.npy"
        np.save(paths[name], arr)
    return paths, neural, tail, full


def test_convert_without_positions(fish, tmp_path):
    paths, neural, tail, _ = fish
    out = convert_nlp4neuro(
        paths["neural"], paths["tail"], tmp_path / "fish9.nwb", frame_rate=2.0, age="P7D"
    )
    assert validate(path=str(out)) == []
    ds = load_session(out)
    np.testing.assert_array_equal(ds["activity"].values, neural[:, :-2].T)
    # the per-frame tail angles are their own frame averages: one sample per frame
    np.testing.assert_allclose(ds["behavior"].values, tail)
    np.testing.assert_allclose(ds["time"].values, np.arange(150) / 2.0)
    assert np.isnan(ds["x"].values).all()
    with NWBHDF5IO(str(out), "r") as io:
        f = io.read()
        ps = f.processing["ophys"]["ImageSegmentation"]["PlaneSegmentation"]
        assert "positions are unknown" in ps.description
        assert "positions are unknown" in f.notes


def test_convert_with_positions_and_full_tail(fish, tmp_path):
    paths, _neural, _tail, full = fish
    pos = np.column_stack([np.arange(40), 2 * np.arange(40)]).astype(float)
    np.save(tmp_path / "pos.npy", pos)
    out = convert_nlp4neuro(
        paths["neural"],
        paths["tail"],
        tmp_path / "f.nwb",
        frame_rate=2.0,
        tail_full=paths["full"],
        positions=tmp_path / "pos.npy",
    )
    assert validate(path=str(out)) == []
    with pytest.raises(Exception, match="2 behaviour series"):
        load_session(out)
    ds = load_session(out, behavior="tail_angles_full")
    # the 200 Hz samples averaged per 0.5 s frame
    expected = full[:, :6].reshape(150, 100, 6).mean(axis=1)
    np.testing.assert_allclose(ds["behavior"].values, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ds["x"].values, pos[:, 0])
    np.testing.assert_allclose(ds["y"].values, pos[:, 1])


def test_convert_bad_input(fish, tmp_path):
    paths, *_ = fish
    with pytest.raises(SourceError, match="no such file"):
        convert_nlp4neuro(tmp_path / "nope.npy", paths["tail"], tmp_path / "x.nwb", frame_rate=1)
    short = tmp_path / "short.npy"
    np.save(short, np.zeros((10, 6)))
    with pytest.raises(DataError, match=r"10 frames, but .* has 150"):
        convert_nlp4neuro(paths["neural"], short, tmp_path / "x.nwb", frame_rate=1)
    with pytest.raises(DataError, match="frame rate"):
        convert_nlp4neuro(paths["neural"], paths["tail"], tmp_path / "x.nwb", frame_rate=0)
    assert not (tmp_path / "x.nwb").exists()
