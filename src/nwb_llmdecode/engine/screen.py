"""ROI screening: which ROIs the trained parts of the default decoder see.

Most ROIs of a session carry nothing of a given behaviour, and a decoder that must find a
few drivers among hundreds or thousands of ROIs in a few thousand frames fits noise in the
others. Screening (``FitConfig.screen``, on by default) is the relaxed group lasso
(Meinshausen 2007, "Relaxed Lasso"; glmnet's ``relax``): select with the penalty, then
refit on the selection, with the number of ROIs chosen on the validation block.

1. An LSTM decoder with the group-lasso prior (the ``lstm`` baseline with the fit's
   options; seconds on a CPU) is fitted on every ROI, and the ROIs are ranked by the norm
   of their weights in its input projection.
2. The same LSTM is fitted again on the top ``m`` ROIs only (its input projection
   restricted to them: :meth:`~nwb_llmdecode.models.embeddings.LinearEmbedding.restrict`)
   for every candidate count ``m`` (:func:`candidate_counts`: 8, 16, 32, ... below the ROI
   count, at most 1,024; or ``screen_rois``).
3. The count with the lowest validation loss wins, every ROI being one candidate, so the
   screen can keep them all.

The transformer then trains on the chosen ROIs, the chosen LSTM is the blend's LSTM part
(``blend_lstm``), and ridge, the third part of the blend, keeps every ROI. Every fit here
has the same seed, so candidates differ only in the ROIs they see, and the transformer's
own initialisation and data order do not depend on the screen.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..config import FitConfig
from ..models.baselines import LSTMDecoder
from ..progress import Progress
from ..windows import Block
from .distributed import Distributed
from .loop import progress_log, train_torch, val_score

__all__ = ["MAX_SCREEN_ROIS", "Screen", "candidate_counts", "fit_lstm", "screen_rois"]

log = logging.getLogger(__name__)

#: The largest ROI count of the default candidates (8, 16, ..., 1,024).
MAX_SCREEN_ROIS = 1024


def candidate_counts(n_rois: int, counts: Sequence[int] | None = None) -> list[int]:
    """ROI counts the screen tries besides all ``n_rois``: ``counts`` below ``n_rois``, or
    by default 8, 16, 32, ... below ``n_rois`` and at most :data:`MAX_SCREEN_ROIS`.

    Examples
    --------
    >>> candidate_counts(300)
    [8, 16, 32, 64, 128, 256]
    >>> candidate_counts(8), candidate_counts(60, [4, 100])
    ([], [4])
    """
    if counts is None:
        out, m = [], 8
        while m < n_rois and m <= MAX_SCREEN_ROIS:
            out.append(m)
            m *= 2
        return out
    return sorted({int(m) for m in counts if m < n_rois})


@dataclass
class Screen:
    """What the screen chose: ``rois`` (sorted indices; ``None``: every ROI), the chosen
    LSTM, trained, with its ``lstm_info`` (best epoch, epochs run, validation loss), and
    ``record`` for ``decoding_run`` (the count chosen, the ROIs, the validation loss of
    every candidate count)."""

    rois: np.ndarray | None
    lstm: LSTMDecoder
    lstm_info: dict[str, Any] = field(default_factory=dict)
    record: dict[str, Any] = field(default_factory=dict)


def fit_lstm(
    zt: torch.Tensor,
    yn: np.ndarray,
    blocks: Sequence[Block],
    config: FitConfig,
    device: torch.device,
    progress: Progress | None = None,
    *,
    rois: np.ndarray | None = None,
    stage: str = "lstm",
) -> tuple[LSTMDecoder, dict[str, Any]]:
    """Fit the LSTM decoder of ``config`` (``lstm`` options, the same prior, optimiser,
    stride, warm-up and early stopping) alone, restricted to ``rois`` when given.

    Its generator state is its own (``config.seed`` to build it, ``seed + 1`` to train
    it), so fitting it changes nothing in a transformer fitted in the same process. Every
    process of a distributed fit trains it the same way on the whole training block (it is
    small), so no collective is involved.

    Returns the trained LSTM (best validation state) and ``{"best_epoch", "epochs_run",
    "val_loss"}``.
    """
    lstm_config = config.replace(backbone="lstm", ensemble=1)
    n_rois, n_channels = zt.shape[1], yn.shape[1]
    fork = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=fork):
        torch.manual_seed(config.seed)
        lstm = LSTMDecoder(
            n_rois, n_channels, hidden_size=config.lstm.hidden, num_layers=config.lstm.layers
        ).to(device)
    if rois is not None:
        lstm.embedding.restrict(torch.as_tensor(rois))

    def report(name: str, done: int, total: int) -> None:
        assert progress is not None
        progress(f"{stage} {name}", done, total)

    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=fork):
        torch.manual_seed(config.seed + 1)
        history, best_epoch, _ = train_torch(
            lstm,
            zt,
            yn,
            blocks,
            lstm_config,
            device,
            None if progress is None else report,
            log_epochs=False,
        )
    val = next(b for b in blocks if b.name == "validation")
    val_loss, val_r2 = val_score(lstm, zt, yn, val, config)
    progress_log.info(
        "%s: validation loss %.4f, validation R² %.3f, best epoch %d of %d, %.1f s",
        stage,
        val_loss,
        val_r2,
        best_epoch,
        len(history),
        time.perf_counter() - t0,
    )
    return lstm, {"best_epoch": int(best_epoch), "epochs_run": len(history), "val_loss": val_loss}


def screen_rois(
    zt: torch.Tensor,
    yn: np.ndarray,
    blocks: Sequence[Block],
    config: FitConfig,
    device: torch.device,
    progress: Progress | None = None,
    dist: Distributed | None = None,
) -> Screen:
    """Choose the ROIs the decoder's trained parts see (see the module's description).

    Parameters
    ----------
    zt
        (frames, ROIs) normalised activity on ``device``.
    yn
        (frames, channels) normalised behaviour (NaN: no sample).
    blocks
        The train/validation/test blocks of the fit.
    config
        The fit's options (``lstm``, prior, training settings, ``screen_rois``).
    device
        Where the LSTMs train.
    progress
        ``progress(stage, done, total)`` for each LSTM's epochs.
    dist
        Under a distributed launch, every process screens alike and rank 0's choice is
        taken by all, so that the transformer sees the same ROIs everywhere.

    Returns
    -------
    Screen
    """
    n_rois = zt.shape[1]
    counts = candidate_counts(n_rois, config.screen_rois)
    lstm, info = fit_lstm(zt, yn, blocks, config, device, progress, stage="screen: all ROIs")
    tried: dict[str, Any] = {"all": {"n_rois": n_rois, **info}}
    best: tuple[float, int, LSTMDecoder, np.ndarray | None] = (info["val_loss"], n_rois, lstm, None)
    if counts:
        norms = lstm.embedding.roi_sq_norms().detach().cpu().numpy()
        order = np.argsort(-norms, kind="stable")
        for m in counts:
            rois = np.sort(order[:m])
            cand, cinfo = fit_lstm(
                zt, yn, blocks, config, device, progress, rois=rois, stage=f"screen: {m} ROIs"
            )
            tried[str(m)] = {"n_rois": m, **cinfo}
            # ties go to more ROIs (the candidates run from few to many)
            if cinfo["val_loss"] < best[0] or (cinfo["val_loss"] == best[0] and m > best[1]):
                best = (cinfo["val_loss"], m, cand, rois)
    _, chosen, chosen_lstm, rois = best
    chosen_info = tried["all" if rois is None else str(chosen)]
    if dist is not None and counts:
        mine = np.zeros(n_rois, dtype=bool)
        mine[np.arange(n_rois) if rois is None else rois] = True
        agreed = np.asarray(dist.broadcast(mine.astype(float).tolist())) > 0.5
        if not np.array_equal(agreed, mine):  # pragma: no cover - nondeterministic kernels
            log.warning("screen: this process chose other ROIs than rank 0; rank 0's are used")
            rois = None if agreed.all() else np.flatnonzero(agreed)
            chosen_lstm, chosen_info = fit_lstm(zt, yn, blocks, config, device, rois=rois)
            chosen = n_rois if rois is None else len(rois)
    log.info(
        "screen: %d of %d ROIs (validation MSE by count: %s)",
        chosen,
        n_rois,
        ", ".join(f"{k} {v['val_loss']:.4g}" for k, v in tried.items()),
    )
    record = {
        "screen_n_rois": int(chosen),
        "screen_rois": None if rois is None else [int(r) for r in rois],
        "screen_val_losses": {k: v["val_loss"] for k, v in tried.items()},
    }
    return Screen(rois=rois, lstm=chosen_lstm, lstm_info=chosen_info, record=record)
