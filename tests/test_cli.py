"""The command line as a user runs it: real subprocesses, exit codes, one-line errors."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

EXE = [sys.executable, "-m", "nwb_llmdecode.cli"]


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run(
        [*EXE, *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env, timeout=600
    )


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("nwb-llmdecode: error:")]
    assert len(errors) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for n in needles:
        assert n in errors[0], (n, errors[0])


def test_help_is_fast_and_lists_commands():
    proc = run("--help")
    assert proc.returncode == 0
    for cmd in ("inspect", "synth", "fit", "predict", "dandi"):
        assert cmd in proc.stdout
    # --help must not import the heavy stack
    code = (
        "import sys, nwb_llmdecode.cli as c\n"
        "try:\n    c.main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'transformers', 'pynwb', 'h5py', 'xarray') "
        "if m in sys.modules]\nprint(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_synth_then_inspect_json(tmp_path):
    out = tmp_path / "s.nwb"
    proc = run("synth", out, "--frames", 80, "--rois", 12, "--planes", 2, "--drivers", 3, "--json")
    assert proc.returncode == 0, proc.stderr
    truth = json.loads(proc.stdout)
    assert len(truth["driver_rois"]) == 3
    with h5py.File(out, "r") as f:
        drivers = np.concatenate(
            [
                f[
                    f"processing/ophys/ImageSegmentation/PlaneSegmentation_plane{p}/synthetic_driver"
                ][:]
                for p in (0, 1)
            ]
        )
    assert np.flatnonzero(drivers).tolist() == truth["driver_rois"]

    proc = run("inspect", out, "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert {"roi_series", "behavior_series", "images"} <= set(info)
    for r in info["roi_series"]:
        assert {"path", "n_rois", "n_frames"} <= set(r)
    for b in info["behavior_series"]:
        assert {"path", "n_channels", "n_samples"} <= set(b)
    assert [b["path"] for b in info["behavior_series"]] == ["acquisition/tail_angles"]

    proc = run("inspect", out)
    assert proc.returncode == 0
    assert "processing/ophys/DfOverF/RoiResponseSeries_plane1" in proc.stdout
    assert "acquisition/tail_angles" in proc.stdout
    # synth refuses to overwrite without the flag
    assert_one_line_error(run("synth", out, "--frames", 80, "--rois", 12), "--overwrite")


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, singleplane_rate):
    d = tmp_path_factory.mktemp("bad")
    (d / "notes.txt").write_text("not an nwb file\n")
    with h5py.File(d / "plain.h5", "w") as f:
        f["x"] = np.arange(10)
    good = singleplane_rate.path
    data = good.read_bytes()
    (d / "truncated.nwb").write_bytes(data[: len(data) // 3])
    import datetime as dt

    from pynwb import NWBHDF5IO, NWBFile, TimeSeries

    f = NWBFile(
        session_description="no ophys",
        identifier="x",
        session_start_time=dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc),
    )
    f.add_acquisition(
        TimeSeries(name="speed", data=np.random.default_rng(0).random(100), unit="m/s", rate=10.0)
    )
    with NWBHDF5IO(str(d / "no_ophys.nwb"), "w") as io:
        io.write(f)
    (d / "folder.nwb").mkdir()
    return d


@pytest.mark.parametrize(
    "name,needles",
    [
        ("missing.nwb", ["missing.nwb", "no such file"]),
        ("folder.nwb", ["folder.nwb", "is a directory"]),
        ("notes.txt", ["notes.txt", "not an HDF5 file"]),
        ("plain.h5", ["plain.h5", "not NWB", "nwb_version"]),
        ("truncated.nwb", ["truncated.nwb", "truncated"]),
        ("no_ophys.nwb", ["no_ophys.nwb", "no ophys ROI data"]),
    ],
)
def test_bad_sources_give_one_line_errors(bad_files, name, needles):
    path = bad_files / name
    before = sha256(path) if path.is_file() else None
    for cmd in (["inspect"], ["fit", "--epochs", "1"]):
        if cmd == ["inspect"] and name == "no_ophys.nwb":
            continue  # inspecting a file without ophys is fine: it lists nothing
        proc = run(*cmd, path)
        assert_one_line_error(proc, *needles)
    if before is not None:
        assert sha256(path) == before
    assert not list(bad_files.glob("*desc-llmdecode*"))


def test_bad_selection_lists_what_exists(multiplane_ts, tmp_path):
    src = tmp_path / "s.nwb"
    shutil.copy(multiplane_ts.path, src)
    before = sha256(src)
    proc = run("fit", src, "--rois", "nope", "--epochs", "1")
    assert_one_line_error(
        proc, "no ROI series 'nope'", "processing/ophys/DfOverF/RoiResponseSeries_plane0"
    )
    proc = run("fit", src, "--behavior", "speed", "--epochs", "1")
    assert_one_line_error(proc, "no behaviour series 'speed'", "tail_angles")
    assert sha256(src) == before
    assert not list(tmp_path.glob("*desc-llmdecode*"))


def test_debug_shows_traceback(tmp_path):
    proc = run("--debug", "inspect", tmp_path / "missing.nwb")
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr
