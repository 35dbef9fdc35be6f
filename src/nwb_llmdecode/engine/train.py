"""Fit a behaviour decoder on arrays: split, normalise, train, early-stop, evaluate.

:func:`fit_arrays` is the engine's entry point. It knows nothing about NWB: it takes
activity (frames x ROIs) and behaviour (frames x channels) as numpy arrays, and returns a
:class:`FitResult` with predictions in original units, the splits, metrics per channel and
split, the training history and the trained model (which
:func:`~nwb_llmdecode.engine.save_checkpoint` writes for
:func:`~nwb_llmdecode.engine.predict_arrays`). The shared types live in
:mod:`nwb_llmdecode.engine.result`.
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
from ..errors import ConfigError, DataError
from ..models.baselines import ClosedFormDecoder, RidgeDecoder
from ..models.decoder import Decoder, build_model
from ..progress import Progress, format_eta
from ..windows import Block, iter_batches, split_blocks, window_starts
from .distributed import Distributed, from_environment
from .evaluate import compute_metrics, predict_blocks
from .result import FitResult, Normalization, check_arrays, resolve_device

__all__ = [
    "FitResult",
    "Normalization",
    "Progress",
    "check_arrays",
    "fit_arrays",
    "resolve_device",
]

log = logging.getLogger(__name__)
#: One concise INFO line per epoch (and per salience chunk) for logs and batch jobs; the
#: command line shows this logger when stderr is not a terminal.
progress_log = logging.getLogger("nwb_llmdecode.progress")


# ----------------------------------------------------------------------------------------
# training
# ----------------------------------------------------------------------------------------


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
    """AdamW over parameter groups, updating all tensors of a group at once (``foreach``;
    torch's default does so on CUDA only). ``benchmarks/bench_recipe.py`` measures it
    against the per-tensor loop and the fused kernel: on the CPU foreach was faster than
    both (``benchmarks/RESULTS.md``)."""
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


def _val_score(
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


def _train_torch(
    model: torch.nn.Module,
    zt: torch.Tensor,
    yn: np.ndarray,
    blocks: Sequence[Block],
    config: FitConfig,
    device: torch.device,
    progress: Progress | None,
    dist: Distributed | None = None,
    on_epoch: Callable[[int, float, float], None] | None = None,
) -> tuple[list[dict[str, Any]], int, bool]:
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
        best_loss, _ = _val_score(model, zt, yn, val, config, predict)
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
        val_loss, val_r2 = _val_score(model, zt, yn, val, config, predict)
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
        progress_log.info(
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


def _fit_base(
    model: Decoder,
    z: np.ndarray,
    yn: np.ndarray,
    blocks: Sequence[Block],
    config: FitConfig,
    progress: Progress | None,
) -> dict[str, Any]:
    """Fit the ridge base of a ridge-residual decoder (lags and penalty chosen on the
    validation block, as the ``ridge`` baseline does) and load it into ``model.base``."""
    assert model.base is not None
    ridge = RidgeDecoder(
        z.shape[1],
        yn.shape[1],
        seq_len=config.seq_len,
        lags=config.ridge.lags,
        alphas=config.ridge.alphas,
    )
    info = ridge.fit(z, yn, blocks, progress=progress)
    model.base.load_ridge(ridge)
    val = next(b for b in blocks if b.name == "validation")
    pred = ridge.predict(z, [val])[val.start : val.stop]
    y = yn[val.start : val.stop]
    ok = np.isfinite(y)
    mse = float(np.mean((pred[ok] - y[ok]) ** 2)) if ok.any() else float("nan")
    log.info("ridge base: %d lags, alpha %g, validation MSE %.4g", info["lags"], info["alpha"], mse)
    return {"lags": int(info["lags"]), "alpha": float(info["alpha"]), "val_loss": mse}


#: Blend weights of the transformer tried on the validation block (ridge gets 1 - w).
BLEND_WEIGHTS = tuple(round(0.1 * i, 1) for i in range(11))
#: (transformer, LSTM, ridge) weights tried when the blend holds an LSTM: the simplex grid
#: of step 0.1 (66 weightings).
BLEND3_WEIGHTS = tuple(
    (i / 10, j / 10, (10 - i - j) / 10) for i in range(11) for j in range(11 - i)
)


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


def _fit_lstm_part(
    model: Decoder,
    zt: torch.Tensor,
    yn: np.ndarray,
    blocks: Sequence[Block],
    config: FitConfig,
    device: torch.device,
    progress: Progress | None,
) -> dict[str, Any]:
    """Train the blend's LSTM part (``model.lstm``) alone, as ``backbone="lstm"`` would:
    the same prior, optimiser, stride, warm-up and early stopping, its own generator state.

    Every process of a distributed fit trains it the same way on the whole training block
    (it is small), so no collective is involved.
    """
    assert model.lstm is not None
    lstm_config = config.replace(backbone="lstm", ensemble=1)

    def stage(name: str, done: int, total: int) -> None:
        assert progress is not None
        progress(f"lstm {name}", done, total)

    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(config.seed + 1)
        history, best_epoch, _ = _train_torch(
            model.lstm, zt, yn, blocks, lstm_config, device, None if progress is None else stage
        )
    log.info("blend's LSTM part: best epoch %d of %d", best_epoch, len(history))
    return {
        "lstm_best_epoch": int(best_epoch),
        "lstm_epochs_run": len(history),
    }


def _blend(
    model: Decoder,
    zt: torch.Tensor,
    yn: np.ndarray,
    blocks: Sequence[Block],
    config: FitConfig,
    predict: Any = predict_blocks,
) -> dict[str, Any]:
    """Average the trained transformer with its ridge base (and its LSTM part, when the
    model has one), the weights chosen on validation.

    ``model`` has its fitted ridge base (and trained ``lstm``) attached and its head
    trained without them. The decoder's output is linear in its parts, so the predictions
    of ``w_t * head + w_l * lstm + w_r * base`` are computed from one pass of each; the
    best weights on the validation block (:data:`BLEND_WEIGHTS`, or :data:`BLEND3_WEIGHTS`
    with an LSTM; ties go to the larger ridge share, then the larger LSTM share) are then
    folded into the weights: the head, the LSTM's output layer and the base are scaled by
    their weights. The model stays one :class:`Decoder`.
    """
    assert model.base is not None
    val = next(b for b in blocks if b.name == "validation")
    lstm = model.lstm
    base_state = {k: v.clone() for k, v in model.base.state_dict().items()}
    head_state = {k: v.detach().clone() for k, v in model.head.state_dict().items()}
    lstm_state = (
        {} if lstm is None else {k: v.detach().clone() for k, v in lstm.head.state_dict().items()}
    )

    def scale(head_w: float, base_w: float, lstm_w: float = 0.0) -> None:
        with torch.no_grad():
            for k, p in model.head.named_parameters():
                p.copy_(head_state[k] * head_w)
            model.base.weights.copy_(base_state["weights"] * base_w)
            model.base.bias.copy_(base_state["bias"] * base_w)
            if lstm is not None:
                for k, p in lstm.head.named_parameters():
                    p.copy_(lstm_state[k] * lstm_w)

    def val_pred() -> np.ndarray:
        pred = predict(model, zt, [val], seq_len=config.seq_len, batch_size=config.eval_batch_size)
        return pred[val.start : val.stop].astype(np.float64)

    scale(1.0, 0.0)
    p_head = val_pred()
    scale(0.0, 1.0)
    p_base = val_pred()
    p_lstm = np.zeros_like(p_head)
    if lstm is not None:
        scale(0.0, 0.0, 1.0)
        p_lstm = val_pred()
    y = yn[val.start : val.stop].astype(np.float64)
    ok = np.isfinite(y) & np.isfinite(p_head) & np.isfinite(p_base) & np.isfinite(p_lstm)
    if lstm is None:
        grid = tuple((w, 0.0, (10 - round(10 * w)) / 10) for w in BLEND_WEIGHTS)
    else:
        grid = BLEND3_WEIGHTS
    losses = [
        float(np.mean(((wt * p_head + wl * p_lstm + wr * p_base)[ok] - y[ok]) ** 2))
        if ok.any()
        else 0.0
        for wt, wl, wr in grid
    ]
    best = min(range(len(grid)), key=lambda i: (losses[i], -grid[i][2], -grid[i][1]))
    wt, wl, wr = grid[best]
    scale(wt, wr, wl)

    def alone(weights: tuple[float, float, float]) -> float:
        return losses[grid.index(weights)]

    log.info(
        "blend: transformer weight %.1f, LSTM %.1f, ridge %.1f (validation MSE %.4g; "
        "transformer alone %.4g, ridge alone %.4g%s)",
        wt,
        wl,
        wr,
        losses[best],
        alone((1.0, 0.0, 0.0)),
        alone((0.0, 0.0, 1.0)),
        "" if lstm is None else f", LSTM alone {alone((0.0, 1.0, 0.0)):.4g}",
    )
    out: dict[str, Any] = {
        "blend_weight": wt,
        "blend_val_loss": losses[best],
        "transformer_val_loss": alone((1.0, 0.0, 0.0)),
    }
    if lstm is None:
        out["blend_val_losses"] = dict(zip([str(x) for x in BLEND_WEIGHTS], losses, strict=True))
    else:
        out["blend_lstm_weight"] = wl
        out["blend_ridge_weight"] = wr
        out["blend_lstm_val_loss"] = alone((0.0, 1.0, 0.0))
        out["blend_val_losses"] = {
            f"{a},{b},{c}": loss for (a, b, c), loss in zip(grid, losses, strict=True)
        }
    return out


def _fit_choices(
    base: dict[str, Any] | None, best_epoch: int, stopped: bool, history: list[dict[str, Any]]
) -> dict[str, Any]:
    """What the fit chose on the validation block (written to ``decoding_run``)."""
    out: dict[str, Any] = {
        "best_epoch": int(best_epoch),
        "epochs_run": sum(1 for h in history if "epoch" in h),
        "stopped_early": bool(stopped),
    }
    if base is not None:
        out["residual_ridge_lags"] = base["lags"]
        out["residual_ridge_alpha"] = base["alpha"]
        out["residual_ridge_val_loss"] = base["val_loss"]
        if "blend_weight" in base:
            keep = ("blend_", "transf", "lstm_")
            out.update({k: v for k, v in base.items() if k.startswith(keep)})
            ridge_w = base.get("blend_ridge_weight", round(1.0 - base["blend_weight"], 1))
            out["residual_kept_base_only"] = ridge_w == 1.0
        else:
            # best epoch 0: no training epoch beat the ridge base on validation
            out["residual_kept_base_only"] = best_epoch == 0
    return out


# ----------------------------------------------------------------------------------------
# entry point
# ----------------------------------------------------------------------------------------


def fit_arrays(
    activity: np.ndarray,
    behavior: np.ndarray,
    *,
    config: FitConfig,
    progress: Progress | None = None,
    on_epoch: Callable[[int, float, float], None] | None = None,
) -> FitResult:
    """Train and evaluate a behaviour decoder on arrays.

    Parameters
    ----------
    activity
        (frames, ROIs) float32, e.g. ΔF/F; must be finite.
    behavior
        (frames, channels) float32 on the same frames. NaN rows (frames without behaviour)
        are left out of the loss and the metrics.
    config
        Run options (:class:`~nwb_llmdecode.config.FitConfig`).
    progress
        ``progress(stage, done, total)``, called for ``"load backbone"``, each
        ``"epoch i/n"`` (batches), ``"validate"`` and ``"evaluate"`` (windows).
    on_epoch
        ``on_epoch(epoch, validation_loss, validation_r2)`` after each training epoch (of
        the network alone, before any blend); an exception it raises ends the fit and
        propagates (:mod:`nwb_llmdecode.engine.search` stops unpromising trials so).

    Returns
    -------
    FitResult

    Raises
    ------
    DataError
        Bad shapes, NaN/inf in activity, too few frames for the split.
    BackboneError, MissingDependencyError, ConfigError
        The backbone cannot be loaded, a package is missing, or an option is unusable here.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((400, 8)).astype(np.float32)
    >>> y = x[:, :1] * 2
    >>> res = fit_arrays(x, y, config=FitConfig(backbone="ridge"))
    >>> bool(res.metric("r2", "test")[0] > 0.99)
    True
    """
    if not isinstance(config, FitConfig):
        raise ConfigError(f"config must be a FitConfig, got {type(config).__name__}")
    if config.search.trials:
        from .search import search_fit  # each trial comes back here with trials=0

        return search_fit(activity, behavior, config=config, progress=progress)
    if config.ensemble > 1:
        from .ensemble import fit_ensemble  # each member comes back here with ensemble=1

        return fit_ensemble(activity, behavior, config=config, progress=progress, on_epoch=on_epoch)
    t_start = time.perf_counter()
    if behavior is None:
        raise DataError("behavior is required to fit a decoder")
    a, b_checked = check_arrays(activity, behavior)
    b = b_checked if b_checked is not None else np.empty((a.shape[0], 0), np.float32)
    blocks = split_blocks(a.shape[0], seq_len=config.seq_len, fractions=config.split)
    by = {blk.name: blk for blk in blocks}
    for name in ("train", "validation"):
        blk = by[name]
        if not np.isfinite(b[blk.start : blk.stop]).any():
            raise DataError(
                f"the {name} block (frames {blk.start}-{blk.stop - 1}) has no behaviour "
                "sample; check the behaviour alignment or change split"
            )
    # [distributed] under accelerate launch / torchrun: this process's part (else None)
    dist = from_environment(config)
    device = resolve_device(config.device) if dist is None else dist.device
    norm = Normalization.from_block(a, b, by["train"])
    z = norm.activity(a)
    yn = norm.behavior(b)
    n_rois, n_channels = a.shape[1], b.shape[1]
    log.info(
        "fit %s on %d frames x %d ROIs -> %d channel(s); splits %s; device %s",
        config.backbone,
        a.shape[0],
        n_rois,
        n_channels,
        [blk.as_tuple() for blk in blocks],
        device,
    )
    fork_devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(config.seed)
        model = build_model(
            config, n_rois=n_rois, n_channels=n_channels, device=device, progress=progress
        )
        best_epoch, stopped = 0, False
        base_info: dict[str, Any] | None = None
        if isinstance(model, ClosedFormDecoder):
            info = model.fit(z, yn, blocks, progress=progress)
            history = [info]
            zt: Any = z
        else:
            base = model.base if isinstance(model, Decoder) else None
            lstm_part = model.lstm if isinstance(model, Decoder) else None
            if base is not None:
                base_info = _fit_base(model, z, yn, blocks, config, progress)
                if config.residual == "blend":
                    model.base = None  # the transformer is trained alone, then blended
            if lstm_part is not None:
                model.lstm = None  # trained on its own after the transformer
            zt = torch.from_numpy(z).to(device)
            history, best_epoch, stopped = _train_torch(
                model, zt, yn, blocks, config, device, progress, dist, on_epoch
            )
            if base is not None and base_info is not None and config.residual == "blend":
                model.base = base
                if lstm_part is not None:
                    model.lstm = lstm_part
                    base_info.update(
                        _fit_lstm_part(model, zt, yn, blocks, config, device, progress)
                    )
                base_info.update(
                    _blend(
                        model,
                        zt,
                        yn,
                        blocks,
                        config,
                        predict_blocks if dist is None else dist.predict_blocks,
                    )
                )
        pred_n = (predict_blocks if dist is None else dist.predict_blocks)(
            model,
            zt,
            blocks,
            seq_len=config.seq_len,
            batch_size=config.eval_batch_size,
            device=device,
            progress=progress,
        )
        if dist is not None and not isinstance(model, ClosedFormDecoder):
            # [distributed] FSDP: the gathered whole model on rank 0 (DDP: model itself)
            trained_lstm = getattr(model, "lstm", None)
            model = dist.full_model(
                model,
                lambda: build_model(config, n_rois=n_rois, n_channels=n_channels, device="cpu"),
            )
            if trained_lstm is not None and model is not None and model.lstm is not trained_lstm:
                # FSDP's gathered state is that of the wrapped transformer: the LSTM part
                # was trained and scaled outside it, the same on every process
                model.lstm.load_state_dict(trained_lstm.state_dict())
    predictions = norm.behavior_units(pred_n)
    metrics = compute_metrics(predictions, b, blocks)
    result = FitResult(
        predictions=predictions,
        splits=[blk.as_tuple() for blk in blocks],
        metrics=metrics,
        config=config,
        device=str(device),
        duration_s=time.perf_counter() - t_start,
        history=history,
        model=model,
        normalization=norm,
        best_epoch=best_epoch,
        stopped_early=stopped,
        n_rois=n_rois,
        n_channels=n_channels,
        extra={"fit": _fit_choices(base_info, best_epoch, stopped, history)},
    )
    test_r2 = np.nanmean(result.metric("r2", "test")) if metrics else float("nan")
    log.info("fit done in %.1f s; test R² (mean over channels) %.3f", result.duration_s, test_r2)
    return result
