"""Which decoders to blend, chosen on validation: transformer, LSTM and ridge (issue 13).

The default fit blends the trained transformer with its ridge base, the weight chosen on
the validation block. Does a blend that can also pick the LSTM (fitted with the same
prior, a few seconds more) do better on test, or does a three-way choice on a short
validation block only select more noise? This benchmark answers it post hoc, from one fit
of each part per session: the default fit is run as usual, with its blend step wrapped so
that the transformer's and ridge's predictions on every block are kept; the LSTM is fitted
on the same split; then every rule below picks its weights on the validation block and is
scored on the test block:

* ``transformer``, ``lstm``, ``ridge``: each part alone;
* ``blend2``: transformer and ridge, weights 0, 0.1, ..., 1 (the default's own rule; its
  test R² must equal the default fit's, which the row checks);
* ``lstm2``: LSTM and ridge, the same grid;
* ``blend3``: transformer, LSTM and ridge on the simplex grid of step 0.1 (66 weightings);
  ties go to the larger ridge share, then to the larger LSTM share.

One JSON line per session (``bench_default_choice`` cases), then a Markdown table.

python benchmarks/bench_stack.py --threads 1 --out benchmarks/results/stack.jsonl \\
    --cases demo acc:interaction lab:900x300:bouts:0
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from bench_default_choice import ACCEPTANCE, ALL_CASES, ZEBRAFISH, _acceptance, _default_fit, _demo
from bench_lab import lab_session, zebrafish_session

import nwb_llmdecode.engine.train as train_mod
from nwb_llmdecode.config import FitConfig
from nwb_llmdecode.engine import fit_arrays
from nwb_llmdecode.engine.evaluate import compute_metrics
from nwb_llmdecode.engine.train import BLEND3_WEIGHTS, BLEND_WEIGHTS

GRID2 = BLEND_WEIGHTS
GRID3 = BLEND3_WEIGHTS  # (transformer, lstm, ridge): the engine's own grids


def _capture_parts(store: dict[str, np.ndarray]) -> Any:
    """A stand-in for ``train._blend`` that first keeps the transformer's and ridge's
    predictions on every block (normalised units), then blends as the original does."""
    original = train_mod._blend

    def wrapped(model, zt, yn, blocks, config, predict=train_mod.predict_blocks):
        head = {k: v.detach().clone() for k, v in model.head.state_dict().items()}
        base = {k: v.clone() for k, v in model.base.state_dict().items()}
        with torch.no_grad():
            model.base.weights.zero_()
            model.base.bias.zero_()
        store["transformer"] = predict(
            model, zt, blocks, seq_len=config.seq_len, batch_size=config.eval_batch_size
        )
        model.base.load_state_dict(base)
        with torch.no_grad():
            for p in model.head.parameters():
                p.zero_()
        store["ridge"] = predict(
            model, zt, blocks, seq_len=config.seq_len, batch_size=config.eval_batch_size
        )
        model.head.load_state_dict(head)
        return original(model, zt, yn, blocks, config, predict)

    return wrapped


def _load(case: str, tmp: Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    kind, *rest = case.split(":")
    if kind == "demo":
        a, b, _, key = _demo(tmp)
        return a, b, {**key, "seed": 0}
    if kind == "acc":
        if rest[0] not in ACCEPTANCE:
            raise SystemExit(f"unknown readout in {case!r}")
        a, b, _, key = _acceptance(tmp, rest[0])
        return a, b, {**key, "seed": 0}
    if kind == "dfit":
        a, b, _, key = _default_fit(tmp, int(rest[0]))
        return a, b, {**key, "seed": int(rest[0])}
    if kind == "lab":
        shape, readout, seed = rest
        frames, rois = (int(v) for v in shape.lower().split("x"))
        a, b, _, key = lab_session(frames, rois, readout, int(seed))
        return a, b, key
    if kind == "real":
        a, b, _, key = zebrafish_session(ZEBRAFISH, int(rest[0]))
        return a, b, key
    raise SystemExit(f"unknown case {case!r}: expected one of {ALL_CASES}")


def run(case: str) -> dict[str, Any]:
    """Fit the default (keeping its parts) and the LSTM on one case; score every rule."""
    with tempfile.TemporaryDirectory() as d:
        a, b, key = _load(case, Path(d))
    seed = int(key["seed"])
    parts: dict[str, np.ndarray] = {}
    original = train_mod._blend
    train_mod._blend = _capture_parts(parts)
    try:
        t0 = time.perf_counter()
        res = fit_arrays(a, b, config=FitConfig(seed=seed))
        default_s = time.perf_counter() - t0
    finally:
        train_mod._blend = original
    t0 = time.perf_counter()
    lstm = fit_arrays(a, b, config=FitConfig(seed=seed, backbone="lstm"))
    lstm_s = time.perf_counter() - t0
    norm, blocks = res.normalization, res.blocks
    parts["lstm"] = norm.behavior(lstm.predictions)
    yn = norm.behavior(b)
    val = next(blk for blk in blocks if blk.name == "validation")
    sl = slice(val.start, val.stop)

    def val_loss(p: np.ndarray) -> float:
        ok = np.isfinite(yn[sl]) & np.isfinite(p[sl])
        return float(np.mean((p[sl][ok] - yn[sl][ok]) ** 2))

    def test_r2(p: np.ndarray) -> float:
        m = compute_metrics(norm.behavior_units(p), b, blocks)
        return float(np.nanmean([r["r2"] for r in m if r["split"] == "test"]))

    t_, l_, r_ = parts["transformer"], parts["lstm"], parts["ridge"]
    rules: dict[str, Any] = {}
    for name, p in (("transformer", t_), ("lstm", l_), ("ridge", r_)):
        rules[name] = {"val_loss": val_loss(p), "test_r2": test_r2(p)}
    for name, (x, y) in (("blend2", (t_, r_)), ("lstm2", (l_, r_))):
        losses = [val_loss(w * x + (1 - w) * y) for w in GRID2]
        i = min(range(len(GRID2)), key=lambda k: (losses[k], GRID2[k]))
        w = GRID2[i]
        rules[name] = {"weights": [w, round(1 - w, 1)], "val_loss": losses[i]}
        rules[name]["test_r2"] = test_r2(w * x + (1 - w) * y)
    losses3 = [val_loss(wt * t_ + wl * l_ + wr * r_) for wt, wl, wr in GRID3]
    i = min(range(len(GRID3)), key=lambda k: (losses3[k], -GRID3[k][2], -GRID3[k][1]))
    wt, wl, wr = GRID3[i]
    rules["blend3"] = {
        "weights": [wt, wl, wr],
        "val_loss": losses3[i],
        "test_r2": test_r2(wt * t_ + wl * l_ + wr * r_),
    }
    row = {
        **key,
        "case": case,
        "default_test_r2": float(np.nanmean(res.metric("r2", "test"))),
        "default_blend_weight": res.extra["fit"].get("blend_weight"),
        "default_s": round(default_s, 1),
        "lstm_s": round(lstm_s, 1),
        "rules": rules,
    }
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--cases", nargs="+", default=ALL_CASES)
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--out", type=Path, help="append JSON lines here")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for case in args.cases:
        row = run(case)
        rows.append(row)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            with args.out.open("a") as f:
                f.write(json.dumps(row) + "\n")
    names = ["ridge", "transformer", "lstm", "blend2", "lstm2", "blend3"]
    print("| session | readout | seed | " + " | ".join(names) + " | blend3 weights (T, L, R) |")
    print("|---|---|---|" + "---:|" * len(names) + "---|")
    for r in rows:
        cells = " | ".join(f"{r['rules'][n]['test_r2']:.3f}" for n in names)
        print(
            f"| {r['shape']} | {r['readout']} | {r['seed']} | {cells} "
            f"| {r['rules']['blend3']['weights']} |"
        )


if __name__ == "__main__":
    main()
