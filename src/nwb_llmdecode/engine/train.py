"""Fit a behaviour decoder on arrays: split, normalise, train, early-stop, evaluate.

:func:`fit_arrays` is the engine's entry point. It knows nothing about NWB: it takes
activity (frames x ROIs) and behaviour (frames x channels) as numpy arrays, and returns a
:class:`FitResult` with predictions in original units, the splits, metrics per channel and
split, the training history and the trained model (which
:meth:`FitResult.save_checkpoint` writes for :func:`~nwb_llmdecode.engine.predict_arrays`).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import FitConfig
from ..errors import ConfigError, DataError
from ..models.baselines import ClosedFormDecoder
from ..models.decoder import Model, build_model
from ..windows import Block, iter_batches, split_blocks, window_starts
from .evaluate import compute_metrics, predict_blocks

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

Progress = Callable[[str, int, int], None]
"""``progress(stage, done, total)``: stages ``"load backbone"``, ``"epoch 3/20"``,
``"validate"``, ``"evaluate"``, ``"ridge"``, ``"reservoir"``."""

_MAX_LISTED = 5


# ----------------------------------------------------------------------------------------
# normalisation
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Normalization:
    """Per-ROI and per-channel z-scoring, with statistics of the training block only.

    Attributes
    ----------
    activity_mean, activity_std
        (n_rois,) float32. ROIs constant over the training block get std 1.
    behavior_mean, behavior_std
        (n_channels,) float32, over the training frames that have behaviour.
    """

    activity_mean: np.ndarray
    activity_std: np.ndarray
    behavior_mean: np.ndarray
    behavior_std: np.ndarray

    @classmethod
    def from_block(cls, activity: np.ndarray, behavior: np.ndarray, block: Block) -> Normalization:
        """Statistics of ``block`` (the training block)."""
        a = activity[block.start : block.stop]
        a_mean = a.mean(axis=0, dtype=np.float64)
        a_std = a.std(axis=0, dtype=np.float64)
        flat = a_std <= 1e-12
        if flat.any():
            log.warning(
                "%d ROI(s) are constant over the training block (first: %s); they carry no "
                "information and are left unscaled",
                int(flat.sum()),
                np.flatnonzero(flat)[:_MAX_LISTED].tolist(),
            )
            a_std = np.where(flat, 1.0, a_std)
        b = behavior[block.start : block.stop]
        with np.errstate(invalid="ignore"):
            b_mean = np.nanmean(b, axis=0) if np.isfinite(b).any() else np.zeros(b.shape[1])
            b_std = np.nanstd(b, axis=0) if np.isfinite(b).any() else np.ones(b.shape[1])
        b_mean = np.where(np.isfinite(b_mean), b_mean, 0.0)
        b_std = np.where(np.isfinite(b_std) & (b_std > 1e-12), b_std, 1.0)
        return cls(
            a_mean.astype(np.float32),
            a_std.astype(np.float32),
            b_mean.astype(np.float32),
            b_std.astype(np.float32),
        )

    def activity(self, activity: np.ndarray) -> np.ndarray:
        """Z-scored activity (a new float32 array)."""
        out = np.asarray(activity, dtype=np.float32) - self.activity_mean
        out /= self.activity_std
        return out

    def behavior(self, behavior: np.ndarray) -> np.ndarray:
        """Z-scored behaviour (a new float32 array; NaN stays NaN)."""
        return (
            (np.asarray(behavior, dtype=np.float32) - self.behavior_mean) / self.behavior_std
        ).astype(np.float32)

    def behavior_units(self, normalized: np.ndarray) -> np.ndarray:
        """Back to original behaviour units (float32)."""
        return (
            np.asarray(normalized, dtype=np.float32) * self.behavior_std + self.behavior_mean
        ).astype(np.float32)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The statistics as tensors (for checkpoints)."""
        return {
            "activity_mean": torch.from_numpy(self.activity_mean.copy()),
            "activity_std": torch.from_numpy(self.activity_std.copy()),
            "behavior_mean": torch.from_numpy(self.behavior_mean.copy()),
            "behavior_std": torch.from_numpy(self.behavior_std.copy()),
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> Normalization:
        """Inverse of :meth:`state_dict`."""
        return cls(
            *(
                state[k].cpu().numpy().astype(np.float32)
                for k in ("activity_mean", "activity_std", "behavior_mean", "behavior_std")
            )
        )


# ----------------------------------------------------------------------------------------
# result
# ----------------------------------------------------------------------------------------


@dataclass
class FitResult:
    """Everything a fit produced.

    Attributes
    ----------
    predictions
        (frames, channels) float32 in original units; NaN where no window reached (gaps
        between splits).
    splits
        ``(split_name, start_frame, stop_frame_exclusive)`` of each block, in time order.
    metrics
        One dict per channel and split: ``channel`` (index), ``split``, ``rmse``, ``r2``,
        ``pearson``, ``n_frames``.
    config
        The configuration used.
    device
        Where the model ran (``"cpu"``, ``"cuda:0"``).
    duration_s
        Wall time of the fit.
    history
        Per-epoch dicts (``epoch``, ``train_loss``, ``val_loss``, ``val_r2``, ``seconds``)
        for trained models; one dict with the chosen hyperparameters for closed-form
        baselines.
    model
        The trained :class:`~nwb_llmdecode.models.Decoder`, ``LSTMDecoder``,
        ``RidgeDecoder`` or ``ReservoirDecoder`` (best validation state restored).
    normalization
        The training-block statistics used to normalise inputs and targets.
    best_epoch
        Epoch (1-based) whose state was kept; 0 for closed-form baselines.
    stopped_early
        Whether early stopping ended training before ``config.epochs``.
    """

    predictions: np.ndarray
    splits: list[tuple[str, int, int]]
    metrics: list[dict[str, Any]]
    config: FitConfig
    device: str
    duration_s: float
    history: list[dict[str, Any]]
    model: Model
    normalization: Normalization
    best_epoch: int = 0
    stopped_early: bool = False
    n_rois: int = 0
    n_channels: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def blocks(self) -> list[Block]:
        """The splits as :class:`~nwb_llmdecode.windows.Block`."""
        return [Block(*s) for s in self.splits]

    def metric(self, name: str = "r2", split: str = "test") -> np.ndarray:
        """One metric of every channel in one split, as an array (channel order).

        Examples
        --------
        >>> result.metric("r2", "test").mean()  # doctest: +SKIP
        0.71
        """
        rows = sorted((r for r in self.metrics if r["split"] == split), key=lambda r: r["channel"])
        if not rows:
            raise KeyError(f"no split {split!r}; splits are {[s[0] for s in self.splits]}")
        return np.array([r[name] for r in rows], dtype=np.float64)

    def save_checkpoint(
        self, directory: str | os.PathLike[str], *, overwrite: bool = False
    ) -> Path:
        """Write the trained weights, normalisation, config and versions to ``directory``.

        See :func:`~nwb_llmdecode.engine.checkpoint.save_checkpoint`.
        """
        from .checkpoint import save_checkpoint

        return save_checkpoint(self, directory, overwrite=overwrite)


# ----------------------------------------------------------------------------------------
# input checks
# ----------------------------------------------------------------------------------------


def format_eta(seconds: float) -> str:
    """``"42 s"``, ``"3 min 5 s"`` or ``"1 h 02 min"``.

    Examples
    --------
    >>> format_eta(0.4), format_eta(185), format_eta(3725)
    ('0 s', '3 min 5 s', '1 h 02 min')
    """
    s = max(0, round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def _where(mask: np.ndarray) -> str:
    frames, rois = np.nonzero(mask)
    pairs = ", ".join(
        f"(frame {f}, ROI {r})"
        for f, r in zip(frames[:_MAX_LISTED], rois[:_MAX_LISTED], strict=True)
    )
    more = " ..." if len(frames) > _MAX_LISTED else ""
    return pairs + more


def check_arrays(
    activity: Any, behavior: Any | None = None, *, n_rois: int | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Validate activity (frames, ROIs) and behaviour (frames, channels) arrays.

    Returns them as float32 arrays (no copy when they already are).

    Raises
    ------
    DataError
        Wrong dimensionality, mismatched frame counts, empty arrays, NaN or infinite
        activity (the message says how many values and which frames/ROIs come first), a
        ROI count different from ``n_rois``, or behaviour that is NaN everywhere.
    """
    a = np.asarray(activity)
    if a.ndim != 2:
        raise DataError(f"activity must be a 2-D (frames, ROIs) array, got shape {a.shape}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise DataError(f"activity is empty: shape {a.shape} (frames, ROIs)")
    if not np.issubdtype(a.dtype, np.number) or np.issubdtype(a.dtype, np.complexfloating):
        raise DataError(f"activity must be real numbers, got dtype {a.dtype}")
    a = a.astype(np.float32, copy=False)
    if n_rois is not None and a.shape[1] != n_rois:
        raise DataError(
            f"activity has {a.shape[1]} ROIs but the model was trained on {n_rois}; select the "
            "same ROIs (in the same order) as in training"
        )
    bad = ~np.isfinite(a)
    if bad.any():
        n_nan = int(np.isnan(a).sum())
        n_inf = int(bad.sum()) - n_nan
        frames = np.flatnonzero(bad.any(axis=1))
        rois = np.flatnonzero(bad.any(axis=0))
        raise DataError(
            f"activity has {n_nan} NaN and {n_inf} infinite value(s) in {len(frames)} frame(s) "
            f"and {len(rois)} ROI(s), first at {_where(bad)}; fill or drop them (e.g. "
            "interpolate the frames or exclude the ROIs) before decoding"
        )
    if behavior is None:
        return a, None
    b = np.asarray(behavior)
    if b.ndim == 1:
        b = b[:, None]
    if b.ndim != 2:
        raise DataError(f"behavior must be a 2-D (frames, channels) array, got shape {b.shape}")
    if b.shape[0] != a.shape[0]:
        raise DataError(
            f"activity has {a.shape[0]} frames but behavior has {b.shape[0]}; align behaviour "
            "to the imaging frames first"
        )
    if b.shape[1] == 0:
        raise DataError("behavior has no channels")
    if not np.issubdtype(b.dtype, np.number) or np.issubdtype(b.dtype, np.complexfloating):
        raise DataError(f"behavior must be real numbers, got dtype {b.dtype}")
    b = b.astype(np.float32, copy=False)
    if np.isinf(b).any():
        raise DataError(
            f"behavior has {int(np.isinf(b).sum())} infinite value(s), first in frame "
            f"{int(np.flatnonzero(np.isinf(b).any(axis=1))[0])}; use NaN for missing samples"
        )
    if not np.isfinite(b).any():
        raise DataError("behavior is NaN in every frame: nothing to decode")
    return a, b


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; check that a CUDA request can be met.

    Examples
    --------
    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device={device!r} but torch sees no CUDA device (torch {torch.__version__}); "
                "use device 'cpu' or 'auto', or install a CUDA build of torch"
            )
        dev = torch.device(device)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(
                f"device={device!r} but only {torch.cuda.device_count()} CUDA device(s) exist"
            )
        return dev
    if device == "cpu":
        return torch.device("cpu")
    raise ConfigError(f"device={device!r} is not valid: expected auto, cpu, cuda or cuda:N")


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


def _l2_penalty(model: torch.nn.Module, config: FitConfig) -> torch.Tensor | None:
    if config.embedding_l2 <= 0:
        return None
    weights = model.embedding.roi_weights()  # each (hidden, n_rois)
    # sum over ROIs and lags, mean over hidden units: independent of the backbone's width
    total = sum((w.float() ** 2).sum() for w in weights)
    return config.embedding_l2 * total / weights[0].shape[0]


def _val_score(
    model: torch.nn.Module, zt: torch.Tensor, yn: np.ndarray, block: Block, config: FitConfig
) -> tuple[float, float]:
    pred = predict_blocks(
        model, zt, [block], seq_len=config.seq_len, batch_size=config.eval_batch_size
    )[block.start : block.stop]
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
) -> tuple[list[dict[str, Any]], int, bool]:
    train = next(b for b in blocks if b.name == "train")
    val = next(b for b in blocks if b.name == "validation")
    yt = torch.from_numpy(yn).to(device)
    starts = window_starts(train.start, train.stop, config.seq_len, config.train_stride)
    # drop training windows without any behaviour sample
    idx = starts[:, None] + np.arange(config.seq_len)
    has_target = np.isfinite(yn[idx]).any(axis=(1, 2))
    starts = starts[has_target]
    if len(starts) == 0:
        raise DataError("no training window has a behaviour sample")
    rng = np.random.default_rng(config.seed)
    groups = _param_groups(model, config)
    params = [p for g in groups for p in g["params"]]
    opt = torch.optim.AdamW(groups, weight_decay=config.weight_decay)
    n_windows = (
        len(starts)
        if config.max_windows_per_epoch is None
        else min(len(starts), config.max_windows_per_epoch)
    )
    n_batches = math.ceil(n_windows / config.batch_size)
    seq = torch.arange(config.seq_len, device=device)
    history: list[dict[str, Any]] = []
    best_loss, best_epoch, best_state = float("inf"), 0, None
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    stopped = False
    t_train = time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        t0 = time.perf_counter()
        stage = f"epoch {epoch}/{config.epochs}"
        model.train()
        total, count = 0.0, 0
        if progress is not None:
            progress(stage, 0, n_batches)
        for b, batch in enumerate(
            iter_batches(
                starts, config.batch_size, rng=rng, max_windows=config.max_windows_per_epoch
            )
        ):
            ii = torch.as_tensor(batch, device=device)[:, None] + seq
            x, y = zt[ii], yt[ii]
            if config.input_dropout > 0:
                x = torch.nn.functional.dropout(x, p=config.input_dropout, training=True)
            loss = _masked_mse(model(x), y)
            penalty = _l2_penalty(model, config)
            total_loss = loss if penalty is None else loss + penalty
            opt.zero_grad(set_to_none=True)
            total_loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            total += float(loss.detach()) * len(batch)
            count += len(batch)
            if progress is not None:
                progress(stage, b + 1, n_batches)
        train_loss = total / max(count, 1)
        val_loss, val_r2 = _val_score(model, zt, yn, val, config)
        if not math.isfinite(train_loss):
            raise DataError(
                f"training diverged (loss {train_loss}) in epoch {epoch}; lower lr "
                f"(now {config.lr}) or backbone_lr (now {config.backbone_lr})"
            )
        improved = val_loss < best_loss - 1e-7
        if improved:
            best_loss, best_epoch = val_loss, epoch
            best_state = {
                n: t.detach().clone() for n, t in model.state_dict().items() if n in trainable
            }
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
        model.load_state_dict(best_state, strict=False)
    model.eval()
    return history, best_epoch, stopped


# ----------------------------------------------------------------------------------------
# entry point
# ----------------------------------------------------------------------------------------


def fit_arrays(
    activity: np.ndarray,
    behavior: np.ndarray,
    *,
    config: FitConfig,
    progress: Progress | None = None,
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
    device = resolve_device(config.device)
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
        if isinstance(model, ClosedFormDecoder):
            info = model.fit(z, yn, blocks, progress=progress)
            history = [info]
            zt: Any = z
        else:
            zt = torch.from_numpy(z).to(device)
            history, best_epoch, stopped = _train_torch(
                model, zt, yn, blocks, config, device, progress
            )
        pred_n = predict_blocks(
            model,
            zt,
            blocks,
            seq_len=config.seq_len,
            batch_size=config.eval_batch_size,
            device=device,
            progress=progress,
        )
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
    )
    test_r2 = np.nanmean(result.metric("r2", "test")) if metrics else float("nan")
    log.info("fit done in %.1f s; test R² (mean over channels) %.3f", result.duration_s, test_r2)
    return result
