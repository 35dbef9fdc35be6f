"""Checkpoints: trained weights + normalisation + config JSON + versions, no pickled objects.

A checkpoint directory holds

``config.json``
    The :class:`~nwb_llmdecode.config.FitConfig` of the fit.
``checkpoint.json``
    Format version, model kind, ROI and channel counts, backbone facts, best epoch, test
    metrics and the versions of nwb-llmdecode, torch, transformers, peft and numpy.
``weights.pt``
    A plain ``dict[str, Tensor]`` written with ``torch.save`` and read back with
    ``torch.load(..., weights_only=True)``: ``model.*`` (input embedding, head, LoRA
    adapters; the whole backbone only in ``full`` mode or for random init; baseline
    weights) and ``norm.*`` (training-block statistics).

:func:`load_checkpoint` rebuilds the model from the config (re-loading a pretrained
backbone from its source) and :func:`predict_arrays` applies it to the activity of another
session with the same ROIs.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import FitConfig
from ..errors import ConfigError, DataError, OutputExistsError
from ..models.baselines import ClosedFormDecoder
from ..models.decoder import Decoder, Model, build_model
from ..windows import Block
from .evaluate import predict_blocks
from .train import FitResult, Normalization, check_arrays, resolve_device

__all__ = [
    "CHECKPOINT_FORMAT",
    "Checkpoint",
    "load_checkpoint",
    "package_versions",
    "predict_arrays",
    "save_checkpoint",
]

log = logging.getLogger(__name__)

#: Version of the checkpoint layout written by :func:`save_checkpoint`.
CHECKPOINT_FORMAT = 1
_FILES = ("config.json", "checkpoint.json", "weights.pt")


def package_versions() -> dict[str, str]:
    """Versions of the packages a checkpoint depends on (``"absent"`` if not installed)."""
    out = {}
    for dist in ("nwb-llmdecode", "torch", "transformers", "peft", "numpy", "safetensors"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "absent"
    out["python"] = platform.python_version()
    return out


@dataclass
class Checkpoint:
    """A loaded checkpoint, ready to predict.

    Attributes
    ----------
    model
        The rebuilt model with its trained weights (eval mode).
    config
        Configuration of the original fit.
    normalization
        Training-block statistics of the original fit.
    n_rois, n_channels
        Input and output sizes.
    meta
        The content of ``checkpoint.json`` (versions, metrics, backbone facts).
    """

    model: Model
    config: FitConfig
    normalization: Normalization
    n_rois: int
    n_channels: int
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None


def _model_state(model: Model) -> dict[str, torch.Tensor]:
    if isinstance(model, Decoder):
        return model.checkpoint_state_dict()
    if isinstance(model, ClosedFormDecoder):
        return model.state_dict()
    if isinstance(model, torch.nn.Module):
        return {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
    raise TypeError(f"cannot checkpoint a {type(model).__name__}")


def save_checkpoint(
    result: FitResult, directory: str | os.PathLike[str], *, overwrite: bool = False
) -> Path:
    """Write a fit's trained weights, normalisation, config and versions.

    Parameters
    ----------
    result
        What :func:`~nwb_llmdecode.engine.fit_arrays` returned.
    directory
        Checkpoint directory (created).
    overwrite
        Replace an existing checkpoint in ``directory``.

    Returns
    -------
    pathlib.Path
        The directory.

    Raises
    ------
    OutputExistsError
        ``directory`` already holds a checkpoint (or is a file) and ``overwrite`` is False.
    """
    d = Path(directory)
    if d.exists() and not d.is_dir():
        raise OutputExistsError(f"{d}: exists and is not a directory")
    if d.is_dir() and any((d / f).exists() for f in _FILES) and not overwrite:
        raise OutputExistsError(f"{d}: holds a checkpoint; pass overwrite=True (--overwrite)")
    d.mkdir(parents=True, exist_ok=True)
    model = result.model
    state = {f"model.{k}": v for k, v in _model_state(model).items()}
    state.update({f"norm.{k}": v for k, v in result.normalization.state_dict().items()})
    test = [r for r in result.metrics if r["split"] == "test"]
    meta: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "kind": type(model).__name__,
        "backbone": result.config.backbone,
        "n_rois": int(result.n_rois),
        "n_channels": int(result.n_channels),
        "splits": [list(s) for s in result.splits],
        "best_epoch": int(result.best_epoch),
        "test_metrics": test,
        "device": result.device,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": package_versions(),
    }
    if isinstance(model, Decoder):
        meta.update(
            model_type=model.model_type,
            causal=bool(model.causal),
            train_mode=model.train_mode,
            whole_backbone_saved=model.saves_whole_backbone,
        )
    _atomic_write(d / "weights.pt", lambda p: torch.save(state, p))
    _atomic_write(d / "config.json", lambda p: p.write_text(result.config.to_json(indent=2)))
    _atomic_write(d / "checkpoint.json", lambda p: p.write_text(json.dumps(meta, indent=2)))
    log.info("checkpoint written to %s (%d tensors)", d, len(state))
    return d


def _atomic_write(path: Path, write: Callable[[Path], Any]) -> None:
    tmp = path.with_name(f".{path.name}.partial")
    write(tmp)
    os.replace(tmp, path)


def load_checkpoint(directory: str | os.PathLike[str], *, device: str = "cpu") -> Checkpoint:
    """Rebuild a trained model from a checkpoint directory.

    Parameters
    ----------
    directory
        Written by :func:`save_checkpoint`.
    device
        ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``.

    Raises
    ------
    DataError
        Missing files, an unknown format, or weights that do not fit the model.
    """
    d = Path(directory)
    missing = [f for f in _FILES if not (d / f).is_file()]
    if missing:
        raise DataError(f"{d}: not a checkpoint directory (missing {', '.join(missing)})")
    try:
        meta = json.loads((d / "checkpoint.json").read_text())
        config = FitConfig.from_json((d / "config.json").read_text())
    except (json.JSONDecodeError, ConfigError) as e:
        raise DataError(f"{d}: unreadable checkpoint metadata ({e})") from None
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise DataError(
            f"{d}/checkpoint.json: format {meta.get('format')!r}, this version reads "
            f"{CHECKPOINT_FORMAT}"
        )
    dev = resolve_device(device)
    state = torch.load(d / "weights.pt", map_location=dev, weights_only=True)
    model_state = {k[6:]: v for k, v in state.items() if k.startswith("model.")}
    norm = Normalization.from_state_dict(
        {k[5:]: v for k, v in state.items() if k.startswith("norm.")}
    )
    n_rois, n_channels = int(meta["n_rois"]), int(meta["n_channels"])
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(config.seed)
        model = build_model(
            config.replace(device=str(dev)) if config.quantize is None else config,
            n_rois=n_rois,
            n_channels=n_channels,
            device=dev,
        )
    if isinstance(model, ClosedFormDecoder):
        model.load_state_dict(model_state)
    elif isinstance(model, Decoder):
        result = model.load_state_dict(model_state, strict=False)
        whole = bool(meta.get("whole_backbone_saved"))
        if result.unexpected_keys:
            raise DataError(
                f"{d}/weights.pt has weights this model does not have: {result.unexpected_keys[:5]}"
            )
        bad = [
            k for k in result.missing_keys if whole or not k.startswith("backbone.") or "lora_" in k
        ]
        if bad:
            raise DataError(f"{d}/weights.pt lacks weights of this model: {bad[:5]}")
    else:
        try:
            model.load_state_dict(model_state)
        except RuntimeError as e:
            raise DataError(f"{d}/weights.pt does not fit the model: {e}") from None
    if isinstance(model, torch.nn.Module):
        model.eval()
    return Checkpoint(
        model=model,
        config=config,
        normalization=norm,
        n_rois=n_rois,
        n_channels=n_channels,
        meta=meta,
        path=d,
    )


def predict_arrays(
    source: Checkpoint | FitResult | str | os.PathLike[str],
    activity: np.ndarray,
    *,
    batch_size: int | None = None,
    device: str | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> np.ndarray:
    """Decode behaviour of a (new) session with a trained model.

    Parameters
    ----------
    source
        A checkpoint directory, a loaded :class:`Checkpoint`, or a :class:`FitResult`.
    activity
        (frames, ROIs) float32 with the same ROIs (same order) as in training.
    batch_size
        Windows per forward pass (default: the fit's ``eval_batch_size``).
    device
        Only for a checkpoint directory: where to load it (default ``"cpu"``).
    progress
        ``progress("predict", windows_done, windows_total)``.

    Returns
    -------
    numpy.ndarray
        (frames, channels) float32 in the original behaviour units. Every frame gets a
        prediction: the whole session is one block, stitched from all its windows.
    """
    if isinstance(source, str | os.PathLike):
        source = load_checkpoint(source, device=device or "cpu")
    if isinstance(source, FitResult):
        model, config, norm, n_rois = (
            source.model,
            source.config,
            source.normalization,
            source.n_rois,
        )
    elif isinstance(source, Checkpoint):
        model, config, norm, n_rois = (
            source.model,
            source.config,
            source.normalization,
            source.n_rois,
        )
    else:
        raise TypeError(
            f"predict_arrays: expected a checkpoint directory, Checkpoint or FitResult, got "
            f"{type(source).__name__}"
        )
    a, _ = check_arrays(activity, n_rois=n_rois)
    if a.shape[0] < config.seq_len:
        raise DataError(
            f"activity has {a.shape[0]} frames, fewer than one window (seq_len {config.seq_len})"
        )
    z = norm.activity(a)
    pred = predict_blocks(
        model,
        z,
        [Block("all", 0, a.shape[0])],
        seq_len=config.seq_len,
        batch_size=batch_size or config.eval_batch_size,
        progress=progress,
        stage="predict",
    )
    return norm.behavior_units(pred)
