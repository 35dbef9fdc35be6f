"""Salience: the C input-gradient backward passes of one step, three ways (issue 14, target 4).

``compute_salience(implementation="batched")`` takes, for each batch of (step, window)
rows, one forward pass and one backward per output channel on the same graph
(``salience._input_grads``). Two ways of doing those C backward passes in one are timed
against it on the same briefly trained model (the ``--mode timing`` setting of
``bench_salience.py``: 600 frames x 1,000 ROIs, 16 integrated-gradients steps, every
window, the model's bf16), alternating rounds:

- ``loop``: the default, one ``torch.autograd.grad`` per channel;
- ``vmap``: one ``torch.autograd.grad(..., is_grads_batched=True)`` over the C one-hot
  output directions;
- ``stacked``: the batch repeated C times, one forward and one backward, copy c taking
  channel c's gradient.

Prints seconds and the largest difference of the salience from the loop's.

    python benchmarks/bench_salience_backward.py --rounds 2
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from bench_salience import trained_model

import nwb_llmdecode.salience as S

LOOP = S._input_grads


def vmapped(model, inp, n_channels):
    inp = inp.detach().requires_grad_(True)
    out = model(inp).sum(dim=1)  # (B, C)
    eye = torch.eye(n_channels, dtype=out.dtype, device=out.device)
    directions = eye[:, None, :].expand(n_channels, out.shape[0], n_channels)
    (g,) = torch.autograd.grad(out, inp, grad_outputs=directions, is_grads_batched=True)
    return g


def stacked(model, inp, n_channels):
    b = inp.shape[0]
    x = inp.detach().repeat(n_channels, 1, 1).requires_grad_(True)
    out = model(x).sum(dim=1).view(n_channels, b, n_channels)
    (g,) = torch.autograd.grad(out.diagonal(dim1=0, dim2=2).sum(), x)
    return g.view(n_channels, *inp.shape)


WAYS = {"loop": LOOP, "vmap": vmapped, "stacked": stacked}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=600)
    p.add_argument("--rois", type=int, default=1000)
    p.add_argument("--steps", type=int, default=5, help="training batches")
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    tmp = tempfile.TemporaryDirectory()
    path = Path(tmp.name) / "s.nwb"
    _, res, z, (start, stop), cfg, _ = trained_model(
        path, frames=args.frames, rois=args.rois, drivers=5, seed=1, steps=args.steps
    )
    ref = None
    try:
        for rnd in range(args.rounds):
            for name, fn in WAYS.items():
                S._input_grads = fn
                t0 = time.perf_counter()
                sal = S.compute_salience(
                    res.model,
                    z,
                    block=(start, stop),
                    seq_len=cfg.seq_len,
                    method="integrated-gradients",
                    batch_size=cfg.batch_size,
                    stride=1,
                )
                seconds = time.perf_counter() - t0
                v = sal["salience"].values
                ref = v if ref is None else ref
                diff = float(np.abs(v - ref).max() / np.abs(ref).max())
                print(
                    json.dumps(
                        {
                            "round": rnd,
                            "way": name,
                            "seconds": round(seconds, 2),
                            "max_rel_diff_from_loop": diff,
                            "threads": torch.get_num_threads(),
                        }
                    ),
                    flush=True,
                )
    finally:
        S._input_grads = LOOP
        tmp.cleanup()


if __name__ == "__main__":
    main()
