"""What a fit produces, below both training and checkpoints: normalisation, the fit's
result, the predictor protocol, and the input checks they share.

:mod:`nwb_llmdecode.engine.train` makes a :class:`FitResult`;
:mod:`nwb_llmdecode.engine.checkpoint` saves one and loads a
:class:`~nwb_llmdecode.engine.checkpoint.Checkpoint`; both are :class:`Fitted`, which is
all :func:`~nwb_llmdecode.engine.predict_arrays` needs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from ..config import FitConfig
from ..errors import ConfigError, DataError
from ..models.decoder import Model
from ..windows import Block

__all__ = ["FitResult", "Fitted", "Normalization", "check_arrays", "resolve_device"]

log = logging.getLogger(__name__)

_MAX_LISTED = 5


@runtime_checkable
class Fitted(Protocol):
    """A trained decoder ready to predict: a :class:`FitResult` or a loaded checkpoint."""

    model: Model
    config: FitConfig
    normalization: Normalization
    n_rois: int


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
