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
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ..config import FitConfig
from ..errors import ConfigError, DataError
from ..models.baselines import ClosedFormDecoder, RidgeDecoder
from ..models.decoder import Decoder, build_model
from ..progress import Progress
from ..windows import Block, split_blocks
from .distributed import from_environment
from .evaluate import compute_metrics, predict_blocks
from .loop import train_torch
from .result import FitResult, Normalization, check_arrays, resolve_device
from .screen import Screen, fit_lstm, screen_rois

__all__ = [
    "FitResult",
    "Normalization",
    "Progress",
    "check_arrays",
    "fit_arrays",
    "resolve_device",
]

log = logging.getLogger(__name__)


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


def _fit_lstm_part(
    model: Decoder,
    zt: torch.Tensor,
    yn: np.ndarray,
    blocks: Sequence[Block],
    config: FitConfig,
    device: torch.device,
    progress: Progress | None,
) -> dict[str, Any]:
    """Train the blend's LSTM part (``model.lstm``) on every ROI, as ``backbone="lstm"``
    would (:func:`~nwb_llmdecode.engine.screen.fit_lstm`); without the ROI screen only,
    which hands over the LSTM it chose."""
    assert model.lstm is not None
    lstm, info = fit_lstm(zt, yn, blocks, config, device, progress, stage="lstm")
    model.lstm = lstm
    log.info("blend's LSTM part: best epoch %d of %d", info["best_epoch"], info["epochs_run"])
    return {"lstm_best_epoch": info["best_epoch"], "lstm_epochs_run": info["epochs_run"]}


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
    base: dict[str, Any] | None,
    best_epoch: int,
    stopped: bool,
    history: list[dict[str, Any]],
    screen: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What the fit chose on the validation block (written to ``decoding_run``)."""
    out: dict[str, Any] = {
        "best_epoch": int(best_epoch),
        "epochs_run": sum(1 for h in history if "epoch" in h),
        "stopped_early": bool(stopped),
        **(screen or {}),
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
        screen: Screen | None = None
        screen_info: dict[str, Any] | None = None
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
                model.lstm = None  # trained on its own, then blended
            zt = torch.from_numpy(z).to(device)
            if config.screen and isinstance(model, Decoder):
                # the ROIs the transformer (and the LSTM part) see: engine/screen.py
                screen = screen_rois(zt, yn, blocks, config, device, progress, dist)
                if screen.rois is not None:
                    model.embedding.restrict(screen.rois)
                screen_info = screen.record
            history, best_epoch, stopped = train_torch(
                model, zt, yn, blocks, config, device, progress, dist, on_epoch
            )
            if base is not None and base_info is not None and config.residual == "blend":
                model.base = base
                if lstm_part is not None and screen is not None:
                    model.lstm = screen.lstm  # trained on the ROIs the screen chose
                    base_info["lstm_best_epoch"] = screen.lstm_info["best_epoch"]
                    base_info["lstm_epochs_run"] = screen.lstm_info["epochs_run"]
                elif lstm_part is not None:
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
        extra={"fit": _fit_choices(base_info, best_epoch, stopped, history, screen_info)},
    )
    test_r2 = np.nanmean(result.metric("r2", "test")) if metrics else float("nan")
    log.info("fit done in %.1f s; test R² (mean over channels) %.3f", result.duration_s, test_r2)
    return result
