"""The one place that joins reading, training and writing: the ``fit`` job end to end.

io (open, read) -> xarray -> engine (windows, model, evaluation) -> io (write results).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._version import __version__
from .config import FitConfig
from .errors import ConfigError, DataError, OutputExistsError
from .io.read import RESULTS_MODULE, read_session
from .io.sources import is_remote, open_nwb
from .io.write import (
    DecodingResults,
    check_output,
    default_output_path,
    write_derived,
    write_in_place,
)

__all__ = ["FitReport", "ablate", "explain", "fit", "predict"]

#: Default numbers of ROIs ablated by the ablation check.
ABLATION_KS = (10, 50, 100)

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]


@dataclass
class FitReport:
    """What a ``fit`` (or ``predict``) run produced.

    Attributes
    ----------
    output
        The NWB file the results were written to.
    metrics
        Rows with ``behavior``, ``channel``, ``split``, ``rmse``, ``r2``, ``pearson``,
        ``n_frames``.
    checkpoint
        Directory of the saved decoder (``None`` for baselines that cannot be saved or
        for ``predict``).
    duration_s
        Wall time of the whole job.
    results
        The in-memory results (arrays, splits, run info) that were written.
    """

    output: Path
    metrics: list[dict[str, Any]]
    checkpoint: Path | None
    duration_s: float
    results: DecodingResults | None = field(default=None, repr=False)

    def to_json(self) -> str:
        return json.dumps(
            {
                "output": str(self.output),
                "checkpoint": None if self.checkpoint is None else str(self.checkpoint),
                "duration_s": round(self.duration_s, 3),
                "metrics": self.metrics,
            }
        )


def _named_metrics(ds: Any, metrics: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Engine metrics (global channel index) -> rows named by behaviour series."""
    rows = []
    for r in metrics:
        c = int(r["channel"])
        rows.append(
            {
                "behavior": str(ds["series"].values[c]),
                "channel": int(ds["series_channel"].values[c]),
                "split": str(r["split"]),
                "rmse": float(r["rmse"]),
                "r2": float(r["r2"]),
                "pearson": float(r["pearson"]),
                "n_frames": int(r["n_frames"]),
            }
        )
    return rows


def _resolve_output(
    source: str | os.PathLike[str],
    out: str | os.PathLike[str] | None,
    *,
    in_place: bool,
    overwrite: bool,
) -> Path:
    if in_place:
        if is_remote(source):
            raise ConfigError(
                f"{source}: --in-place works on local files only; omit it to write a derived "
                "results file"
            )
        if out is not None:
            raise ConfigError("--in-place and --out exclude each other; give one")
        path = Path(source)
        if path.exists():
            import h5py

            try:
                with h5py.File(path, "r") as f:
                    has = f"processing/{RESULTS_MODULE}" in f
            except OSError:
                has = False  # open_nwb reports what is wrong with the file
            if has and not overwrite:
                raise OutputExistsError(
                    f"{path}: already has a processing/{RESULTS_MODULE} module; pass "
                    "--overwrite to replace it"
                )
        return path
    path = Path(out) if out is not None else default_output_path(source)
    check_output(path, overwrite=overwrite)
    return path


def fit(
    source: str | os.PathLike[str],
    *,
    config: FitConfig | None = None,
    rois: str | Sequence[str] | None = None,
    behavior: str | Sequence[str] | None = None,
    out: str | os.PathLike[str] | None = None,
    in_place: bool = False,
    overwrite: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
    checkpoint: bool = True,
    ablation: Sequence[int] | None = None,
    progress: Progress | None = None,
) -> FitReport:
    """Train a behaviour decoder on an NWB session and write the results as NWB.

    Parameters
    ----------
    source
        Local path, URL or DANDI identifier of the session.
    config
        Run options (backbone, init, train mode, window length, epochs...);
        default :class:`~nwb_llmdecode.config.FitConfig`.
    rois, behavior
        Which series to decode from and to (see :func:`~nwb_llmdecode.load_session`).
    out
        Output file; default ``<source stem>_desc-llmdecode.nwb`` beside a local source
        (in the current directory for a remote one).
    in_place
        Append the results module to the (local) source instead.
    overwrite
        Replace an existing output file or results module.
    cache_dir
        Block cache for remote sources.
    checkpoint
        Save the trained decoder next to the output (``<out stem>_checkpoint/``).
    ablation
        Numbers of ROIs for the ablation check (e.g. ``(10, 50, 100)``); ``None`` skips it.
        Needs salience (``config.salience`` other than ``"none"``).
    progress
        ``progress(stage, done, total)`` callback.

    Returns
    -------
    FitReport

    Examples
    --------
    >>> from nwb_llmdecode.pipeline import fit
    >>> report = fit("session.nwb")  # doctest: +SKIP
    >>> report.output  # doctest: +SKIP
    PosixPath('session_desc-llmdecode.nwb')
    """
    from .engine import fit_arrays

    t0 = time.perf_counter()
    config = config or FitConfig()
    target = _resolve_output(source, out, in_place=in_place, overwrite=overwrite)

    if progress:
        progress("read session", 0, 1)
    with open_nwb(source, cache_dir=cache_dir) as src:
        ds = read_session(src, rois=rois, behavior=behavior)
    if progress:
        progress("read session", 1, 1)
    activity = np.asarray(ds["activity"].values, dtype=np.float32)
    behaviour = np.asarray(ds["behavior"].values, dtype=np.float32)
    bad = ~np.isfinite(activity)
    if bad.any():
        frames, cols = np.nonzero(bad)
        raise DataError(
            f"{ds.attrs['source']}: {int(bad.sum())} NaN/inf values in ROI activity "
            f"({', '.join(json.loads(ds.attrs['roi_series']))}), e.g. frame {int(frames[0])} "
            f"ROI {int(cols[0])}, in {len(set(frames.tolist()))} frames and "
            f"{len(set(cols.tolist()))} ROIs; interpolate them or select other --rois"
        )

    result = fit_arrays(activity, behaviour, config=config, progress=progress)
    salience, ablation_rows = explain(
        result, activity, behaviour, method=config.salience, ablation=ablation, progress=progress
    )

    run = {
        "backbone": config.backbone,
        "init": config.init,
        "train_mode": config.train_mode,
        "seq_len": int(config.seq_len),
        "epochs": len(result.history) if result.history else int(config.epochs),
        "seed": int(config.seed),
        "salience_method": config.salience if salience is not None else "none",
        "package_version": __version__,
        "device": str(result.device),
        "duration_s": float(result.duration_s),
        "config_json": config.to_json(),
    }
    results = DecodingResults(
        session=ds,
        predictions=np.asarray(result.predictions, dtype=np.float32),
        splits=list(result.splits),
        metrics=list(result.metrics),
        run=run,
        salience=salience,
        ablation=ablation_rows,
    )
    if progress:
        progress("write results", 0, 1)
    if in_place:
        output = write_in_place(target, results, overwrite=overwrite)
    else:
        with open_nwb(source, cache_dir=cache_dir) as src:
            output = write_derived(src, results, target, overwrite=overwrite)
    if progress:
        progress("write results", 1, 1)

    ckpt_dir: Path | None = None
    if checkpoint:
        ckpt_dir = output.with_name(f"{output.stem}_checkpoint")
        result.save_checkpoint(ckpt_dir)
        meta = {
            "source": str(source),
            "results_file": str(output),
            "roi_series": json.loads(ds.attrs["roi_series"]),
            "behavior_series": json.loads(ds.attrs["behavior_series"]),
            "n_rois": int(ds.sizes["roi"]),
            "channels": [
                {"behavior": str(s), "channel": int(c), "unit": str(u)}
                for s, c, u in zip(
                    ds["series"].values,
                    ds["series_channel"].values,
                    ds["unit"].values,
                    strict=True,
                )
            ],
        }
        (ckpt_dir / "session.json").write_text(json.dumps(meta, indent=2))
    return FitReport(
        output=output,
        metrics=_named_metrics(ds, result.metrics),
        checkpoint=ckpt_dir,
        duration_s=time.perf_counter() - t0,
        results=results,
    )


def _test_block(result: Any) -> Any:
    return next(b for b in result.blocks if b.name == "test")


def _ablation_rmse(result: Any, z: np.ndarray, behaviour: np.ndarray, block: Any) -> Callable:
    """``evaluate(rois)``: test RMSE (mean over channels) with ``rois`` at their training
    mean (0 in normalised space)."""
    from .engine import predict_blocks

    target = behaviour[block.start : block.stop]

    def evaluate(rois: np.ndarray) -> float:
        zz = z.copy()
        zz[:, np.asarray(rois, dtype=np.int64)] = 0.0
        pred_n = predict_blocks(
            result.model,
            zz,
            [block],
            seq_len=result.config.seq_len,
            batch_size=result.config.eval_batch_size,
        )
        pred = result.normalization.behavior_units(pred_n)[block.start : block.stop]
        err = (pred - target) ** 2
        return float(np.mean(np.sqrt(np.nanmean(err, axis=0))))

    return evaluate


def explain(
    result: Any,
    activity: np.ndarray,
    behaviour: np.ndarray,
    *,
    method: str = "integrated-gradients",
    ablation: Sequence[int] | None = None,
    draws: int = 5,
    progress: Progress | None = None,
) -> tuple[Any, list[dict[str, Any]] | None]:
    """Salience of a fitted decoder on its test block, and optionally the ablation check.

    Returns ``(salience Dataset or None, ablation rows or None)``. Closed-form baselines
    (ridge, reservoir) have no gradients: their salience is ``None`` (logged).
    """
    import torch

    from .salience import ablation_check, compute_salience

    if method == "none":
        return None, None
    if not isinstance(result.model, torch.nn.Module):
        log.warning("salience skipped: the %s baseline has no gradients", result.config.backbone)
        return None, None
    block = _test_block(result)
    z = result.normalization.activity(activity)
    sal = compute_salience(
        result.model,
        z,
        block=(block.start, block.stop),
        seq_len=result.config.seq_len,
        method=method,
        batch_size=result.config.batch_size,
        device=str(result.device),
        progress=progress,
    )
    rows = None
    if ablation:
        rows = ablation_check(
            _ablation_rmse(result, z, behaviour, block),
            sal["salience"].values,
            ks=ablation,
            draws=draws,
            seed=result.config.seed,
        )
    return sal, rows


def predict(
    checkpoint: str | os.PathLike[str],
    source: str | os.PathLike[str],
    *,
    rois: str | Sequence[str] | None = None,
    behavior: str | Sequence[str] | None = None,
    out: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
) -> FitReport:
    """Apply a saved decoder to another session of the same ROIs and write the results.

    The whole session is predicted and evaluated as one block (split ``all``).
    """
    from .engine import compute_metrics, load_checkpoint, predict_arrays
    from .windows import Block

    t0 = time.perf_counter()
    ckpt = Path(checkpoint)
    model = load_checkpoint(ckpt)
    meta_path = ckpt / "session.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    if behavior is None and meta.get("behavior_series"):
        behavior = [p.rsplit("/", 1)[-1] for p in meta["behavior_series"]]
    target = _resolve_output(source, out, in_place=False, overwrite=overwrite)
    with open_nwb(source, cache_dir=cache_dir) as src:
        ds = read_session(src, rois=rois, behavior=behavior)
    n_expected = meta.get("n_rois")
    if n_expected is not None and ds.sizes["roi"] != n_expected:
        raise DataError(
            f"{ds.attrs['source']}: {ds.sizes['roi']} ROIs, but the decoder in {ckpt} was "
            f"trained on {n_expected}; predict needs the same ROIs (select them with --rois)"
        )
    activity = np.asarray(ds["activity"].values, dtype=np.float32)
    predictions = predict_arrays(model, activity, progress=progress)
    behaviour = np.asarray(ds["behavior"].values, dtype=np.float32)
    metrics = compute_metrics(predictions, behaviour, [Block("all", 0, len(behaviour))])
    cfg = model.config
    results = DecodingResults(
        session=ds,
        predictions=predictions,
        splits=[("all", 0, len(behaviour))],
        metrics=metrics,
        run={
            "backbone": cfg.backbone,
            "init": cfg.init,
            "train_mode": cfg.train_mode,
            "seq_len": int(cfg.seq_len),
            "epochs": 0,
            "seed": int(cfg.seed),
            "salience_method": "none",
            "package_version": __version__,
            "device": "cpu",
            "duration_s": time.perf_counter() - t0,
            "config_json": json.dumps(
                {"predict_from": str(ckpt), "config": json.loads(cfg.to_json())}
            ),
        },
    )
    with open_nwb(source, cache_dir=cache_dir) as src:
        output = write_derived(src, results, target, overwrite=overwrite)
    return FitReport(
        output=output,
        metrics=_named_metrics(ds, metrics),
        checkpoint=None,
        duration_s=time.perf_counter() - t0,
        results=results,
    )


def ablate(
    results_path: str | os.PathLike[str],
    *,
    checkpoint: str | os.PathLike[str] | None = None,
    ks: Sequence[int] = ABLATION_KS,
    draws: int = 5,
    write: bool = True,
) -> list[dict[str, Any]]:
    """The ablation check on a results file written by ``fit`` (with salience).

    Reads the session, the ``roi_salience`` tables and the test block from the results
    file, loads the decoder from ``<stem>_checkpoint/`` beside it, and writes the
    ``salience_ablation`` table into the results file (atomically).
    """
    from .engine import load_checkpoint
    from .io.write import write_ablation
    from .windows import Block

    path = Path(results_path)
    ckpt_dir = Path(checkpoint) if checkpoint else path.with_name(f"{path.stem}_checkpoint")
    if not ckpt_dir.is_dir():
        raise DataError(
            f"{path}: no decoder checkpoint at {ckpt_dir}; give it with --checkpoint "
            "(fit writes <results stem>_checkpoint/ beside the results)"
        )
    meta_path = ckpt_dir / "session.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    with open_nwb(path) as src:
        ds = read_session(src, rois=meta.get("roi_series"), behavior=meta.get("behavior_series"))
        if RESULTS_MODULE not in src.nwbfile.processing:
            raise DataError(f"{path}: no processing/{RESULTS_MODULE} module; run fit first")
        module = src.nwbfile.processing[RESULTS_MODULE]
        tables = [n for n in module.data_interfaces if n.startswith("roi_salience")]
        if not tables:
            raise DataError(
                f"{path}: no roi_salience table in processing/{RESULTS_MODULE}; fit with "
                "--salience to compute it"
            )
        salience = np.full(ds.sizes["roi"], np.nan)
        planes, rows = ds["plane"].values, ds["roi_row"].values
        for name in tables:
            t = module[name]
            region = t["roi"]
            plane = region.table.name
            for row, value in zip(region.data[:], t["salience"].data[:], strict=True):
                salience[(planes == plane) & (rows == int(row))] = float(value)
        splits = module["decoding_splits"].to_dataframe()
    column = "split_name" if "split_name" in splits else "split"  # "split": older files
    test = splits[splits[column] == "test"].iloc[0]
    times = ds["time"].values
    start = int(np.searchsorted(times, test["start_time"] - 1e-9))
    stop = int(np.searchsorted(times, test["stop_time"] - 1e-9))
    ckpt = load_checkpoint(ckpt_dir)
    if ckpt.n_rois != ds.sizes["roi"]:
        raise DataError(f"{ckpt_dir}: decoder of {ckpt.n_rois} ROIs, results of {ds.sizes['roi']}")
    activity = np.asarray(ds["activity"].values, dtype=np.float32)
    behaviour = np.asarray(ds["behavior"].values, dtype=np.float32)
    z = ckpt.normalization.activity(activity)
    from .salience import ablation_check

    rows_out = ablation_check(
        _ablation_rmse(ckpt, z, behaviour, Block("test", start, stop)),
        np.nan_to_num(salience, nan=-np.inf),
        ks=ks,
        draws=draws,
        seed=ckpt.config.seed,
    )
    if write:
        write_ablation(path, rows_out)
    return rows_out
