"""Seed ensembles (``FitConfig.ensemble``, ``fit --ensemble N``): N ordinary fits with
consecutive seeds, kept as their average; each seed's R² recorded; the averaged decoder is
what is explained, written and checkpointed."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from pynwb import NWBHDF5IO

from nwb_llmdecode import load_session
from nwb_llmdecode.config import FitConfig
from nwb_llmdecode.engine import fit_arrays, load_checkpoint, predict_arrays
from nwb_llmdecode.errors import ConfigError, DataError
from nwb_llmdecode.io.read import run_config
from nwb_llmdecode.models.ensemble import SeedEnsemble
from nwb_llmdecode.synthetic import make_session

CLI = [sys.executable, "-m", "nwb_llmdecode.cli"]


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    path = tmp_path_factory.mktemp("ensemble") / "s.nwb"
    make_session(path, frames=360, rois=14, planes=1, n_drivers=3, seed=5, readout="bouts")
    ds = load_session(path)
    return path, ds.activity.values.astype(np.float32), ds.behavior.values.astype(np.float32)


def test_ensemble_is_the_average_of_its_seeds(session):
    _, a, b = session
    cfg = FitConfig(backbone="lstm", epochs=4, seed=4, ensemble=3)
    res = fit_arrays(a, b, config=cfg)
    alone = [fit_arrays(a, b, config=cfg.replace(ensemble=1, seed=s)) for s in (4, 5, 6)]
    assert isinstance(res.model, SeedEnsemble) and len(res.model) == 3
    np.testing.assert_allclose(
        res.predictions, np.mean([m.predictions for m in alone], axis=0), rtol=1e-5, atol=1e-6
    )
    # the averaged module is the decoder: predicting with it gives the same average
    np.testing.assert_allclose(
        predict_arrays(res, a),
        np.mean([predict_arrays(m, a) for m in alone], axis=0),
        rtol=1e-5,
        atol=1e-6,
    )
    rec = res.extra["fit"]["ensemble"]
    assert rec["seeds"] == [4, 5, 6]
    member_r2 = [float(np.mean(m.metric("r2", "test"))) for m in alone]
    assert [m["test_r2"] for m in rec["members"]] == pytest.approx(member_r2)
    assert rec["member_test_r2_sd"] == pytest.approx(np.std(member_r2, ddof=1))
    assert {m["seed"] for m in rec["members"]} == {4, 5, 6}
    assert len({round(r, 6) for r in member_r2}) == 3  # the seeds did differ
    # averaging predictions can only lower the squared error (Jensen): on every split the
    # ensemble's R² is at least its members' mean, per channel
    for split in ("train", "validation", "test"):
        mean_member = np.mean([m.metric("r2", split) for m in alone], axis=0)
        assert np.all(res.metric("r2", split) >= mean_member - 1e-6)
    assert res.config.ensemble == 3 and res.config.seed == 4
    assert {h["seed"] for h in res.history} == {4, 5, 6}


def test_fit_cli_ensemble_writes_the_average_and_a_checkpoint_that_predicts_it(session, tmp_path):
    path, a, _ = session
    out = tmp_path / "r.nwb"
    cmd = [*CLI, "fit", str(path), "--out", str(out), "--ensemble", "2", "--epochs", "2"]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.run(
        [*cmd, "--salience-stride", "4"], capture_output=True, text=True, env=env, timeout=900
    )
    assert proc.returncode == 0, proc.stderr
    assert "seed ensemble of 2" in proc.stdout and "seed 1:" in proc.stdout
    with NWBHDF5IO(str(out), "r") as io:
        mod = io.read().processing["llmdecode"]
        row = mod["decoding_run"].to_dataframe().iloc[0]
        series = mod["predictions"].time_series.values()
        written = {ts.name: np.asarray(ts.data[:]) for ts in series}
        assert len(mod["roi_salience"].to_dataframe()) == a.shape[1]  # the average explained
    fit = run_config(row["fit_json"])["ensemble"]
    assert fit["seeds"] == [0, 1] and len(fit["members"]) == 2
    assert run_config(row["config_json"])["ensemble"] == 2
    # the checkpoint is the averaged decoder: two MiniLM members with their own weights
    ckpt = out.with_name(f"{out.stem}_checkpoint")
    loaded = load_checkpoint(ckpt)
    assert isinstance(loaded.model, SeedEnsemble) and len(loaded.model) == 2
    w0, w1 = (dict(m.named_parameters()) for m in loaded.model.members)
    name = next(k for k in w0 if k.startswith("embedding"))
    assert not torch.equal(w0[name], w1[name])
    pred = predict_arrays(loaded, a)
    (series,) = written.values()
    test_rows = slice(int(0.8 * len(a)) + 25, len(a) - 25)  # inside the test block
    np.testing.assert_allclose(
        pred[test_rows], series.reshape(len(a), -1)[test_rows], rtol=0.02, atol=0.02
    )
    # a checkpoint whose files disagree on the number of members is refused
    meta = json.loads((ckpt / "checkpoint.json").read_text())
    (ckpt / "checkpoint.json").write_text(json.dumps({**meta, "ensemble_members": 3}))
    with pytest.raises(DataError, match="ensemble members"):
        load_checkpoint(ckpt)


def test_ensemble_errors_are_one_clear_line(session, tmp_path):
    path, _, _ = session
    with pytest.raises(ConfigError, match=r"ensemble=0 is not valid"):
        FitConfig(ensemble=0)
    with pytest.raises(ConfigError, match="drop --ensemble"):
        FitConfig(backbone="ridge", ensemble=3)
    with pytest.raises(ConfigError, match="search first"):
        FitConfig(ensemble=2, search={"trials": 3})
    out = tmp_path / "x.nwb"
    cmd = [*CLI, "fit", str(path), "--backbone", "reservoir", "--ensemble", "2"]
    proc = subprocess.run([*cmd, "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "drop --ensemble" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "Traceback" not in proc.stderr and not out.exists()
    # a fit across sessions trains one shared decoder: no ensemble of it
    other = tmp_path / "other.nwb"
    make_session(other, frames=360, rois=10, planes=1, n_drivers=3, seed=6, readout="bouts")
    cmd = [*CLI, "fit", str(path), str(other), "--ensemble", "2", "--out", str(tmp_path / "m")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "fit each session on its own" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
