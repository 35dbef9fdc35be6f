"""The sessions of tests/test_default_fit.py (900 x 30, bouts, seeds 1-3): the default fit
against the group-lasso candidate (embedding_group_l1=0.03, patience=8); test R², precision@k
of the default salience, fit seconds. One JSON line per fit (benchmarks/RESULTS.md, issue 13).

python benchmarks/bench_default_fit_sessions.py > benchmarks/results/default_fit_sessions.jsonl
"""

import json
import tempfile
import time
from pathlib import Path

import numpy as np

from nwb_llmdecode import load_session
from nwb_llmdecode.config import FitConfig
from nwb_llmdecode.engine import fit_arrays
from nwb_llmdecode.salience import compute_salience, precision_at_k
from nwb_llmdecode.synthetic import make_session

for seed in (1, 2, 3):
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "s.nwb"
        truth = make_session(
            p, frames=900, rois=30, planes=1, n_drivers=5, seed=seed, readout="bouts"
        )
        ds = load_session(p)
        a, b = ds.activity.values.astype(np.float32), ds.behavior.values.astype(np.float32)
    for name, extra in (("default", {}), ("cand", {"embedding_group_l1": 0.03, "patience": 8})):
        cfg = FitConfig(seed=seed, **extra)
        t = time.perf_counter()
        res = fit_arrays(a, b, config=cfg)
        s = time.perf_counter() - t
        test = next(blk for blk in res.blocks if blk.name == "test")
        sal = compute_salience(
            res.model,
            res.normalization.activity(a),
            block=(test.start, test.stop),
            seq_len=cfg.seq_len,
            method=cfg.salience,
            stride=cfg.salience_window_stride,
        )
        print(
            json.dumps(
                {
                    "seed": seed,
                    "model": name,
                    "test_r2": float(np.nanmean(res.metric("r2", "test"))),
                    "p_at_k": precision_at_k(sal["salience"].values, truth.driver_rois),
                    "fit_s": round(s, 1),
                    "epochs": len(res.history),
                }
            ),
            flush=True,
        )
