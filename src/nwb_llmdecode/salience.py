"""Which ROIs drive the decoded behaviour: captum attributions per ROI and per frame.

Attributions are computed on windows of the (normalised) activity, batched and vectorised
over windows; the only Python loops run over batches and output channels. For each
behaviour channel ``c`` the attributed scalar of a window is the sum of the decoder's
outputs for ``c`` over the window's positions (the seq-to-seq decoder predicts every frame
of the window). Salience is the mean absolute attribution:

* ``salience_by_output[roi, c]``: over windows and positions, for channel ``c``;
* ``salience[roi]``: the mean of ``salience_by_output`` over channels;
* ``timecourse[frame, roi]``: for each frame, the mean over channels and over every window
  that contains the frame.

The integrated-gradients baseline is zero in normalised space, i.e. every ROI at its
training-block mean. The ablation check (NLP4Neuro, experiment 4) replaces the top-k
salient ROIs by that same baseline and compares the test error with ablating k random ROIs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import xarray as xr

from .errors import ConfigError
from .progress import Progress

__all__ = [
    "METHODS",
    "ablation_check",
    "compute_salience",
    "precision_at_k",
    "salience_order",
]

log = logging.getLogger(__name__)
progress_log = logging.getLogger("nwb_llmdecode.progress")

#: Salience methods and the captum class behind each.
METHODS = {
    "integrated-gradients": "IntegratedGradients",
    "saliency": "Saliency",
    "grad-x-input": "InputXGradient",
}


def _windows(start: int, stop: int, seq_len: int) -> np.ndarray:
    """Window starts covering ``[start, stop)`` (stride 1); a clear error when none fits."""
    from .windows import window_starts

    starts = window_starts(start, stop, seq_len)
    if not len(starts):
        raise ConfigError(
            f"the block [{start}, {stop}) is shorter than seq_len={seq_len}; use a shorter "
            "--seq-len or a larger test fraction"
        )
    return starts


def compute_salience(
    model: Any,
    x: np.ndarray,
    *,
    block: tuple[int, int],
    seq_len: int,
    method: str = "integrated-gradients",
    batch_size: int = 32,
    n_steps: int = 16,
    device: str = "cpu",
    progress: Progress | None = None,
) -> xr.Dataset:
    """Attribute a trained decoder's outputs to its input ROIs and frames.

    Parameters
    ----------
    model
        A torch module mapping normalised windows ``(batch, seq_len, rois)`` to
        ``(batch, seq_len, channels)``.
    x
        (frames, rois) normalised activity (training mean 0, unit variance).
    block
        ``(start, stop)`` frames to explain (the test block).
    seq_len
        Window length the model was trained with.
    method
        ``"integrated-gradients"``, ``"saliency"`` (|gradient|) or ``"grad-x-input"``.
    batch_size
        Windows per batch (integrated gradients multiplies it by ``n_steps`` internally).
    n_steps
        Integration steps of integrated gradients.
    device
        Torch device of ``model``.
    progress
        ``progress(stage, done, total)`` callback.

    Returns
    -------
    xarray.Dataset
        ``salience`` (roi), ``salience_by_output`` (roi, channel), ``timecourse``
        (time, roi) over all frames (NaN outside the block); attrs ``method``,
        ``baseline``, ``n_windows`` and, for integrated gradients,
        ``convergence_delta`` (mean |delta| relative to the mean |output|).

    Examples
    --------
    >>> import torch
    >>> lin = torch.nn.Linear(4, 1)
    >>> sal = compute_salience(lin, np.random.rand(50, 4).astype("float32"),
    ...                        block=(0, 50), seq_len=5, method="grad-x-input")
    >>> sal["salience"].shape
    (4,)
    """
    import captum.attr as ca
    import torch

    from .progress import format_eta

    if method not in METHODS:
        raise ConfigError(f"salience method {method!r} unknown; use one of {', '.join(METHODS)}")
    x = np.asarray(x, dtype=np.float32)
    n_frames, n_rois = x.shape
    starts = _windows(block[0], block[1], seq_len)
    was_training = model.training
    model.eval()
    xt = torch.from_numpy(x).to(device)
    offsets = torch.arange(seq_len, device=device)

    with torch.no_grad():
        probe = model(xt[starts[:1, None] + np.arange(seq_len)])
    n_channels = int(probe.shape[-1])

    def summed(inp: Any) -> Any:  # (B, L, N) -> (B, C): each channel summed over positions
        return model(inp).sum(dim=1)

    explainer = getattr(ca, METHODS[method])(summed)
    by_output = torch.zeros(n_channels, n_rois, dtype=torch.float64, device=device)
    course_sum = torch.zeros(n_frames, n_rois, dtype=torch.float64, device=device)
    course_n = torch.zeros(n_frames, dtype=torch.float64, device=device)
    deltas, out_scale = [], []
    n_batches = int(np.ceil(len(starts) / batch_size))
    stage = f"salience ({method})"
    n_units = n_batches * n_channels  # progress moves with every (batch, channel) pass
    t0 = time.perf_counter()
    if progress:
        progress(stage, 0, n_units)
    for b in range(n_batches):
        s = torch.as_tensor(starts[b * batch_size : (b + 1) * batch_size], device=device)
        frames = s[:, None] + offsets  # (B, L)
        inp = xt[frames].clone().requires_grad_(True)
        batch_abs = torch.zeros_like(inp, dtype=torch.float64)
        for c in range(n_channels):
            if method == "integrated-gradients":
                attr, delta = explainer.attribute(
                    inp,
                    baselines=torch.zeros_like(inp),
                    target=c,
                    n_steps=n_steps,
                    internal_batch_size=max(batch_size, len(s)) * 4,
                    return_convergence_delta=True,
                )
                deltas.append(delta.detach().abs().mean().item())
                with torch.no_grad():
                    out_scale.append(summed(inp)[:, c].abs().mean().item())
            elif method == "saliency":
                attr = explainer.attribute(inp, target=c, abs=True)
            else:
                attr = explainer.attribute(inp, target=c)
            a = attr.detach().abs().to(torch.float64)
            by_output[c] += a.sum(dim=(0, 1))
            batch_abs += a
            if progress:
                progress(stage, b * n_channels + c + 1, n_units)
        course_sum.index_add_(0, frames.reshape(-1), (batch_abs / n_channels).reshape(-1, n_rois))
        course_n.index_add_(
            0, frames.reshape(-1), torch.ones(frames.numel(), dtype=torch.float64, device=device)
        )
        spent = time.perf_counter() - t0
        progress_log.info(
            "%s: chunk %d/%d (%d windows), %.1f s, ETA %s",
            stage,
            b + 1,
            n_batches,
            len(s),
            spent,
            format_eta(spent / (b + 1) * (n_batches - b - 1)),
        )
    model.train(was_training)

    by_output_np = (by_output / (len(starts) * seq_len)).cpu().numpy().T  # (rois, channels)
    course = (course_sum / course_n.clamp(min=1)[:, None]).cpu().numpy().astype(np.float32)
    course[course_n.cpu().numpy() == 0] = np.nan
    attrs: dict[str, Any] = {
        "method": method,
        "baseline": "zeros in normalised space (each ROI at its training-block mean)",
        "n_windows": len(starts),
        "block": [int(block[0]), int(block[1])],
    }
    if deltas:
        attrs["convergence_delta"] = float(np.mean(deltas) / max(np.mean(out_scale), 1e-12))
        attrs["n_steps"] = n_steps
    return xr.Dataset(
        {
            "salience": ("roi", by_output_np.mean(axis=1)),
            "salience_by_output": (("roi", "channel"), by_output_np),
            "timecourse": (("time", "roi"), course),
        },
        attrs=attrs,
    )


def salience_order(salience: Any) -> np.ndarray:
    """ROI indices from the most to the least salient: what ``rank`` 1, 2, ... means.

    Ties keep ROI order and NaN comes last, so every place that ranks, prints, writes or
    ablates the top ROIs agrees on which they are.

    Examples
    --------
    >>> salience_order(np.array([0.2, 0.9, np.nan, 0.9])).tolist()
    [1, 3, 0, 2]
    """
    return np.argsort(-np.asarray(salience, dtype=np.float64), kind="stable")


def precision_at_k(salience: np.ndarray, truth: Sequence[int], k: int | None = None) -> float:
    """Fraction of the ``k`` most salient ROIs that are in ``truth`` (k defaults to its size).

    Examples
    --------
    >>> precision_at_k(np.array([0.1, 0.9, 0.8, 0.2]), [1, 2])
    1.0
    """
    truth = set(int(t) for t in truth)
    k = len(truth) if k is None else k
    top = salience_order(salience)[:k]
    return float(len(truth.intersection(top.tolist())) / max(k, 1))


def ablation_check(
    evaluate: Callable[[np.ndarray], float],
    salience: np.ndarray,
    *,
    ks: Sequence[int] = (10, 50, 100),
    draws: int = 5,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Test error after ablating the top-k salient ROIs vs k random ROIs.

    Parameters
    ----------
    evaluate
        ``evaluate(rois)`` returns the test RMSE with the given ROI indices replaced by
        their training mean (an empty array: the intact model).
    salience
        (rois,) salience per ROI.
    ks
        Numbers of ROIs to ablate; values above half the ROI count are dropped (a random
        draw of most ROIs says little), and at least the smallest is kept.
    draws
        Random draws per k.
    seed
        Seed of the random draws.

    Returns
    -------
    list of dict
        Rows ``k``, ``kind`` (salient/random), ``draw``, ``rmse``, ``delta_rmse``.
    """
    n = len(salience)
    base = float(evaluate(np.array([], dtype=np.int64)))
    usable = sorted({int(k) for k in ks if 0 < k <= max(1, n // 2)})
    if not usable:
        usable = [max(1, min(int(min(ks)), n // 2 or 1))]
    order = salience_order(salience)
    rng = np.random.default_rng(seed)
    rows = []
    for k in usable:
        r = float(evaluate(order[:k]))
        rows.append({"k": k, "kind": "salient", "draw": 0, "rmse": r, "delta_rmse": r - base})
        for d in range(draws):
            pick = rng.choice(n, size=k, replace=False)
            r = float(evaluate(pick))
            rows.append({"k": k, "kind": "random", "draw": d, "rmse": r, "delta_rmse": r - base})
    return rows
