"""Training throughput and peak memory of fit_arrays for a given session size and backbone.

Runs one short training epoch (``--steps`` optimisation steps) on random activity of
``--frames`` x ``--rois`` (float32) and prints one JSON line with windows/s of training
and of evaluation, peak resident memory (RSS) and, on CUDA, the peak allocated GPU memory.
With ``--out FILE`` the line is also appended to FILE.

Examples
--------
python benchmarks/bench_train.py --frames 1200 --rois 300 --backbone minilm --steps 20
python benchmarks/bench_train.py --frames 5000 --rois 20000 --train-mode frozen --steps 200
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

from nwb_llmdecode.config import FitConfig
from nwb_llmdecode.engine import fit_arrays


def _rss_mib() -> float:
    # ru_maxrss is KiB on Linux, bytes on macOS
    scale = 1024 * 1024 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / scale / 1024


def make_data(frames: int, rois: int, channels: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random activity (float32, generated in chunks) and behaviour read out from 10 ROIs."""
    rng = np.random.default_rng(seed)
    activity = np.empty((frames, rois), dtype=np.float32)
    for i in range(0, frames, 500):
        activity[i : i + 500] = rng.standard_normal((min(500, frames - i), rois), dtype=np.float32)
    w = rng.standard_normal((min(10, rois), channels)).astype(np.float32)
    behavior = np.tanh(activity[:, : w.shape[0]] @ w / 3.0).astype(np.float32)
    return activity, behavior


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=1200)
    p.add_argument("--rois", type=int, default=300)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--backbone", default="minilm")
    p.add_argument("--train-mode", default="frozen", choices=["frozen", "lora", "full"])
    p.add_argument("--init", default="pretrained", choices=["pretrained", "random"])
    p.add_argument("--seq-len", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=50, help="optimisation steps to time")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--quantize", default=None, choices=[None, "4bit", "8bit"])
    p.add_argument("--out", type=Path, default=None, help="append the JSON line to this file")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)

    rss_start = _rss_mib()
    activity, behavior = make_data(args.frames, args.rois, args.channels, seed=0)
    rss_data = _rss_mib()
    cfg = FitConfig(
        backbone=args.backbone,
        train_mode=args.train_mode,
        init=args.init,
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        epochs=1,
        max_windows_per_epoch=args.steps * args.batch_size,
        device=args.device,
        quantize=args.quantize,
        gradient_checkpointing=args.gradient_checkpointing,
    )
    marks: dict[str, float] = {}
    counts: dict[str, int] = {}

    def progress(stage: str, done: int, total: int) -> None:
        now = time.perf_counter()
        if stage.startswith("epoch"):
            stage = "train"
        marks.setdefault(f"{stage}_start", now)
        marks[f"{stage}_end"] = now
        counts[stage] = total

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    res = fit_arrays(activity, behavior, config=cfg, progress=progress)
    total_s = time.perf_counter() - t0
    train_s = marks["train_end"] - marks["train_start"]
    eval_windows = counts.get("evaluate", 0)
    eval_s = marks.get("evaluate_end", 0.0) - marks.get("evaluate_start", 0.0)
    _, tr0, tr1 = res.splits[0]
    n_train = min(args.steps * args.batch_size, tr1 - tr0 - args.seq_len + 1)
    out = {
        "backbone": args.backbone,
        "train_mode": args.train_mode,
        "init": args.init,
        "frames": args.frames,
        "rois": args.rois,
        "channels": args.channels,
        "seq_len": args.seq_len,
        "batch_size": args.batch_size,
        "steps": counts.get("train", 0),
        "train_windows": n_train,
        "train_s": round(train_s, 3),
        "train_windows_per_s": round(n_train / train_s, 2) if train_s > 0 else None,
        "eval_windows": eval_windows,
        "eval_s": round(eval_s, 3),
        "eval_windows_per_s": round(eval_windows / eval_s, 2) if eval_s > 0 else None,
        "total_s": round(total_s, 2),
        "data_mib": round(activity.nbytes / 2**20, 1),
        "rss_before_data_mib": round(rss_start, 1),
        "rss_after_data_mib": round(rss_data, 1),
        "peak_rss_mib": round(_rss_mib(), 1),
        "cuda_max_allocated_mib": (
            round(torch.cuda.max_memory_allocated() / 2**20, 1)
            if torch.cuda.is_available() and res.device.startswith("cuda")
            else None
        ),
        "device": res.device,
        "torch_threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "test_r2_mean": float(np.nanmean(res.metric("r2", "test"))),
    }
    line = json.dumps(out)
    print(line)
    if args.out is not None:
        with args.out.open("a") as f:
            f.write(line + "\n")
    return out


if __name__ == "__main__":
    main()
