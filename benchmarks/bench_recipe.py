"""Training throughput: the paper's plain recipe against our engine, and each speed lever.

The *recipe* is the paper's training typed plainly: windows materialised with a Python loop
and ``torch.stack``, ``Linear -> backbone(inputs_embeds) -> Linear``, AdamW (lr 1e-4),
batch 32, float32, MSE, no tricks. The *engine* is :func:`nwb_llmdecode.engine.fit_arrays`
with its defaults (only ``backbone``, ``train_mode``, ``seq_len`` and ``batch_size`` set to
the recipe's, one epoch of ``--steps`` batches); its training loop is timed from the
first to the last batch through the progress callback, so loading, validation and
evaluation are not counted. Both run on the same arrays, alternating, in one process.

Levers, each measured on/off on the recipe's own step in the same run:
bf16 autocast of the backbone (head and loss float32), SDPA vs eager attention, AdamW
for-loop / foreach / fused, evaluation under ``no_grad`` with batch 32 vs
``inference_mode`` with large batches, ``torch.compile`` (``--compile``, compile time
reported separately) and torch threads (``--threads-lever``).

FLOP per window are counted from the model (``torch.utils.flop_counter`` on one training
step); achieved GFLOP/s = FLOP/window x windows/s, against ``--peak-gflops`` (this
machine: about 190 GFLOP/s float32 on 2 cores, i.e. 95 per core).

Examples
--------
python benchmarks/bench_recipe.py --modes full frozen --steps 8 --repeats 2
python benchmarks/bench_recipe.py --modes full --compile --threads-lever
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nwb_llmdecode.config import FitConfig
from nwb_llmdecode.engine import fit_arrays
from nwb_llmdecode.models.backbones import resolve_backbone
from nwb_llmdecode.models.decoder import cpu_supports_bf16


def make_data(frames: int, rois: int, channels: int, seed: int = 0) -> tuple[np.ndarray, ...]:
    """Random activity and a behaviour read out (tanh) from its first ROIs."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((frames, rois), dtype=np.float32)
    w = rng.standard_normal((min(10, rois), channels)).astype(np.float32)
    y = np.tanh(x[:, : w.shape[0]] @ w / 3.0).astype(np.float32)
    return x, y


class Recipe(nn.Module):
    """``Linear -> backbone(inputs_embeds) -> Linear`` with an optional autocast dtype."""

    def __init__(self, n_rois: int, n_channels: int, *, mode: str, attn: str = "sdpa"):
        super().__init__()
        from transformers import AutoModel

        src, kw = resolve_backbone("minilm")
        self.backbone = AutoModel.from_pretrained(src, attn_implementation=attn, **kw)
        hidden = self.backbone.config.hidden_size
        self.inp = nn.Linear(n_rois, hidden)
        self.out = nn.Linear(hidden, n_channels)
        self.backbone.requires_grad_(mode == "full")
        self.dtype_ = torch.float32
        self.math_sdpa = False  # torch's SDPA math kernel instead of its CPU flash kernel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        emb = self.inp(x)
        with contextlib.ExitStack() as stack:
            if self.dtype_ != torch.float32:
                stack.enter_context(torch.autocast("cpu", dtype=self.dtype_))
            if self.math_sdpa:
                stack.enter_context(sdpa_kernel([SDPBackend.MATH]))
            h = self.backbone(inputs_embeds=emb).last_hidden_state
        return self.out(h.float())


def materialise(z: np.ndarray, y: np.ndarray, seq_len: int) -> tuple[torch.Tensor, ...]:
    """The recipe's windows: a Python loop over starts and ``torch.stack`` (stride 1)."""
    zt, yt = torch.from_numpy(z), torch.from_numpy(y)
    starts = range(z.shape[0] - seq_len + 1)
    return (
        torch.stack([zt[s : s + seq_len] for s in starts]),
        torch.stack([yt[s : s + seq_len] for s in starts]),
    )


def optimizer(params: list[nn.Parameter], kind: str) -> torch.optim.Optimizer:
    flags = {"loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}
    return torch.optim.AdamW(params, lr=1e-4, **flags[kind])


def time_steps(
    model: Recipe, X: torch.Tensor, Y: torch.Tensor, *, steps: int, batch: int, opt: str
) -> float:
    """Windows/s of ``steps`` training steps (after one warm-up step)."""
    params = [p for p in model.parameters() if p.requires_grad]
    o = optimizer(params, opt)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(X), generator=g)
    model.train()
    t0 = 0.0
    for i in range(steps + 1):
        if i == 1:
            t0 = time.perf_counter()
        j = perm[(i * batch) % (len(X) - batch) :][:batch]
        loss = nn.functional.mse_loss(model(X[j]), Y[j])
        o.zero_grad(set_to_none=True)
        loss.backward()
        o.step()
    return steps * batch / (time.perf_counter() - t0)


def time_eval(
    model: Recipe, X: torch.Tensor, *, batch: int, inference: bool, n: int = 256
) -> float:
    """Windows/s of prediction of ``n`` windows."""
    model.eval()
    ctx = torch.inference_mode if inference else torch.no_grad
    with ctx():
        model(X[:batch])  # warm-up
        t0 = time.perf_counter()
        for i in range(0, n, batch):
            model(X[i : i + batch])
    return n / (time.perf_counter() - t0)


def flop_per_window(model: Recipe, X: torch.Tensor, Y: torch.Tensor, batch: int) -> float:
    """FLOP of one training step (forward + backward) per window, counted by torch."""
    from torch.utils.flop_counter import FlopCounterMode

    model.train()
    counter = FlopCounterMode(display=False)
    with counter:
        loss = nn.functional.mse_loss(model(X[:batch]), Y[:batch])
        loss.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / batch


def time_engine(
    x: np.ndarray, y: np.ndarray, *, mode: str, steps: int, batch: int, seq_len: int, **extra
) -> float:
    """Windows/s of fit_arrays' training loop (batches 2..steps+1 of one epoch)."""
    marks: dict[int, float] = {}

    def progress(stage: str, done: int, total: int) -> None:
        if stage.startswith("epoch"):
            marks[done] = time.perf_counter()

    cfg = FitConfig(
        backbone="minilm",
        train_mode=mode,
        seq_len=seq_len,
        batch_size=batch,
        epochs=1,
        max_windows_per_epoch=(steps + 1) * batch,
        salience="none",
        device="cpu",
        **extra,
    )
    fit_arrays(x, y, config=cfg, progress=progress)
    last = max(marks)
    return (last - 1) * batch / (marks[last] - marks[1])


def short_fit_val_loss(x: np.ndarray, y: np.ndarray, *, mode: str, **extra) -> float:
    """Best validation loss of a short engine fit (numerical sanity of a lever)."""
    cfg = FitConfig(
        backbone="minilm",
        train_mode=mode,
        epochs=2,
        max_windows_per_epoch=6 * 32,
        salience="none",
        device="cpu",
        **extra,
    )
    res = fit_arrays(x, y, config=cfg)
    return float(min(h["val_loss"] for h in res.history))


def bench_mode(
    args: argparse.Namespace,
    mode: str,
    data: tuple[np.ndarray, np.ndarray, torch.Tensor, torch.Tensor],
    emit: Callable[[dict[str, Any]], None],
) -> None:
    """Every variant and lever of one train mode, alternating over ``args.repeats``."""
    x, y, X, Y = data
    peak = args.peak_gflops * args.threads
    bf16 = cpu_supports_bf16()
    L, B, S = args.seq_len, args.batch_size, args.steps
    torch.manual_seed(0)
    sdpa = Recipe(args.rois, args.channels, mode=mode)
    eager = Recipe(args.rois, args.channels, mode=mode, attn="eager")
    eager.load_state_dict(sdpa.state_dict())
    fpw = flop_per_window(sdpa, X, Y, B)

    def run(m: Recipe, dtype: torch.dtype, opt: str, math: bool = False) -> float:
        m.dtype_, m.math_sdpa = dtype, math
        return time_steps(m, X, Y, steps=S, batch=B, opt=opt)

    bf = torch.bfloat16
    variants: dict[str, Callable[[], float]] = {
        "recipe (fp32, sdpa, AdamW default)": lambda: run(sdpa, torch.float32, "loop"),
        "engine fit_arrays precision=fp32": lambda: time_engine(
            x, y, mode=mode, steps=S, batch=B, seq_len=L, precision="fp32"
        ),
        "engine fit_arrays (default)": lambda: time_engine(
            x, y, mode=mode, steps=S, batch=B, seq_len=L
        ),
        "lever: eager attention (fp32)": lambda: run(eager, torch.float32, "loop"),
        "lever: AdamW foreach (fp32)": lambda: run(sdpa, torch.float32, "foreach"),
        "lever: AdamW fused (fp32)": lambda: run(sdpa, torch.float32, "fused"),
    }
    if bf16:
        variants["lever: bf16 autocast"] = lambda: run(sdpa, bf, "loop")
        variants["lever: bf16 autocast + AdamW fused"] = lambda: run(sdpa, bf, "fused")
        variants["lever: bf16 + SDPA math kernel"] = lambda: run(sdpa, bf, "loop", True)
        variants["lever: bf16 + SDPA math + AdamW foreach"] = lambda: run(sdpa, bf, "foreach", True)
    variants["lever: SDPA math kernel (fp32)"] = lambda: run(sdpa, torch.float32, "loop", True)
    if args.threads_lever:

        def two_threads() -> float:
            torch.set_num_threads(2)
            try:
                return run(sdpa, bf if bf16 else torch.float32, "fused")
            finally:
                torch.set_num_threads(args.threads)

        variants["lever: 2 threads (bf16 + fused)"] = two_threads
    results: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.repeats):
        for name, fn in variants.items():  # alternating: each round runs every variant
            results[name].append(fn())
    base = statistics.median(results["recipe (fp32, sdpa, AdamW default)"])
    for name, vals in results.items():
        wps = statistics.median(vals)
        emit(
            {
                "mode": mode,
                "what": name,
                "windows_per_s": round(wps, 2),
                "runs": [round(v, 2) for v in vals],
                "x_recipe": round(wps / base, 2),
                "gflop_per_window": round(fpw / 1e9, 3),
                "achieved_gflops": round(wps * fpw / 1e9, 1),
                "pct_of_fp32_peak": round(100 * wps * fpw / 1e9 / peak, 1),
                "threads": args.threads,
            }
        )
    for name, (batch, inference, dtype) in {
        "eval: no_grad, batch 32, fp32": (32, False, torch.float32),
        "eval: inference_mode, batch 128, fp32": (128, True, torch.float32),
        "eval: inference_mode, batch 128, bf16": (128, True, bf),
        "eval: inference_mode, batch 512, bf16": (512, True, bf),
    }.items():
        if dtype == bf and not bf16:
            continue
        sdpa.dtype_ = dtype
        vals = [time_eval(sdpa, X, batch=batch, inference=inference, n=512)]
        vals.append(time_eval(sdpa, X, batch=batch, inference=inference, n=512))
        emit({"mode": mode, "what": name, "windows_per_s": round(max(vals), 1)})
    if args.compile:
        sdpa.dtype_ = bf if bf16 else torch.float32
        t0 = time.perf_counter()
        sdpa.backbone.compile(dynamic=False)
        run(sdpa, sdpa.dtype_, "fused")  # first call compiles (forward and backward)
        compile_s = time.perf_counter() - t0
        wps = statistics.median(run(sdpa, sdpa.dtype_, "fused") for _ in range(2))
        emit(
            {
                "mode": mode,
                "what": "lever: torch.compile (bf16 + fused)",
                "windows_per_s": round(wps, 2),
                "x_recipe": round(wps / base, 2),
                "compile_plus_first_run_s": round(compile_s, 1),
            }
        )
    if not args.no_sanity:
        for prec in ("fp32", "bf16") if bf16 else ("fp32",):
            emit(
                {
                    "mode": mode,
                    "what": f"sanity: best validation loss, 2 short epochs, {prec}",
                    "val_loss": round(short_fit_val_loss(x, y, mode=mode, precision=prec), 4),
                }
            )


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=900)
    p.add_argument("--rois", type=int, default=40)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--seq-len", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=8, help="timed steps per run")
    p.add_argument("--repeats", type=int, default=2, help="alternating rounds")
    p.add_argument("--modes", nargs="+", default=["full", "frozen"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--threads-lever", action="store_true", help="also time 2 threads")
    p.add_argument("--compile", action="store_true", help="also time torch.compile")
    p.add_argument("--no-sanity", action="store_true", help="skip the validation-loss check")
    p.add_argument("--peak-gflops", type=float, default=95.0, help="per thread, float32")
    p.add_argument("--out", type=Path, default=None, help="append JSON lines to this file")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows: list[dict[str, Any]] = []

    def emit(row: dict[str, Any]) -> None:
        rows.append(row)
        line = json.dumps(row)
        print(line, flush=True)
        if args.out is not None:
            with args.out.open("a") as f:
                f.write(line + "\n")

    x, y = make_data(args.frames, args.rois, args.channels)
    z = (x - x.mean(0)) / x.std(0)
    t0 = time.perf_counter()
    X, Y = materialise(z, y, args.seq_len)
    emit({"what": "recipe windows (loop + torch.stack)", "seconds": time.perf_counter() - t0})
    for mode in args.modes:
        bench_mode(args, mode, (x, y, X, Y), emit)
    return rows


if __name__ == "__main__":
    main()
