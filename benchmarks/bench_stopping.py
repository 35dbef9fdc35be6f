"""Early stopping and stride of the default fit: quality and time of a few variants.

Issue 14, targets 1 and 3: the default fit trains until its validation loss has not improved
for ``patience`` epochs, on every ``train_stride``-th window. This fits ridge (lags and
penalty chosen on validation) and each variant of ``FitConfig`` (``--variants``, a JSON
object ``name -> FitConfig overrides``; ``{}`` is the default) on the same generated
sessions, one after the other in one process, and prints one JSON line per fit: test and
validation R², best epoch, epochs run and wall time of the fit (training and evaluation,
no salience).

Sessions (``--sessions``):

* ``demo``: the ``make demo`` session (900 x 40, 2 planes, bouts, seed 0);
* ``default-fit-1``, ``default-fit-2``: those of ``tests/test_default_fit.py`` (900 x 30,
  1 plane, bouts);
* ``lab-interaction``: that of ``tests/test_lab_decoders.py`` (700 x 60, 2 planes,
  population factors, decoys, heteroscedastic noise, interaction readout, seed 11).

Run it on an idle machine.

Examples
--------
python benchmarks/bench_stopping.py \\
  --variants '{"default": {}, "stride4": {"train_stride": 4}, "patience3": {"patience": 3}}'
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from nwb_llmdecode.config import FitConfig
from nwb_llmdecode.engine import fit_arrays
from nwb_llmdecode.io.read import load_session
from nwb_llmdecode.synthetic import make_session

SESSIONS: dict[str, dict[str, Any]] = {
    "demo": dict(frames=900, rois=40, n_drivers=5, readout="bouts", planes=2, seed=0),
    "default-fit-1": dict(frames=900, rois=30, n_drivers=5, readout="bouts", planes=1, seed=1),
    "default-fit-2": dict(frames=900, rois=30, n_drivers=5, readout="bouts", planes=1, seed=2),
    "lab-interaction": dict(
        frames=700,
        rois=60,
        planes=2,
        n_drivers=4,
        readout="interaction",
        population=1.0,
        decoys=2,
        spread_drivers=True,
        noise="heteroscedastic",
        seed=11,
        summary_images=False,
        fluorescence=False,
    ),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sessions", nargs="+", choices=list(SESSIONS), default=list(SESSIONS))
    p.add_argument("--variants", default='{"default": {}}', help="JSON: name -> overrides")
    p.add_argument("--out", type=Path, help="also append the JSON lines to this file")
    args = p.parse_args()
    variants = {"ridge": {"backbone": "ridge"}, **json.loads(args.variants)}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.sessions:
            path = Path(tmp) / f"{name}.nwb"
            make_session(path, **SESSIONS[name])
            ds = load_session(path)
            activity, behavior = ds["activity"].values, ds["behavior"].values
            for vname, overrides in variants.items():
                t0 = time.perf_counter()
                res = fit_arrays(activity, behavior, config=FitConfig(**overrides))
                chosen = res.extra.get("fit", {})
                row = {
                    "session": name,
                    "variant": vname,
                    "overrides": overrides,
                    "test_r2": round(float(np.nanmean(res.metric("r2", "test"))), 4),
                    "val_r2": round(float(np.nanmean(res.metric("r2", "validation"))), 4),
                    "best_epoch": chosen.get("best_epoch"),
                    "epochs_run": chosen.get("epochs_run"),
                    "blend_weight": chosen.get("blend_weight"),
                    "fit_s": round(time.perf_counter() - t0, 1),
                }
                line = json.dumps(row)
                print(line, flush=True)
                if args.out is not None:
                    with args.out.open("a") as f:
                        f.write(line + "\n")


if __name__ == "__main__":
    main()
