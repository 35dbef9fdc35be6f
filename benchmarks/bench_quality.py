"""Decoding quality of the default fit against the baselines, over seeds.

For each seed, writes a synthetic session with ``nwb_llmdecode.synthetic.make_session``
(``--frames`` x ``--rois``, the session's seed = the fit's seed), loads it with
``load_session`` and fits every model of ``--models`` on the same split. Prints one JSON
line per fit (test R² per channel and mean, validation R², best epoch, seconds) and, at
the end, a Markdown table of the mean test R² per model and seed.

Model names: ``minilm`` (the default configuration), ``minilm-random`` (init random),
``minilm-linear`` / ``minilm-linear-random`` (the paper's frame-by-frame linear embedding),
``minilm-frozen``, ``minilm-lora``, ``smollm2``, ``ridge`` (lags and alpha chosen on the
validation block), ``ridge-20`` (all 20 lags), ``lstm``, ``reservoir``, ``naive`` (the
paper's recipe done plainly: frozen MiniLM, lr 1e-4, no normalisation, no early stopping).

Examples
--------
python benchmarks/bench_quality.py --seeds 0 1 2 --out benchmarks/quality.jsonl
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from nwb_llmdecode.config import FitConfig
from nwb_llmdecode.engine import fit_arrays

MODELS: dict[str, dict[str, Any]] = {
    "minilm": {},
    "minilm-random": {"init": "random"},
    "minilm-linear": {"embedding": "linear"},
    "minilm-linear-random": {"embedding": "linear", "init": "random"},
    "minilm-frozen": {"train_mode": "frozen"},
    "minilm-lora": {"train_mode": "lora"},
    "smollm2": {"backbone": "smollm2", "train_mode": "lora"},
    "ridge": {"backbone": "ridge"},
    "ridge-20": {"backbone": "ridge", "ridge": {"lags": 20}},
    "lstm": {"backbone": "lstm"},
    "reservoir": {"backbone": "reservoir"},
}


def naive_fit(activity: np.ndarray, behavior: np.ndarray, seed: int, epochs: int) -> float:
    """The recipe without our care: raw inputs, lr 1e-4, frozen, no early stopping.

    Same split and stitching as fit_arrays; returns the mean test R².
    """
    import torch

    from nwb_llmdecode.engine import compute_metrics, predict_blocks
    from nwb_llmdecode.models import Decoder, LinearEmbedding, apply_train_mode, load_backbone
    from nwb_llmdecode.windows import iter_batches, split_blocks, window_starts

    torch.manual_seed(seed)
    blocks = split_blocks(len(activity), seq_len=20)
    bb = load_backbone("minilm")
    apply_train_mode(bb, "frozen")
    model = Decoder(LinearEmbedding(activity.shape[1], bb.hidden_size), bb, behavior.shape[1])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    x, y = torch.from_numpy(activity), torch.from_numpy(behavior)
    starts = window_starts(blocks[0].start, blocks[0].stop, 20)
    rng = np.random.default_rng(seed)
    seq = torch.arange(20)
    for _ in range(epochs):
        model.train()
        for batch in iter_batches(starts, 32, rng=rng):
            ii = torch.as_tensor(batch)[:, None] + seq
            loss = torch.nn.functional.mse_loss(model(x[ii]), y[ii])
            opt.zero_grad()
            loss.backward()
            opt.step()
    pred = predict_blocks(model, activity, blocks, seq_len=20)
    rows = compute_metrics(pred, behavior, blocks)
    return float(np.mean([r["r2"] for r in rows if r["split"] == "test"]))


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=1200)
    p.add_argument("--rois", type=int, default=300)
    p.add_argument("--drivers", type=int, default=10)
    p.add_argument("--planes", type=int, default=2)
    p.add_argument("--readout", choices=["linear", "bouts"], default="bouts")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument(
        "--models",
        nargs="+",
        default=["minilm", "minilm-random", "ridge", "ridge-20", "lstm", "reservoir"],
    )
    p.add_argument("--epochs", type=int, default=None, help="override FitConfig.epochs")
    p.add_argument("--naive-epochs", type=int, default=10)
    p.add_argument("--out", type=Path, default=None, help="append JSON lines to this file")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    from nwb_llmdecode import load_session
    from nwb_llmdecode.synthetic import make_session

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            path = Path(tmp) / f"session-{seed}.nwb"
            make_session(
                path,
                frames=args.frames,
                rois=args.rois,
                planes=args.planes,
                n_drivers=args.drivers,
                seed=seed,
                readout=args.readout,
            )
            ds = load_session(path)
            activity = ds.activity.values.astype(np.float32)
            behavior = ds.behavior.values.astype(np.float32)
            for name in args.models:
                t0 = time.perf_counter()
                if name == "naive":
                    r2 = naive_fit(activity, behavior, seed, args.naive_epochs)
                    row = {"model": name, "seed": seed, "test_r2": r2}
                else:
                    opts = dict(MODELS[name])
                    if args.epochs is not None and name not in ("ridge", "ridge-20", "reservoir"):
                        opts["epochs"] = args.epochs
                    res = fit_arrays(activity, behavior, config=FitConfig(seed=seed, **opts))
                    test = res.metric("r2", "test")
                    row = {
                        "model": name,
                        "seed": seed,
                        "test_r2": float(np.mean(test)),
                        "test_r2_channels": [round(float(v), 4) for v in test],
                        "val_r2": float(np.mean(res.metric("r2", "validation"))),
                        "best_epoch": res.best_epoch,
                        "epochs_run": len(res.history) if res.best_epoch else 0,
                        "selection": {
                            k: v for k, v in res.history[0].items() if k in ("lags", "alpha")
                        }
                        if not res.best_epoch
                        else {},
                    }
                row.update(
                    frames=args.frames,
                    rois=args.rois,
                    readout=args.readout,
                    seconds=round(time.perf_counter() - t0, 1),
                )
                rows.append(row)
                line = json.dumps(row)
                print(line, flush=True)
                if args.out is not None:
                    with args.out.open("a") as f:
                        f.write(line + "\n")
    print()
    print("| model | " + " | ".join(f"seed {s}" for s in args.seeds) + " | mean |")
    print("|---|" + "---|" * (len(args.seeds) + 1))
    for name in args.models:
        vals = [r["test_r2"] for r in rows if r["model"] == name]
        cells = " | ".join(f"{v:.3f}" for v in vals)
        print(f"| {name} | {cells} | {np.mean(vals):.3f} |")
    return rows


if __name__ == "__main__":
    main()
