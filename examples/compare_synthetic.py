"""The paper's comparison on a synthetic session: LLM backbones vs baselines, seeds, stats.

Runs ``compare`` on a session with planted driver ROIs: MiniLM pretrained vs random
initialisation, ridge, LSTM and the reservoir (echo-state) baseline, at two sequence
lengths, three seeds each; writes results.csv, stats.csv, figures and report.html.
Finishes in under ten minutes on a laptop CPU (``--fast``: about a minute).

Three seeds keep the example short, and ``compare`` warns about it: no test across 3
seeds can reach p < 0.25, as the report's summary says. For results you mean to
publish, keep ``compare``'s default of 10 seeds (the paper's).

Run: ``python examples/compare_synthetic.py [--fast] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from nwb_llmdecode.compare import CompareGrid, run_compare
from nwb_llmdecode.config import FitConfig
from nwb_llmdecode.synthetic import make_session


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fast", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    work = args.out or Path(tempfile.mkdtemp(prefix="llmdecode-compare-"))
    work.mkdir(parents=True, exist_ok=True)
    size = dict(frames=300, rois=24) if args.fast else dict(frames=1200, rois=100)
    truth = make_session(work / "session.nwb", planes=2, seed=0, overwrite=True, **size)
    grid = CompareGrid(
        models=("minilm", "ridge", "lstm", "reservoir"),
        inits=("pretrained", "random"),
        seq_lens=(5,) if args.fast else (5, 10),
        seeds=2 if args.fast else 3,
    )
    base = FitConfig(epochs=1 if args.fast else 15)
    report = run_compare(
        truth.path, grid=grid, base=base, report_dir=work / "report", overwrite=True
    )
    summary = report.results.groupby("model")["test_r2_mean"].agg(["mean", "count"])
    print(summary.to_string())
    print(f"report: {report.html}")


if __name__ == "__main__":
    main()
