"""Salience: driver recovery (precision@k) and time of each attribution method.

Two measurements:

``--mode recovery`` (default): for each seed, writes a bout-like synthetic session
(``make_session(..., readout="bouts")``), trains the default decoder on it once and runs
every salience method on the same trained model over the test block. Prints one JSON line
per seed and method: precision@k with k = number of planted drivers, seconds, and the
integrated-gradients convergence delta.

``--mode timing``: the cost of salience on a large session (e.g. 5,000 ROIs). The decoder is
trained only briefly (``--steps`` batches): the cost of attribution depends on the
architecture and the block length, not on how well the model is trained.

Each method runs in every ``--variants`` entry, ``IMPLEMENTATION-PRECISION``, on the same
trained model, variants alternating: ``captum-fp32`` is the code path before the batched
one (one captum call per channel, weight gradients on, float32), ``batched-fp32`` and
``batched-bf16`` the default path (all channels from one forward, steps and windows
batched together, input gradients only) in float32 and under bf16 autocast. Each row
says its ``speedup`` over the first variant.

Examples
--------
python benchmarks/bench_salience.py --seeds 1 2 3
python benchmarks/bench_salience.py --mode timing --frames 1000 --rois 5000
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from nwb_llmdecode import load_session
from nwb_llmdecode.config import SALIENCE_METHODS, FitConfig
from nwb_llmdecode.engine import fit_arrays
from nwb_llmdecode.salience import compute_salience, precision_at_k
from nwb_llmdecode.synthetic import make_session

METHODS = [m for m in SALIENCE_METHODS if m != "none"]


def trained_model(
    path: Path, *, frames: int, rois: int, drivers: int, seed: int, steps: int | None = None
) -> tuple:
    """Write a bout-like session at ``path`` and fit the default decoder on it (to its early
    stop, or for ``steps`` batches only: the timing setting). Returns the truth, the fit,
    the normalised activity, the test block ``(start, stop)``, the config and fit seconds."""
    truth = make_session(
        path,
        frames=frames,
        rois=rois,
        planes=1,
        n_drivers=drivers,
        seed=seed,
        readout="bouts",
        # pixel masks: dense image masks of thousands of ROIs would dominate the file
        mask="pixel",
        summary_images=False,
    )
    ds = load_session(path)
    activity = ds.activity.values.astype(np.float32)
    behavior = ds.behavior.values.astype(np.float32)
    cfg = FitConfig(seed=seed, salience="none")
    if steps is not None:
        cfg = cfg.replace(epochs=1, max_windows_per_epoch=steps * cfg.batch_size)
    t0 = time.perf_counter()
    res = fit_arrays(activity, behavior, config=cfg)
    fit_s = time.perf_counter() - t0
    _, start, stop = res.splits[2]
    return truth, res, res.normalization.activity(activity), (start, stop), cfg, fit_s


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mode", choices=["recovery", "timing"], default="recovery")
    p.add_argument("--frames", type=int, default=900)
    p.add_argument("--rois", type=int, default=30)
    p.add_argument("--drivers", type=int, default=5)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--steps", type=int, default=20, help="training batches (timing mode)")
    p.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    p.add_argument(
        "--variants",
        nargs="+",
        default=["captum-fp32", "batched-fp32", "batched-bf16"],
        help="IMPLEMENTATION-PRECISION[-sSTRIDE]: captum or batched, fp32 or bf16, and an "
        "optional window stride (batched-bf16-s5: every 5th window)",
    )
    p.add_argument("--repeats", type=int, default=1, help="alternating rounds (timing)")
    p.add_argument("--out", type=Path, default=None, help="append JSON lines to this file")
    args = p.parse_args(argv)

    def emit(row: dict) -> None:
        line = json.dumps(row)
        print(line, flush=True)
        if args.out is not None:
            with args.out.open("a") as f:
                f.write(line + "\n")

    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            path = Path(tmp) / f"session-{seed}.nwb"
            truth, res, z, (start, stop), cfg, fit_s = trained_model(
                path,
                frames=args.frames,
                rois=args.rois,
                drivers=args.drivers,
                seed=seed,
                steps=args.steps if args.mode == "timing" else None,
            )
            first: dict[str, float] = {}
            for method in args.methods:
                for _ in range(args.repeats):
                    for variant in args.variants:
                        impl, prec, *rest = variant.split("-")
                        stride = int(rest[0][1:]) if rest else 1
                        if hasattr(res.model, "autocast"):
                            res.model.autocast = torch.bfloat16 if prec == "bf16" else torch.float32
                        t0 = time.perf_counter()
                        sal = compute_salience(
                            res.model,
                            z,
                            block=(start, stop),
                            seq_len=cfg.seq_len,
                            method=method,
                            batch_size=cfg.batch_size,
                            implementation=impl,
                            stride=stride,
                        )
                        seconds = time.perf_counter() - t0
                        first.setdefault(method, seconds)
                        emit(
                            {
                                "mode": args.mode,
                                "seed": seed,
                                "method": method,
                                "variant": variant,
                                "frames": args.frames,
                                "rois": args.rois,
                                "test_frames": stop - start,
                                "n_windows": int(sal.attrs["n_windows"]),
                                "precision_at_k": precision_at_k(
                                    sal["salience"].values, truth.driver_rois
                                ),
                                "k": args.drivers,
                                "test_r2": round(float(res.metric("r2", "test").mean()), 3),
                                "convergence_delta": sal.attrs.get("convergence_delta"),
                                "seconds": round(seconds, 2),
                                "speedup": round(first[method] / seconds, 2),
                                "fit_seconds": round(fit_s, 1),
                                "peak_rss_gib": round(
                                    resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2
                                ),
                                "threads": torch.get_num_threads(),
                            }
                        )


if __name__ == "__main__":
    main()
