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
    "IMPLEMENTATIONS",
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


def _windows(start: int, stop: int, seq_len: int, stride: int = 1) -> np.ndarray:
    """Window starts covering ``[start, stop)``; a clear error when none fits."""
    from .windows import window_starts

    starts = window_starts(start, stop, seq_len, stride)
    if not len(starts):
        raise ConfigError(
            f"the block [{start}, {stop}) is shorter than seq_len={seq_len}; use a shorter "
            "--seq-len or a larger test fraction"
        )
    return starts


#: Ways of computing the attributions (same definitions, same captum step rule).
IMPLEMENTATIONS: tuple[str, ...] = ("batched", "captum")


def _frozen_params(model: Any) -> list[Any]:
    """Parameters that require gradients; they are switched off during attribution (only
    input gradients are needed, so the weight-gradient products are skipped)."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    return params


def _input_grads(model: Any, inp: Any, n_channels: int) -> Any:
    """Gradients of each channel's window sum w.r.t. ``inp``: one forward, one backward per
    channel (the forward graph is reused). Returns (channels, *inp.shape)."""
    import torch

    inp = inp.detach().requires_grad_(True)
    out = model(inp).sum(dim=1)  # (B, C)
    grads = []
    for c in range(n_channels):
        (g,) = torch.autograd.grad(out[:, c].sum(), inp, retain_graph=c < n_channels - 1)
        grads.append(g)
    return torch.stack(grads)


def _batched_attributions(
    model: Any,
    inp: Any,
    *,
    method: str,
    n_channels: int,
    n_steps: int,
    internal_batch_size: int,
) -> tuple[Any, list[float], list[float]]:
    """Attributions (channels, B, L, N) of one batch of windows, every channel from the same
    forward passes; integrated gradients batches interpolation steps and windows together
    (``internal_batch_size`` rows per pass) with captum's Gauss-Legendre steps and weights.
    Returns also the per-channel mean |convergence delta| and mean |output|."""
    import torch
    from captum.attr._utils.approximation_methods import approximation_parameters

    if method != "integrated-gradients":
        g = _input_grads(model, inp, n_channels)
        return (g.abs() if method == "saliency" else g * inp), [], []
    step_sizes_fn, alphas_fn = approximation_parameters("gausslegendre")
    alphas = torch.tensor(alphas_fn(n_steps), dtype=inp.dtype, device=inp.device)
    weights = torch.tensor(step_sizes_fn(n_steps), dtype=inp.dtype, device=inp.device)
    n_win = inp.shape[0]
    # rows are (step, window) pairs in step-major order, as captum orders them
    step_of = torch.arange(n_steps, device=inp.device).repeat_interleave(n_win)
    win_of = torch.arange(n_win, device=inp.device).repeat(n_steps)
    acc = torch.zeros((n_channels, *inp.shape), dtype=inp.dtype, device=inp.device)
    rows = max(int(internal_batch_size), 1)
    for r0 in range(0, n_steps * n_win, rows):
        st, wi = step_of[r0 : r0 + rows], win_of[r0 : r0 + rows]
        scaled = alphas[st][:, None, None] * inp[wi]  # baseline 0: alpha * input
        g = _input_grads(model, scaled, n_channels)  # (C, rows, L, N)
        acc.index_add_(1, wi, g * weights[st][None, :, None, None])
    attr = acc * inp[None]
    with torch.no_grad():  # f(input) and f(baseline) in one pass, for the delta
        ends = model(torch.cat([inp, torch.zeros_like(inp)])).sum(dim=1)
    f_in, f_base = ends[:n_win], ends[n_win:]
    deltas = (attr.sum(dim=(2, 3)) - (f_in - f_base).T).abs().mean(dim=1)
    return attr, deltas.tolist(), f_in.abs().mean(dim=0).tolist()


def _captum_attributions(
    model: Any,
    explainer: Any,
    inp: Any,
    *,
    method: str,
    n_channels: int,
    n_steps: int,
    internal_batch_size: int,
) -> tuple[Any, list[float], list[float]]:
    """The reference path: one captum call per channel (kept for the side-by-side
    benchmark, ``benchmarks/bench_salience.py --mode timing``)."""
    import torch

    inp = inp.clone().requires_grad_(True)
    out, deltas, scale = [], [], []
    for c in range(n_channels):
        if method == "integrated-gradients":
            attr, delta = explainer.attribute(
                inp,
                baselines=torch.zeros_like(inp),
                target=c,
                n_steps=n_steps,
                internal_batch_size=internal_batch_size,
                return_convergence_delta=True,
            )
            deltas.append(delta.detach().abs().mean().item())
            with torch.no_grad():
                scale.append(model(inp).sum(dim=1)[:, c].abs().mean().item())
        elif method == "saliency":
            attr = explainer.attribute(inp, target=c, abs=True)
        else:
            attr = explainer.attribute(inp, target=c)
        out.append(attr.detach())
    return torch.stack(out), deltas, scale


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
    implementation: str = "batched",
    internal_batch_size: int | None = None,
    stride: int = 1,
) -> xr.Dataset:
    """Attribute a trained decoder's outputs to its input ROIs and frames.

    Parameters
    ----------
    model
        A torch module mapping normalised windows ``(batch, seq_len, rois)`` to
        ``(batch, seq_len, channels)``. It runs in its own precision (a
        :class:`~nwb_llmdecode.models.Decoder` trained under bf16 autocast attributes
        under bf16 autocast too).
    x
        (frames, rois) normalised activity (training mean 0, unit variance).
    block
        ``(start, stop)`` frames to explain (the test block).
    seq_len
        Window length the model was trained with.
    method
        ``"integrated-gradients"``, ``"saliency"`` (|gradient|) or ``"grad-x-input"``.
    batch_size
        Windows per batch.
    n_steps
        Integration steps of integrated gradients.
    device
        Torch device of ``model``.
    progress
        ``progress(stage, done, total)`` callback.
    implementation
        ``"batched"`` (default): every channel from the same forward pass, interpolation
        steps and windows batched together, no weight gradients; ``"captum"``: one captum
        call per channel (the reference; same definitions, several times slower, see
        ``benchmarks/RESULTS.md``).
    internal_batch_size
        Rows (window x step) per forward pass of integrated gradients; default
        ``8 * batch_size``.
    stride
        Frames between the starts of consecutive attributed windows (1: every window;
        the last window always ends at the block's end, so every frame is covered).
        ``stride > 1`` attributes ``stride`` times fewer windows.

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
    if implementation not in IMPLEMENTATIONS:
        raise ConfigError(
            f"salience implementation {implementation!r} unknown; use one of "
            + ", ".join(IMPLEMENTATIONS)
        )
    x = np.asarray(x, dtype=np.float32)
    n_frames, n_rois = x.shape
    if not isinstance(stride, int) or isinstance(stride, bool) or stride < 1:
        raise ConfigError(f"salience stride={stride!r} is not valid: expected an integer >= 1")
    starts = _windows(block[0], block[1], seq_len, stride)
    ibs = internal_batch_size or (
        8 * batch_size if implementation == "batched" else max(batch_size, 1) * 4
    )
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
    deltas: list[float] = []
    out_scale: list[float] = []
    n_batches = int(np.ceil(len(starts) / batch_size))
    stage = f"salience ({method})"
    n_units = n_batches * n_channels  # progress moves with every (batch, channel) pass
    t0 = time.perf_counter()
    if progress:
        progress(stage, 0, n_units)
    frozen = _frozen_params(model) if implementation == "batched" else []
    try:
        for b in range(n_batches):
            s = torch.as_tensor(starts[b * batch_size : (b + 1) * batch_size], device=device)
            frames = s[:, None] + offsets  # (B, L)
            inp = xt[frames]
            kw = {"method": method, "n_channels": n_channels, "n_steps": n_steps}
            if implementation == "batched":
                attr, d, sc = _batched_attributions(model, inp, internal_batch_size=ibs, **kw)
            else:
                attr, d, sc = _captum_attributions(
                    model, explainer, inp, internal_batch_size=ibs, **kw
                )
            deltas += d
            out_scale += sc
            a = attr.detach().abs().to(torch.float64)  # (C, B, L, N)
            by_output += a.sum(dim=(1, 2))
            batch_abs = a.mean(dim=0)
            course_sum.index_add_(0, frames.reshape(-1), batch_abs.reshape(-1, n_rois))
            course_n.index_add_(
                0,
                frames.reshape(-1),
                torch.ones(frames.numel(), dtype=torch.float64, device=device),
            )
            if progress:
                progress(stage, (b + 1) * n_channels, n_units)
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
    finally:
        for p in frozen:
            p.requires_grad_(True)
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
    if stride != 1:
        attrs["stride"] = stride
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
