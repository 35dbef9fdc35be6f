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
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoint_meta import CHECKPOINT_FILES, CHECKPOINT_FORMAT, read_checkpoint_meta
from ..config import FitConfig
from ..errors import BackboneError, DataError, LLMDecodeError, OutputExistsError
from ..models.backbones import backbone_identity, identity_mismatch
from ..models.baselines import ClosedFormDecoder
from ..models.decoder import Decoder, Model, build_model
from ..models.ensemble import SeedEnsemble
from ..progress import Progress
from ..windows import Block
from .evaluate import predict_blocks
from .result import FitResult, Fitted, Normalization, check_arrays, resolve_device

__all__ = [
    "CHECKPOINT_FORMAT",
    "Checkpoint",
    "load_checkpoint",
    "package_versions",
    "predict_arrays",
    "save_checkpoint",
]

log = logging.getLogger(__name__)

_FILES = CHECKPOINT_FILES


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
    if isinstance(model, SeedEnsemble):  # each member as it checkpoints alone
        return {
            f"members.{i}.{k}": v
            for i, m in enumerate(model.members)
            for k, v in _model_state(m).items()
        }
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
    first = model
    if isinstance(model, SeedEnsemble):
        meta["ensemble_members"] = len(model)
        meta["member_kind"] = type(model.members[0]).__name__
        first = model.members[0]
    if isinstance(first, Decoder):
        meta.update(
            model_type=first.model_type,
            causal=bool(first.causal),
            train_mode=first.train_mode,
            whole_backbone_saved=first.saves_whole_backbone,
            backbone_identity=backbone_identity(result.config.backbone),
        )
    _atomic_write(d / "weights.pt", lambda p: torch.save(state, p))
    _atomic_write(d / "config.json", lambda p: p.write_text(result.config.to_json(indent=2)))
    _atomic_write(d / "checkpoint.json", lambda p: p.write_text(json.dumps(meta, indent=2)))
    log.info("checkpoint written to %s (%d tensors)", d, len(state))
    return d


def _atomic_write(path: Path, write: Callable[[Path], Any]) -> None:
    tmp = path.with_name(f".{path.name}.partial")
    write(tmp)
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _check_backbone(d: Path, meta: dict[str, Any], config: FitConfig) -> None:
    """Refuse a checkpoint whose backbone files are not the ones it was trained on."""
    if config.is_baseline or meta.get("kind") not in (None, "Decoder", "SeedEnsemble"):
        return
    recorded = meta.get("backbone_identity")
    if not isinstance(recorded, dict):
        log.warning(
            "%s: checkpoint.json records no backbone identity (written before "
            "nwb-llmdecode recorded it); cannot verify that backbone %r is the one it was "
            "trained on",
            d,
            config.backbone,
        )
        return
    current = backbone_identity(config.backbone)
    weights_matter = config.init == "pretrained" and not meta.get("whole_backbone_saved")
    why = identity_mismatch(recorded, current, weights_matter=weights_matter)
    if why is not None:
        was = recorded.get("version") or recorded.get("revision") or recorded.get("path") or ""
        raise BackboneError(
            f"{d}: the decoder was trained on backbone {config.backbone!r}"
            + (f" ({was})" if was else "")
            + f", but the backbone found now is not the same ({why}); install the backbone "
            "it was trained on, or fit again"
        )


def _read_weights(path: Path, dev: torch.device) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location=dev, weights_only=True)
    except Exception as e:  # truncated zip, random bytes, a pickle of objects...
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise DataError(
            f"{path}: not a readable weights file ({type(e).__name__}: {first}); only plain "
            "tensor state dicts are loaded (never pickled objects): save the checkpoint "
            "again with fit"
        ) from None
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise DataError(
            f"{path}: expected a dict of named tensors, got {type(state).__name__}; save "
            "the checkpoint again with fit"
        )
    return state


def load_checkpoint(
    directory: str | os.PathLike[str],
    *,
    device: str = "cpu",
    trust_remote_code: bool = False,
) -> Checkpoint:
    """Rebuild a trained model from a checkpoint directory.

    A checkpoint is data: nothing in it can switch on code execution. Its
    ``config.json`` may say ``trust_remote_code``; that is ignored, and only the
    ``trust_remote_code`` argument here (``--trust-remote-code`` on the command line)
    lets a backbone run its own code. The backbone's identity recorded by
    :func:`save_checkpoint` (packaged version, hub revision or directory, and SHA-256 of
    its config and weight files) must match the backbone found now; checkpoints written
    before the identity was recorded load with a logged warning.

    Parameters
    ----------
    directory
        Written by :func:`save_checkpoint`.
    device
        ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``.
    trust_remote_code
        Allow the backbone's own model code to run (only for code you trust).

    Raises
    ------
    DataError
        Missing or damaged files, an unknown format, or weights that do not fit the model.
    BackboneError
        The backbone is not the one the decoder was trained on, or it needs remote code
        that was not allowed.
    """
    d = Path(directory)
    meta, config = read_checkpoint_meta(d)
    config = config.replace(trust_remote_code=bool(trust_remote_code))
    _check_backbone(d, meta, config)
    dev = resolve_device(device)
    state = _read_weights(d / "weights.pt", dev)
    model_state = {k[6:]: v for k, v in state.items() if k.startswith("model.")}
    try:
        norm = Normalization.from_state_dict(
            {k[5:]: v for k, v in state.items() if k.startswith("norm.")}
        )
    except (KeyError, ValueError, TypeError, RuntimeError) as e:
        raise DataError(
            f"{d}/weights.pt: no usable normalisation statistics ({type(e).__name__}: {e}); "
            "save the checkpoint again with fit"
        ) from None
    n_rois, n_channels = int(meta["n_rois"]), int(meta["n_channels"])
    if (
        meta.get("kind") == "Decoder"
        and config.residual in ("ridge", "blend")
        and not any(k.startswith("base.") for k in model_state)
    ):
        # written before the ridge-residual decoder existed: a decoder without a base
        config = config.replace(residual="none")
    if (
        meta.get("kind") in ("Decoder", "SeedEnsemble")
        and not config.is_baseline
        and config.residual == "blend"
        and config.blend_lstm
        and not any(re.match(r"(members\.\d+\.)?lstm\.", k) for k in model_state)
    ):
        # written before the blend could hold an LSTM: the two-way blend
        config = config.replace(blend_lstm=False)
    n_members = config.ensemble if meta.get("kind") == "SeedEnsemble" else 1
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(config.seed)
        built = [
            build_model(
                config.replace(device=str(dev)) if config.quantize is None else config,
                n_rois=n_rois,
                n_channels=n_channels,
                device=dev,
            )
            for _ in range(n_members)
        ]
    shapes = (norm.activity_mean.shape, norm.activity_std.shape)
    shapes_b = (norm.behavior_mean.shape, norm.behavior_std.shape)
    if shapes != ((n_rois,),) * 2 or shapes_b != ((n_channels,),) * 2:
        raise DataError(
            f"{d}/weights.pt: normalisation statistics of shapes {shapes + shapes_b}, but "
            f"checkpoint.json says {n_rois} ROIs and {n_channels} channels; the files do not "
            "belong together: save the checkpoint again with fit"
        )
    try:
        if meta.get("kind") == "SeedEnsemble":
            if meta.get("ensemble_members") != n_members:
                raise DataError(
                    f"{d}: checkpoint.json says {meta.get('ensemble_members')!r} ensemble "
                    f"members, config.json ensemble={n_members}; the files do not belong "
                    "together: save the checkpoint again with fit"
                )
            for i, member in enumerate(built):
                prefix = f"members.{i}."
                part = {k[len(prefix) :]: v for k, v in model_state.items() if k.startswith(prefix)}
                _load_weights(member, part, meta, d)
            model: Model = SeedEnsemble(built)  # type: ignore[arg-type]
        else:
            (model,) = built
            _load_weights(model, model_state, meta, d)
    except LLMDecodeError:
        raise
    except (RuntimeError, KeyError, ValueError, TypeError) as e:  # torch: many lines
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise DataError(
            f"{d}/weights.pt does not fit the model that config.json describes ({first}); "
            "the files do not belong together: save the checkpoint again with fit"
        ) from None
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


def _load_weights(model: Model, model_state: dict[str, Any], meta: dict[str, Any], d: Path) -> None:
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
        model.load_state_dict(model_state)


def predict_arrays(
    source: Fitted | str | os.PathLike[str],
    activity: np.ndarray,
    *,
    batch_size: int | None = None,
    device: str | None = None,
    progress: Progress | None = None,
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
    if not isinstance(source, Fitted):  # a FitResult and a Checkpoint both are
        raise TypeError(
            f"predict_arrays: expected a checkpoint directory, Checkpoint or FitResult, got "
            f"{type(source).__name__}"
        )
    model, config, norm, n_rois = (
        source.model,
        source.config,
        source.normalization,
        source.n_rois,
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
