"""The examples run (in their fast mode) and print what they promise."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "zebrafish_legare2025_fish6"


def run_example(name: str, tmp_path: Path, *extra: str) -> str:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name), "--fast", "--out", str(tmp_path), *extra],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_quickstart(tmp_path):
    out = run_example("quickstart.py", tmp_path)
    assert "test R²" in out and "precision@k against the planted drivers" in out
    assert (tmp_path / "session_desc-llmdecode.nwb").exists()


def test_notebook_flow(tmp_path):
    out = run_example("notebook_flow.py", tmp_path)
    assert "day 2, test of transfer" in out and "read back: test R²" in out
    assert (tmp_path / "sub-fish3_ses-1_desc-llmdecode_ophys.nwb").exists()
    assert (tmp_path / "notebook_flow.png").stat().st_size > 10_000


def test_compare_example(tmp_path):
    out = run_example("compare_synthetic.py", tmp_path)
    assert "report:" in out
    for name in ("results.csv", "stats.csv", "report.html"):
        assert (tmp_path / "report" / name).exists()


@pytest.mark.skipif(
    not DATA.is_dir(),
    reason="the shared zebrafish data folder is not beside the repository (../shared/data)",
)
def test_zebrafish_real_data(tmp_path):
    out = run_example("zebrafish_real_data.py", tmp_path)
    assert "SIMULATED" in out and "Légaré" in out and "most salient regions" in out
    assert (tmp_path / "legare2025_fish6_simulated_desc-llmdecode.nwb").exists()
