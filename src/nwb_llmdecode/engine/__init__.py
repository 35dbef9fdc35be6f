"""Training, evaluation and checkpoints of behaviour decoders (numpy/torch only, no NWB)."""

from ..progress import Progress
from .checkpoint import (
    CHECKPOINT_FORMAT,
    Checkpoint,
    load_checkpoint,
    package_versions,
    predict_arrays,
    save_checkpoint,
)
from .evaluate import METRIC_NAMES, compute_metrics, predict_blocks, regression_metrics
from .result import FitResult, Fitted, Normalization, check_arrays, resolve_device
from .train import fit_arrays

__all__ = [
    "CHECKPOINT_FORMAT",
    "METRIC_NAMES",
    "Checkpoint",
    "FitResult",
    "Fitted",
    "Normalization",
    "Progress",
    "check_arrays",
    "compute_metrics",
    "fit_arrays",
    "load_checkpoint",
    "package_versions",
    "predict_arrays",
    "predict_blocks",
    "regression_metrics",
    "resolve_device",
    "save_checkpoint",
]
