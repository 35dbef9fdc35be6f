"""Choosing the default fit: one FitConfig variant on every kind of session the default
must win on (issue 13), with the time it takes (issue 14).

Cases (``--cases``; all by default):

* ``demo``: the session ``make demo`` writes (``nwb-llmdecode synth`` with the Makefile's
  arguments: 900 frames x 40 ROIs, 5 drivers, bouts);
* ``acc:READOUT``: the sessions of ``tests/test_lab_decoders.py`` (700 x 60, 4 drivers,
  population factors, decoys; ``interaction``, ``bouts``, ``linear``);
* ``dfit:SEED``: the sessions of ``tests/test_default_fit.py`` (900 x 30, bouts, seeds 1-3);
* ``real:SEED``: real zebrafish regions with the simulated tail of
  ``examples/zebrafish_real_data.py`` (``bench_lab.run_zebrafish``);
* ``lab:FRAMESxROIS:READOUT:SEED``: ``bench_lab.run_case`` (the lab-shape sessions).

Each case is fitted with ``FitConfig(seed=..., **overrides)`` through ``bench_lab.run_models``
(test R², precision@k of the default salience, training and salience seconds); one JSON
line per case with the variant's name and overrides, then a Markdown table.

python benchmarks/bench_default_choice.py --name candidate \\
    --set embedding_group_l1=0.03 patience=8 train_stride=4 epochs=20 \\
    --out benchmarks/results/default_choice.jsonl
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from bench_lab import _arrays, run_case, run_models, run_zebrafish

from nwb_llmdecode.synthetic import make_session

ZEBRAFISH = Path(__file__).resolve().parents[2] / "shared" / "data" / "zebrafish_legare2025_fish6"
ACCEPTANCE = {  # readout: (noise, seed) as in tests/test_lab_decoders.py
    "interaction": ("heteroscedastic", 11),
    "bouts": ("correlated", 12),
    "linear": ("heteroscedastic", 13),
}
ALL_CASES = [
    "demo",
    *(f"acc:{r}" for r in ACCEPTANCE),
    *(f"dfit:{s}" for s in (1, 2, 3)),
    "real:0",
    "real:1",
    "lab:1200x300:bouts:0",
    "lab:1200x300:bouts:1",
    "lab:1200x300:interaction:0",
    "lab:1200x300:linear:0",
]


def _demo(tmp: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    path = tmp / "sample_session.nwb"
    cmd = [sys.executable, "-m", "nwb_llmdecode", "synth", str(path), "--frames", "900"]
    cmd += ["--rois", "40", "--drivers", "5", "--readout", "bouts", "--json"]
    truth = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    a, b = _arrays(path)
    return a, b, np.asarray(truth["driver_rois"]), {"shape": "900x40 demo", "readout": "bouts"}


def _acceptance(tmp: Path, readout: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    noise, seed = ACCEPTANCE[readout]
    path = tmp / "session.nwb"
    truth = make_session(
        path,
        frames=700,
        rois=60,
        planes=2,
        n_drivers=4,
        readout=readout,
        population=1.0,
        decoys=2,
        spread_drivers=True,
        noise=noise,
        seed=seed,
        summary_images=False,
        fluorescence=False,
    )
    a, b = _arrays(path)
    return a, b, truth.driver_rois, {"shape": "700x60 acceptance", "readout": readout}


def _default_fit(tmp: Path, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    path = tmp / "session.nwb"
    truth = make_session(
        path, frames=900, rois=30, planes=1, n_drivers=5, seed=seed, readout="bouts"
    )
    a, b = _arrays(path)
    return a, b, truth.driver_rois, {"shape": "900x30 default-fit", "readout": "bouts"}


def run(
    case: str, overrides: dict[str, Any], steps: int, models: list[str] | None = None
) -> list[dict[str, Any]]:
    """Fit and explain one case; its rows, one per model of ``bench_lab.MODELS`` (by
    default only ``default``, with ``overrides``; the baselines ignore them)."""
    models = models or ["default"]
    kind, *rest = case.split(":")
    if kind == "real":
        return run_zebrafish(ZEBRAFISH, int(rest[0]), models, steps, overrides)
    if kind == "lab":
        shape, readout, seed = rest
        frames, rois = (int(v) for v in shape.lower().split("x"))
        return run_case(frames, rois, readout, int(seed), models, steps, overrides)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if kind == "demo":
            a, b, drivers, key = _demo(tmp)
            seed = 0
        elif kind == "acc":
            a, b, drivers, key = _acceptance(tmp, rest[0])
            seed = 0
        elif kind == "dfit":
            seed = int(rest[0])
            a, b, drivers, key = _default_fit(tmp, seed)
        else:
            raise SystemExit(f"unknown case {case!r}: expected one of {ALL_CASES}")
    return run_models(a, b, drivers, {**key, "seed": seed}, models, steps, overrides)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--name", required=True, help="the variant's name in the JSON lines")
    p.add_argument(
        "--set", nargs="*", default=[], metavar="OPTION=JSON", help="FitConfig overrides"
    )
    p.add_argument("--cases", nargs="+", default=ALL_CASES)
    p.add_argument(
        "--models",
        nargs="+",
        default=["default"],
        help="bench_lab models fitted on each case (default, default-random, ridge, lstm...)",
    )
    p.add_argument("--steps", type=int, default=16, help="integrated-gradients steps")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--out", type=Path, help="append JSON lines here")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = {k: json.loads(v) for k, v in (kv.split("=", 1) for kv in args.set)}
    rows = []
    for case in args.cases:
        got = [
            {**r, "variant": args.name, "overrides": overrides}
            for r in run(case, overrides, args.steps, args.models)
        ]
        rows.extend(got)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            with args.out.open("a") as f:
                f.writelines(json.dumps(r) + "\n" for r in got)
    head = ["variant", "model", "session", "readout", "seed", "test R²", "blend w", "p@k"]
    head += ["best epoch / run", "fit s", "salience s"]
    print("| " + " | ".join(head) + " |")
    print("|---|---|---|---|---|---:|---:|---:|---|---:|---:|")
    for r in rows:
        fit = r.get("fit", {})
        epochs = f"{fit.get('best_epoch', '?')} / {fit.get('epochs_run', len(r['curve']))}"
        print(
            f"| {r['variant']} | {r['model']} | {r['shape']} | {r['readout']} | {r['seed']} "
            f"| {r['test_r2']:.3f} "
            f"| {fit.get('blend_weight', '')} | {r.get('precision_at_k', float('nan')):.2f} "
            f"| {epochs} | {r['fit_s']} | {r.get('salience_s', '')} |"
        )


if __name__ == "__main__":
    main()
