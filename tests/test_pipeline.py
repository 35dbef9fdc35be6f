"""`fit` end to end: CLI, config files, results module, checkpoints, safety of writes."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
from pynwb import NWBHDF5IO, validate

from nwb_llmdecode.config import FitConfig
from nwb_llmdecode.io.read import run_config
from nwb_llmdecode.pipeline import ablate, fit, predict
from nwb_llmdecode.synthetic import make_session

EXE = [sys.executable, "-m", "nwb_llmdecode.cli"]
FAST = ["--epochs", "2", "--salience", "grad-x-input"]


def run(*args, cwd=None):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run(
        [*EXE, *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env, timeout=900
    )


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    d = tmp_path_factory.mktemp("fit")
    truth = make_session(d / "small.nwb", frames=300, rois=30, planes=2, seed=11, n_drivers=4)
    return truth


def test_fit_cli_json_and_results(small, tmp_path):
    src = tmp_path / "s.nwb"
    shutil.copy(small.path, src)
    before = sha(src)
    proc = run("fit", src, *FAST, "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    out = Path(summary["output"])
    assert out == tmp_path / "s_desc-llmdecode.nwb" and out.exists()
    assert {"behavior", "channel", "split", "rmse", "r2", "pearson"} <= set(summary["metrics"][0])
    assert {m["split"] for m in summary["metrics"]} == {"train", "validation", "test"}
    assert sha(src) == before  # the source is never touched
    assert validate(path=str(out)) == []
    with NWBHDF5IO(str(out), "r") as io:
        mod = io.read().processing["llmdecode"]
        names = set(mod.data_interfaces)
        assert {
            "predictions",
            "targets",
            "decoding_splits",
            "decoding_metrics",
            "decoding_run",
            "salience_timecourse_PlaneSegmentation_plane0",
            "roi_salience_PlaneSegmentation_plane1",
        } <= names
        run_row = mod["decoding_run"].to_dataframe().iloc[0]
        assert run_row["backbone"] == "minilm" and run_row["salience_method"] == "grad-x-input"
        assert run_config(run_row["config_json"])["epochs"] == 2
        metrics = mod["decoding_metrics"].to_dataframe()
        test = metrics[metrics["split"] == "test"].sort_values("channel")
        np.testing.assert_allclose(
            test["r2"].to_numpy(),
            [
                m["r2"]
                for m in sorted(summary["metrics"], key=lambda m: m["channel"])
                if m["split"] == "test"
            ],
        )
        pred = mod["predictions"]["tail_angles"].data[:]
        assert pred.shape == (300, 3) and np.isfinite(pred).mean() > 0.8
        # the printed top-salient table agrees with the written ranks
        lines = proc.stderr.splitlines()
        head = lines.index("Most salient ROIs (grad-x-input, test block)")
        _, _, plane, roi_id, _ = lines[head + 3].split()  # title, header, rule, rank 1
        table = mod[f"roi_salience_{plane}"]
        rows = np.asarray(table["roi"].data[:])[np.asarray(table["rank"].data[:]) == 1]
        assert table["roi"].table.id.data[rows[0]] == int(roi_id)
    ckpt = Path(summary["checkpoint"])
    assert (ckpt / "config.json").exists() and (ckpt / "session.json").exists()
    # a second run refuses to overwrite; nothing changes
    stamp = out.stat().st_mtime_ns
    proc = run("fit", src, *FAST)
    assert proc.returncode == 2 and "--overwrite" in proc.stderr
    assert out.stat().st_mtime_ns == stamp


def test_config_file_and_command_line_override(small, tmp_path):
    cfg = tmp_path / "run.toml"
    cfg.write_text('[fit]\nbackbone = "ridge"\nseq_len = 8\nepochs = 1\nsalience = "none"\n')
    out = tmp_path / "r.nwb"
    proc = run("fit", small.path, "--config", cfg, "--seq-len", "6", "--out", out, "-q")
    assert proc.returncode == 0, proc.stderr
    with NWBHDF5IO(str(out), "r") as io:
        row = io.read().processing["llmdecode"]["decoding_run"].to_dataframe().iloc[0]
    assert row["backbone"] == "ridge"
    assert int(row["seq_len"]) == 6  # the command line wins
    cfg_yaml = tmp_path / "run.yaml"
    cfg_yaml.write_text("backbone: nope\n")
    proc = run("fit", small.path, "--config", cfg_yaml, "--out", tmp_path / "x.nwb")
    assert proc.returncode == 2
    assert "minilm" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "x.nwb").exists()


def test_in_place_and_predict(small, tmp_path):
    src = tmp_path / "s.nwb"
    shutil.copy(small.path, src)
    report = fit(
        src,
        config=FitConfig(backbone="lstm", epochs=2, salience="saliency"),
        in_place=True,
        ablation=(2, 4),
    )
    assert report.output == src
    assert validate(path=str(src)) == []
    with h5py.File(src, "r") as f:
        assert "processing/llmdecode/roi_salience_PlaneSegmentation_plane0" in f
        assert "processing/llmdecode/salience_ablation" in f
        assert "acquisition/tail_angles" in f  # original content kept
    with pytest.raises(Exception, match="already has a processing/llmdecode"):
        fit(src, config=FitConfig(backbone="lstm", epochs=1, salience="none"), in_place=True)
    # the saved decoder applies to another recording of the same ROIs
    other = tmp_path / "other.nwb"
    shutil.copy(small.path, other)
    rep = predict(report.checkpoint, other)
    direct = report.results.predictions
    with NWBHDF5IO(str(rep.output), "r") as io:
        pred = io.read().processing["llmdecode"]["predictions"]["tail_angles"].data[:]
    start, stop = next((s, e) for n, s, e in report.results.splits if n == "test")
    # frames whose windows all lie inside the test block get the very same windows
    inner = slice(start + 20 - 1, stop - 20 + 1)
    assert inner.stop - inner.start > 5
    np.testing.assert_allclose(pred[inner], direct[inner], rtol=1e-4, atol=1e-5)


def test_ablate_command_writes_table(small, tmp_path):
    src = tmp_path / "s.nwb"
    shutil.copy(small.path, src)
    report = fit(src, config=FitConfig(epochs=2, salience="grad-x-input"))
    rows = ablate(report.output, ks=(2, 4), draws=3)
    assert {(r["k"], r["kind"]) for r in rows} == {
        (2, "salient"),
        (2, "random"),
        (4, "salient"),
        (4, "random"),
    }
    assert validate(path=str(report.output)) == []
    with NWBHDF5IO(str(report.output), "r") as io:
        table = io.read().processing["llmdecode"]["salience_ablation"].to_dataframe()
    assert len(table) == len(rows)
    np.testing.assert_allclose(table["rmse"].to_numpy(), [r["rmse"] for r in rows])


@pytest.mark.parametrize(
    "args,needles",
    [
        (["--backbone", "gpt-unknown-xyz"], ["gpt-unknown-xyz", "minilm", "smollm2", "ridge"]),
        (["--seq-len", "200"], ["frames"]),
        (["--split", "0.5,0.5"], ["split"]),
    ],
)
def test_bad_options_exit_2_and_write_nothing(small, tmp_path, args, needles):
    src = tmp_path / "s.nwb"
    shutil.copy(small.path, src)
    proc = run("fit", src, *FAST, *args)
    assert proc.returncode == 2, proc.stderr
    err = [ln for ln in proc.stderr.splitlines() if ln.startswith("nwb-llmdecode: error:")]
    assert len(err) == 1 and "Traceback" not in proc.stderr
    for n in needles:
        assert n in err[0]
    assert not list(tmp_path.glob("*desc-llmdecode*"))


def test_nan_activity_is_reported_with_where(tmp_path):
    path = tmp_path / "nan.nwb"
    make_session(path, frames=120, rois=10, planes=1, seed=4, n_drivers=2)
    with h5py.File(path, "r+") as f:
        d = f["processing/ophys/DfOverF/RoiResponseSeries_plane0/data"]
        d[5, 3] = np.nan
        d[7, 3] = np.nan
    proc = run("fit", path, *FAST)
    assert proc.returncode == 2
    assert "2 NaN/inf values" in proc.stderr and "frame 5" in proc.stderr and "ROI 3" in proc.stderr
    assert not list(tmp_path.glob("*desc-llmdecode*"))


def _kill_during(cmd: list[str], watch: Path, pattern: str) -> None:
    """Start ``cmd`` and SIGKILL it as soon as a file matching ``pattern`` appears."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    try:
        while time.time() < deadline and proc.poll() is None:
            if list(watch.glob(pattern)):
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.005)
    finally:
        proc.wait()


def test_interrupted_writes_leave_sources_intact(tmp_path):
    """Kill writers mid-write: the source keeps its content, no half file under the name."""
    src = tmp_path / "big.nwb"
    truth = make_session(
        src, frames=400, rois=200, planes=2, seed=5, raw_imaging=True, mask="image"
    )
    before = sha(src)
    code = (
        "import sys, numpy as np, xarray as xr\n"
        "from nwb_llmdecode import load_session\n"
        "from nwb_llmdecode.io.write import DecodingResults, write_in_place, write_derived\n"
        "from nwb_llmdecode.io.sources import open_nwb\n"
        "ds = load_session(sys.argv[1])\n"
        "res = DecodingResults(session=ds, predictions=ds['behavior'].values, "
        "splits=[('train', 0, 200), ('test', 220, 400)], metrics=[], run={})\n"
        "if sys.argv[2] == 'inplace':\n"
        "    write_in_place(sys.argv[1], res)\n"
        "else:\n"
        "    with open_nwb(sys.argv[1]) as src:\n"
        "        write_derived(src, res, sys.argv[3])\n"
    )
    _kill_during([sys.executable, "-c", code, str(src), "inplace"], tmp_path, ".*partial*")
    assert sha(src) == before
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from nwb_llmdecode import load_session

        assert load_session(src).sizes["roi"] == truth.n_rois
    out = tmp_path / "derived.nwb"
    _kill_during(
        [sys.executable, "-c", code, str(src), "derived", str(out)], tmp_path, ".derived*partial*"
    )
    assert not out.exists()
    assert sha(src) == before
