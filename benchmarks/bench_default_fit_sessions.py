"""The sessions of ``tests/test_default_fit.py`` (900 x 30, bouts, one plane, 5 drivers,
seeds 1-3): the default fit (since it became the default: the group lasso
``embedding_group_l1=0.03`` with ``patience=8``) against the previous default
(``embedding_group_l1=0, patience=5``), each fitted and explained by
``bench_lab.run_models`` (test R², precision@k of the default salience, wall time). One JSON
line per fit, then the table (``benchmarks/RESULTS.md``, issue 13).

python benchmarks/bench_default_fit_sessions.py --out benchmarks/results/default_fit_sessions.jsonl
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from bench_lab import _arrays, run_models, table

from nwb_llmdecode.synthetic import make_session

VARIANTS = {"previous": {"embedding_group_l1": 0.0, "patience": 5}, "default": {}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    p.add_argument("--out", type=Path, help="append JSON lines here")
    args = p.parse_args()
    rows = []
    for seed in args.seeds:
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "session.nwb"
            truth = make_session(
                path, frames=900, rois=30, planes=1, n_drivers=5, seed=seed, readout="bouts"
            )
            a, b = _arrays(path)
        for variant, overrides in VARIANTS.items():
            key = {"shape": f"900x30 {variant}", "readout": "bouts", "seed": seed}
            got = run_models(a, b, truth.driver_rois, key, ["default"], 16, overrides)
            rows.extend(got)
            if args.out:
                with args.out.open("a") as f:
                    f.writelines(json.dumps(r) + "\n" for r in got)
    print(table(rows))


if __name__ == "__main__":
    main()
