"""Multi-session fit and new-session adaptation on NWB sources, results written as NWB.

:func:`fit_many` trains one decoder on several sessions (animals) and writes one derived
NWB file per session (the standard ``llmdecode`` processing module, so
:func:`~nwb_llmdecode.read_results` and the napari plugin open each unchanged; its
``decoding_run`` ``sessions`` column lists the identifiers of every session trained
together) and one shared checkpoint directory. :func:`adapt` fits only a new input
embedding for a new session on a saved shared decoder.

Sessions recorded at different imaging rates are refused (a
:class:`~nwb_llmdecode.errors.DataError`), never resampled or silently mixed.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .config import FitConfig
from .errors import ConfigError, OutputExistsError

__all__ = ["MultiReport", "adapt", "fit_many", "load_arrays"]

log = logging.getLogger(__name__)


@dataclass
class MultiReport:
    """Where :func:`fit_many` / :func:`adapt` wrote, and the metrics per session."""

    outputs: dict[str, Path]
    checkpoint: Path | None
    metrics: dict[str, list[dict[str, Any]]]
    pooled: dict[str, float]


def _key(source: str, used: set[str]) -> str:
    stem = Path(str(source).rstrip("/")).name.split(".")[0] or "session"
    key, i = stem, 1
    while key in used:
        i += 1
        key = f"{stem}-{i}"
    used.add(key)
    return key


def load_arrays(
    source: str | os.PathLike[str],
    key: str,
    *,
    rois: Any = None,
    behavior: Any = None,
    cache_dir: Any = None,
) -> tuple[Any, Any, str]:
    """(session Dataset, SessionArrays, NWB identifier) of one source."""
    from .engine.multi import SessionArrays
    from .estimator import _activity
    from .io.read import read_session
    from .io.sources import open_nwb

    with open_nwb(source, cache_dir=cache_dir) as src:
        ds = read_session(src, rois=rois, behavior=behavior)
        identifier = str(src.nwbfile.identifier)
    arrays = SessionArrays(
        key=key,
        activity=_activity(ds),
        behavior=np.asarray(ds["behavior"].values, dtype=np.float32),
        series=[str(s) for s in ds["series"].values],
        units=[str(u) for u in ds["unit"].values],
        frame_rate=float(ds.attrs["frame_rate"]),
    )
    return ds, arrays, identifier


def _output(source: str, out_dir: Path | None, overwrite: bool) -> Path:
    base = (
        out_dir
        if out_dir is not None
        else (Path(source).parent if Path(source).exists() else Path.cwd())
    )
    stem = Path(str(source)).name.split(".")[0]
    p = base / f"{stem}_desc-llmdecode.nwb"
    if p.exists() and not overwrite:
        raise OutputExistsError(f"{p}: exists; pass --overwrite to replace it")
    return p


def _write(
    source: str,
    ds: Any,
    res: Any,
    target: Path,
    identifiers: list[str],
    *,
    overwrite: bool,
    cache_dir: Any,
    progress: Any = None,
) -> Path:
    from .estimator import Decoder
    from .io.sources import open_nwb
    from .io.write import write_derived

    dec = Decoder(res.config)
    dec._fitted = res
    dec.session_ = ds
    salience = None
    if res.config.salience != "none":
        salience = dec.explain(method=res.config.salience, progress=progress)
    results = dec.results(salience=salience, run={"sessions": json.dumps(identifiers)})
    target.parent.mkdir(parents=True, exist_ok=True)
    with open_nwb(source, cache_dir=cache_dir) as src:
        return write_derived(src, results, target, overwrite=overwrite)


def fit_many(
    sources: Sequence[str | os.PathLike[str]],
    *,
    config: FitConfig | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    rois: Any = None,
    behavior: Any = None,
    cache_dir: Any = None,
    progress: Any = None,
) -> MultiReport:
    """Train one decoder on several sessions; write one results file per session.

    Parameters
    ----------
    sources
        Local paths, URLs or DANDI asset identifiers, at least two.
    config
        Run options; a transformer backbone (any train mode).
    out_dir
        Folder of the results files ``<stem>_desc-llmdecode.nwb`` (default: beside each
        local source, else the current directory).
    checkpoint
        The shared checkpoint directory (default ``<out_dir>/multisession_checkpoint``).
    overwrite, rois, behavior, cache_dir, progress
        As :func:`~nwb_llmdecode.pipeline.fit`.
    """
    from .engine.multi import fit_sessions, save_multi_checkpoint

    config = config or FitConfig()
    if not isinstance(config, FitConfig):
        raise ConfigError(f"config must be a FitConfig, got {type(config).__name__}")
    sources = [str(s) for s in sources]
    od = Path(out_dir) if out_dir is not None else None
    targets = [_output(s, od, overwrite) for s in sources]
    ckpt = Path(checkpoint) if checkpoint else (od or Path.cwd()) / "multisession_checkpoint"
    if (ckpt / "multi.json").exists() and not overwrite:
        raise OutputExistsError(f"{ckpt}: holds a checkpoint; pass --overwrite to replace it")
    used: set[str] = set()
    loaded = [
        load_arrays(s, _key(s, used), rois=rois, behavior=behavior, cache_dir=cache_dir)
        for s in sources
    ]
    res = fit_sessions([a for _ds, a, _i in loaded], config=config)
    identifiers = [i for _ds, _a, i in loaded]
    outputs = {}
    for s, (ds, a, _i), t in zip(sources, loaded, targets, strict=True):
        outputs[a.key] = _write(
            s,
            ds,
            res.sessions[a.key],
            t,
            identifiers,
            overwrite=overwrite,
            cache_dir=cache_dir,
            progress=progress,
        )
    save_multi_checkpoint(res, ckpt, overwrite=overwrite)
    return MultiReport(
        outputs, ckpt, {k: r.metrics for k, r in res.sessions.items()}, res.pooled_metrics()
    )


def adapt(
    checkpoint: str | os.PathLike[str],
    source: str | os.PathLike[str],
    *,
    out: str | os.PathLike[str] | None = None,
    save_checkpoint: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    epochs: int | None = None,
    lr: float | None = None,
    seed: int | None = None,
    rois: Any = None,
    behavior: Any = None,
    cache_dir: Any = None,
    device: str = "cpu",
    progress: Any = None,
) -> MultiReport:
    """Fit a new input embedding for ``source`` on a shared checkpoint; write its results.

    Backbone and heads stay frozen; only the new session's embedding trains, on its
    training block (the same time-ordered split as ``fit``). ``save_checkpoint`` writes
    the decoder with the new session added (the given checkpoint is never changed).
    """
    from .engine.multi import adapt_session, load_multi_checkpoint, save_multi_checkpoint

    model, config, meta = load_multi_checkpoint(checkpoint, device=device)
    over = {k: v for k, v in {"epochs": epochs, "lr": lr, "seed": seed}.items() if v is not None}
    config = config.replace(**over) if over else config
    src = str(source)
    target = Path(out) if out else _output(src, None, overwrite)
    if target.exists() and not overwrite:
        raise OutputExistsError(f"{target}: exists; pass --overwrite to replace it")
    ds, arrays, identifier = load_arrays(
        src, _key(src, set(meta["n_rois"])), rois=rois, behavior=behavior, cache_dir=cache_dir
    )
    res = adapt_session(
        model,
        arrays,
        config=config,
        head_units=meta.get("head_units"),
        frame_rate=meta.get("frame_rate"),
    )
    r = res.sessions[arrays.key]
    ids = [identifier]
    output = _write(
        src, ds, r, target, ids, overwrite=overwrite, cache_dir=cache_dir, progress=progress
    )
    ck = None
    if save_checkpoint:
        ck = save_multi_checkpoint(res, save_checkpoint, overwrite=overwrite)
    return MultiReport({arrays.key: output}, ck, {arrays.key: r.metrics}, res.pooled_metrics())
