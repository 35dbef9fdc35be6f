"""benchmarks/gpu_check.sh --dry-run: every GPU benchmark configuration builds and trains
one step (tiny, on the CPU), so the script is ready when a GPU machine is lent."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"
CASES = (
    "minilm full",
    "minilm lora",
    "smollm2 full",
    "smollm2 lora",
    "llama-1B full bf16",
    "llama-1B full bf16 + grad ckpt",
    "llama-1B lora bf16",
)


def test_gpu_check_dry_run_runs_every_configuration() -> None:
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1")
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run"], capture_output=True, text=True, env=env, timeout=240
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "| case | batch | windows/s |" in out
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| ")}
    for case in CASES:  # each trained: a number of windows/s, no error
        cells = [c.strip() for c in rows[case].split("|")[1:-1]]
        assert float(cells[2]) > 0, rows[case]
        assert float(cells[3]) > 0, rows[case]  # FLOP/window counted from the model
    assert "needs CUDA" in rows["llama-1B lora 4-bit"]
    assert '"error"' not in out
