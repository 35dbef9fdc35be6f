"""The training loop of every trained decoder.

:func:`train_torch` trains a torch decoder (the transformer
:class:`~nwb_llmdecode.models.decoder.Decoder`, the LSTM baseline, the blend's LSTM part
and the ROI screen's LSTMs) on the training block of normalised arrays: AdamW with a
learning-rate warm-up, windows every ``train_stride`` frames from a random offset each
epoch, the input-projection penalties, early stopping on the validation loss with the best
state restored. :mod:`nwb_llmdecode.engine.train` (``fit_arrays``) and
:mod:`nwb_llmdecode.engine.screen` use it; it knows nothing of what is fitted around it.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ..config import FitConfig
from ..errors import DataError
from ..progress import Progress, format_eta
from ..windows import Block, iter_batches, window_starts
from .distributed import Distributed
from .evaluate import predict_blocks

__all__ = ["make_optimizer", "progress_log", "train_torch", "val_score"]

log = logging.getLogger(__name__)
#: One concise INFO line per epoch (and per salience chunk) for logs and batch jobs; the
#: command line shows this logger when stderr is not a terminal.
progress_log = logging.getLogger("nwb_llmdecode.progress")


def _masked_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    mask = torch.isfinite(target)
    diff = torch.where(mask, pred - torch.nan_to_num(target), torch.zeros_like(pred))
    return (diff**2).sum() / mask.sum().clamp(min=1)


def _param_groups(model: torch.nn.Module, config: FitConfig) -> list[dict[str, Any]]:
    new, backbone = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (backbone if name.startswith("backbone.") else new).append(p)
    groups = [{"params": new, "lr": config.lr, "name": "new"}]
    if backbone:
        groups.append({"params": backbone, "lr": config.backbone_lr, "name": "backbone"})
    return groups


def make_optimizer(groups: list[dict[str, Any]], *, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW over parameter groups: torch's fused kernel when every parameter is on the
    CPU, else the ``foreach`` implementation (torch's own default on CUDA).

    On the CPU ``foreach`` is a loop over tensors (about ten element-wise passes over the
    weights per step) while ``fused`` makes one; for MiniLM's full fine-tuning a training
    step measured 6 % faster with it on an idle machine (``benchmarks/bench_recipe.py``,
    ``benchmarks/RESULTS.md``). The update is the same AdamW.
    """
    params = [p for g in groups for p in g["params"]]
    on_cpu = bool(params) and all(p.device.type == "cpu" for p in params)
    if on_cpu:
        return torch.optim.AdamW(groups, weight_decay=weight_decay, fused=True)
    return torch.optim.AdamW(groups, weight_decay=weight_decay, foreach=True)


def _embedding_penalty(embedding: torch.nn.Module, config: FitConfig) -> torch.Tensor | None:
    """The penalties on an input projection (``model.embedding``, or one session's in a
    multi-session decoder): ``embedding_l2`` (ridge-like) and ``embedding_group_l1`` (group
    lasso, one group per ROI); ``None`` when both are off."""
    if config.embedding_l2 <= 0 and config.embedding_group_l1 <= 0:
        return None
    hidden = embedding.roi_weights()[0].shape[0]
    # sums over ROIs and lags, normalised by the hidden size: independent of the width
    sq = embedding.roi_sq_norms()  # (n_rois,)
    total = torch.zeros((), device=sq.device)
    if config.embedding_l2 > 0:
        total = total + config.embedding_l2 * sq.sum() / hidden
    if config.embedding_group_l1 > 0:
        norms = torch.sqrt(sq + 1e-12)  # differentiable at a zeroed ROI
        total = total + config.embedding_group_l1 * norms.sum() / math.sqrt(hidden)
    return total


def _snapshot(module: torch.nn.Module, names: set[str]) -> dict[str, torch.Tensor]:
    """Copies of the named (trainable) tensors of ``module``: the state early stopping keeps."""
    return {n: t.detach().clone() for n, t in module.state_dict().items() if n in names}


def _improves(val_loss: float, best_loss: float, config: FitConfig) -> bool:
    """Whether a validation loss counts as better than the best so far
    (``config.min_improvement`` relative, and more than float noise)."""
    margin = config.min_improvement * best_loss if math.isfinite(best_loss) else 0.0
    return val_loss < best_loss - margin - 1e-7


def _target_count(yn: np.ndarray, starts: np.ndarray, seq_len: int, warmup: int, first: int) -> int:
    """Behaviour samples the loss of a batch of windows counts (warm-up positions left out,
    as in the training loop)."""
    y = np.isfinite(yn[starts[:, None] + np.arange(seq_len)])
    if warmup:
        y[(starts != first)[:, None] & (np.arange(seq_len) < warmup)[None, :]] = False
    return int(y.sum())


def val_score(
    model: torch.nn.Module,
    zt: torch.Tensor,
    yn: np.ndarray,
    block: Block,
    config: FitConfig,
    predict: Any = predict_blocks,
) -> tuple[float, float]:
    pred = predict(model, zt, [block], seq_len=config.seq_len, batch_size=config.eval_batch_size)
    pred = pred[block.start : block.stop]
    y = yn[block.start : block.stop]
    ok = np.isfinite(pred) & np.isfinite(y)
    if not ok.any():
        return float("inf"), float("nan")
    err = pred[ok] - y[ok]
    mse = float(np.mean(err**2))
    r2s = []
    for c in range(y.shape[1]):
        m = ok[:, c]
        if m.sum() > 1:
            t = y[m, c]
            sst = float(np.sum((t - t.mean()) ** 2))
            if sst > 0:
                r2s.append(1.0 - float(np.sum((pred[m, c] - t) ** 2)) / sst)
    return mse, float(np.mean(r2s)) if r2s else float("nan")


def train_torch(
    model: torch.nn.Module,
    zt: torch.Tensor,
    yn: np.ndarray,
    blocks: Sequence[Block],
    config: FitConfig,
    device: torch.device,
    progress: Progress | None,
    dist: Distributed | None = None,
    on_epoch: Callable[[int, float, float], None] | None = None,
    *,
    log_epochs: bool = True,
) -> tuple[list[dict[str, Any]], int, bool]:
    """Train ``model`` on the training block; early stopping on the validation block.

    Parameters
    ----------
    model
        A torch decoder: (batch, seq_len, ROIs) -> (batch, seq_len, channels), with an
        ``embedding`` (the input projection the penalties apply to).
    zt, yn
        Normalised activity (frames, ROIs) on ``device`` and behaviour (frames, channels).
    blocks
        The fit's train/validation/test blocks.
    config
        Optimiser, stride, warm-up, penalties, epochs and patience.
    device
        Where ``model`` and ``zt`` are.
    progress
        ``progress("epoch i/n", batch, batches)``.
    dist
        This process's part of a distributed fit, or ``None``.
    on_epoch
        ``on_epoch(epoch, validation_loss, validation_r2)`` after each epoch.
    log_epochs
        One INFO line per epoch on the ``nwb_llmdecode.progress`` logger (off for the
        short auxiliary fits of the ROI screen, which log one line each).

    Returns
    -------
    history, best_epoch, stopped_early
        One dict per epoch; the best state (lowest validation loss) is loaded into
        ``model``, which is left in eval mode.
    """
    train = next(b for b in blocks if b.name == "train")
    val = next(b for b in blocks if b.name == "validation")
    yt = torch.from_numpy(yn).to(device)
    all_starts = window_starts(train.start, train.stop, config.seq_len)
    # drop training windows without any behaviour sample
    idx = all_starts[:, None] + np.arange(config.seq_len)
    has_target = np.isfinite(yn[idx]).any(axis=(1, 2))
    if not has_target.any():
        raise DataError("no training window has a behaviour sample")
    rng = np.random.default_rng(config.seed)
    stride = config.train_stride

    def epoch_starts() -> np.ndarray:
        # every stride-th window, from a random offset each epoch: all frames are still
        # seen, each about seq_len / stride times an epoch instead of seq_len times
        if stride == 1:
            return all_starts[has_target]
        offset = int(rng.integers(stride))
        keep = np.zeros(len(all_starts), dtype=bool)
        keep[offset::stride] = True
        keep &= has_target
        return all_starts[keep] if keep.any() else all_starts[has_target]

    warmup = int(getattr(model, "warmup", 0))
    groups = _param_groups(model, config)
    params = [p for g in groups for p in g["params"]]
    opt = make_optimizer(groups, weight_decay=config.weight_decay)
    # [distributed] several processes (engine/distributed.py): `net` is the DDP/FSDP
    # wrapper, each process trains on its shard of every global batch; None: one process.
    net, predict, state_src = model, predict_blocks, model
    if dist is not None:
        net, opt = dist.prepare(model, opt)
        predict, state_src = dist.predict_blocks, dist.state_model(model)
    seq = torch.arange(config.seq_len, device=device)
    # linear learning-rate warm-up over the first lr_warmup epochs' steps, then constant
    per_epoch = math.ceil(int(has_target.sum()) / stride)
    if config.max_windows_per_epoch is not None:
        per_epoch = min(per_epoch, config.max_windows_per_epoch)
    sched = _warmup_scheduler(opt, config, math.ceil(max(per_epoch, 1) / config.batch_size))
    history: list[dict[str, Any]] = []
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    best_loss, best_epoch, best_state = float("inf"), 0, None
    if getattr(model, "base", None) is not None:
        # the untrained ridge-residual decoder is the ridge model: the state to beat
        best_loss, _ = val_score(model, zt, yn, val, config, predict)
        if dist is not None:
            best_loss = dist.broadcast([best_loss, 0.0])[0]
        best_state = _snapshot(state_src, trainable)
    stopped = False
    t_train = time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        t0 = time.perf_counter()
        stage = f"epoch {epoch}/{config.epochs}"
        model.train()
        total, count = 0.0, 0
        starts = epoch_starts()
        n_windows = (
            len(starts)
            if config.max_windows_per_epoch is None
            else min(len(starts), config.max_windows_per_epoch)
        )
        n_batches = math.ceil(n_windows / config.batch_size)
        if progress is not None:
            progress(stage, 0, n_batches)
        for b, batch in enumerate(
            iter_batches(
                starts, config.batch_size, rng=rng, max_windows=config.max_windows_per_epoch
            )
        ):
            local, weight, n_global = batch, 1.0, 0
            if dist is not None:  # [distributed] this process's shard of the global batch
                local, weight = dist.shard(batch)
                n_global = _target_count(yn, batch, config.seq_len, warmup, train.start)
            bt = torch.as_tensor(local, device=device)
            ii = bt[:, None] + seq
            x, y = zt[ii], yt[ii]
            if warmup:
                # leading positions lack history except in the block's first window; the
                # stitched predictions do not use them, so neither does the loss
                skip = (bt != train.start)[:, None] & (seq < warmup)[None, :]
                y = y.masked_fill(skip[:, :, None], float("nan"))
            if config.input_dropout > 0:
                x = torch.nn.functional.dropout(x, p=config.input_dropout, training=True)
            if dist is None:
                loss = _masked_mse(model(x), y)
            else:
                loss = dist.loss(net(x), y, global_count=n_global, weight=weight)
            penalty = _embedding_penalty(model.embedding, config)
            total_loss = loss if penalty is None else loss + penalty
            opt.zero_grad(set_to_none=True)
            if dist is None:
                total_loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
            else:
                dist.backward(total_loss)
                dist.clip_grad_norm_(params, 1.0)
            opt.step()
            if sched is not None:
                sched.step()
            total += float(loss.detach()) * len(batch)
            count += len(batch)
            if progress is not None:
                progress(stage, b + 1, n_batches)
        if dist is not None:  # [distributed] shard losses summed; rank 0's val loss decides
            total = dist.sum([total])[0] / dist.world
        train_loss = total / max(count, 1)
        val_loss, val_r2 = val_score(model, zt, yn, val, config, predict)
        if dist is not None:
            val_loss, val_r2 = dist.broadcast([val_loss, val_r2])
        if not math.isfinite(train_loss):
            raise DataError(
                f"training diverged (loss {train_loss}) in epoch {epoch}; lower lr "
                f"(now {config.lr}) or backbone_lr (now {config.backbone_lr})"
            )
        improved = _improves(val_loss, best_loss, config)
        if improved:
            best_loss, best_epoch = val_loss, epoch
            best_state = _snapshot(state_src, trainable)
        history.append(
            {
                "epoch": epoch,
                "train_loss": train_loss,
                "val_loss": val_loss,
                "val_r2": val_r2,
                "best": improved,
                "seconds": time.perf_counter() - t0,
            }
        )
        spent = time.perf_counter() - t_train
        left = config.epochs - epoch
        (progress_log.info if log_epochs else progress_log.debug)(
            "%s: train loss %.4f, validation loss %.4f, validation R² %.3f%s, %.1f s, ETA %s",
            stage,
            train_loss,
            val_loss,
            val_r2,
            " (best)" if improved else "",
            history[-1]["seconds"],
            format_eta(spent / epoch * left) + (" at most" if left and config.patience else ""),
        )
        if on_epoch is not None:  # e.g. a hyperparameter search that may stop this trial
            on_epoch(epoch, val_loss, val_r2)
        if (
            config.patience > 0
            and epoch >= config.min_epochs
            and epoch - best_epoch >= config.patience
            and epoch < config.epochs
        ):
            stopped = True
            log.info("early stop after epoch %d; best epoch %d", epoch, best_epoch)
            break
    if best_state is not None:
        state_src.load_state_dict(best_state, strict=False)
    model.eval()
    return history, best_epoch, stopped


def _warmup_scheduler(
    opt: torch.optim.Optimizer, config: FitConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR | None:
    """Linear learning-rate warm-up over the first ``config.lr_warmup`` epochs' optimiser
    steps, then constant; ``None`` when that is at most one step (step it after each
    ``opt.step()``)."""
    warm_steps = round(config.lr_warmup * steps_per_epoch)
    if warm_steps <= 1:
        return None
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / warm_steps))
