"""Quickstart: decode tail angles from a synthetic session and find the driver neurons.

Run it with ``python examples/quickstart.py`` (add ``--fast`` for a one-minute version).
Everything stays in NWB: the session is written with pynwb, the results are a second NWB
file that any NWB reader opens.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from nwb_llmdecode import load_session
from nwb_llmdecode.config import FitConfig
from nwb_llmdecode.pipeline import fit
from nwb_llmdecode.salience import precision_at_k
from nwb_llmdecode.synthetic import make_session


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fast", action="store_true", help="a small session and few epochs")
    parser.add_argument("--out", type=Path, default=None, help="working directory")
    args = parser.parse_args()
    work = args.out or Path(tempfile.mkdtemp(prefix="llmdecode-quickstart-"))
    work.mkdir(parents=True, exist_ok=True)

    # 1. A session with 10 planted driver ROIs that determine the tail angles.
    size = (
        dict(frames=300, rois=30, planes=2) if args.fast else dict(frames=2000, rois=200, planes=2)
    )
    truth = make_session(work / "session.nwb", seed=0, overwrite=True, **size)
    print(
        f"session: {truth.path} ({truth.n_rois} ROIs, {truth.n_frames} frames); "
        f"drivers {truth.driver_rois.tolist()}"
    )

    # 2. What is in it, as xarray.
    ds = load_session(truth.path)
    print(ds)

    # 3. Fit the default decoder (MiniLM backbone, offline) and compute salience.
    # fast mode (CI): two epochs and the cheaper grad x input attribution
    config = FitConfig(
        epochs=2 if args.fast else 30,
        salience="grad-x-input" if args.fast else "integrated-gradients",
    )
    report = fit(truth.path, config=config, overwrite=True)
    print(f"\nresults: {report.output}")
    for m in report.metrics:
        if m["split"] == "test":
            print(
                f"  {m['behavior']}[{m['channel']}]: test R² {m['r2']:.3f}, "
                f"RMSE {m['rmse']:.3f} rad"
            )

    # 4. Did salience find the drivers?
    sal = report.results.salience
    if sal is not None:
        p = precision_at_k(sal["salience"].values, truth.driver_rois)
        top = np.argsort(-sal["salience"].values)[: len(truth.driver_rois)]
        print(f"\ntop-{len(top)} salient ROIs: {sorted(top.tolist())}")
        print(f"precision@k against the planted drivers: {p:.0%}")


if __name__ == "__main__":
    main()
