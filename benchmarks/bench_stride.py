"""Less redundant training: time to a validation loss for each training-window stride.

Issue 14, target 3. With stride-1 windows every frame is trained on ``seq_len`` times an
epoch. ``FitConfig.train_stride = s`` takes every s-th window from a random offset each
epoch, so an epoch costs about 1/s as much and early stopping looks at the validation
loss s times as often. For each stride this fits the default decoder on the same session
(no early stopping, a fixed budget of frame-visits: ``--budget`` stride-1 epochs' worth)
and prints the validation loss after each epoch against the wall time, then the time each
stride needed to first reach the best validation loss the *worst* stride reached (the
"equal validation loss" of the issue), and the test R² of its best epoch.

Strides run one after the other in one process on one session; run it on an idle machine.

Examples
--------
python benchmarks/bench_stride.py --strides 1 2 4 8 --budget 8
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from nwb_llmdecode.config import FitConfig
from nwb_llmdecode.engine import fit_arrays
from nwb_llmdecode.io.read import load_session
from nwb_llmdecode.synthetic import make_session


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--strides", nargs="+", type=int, default=[1, 2, 4, 8])
    p.add_argument("--budget", type=float, default=8.0, help="stride-1 epochs of work")
    p.add_argument("--frames", type=int, default=900)
    p.add_argument("--rois", type=int, default=40)
    p.add_argument("--readout", default="bouts")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "s.nwb"
        make_session(
            path,
            frames=args.frames,
            rois=args.rois,
            planes=2,
            n_drivers=5,
            readout=args.readout,
            seed=args.seed,
        )
        ds = load_session(path)
        a, b = ds["activity"].values, ds["behavior"].values
    runs = {}
    for stride in args.strides:
        epochs = max(1, round(args.budget * stride))
        cfg = FitConfig(train_stride=stride, epochs=epochs, patience=0, salience="none")
        t0 = time.perf_counter()
        res = fit_arrays(a, b, config=cfg)
        wall = time.perf_counter() - t0
        t = np.cumsum([h["seconds"] for h in res.history])
        val = [h["val_loss"] for h in res.history]
        runs[stride] = (t, val)
        row = {
            "stride": stride,
            "epochs": epochs,
            "wall_s": round(wall, 1),
            "best_val_loss": round(min(val), 4),
            "test_r2": round(float(np.nanmean(res.metric("r2", "test"))), 3),
            "curve": [[round(float(x), 1), round(v, 4)] for x, v in zip(t, val, strict=True)],
        }
        print(json.dumps(row), flush=True)
    target = max(min(v) for _, v in runs.values())
    print(f"| stride | seconds to validation loss <= {target:.4f} |\n|---|---:|")
    for stride, (t, val) in runs.items():
        hit = next((float(x) for x, v in zip(t, val, strict=True) if v <= target), float("nan"))
        print(f"| {stride} | {hit:.1f} |")


if __name__ == "__main__":
    main()
