"""The hyperparameter search (``FitConfig.search``, ``fit --search N``): optuna trials on
the validation block, the first being the configuration as given, the test block never
looked at, every trial recorded in ``decoding_run.fit_json``."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from pynwb import NWBHDF5IO

from nwb_llmdecode import load_session
from nwb_llmdecode.config import FitConfig
from nwb_llmdecode.engine import fit_arrays
from nwb_llmdecode.errors import ConfigError, MissingDependencyError
from nwb_llmdecode.io.read import run_config
from nwb_llmdecode.synthetic import make_session

pytest.importorskip("optuna")

# the network alone, so that trials differ (with the blend a short fit on a small session
# can keep ridge in every trial, and all trials would tie)
QUICK = {"epochs": 5, "patience": 3, "salience": "none", "residual": "none"}


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    path = tmp_path_factory.mktemp("search") / "s.nwb"
    make_session(path, frames=400, rois=20, planes=1, n_drivers=3, seed=3, readout="bouts")
    ds = load_session(path)
    return path, ds.activity.values.astype(np.float32), ds.behavior.values.astype(np.float32)


def test_search_keeps_the_best_validation_trial_and_never_reads_the_test_block(session):
    _, a, b = session
    cfg = FitConfig(**QUICK, search={"trials": 4, "prune": False})
    res = fit_arrays(a, b, config=cfg)
    rec = res.extra["fit"]["search"]
    trials = rec["trials"]
    assert rec["trials_run"] == 4 and rec["completed"] == 4
    # trial 0 is the configuration as given
    assert trials[0]["params"] == {
        "lr": cfg.lr,
        "backbone_lr": cfg.backbone_lr,
        "embedding_group_l1": cfg.embedding_group_l1,
        "embedding_kernel": cfg.embedding_kernel,
    }
    # the sampler moved away from it, and the kept fit is the best on validation
    assert len({json.dumps(t["params"], sort_keys=True) for t in trials}) == 4
    values = [t["value"] for t in trials]
    assert rec["best_trial"] == int(np.argmax(values))
    assert float(np.mean(res.metric("r2", "validation"))) == pytest.approx(max(values))
    for name, value in trials[rec["best_trial"]]["params"].items():
        assert getattr(res.config, name) == value
    assert res.config.search == cfg.search  # the result says it was searched
    # replacing the test block's behaviour by noise changes no trial: it is never read
    test = next(s for s in res.splits if s[0] == "test")
    b2 = b.copy()
    b2[test[1] : test[2]] = np.random.default_rng(0).standard_normal(b2[test[1] : test[2]].shape)
    again = fit_arrays(a, b2, config=cfg).extra["fit"]["search"]["trials"]
    assert [t["params"] for t in again] == [t["params"] for t in trials]
    np.testing.assert_allclose([t["value"] for t in again], values, rtol=1e-6)


def test_on_epoch_sees_every_epoch_and_can_stop_the_fit(session):
    _, a, b = session
    seen = []

    class Stop(Exception):
        pass

    def on_epoch(epoch, val_loss, val_r2):
        seen.append((epoch, val_loss, val_r2))
        if epoch == 2:
            raise Stop

    with pytest.raises(Stop):
        fit_arrays(a, b, config=FitConfig(**QUICK), on_epoch=on_epoch)
    assert [e for e, _, _ in seen] == [1, 2]
    assert all(np.isfinite(v) for _, v, _ in seen)


def test_fit_cli_search_writes_every_trial_to_decoding_run(session, tmp_path):
    path, _, _ = session
    out = tmp_path / "r.nwb"
    cmd = [sys.executable, "-m", "nwb_llmdecode.cli", "fit", str(path), "--out", str(out)]
    cmd += ["--epochs", "3", "--salience", "none", "--search", "2", "-q"]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr
    with NWBHDF5IO(str(out), "r") as io:
        row = io.read().processing["llmdecode"]["decoding_run"].to_dataframe().iloc[0]
    fit = run_config(row["fit_json"])
    config = run_config(row["config_json"])
    assert fit["search"]["trials_run"] == 2 and len(fit["search"]["trials"]) == 2
    chosen = fit["search"]["chosen"]
    assert {k: config[k] for k in chosen} == chosen  # the chosen values are the run's
    assert config["search"]["trials"] == 2


def test_search_errors_are_one_clear_line(session, tmp_path, monkeypatch):
    path, a, b = session
    with pytest.raises(ConfigError, match="ridge baseline"):
        FitConfig(backbone="ridge", search={"trials": 3})
    with pytest.raises(ConfigError, match=r"search\.params"):
        FitConfig(search={"trials": 3, "params": ["lr", "no_such_option"]})
    cmd = [sys.executable, "-m", "nwb_llmdecode.cli", "fit", str(path), "--backbone", "ridge"]
    proc = subprocess.run(
        [*cmd, "--search", "2", "--out", str(tmp_path / "x.nwb")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and "drop --search" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "x.nwb").exists()
    monkeypatch.setitem(sys.modules, "optuna", None)  # as if it were not installed
    with pytest.raises(MissingDependencyError, match=r"nwb-llmdecode\[search\]"):
        fit_arrays(a, b, config=FitConfig(**QUICK, search={"trials": 2}))
