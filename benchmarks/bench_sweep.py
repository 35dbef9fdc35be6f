"""Serial vs Dask ``compare``: the same grid on ``--scheduler local`` and ``processes:N``.

Runs the grid once on each scheduler, in alternating order over ``--repeats`` (so both
see the same machine load), and prints wall time, runs per minute and the speed-up, plus
the largest difference in test R² between the two (same seeds: the same numbers up to
float rounding across thread counts). Results are appended as JSON lines to ``--out``.

    python benchmarks/bench_sweep.py --models ridge,lstm,reservoir,minilm --seq-len 10 \\
        --seeds 3 --epochs 2 --workers 2
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from nwb_llmdecode.compare import CompareGrid, run_compare
from nwb_llmdecode.config import FitConfig
from nwb_llmdecode.sweep import read_rows
from nwb_llmdecode.synthetic import make_session


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--frames", type=int, default=900)
    p.add_argument("--rois", type=int, default=40)
    p.add_argument("--models", default="ridge,lstm,reservoir,minilm")
    p.add_argument("--seq-len", default="10")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/sweep.jsonl"))
    args = p.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    truth = make_session(
        work / "session.nwb",
        frames=args.frames,
        rois=args.rois,
        planes=2,
        n_drivers=5,
        readout="bouts",
    )
    grid = CompareGrid(
        models=tuple(args.models.split(",")),
        inits=("pretrained",),
        seq_lens=tuple(int(v) for v in args.seq_len.split(",")),
        seeds=args.seeds,
    )
    base = FitConfig(epochs=args.epochs)
    n_runs = len(grid.runs(base))
    schedulers = ["local", f"processes:{args.workers}"]
    rows = []
    for rep in range(args.repeats):
        order = schedulers if rep % 2 == 0 else schedulers[::-1]
        tables = {}
        for name in order:
            t0 = time.perf_counter()
            report = run_compare(
                truth.path,
                grid=grid,
                base=base,
                report_dir=work / f"{name.replace(':', '-')}-{rep}",
                scheduler=name,
            )
            wall = time.perf_counter() - t0
            tables[name] = read_rows(report.directory / "results.csv").sort_values(
                ["model", "seq_len", "seed"]
            )
            rows.append({"scheduler": name, "repeat": rep, "runs": n_runs, "wall_s": wall})
            print(f"{name:>12}: {n_runs} runs in {wall:7.1f} s ({60 * n_runs / wall:.1f} runs/min)")
        diff = float(
            np.max(
                np.abs(
                    tables[schedulers[0]]["test_r2_mean"].to_numpy()
                    - tables[schedulers[1]]["test_r2_mean"].to_numpy()
                )
            )
        )
        print(f"largest |Δ test R²| between the schedulers: {diff:.2e}")
    walls = {s: np.mean([r["wall_s"] for r in rows if r["scheduler"] == s]) for s in schedulers}
    speedup = walls[schedulers[0]] / walls[schedulers[1]]
    print(f"speed-up of {schedulers[1]} over local: {speedup:.2f}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a") as fh:
        fh.write(
            json.dumps(
                {
                    "grid": {
                        "models": grid.models,
                        "seq_lens": grid.seq_lens,
                        "seeds": grid.seeds,
                        "epochs": args.epochs,
                        "session": [args.frames, args.rois],
                    },
                    "runs": rows,
                    "speedup": speedup,
                    "max_abs_r2_diff": diff,
                }
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
