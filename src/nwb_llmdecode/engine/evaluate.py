"""Prediction over blocks of frames and metrics per behaviour channel and split.

Torch models predict every window (stride 1) inside each block, and the overlapping
window predictions are averaged per frame (:class:`~nwb_llmdecode.windows.Stitcher`);
closed-form baselines predict blocks directly. Metrics are computed in original units over
the frames of a block that have both a prediction and a target.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..errors import DataError
from ..models.baselines import ClosedFormDecoder
from ..progress import Progress
from ..windows import Block, Stitcher, iter_batches, window_starts

__all__ = ["METRIC_NAMES", "compute_metrics", "predict_blocks", "regression_metrics"]

#: Metric keys of each row returned by :func:`compute_metrics`.
METRIC_NAMES: tuple[str, ...] = ("rmse", "r2", "pearson", "n_frames")


def predict_blocks(
    model: Any,
    z: np.ndarray | torch.Tensor,
    blocks: Sequence[Block],
    *,
    seq_len: int,
    batch_size: int = 128,
    device: str | torch.device | None = None,
    progress: Progress | None = None,
    stage: str = "evaluate",
) -> np.ndarray:
    """Predict (normalised) behaviour for every frame of every block.

    Parameters
    ----------
    model
        A torch seq-to-seq model (``forward(x: (B, L, N)) -> (B, L, C)``) or a closed-form
        baseline (``predict(z, blocks)``).
    z
        Normalised activity (frames, ROIs), numpy or torch (already on ``device``).
    blocks
        Blocks to predict; windows never cross a block boundary.
    seq_len
        Window length.
    batch_size
        Windows per forward pass.
    device
        Device of the torch model (default: where its parameters are).
    progress
        Called as ``progress(stage, windows_done, windows_total)``.

    Returns
    -------
    numpy.ndarray
        (frames, channels) float32, NaN outside the blocks.
    """
    if isinstance(model, ClosedFormDecoder):
        zn = z.detach().cpu().numpy() if isinstance(z, torch.Tensor) else np.asarray(z)
        out = model.predict(zn, blocks)
        if progress is not None:
            progress(stage, 1, 1)
        return out
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"predict_blocks: cannot predict with {type(model).__name__}")
    if device is None:
        device = next(model.parameters()).device
    zt = z if isinstance(z, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(z))
    zt = zt.to(device)
    n_frames = zt.shape[0]
    per_block = [window_starts(b.start, b.stop, seq_len) for b in blocks]
    total = int(sum(len(s) for s in per_block))
    stitcher: Stitcher | None = None
    done = 0
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for starts in per_block:
                for batch in iter_batches(starts, batch_size):
                    idx = torch.as_tensor(batch, device=device)[:, None] + torch.arange(
                        seq_len, device=device
                    )
                    pred = model(zt[idx]).float().cpu().numpy()
                    if stitcher is None:
                        stitcher = Stitcher(n_frames, pred.shape[-1])
                    stitcher.add(batch, pred)
                    done += len(batch)
                    if progress is not None:
                        progress(stage, done, total)
    finally:
        model.train(was_training)
    if stitcher is None:
        raise DataError(f"no window of {seq_len} frames fits in the blocks {list(blocks)}")
    return stitcher.result()


def regression_metrics(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """RMSE, R², Pearson r and frame count of one channel, over frames where both exist.

    R² is ``1 - SS_res / SS_tot`` around the target's own mean over these frames (so a
    constant prediction of that mean scores 0). Undefined values are NaN.

    Examples
    --------
    >>> m = regression_metrics(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 4.0]))
    >>> round(m["r2"], 3), round(m["pearson"], 3), m["n_frames"]
    (0.786, 0.982, 3)
    """
    pred = np.asarray(pred, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    ok = np.isfinite(pred) & np.isfinite(target)
    n = int(ok.sum())
    nan = float("nan")
    if n == 0:
        return {"rmse": nan, "r2": nan, "pearson": nan, "n_frames": 0}
    p, t = pred[ok], target[ok]
    err = p - t
    rmse = math.sqrt(float(np.mean(err**2)))
    sst = float(np.sum((t - t.mean()) ** 2))
    r2 = 1.0 - float(np.sum(err**2)) / sst if sst > 0 else nan
    sp, st = float(p.std()), float(t.std())
    pearson = (
        float(np.mean((p - p.mean()) * (t - t.mean())) / (sp * st)) if sp > 0 and st > 0 else nan
    )
    return {"rmse": rmse, "r2": r2, "pearson": pearson, "n_frames": n}


def compute_metrics(
    predictions: np.ndarray,
    targets: np.ndarray,
    blocks: Sequence[Block],
) -> list[dict[str, Any]]:
    """Metrics per behaviour channel and split.

    Parameters
    ----------
    predictions, targets
        (frames, channels) in the same units; NaN frames are skipped.
    blocks
        The splits.

    Returns
    -------
    list of dict
        One ``{"channel", "split", "rmse", "r2", "pearson", "n_frames"}`` per channel and
        block, channels in order, blocks in time order within a channel.

    Examples
    --------
    >>> y = np.arange(10.0)[:, None]
    >>> rows = compute_metrics(y, y, [Block("train", 0, 5), Block("test", 5, 10)])
    >>> [(r["split"], r["r2"], r["n_frames"]) for r in rows]
    [('train', 1.0, 5), ('test', 1.0, 5)]
    """
    predictions = np.asarray(predictions)
    targets = np.asarray(targets)
    if predictions.shape != targets.shape or predictions.ndim != 2:
        raise DataError(
            f"predictions {predictions.shape} and targets {targets.shape} must both be "
            "(frames, channels)"
        )
    rows = []
    for c in range(predictions.shape[1]):
        for b in blocks:
            m = regression_metrics(predictions[b.start : b.stop, c], targets[b.start : b.stop, c])
            rows.append({"channel": c, "split": b.name, **m})
    return rows
