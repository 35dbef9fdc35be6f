"""The one place that joins reading, training and writing: the ``fit`` job end to end.

io (open, read) -> xarray -> engine (windows, model, evaluation) -> io (write results).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._version import __version__
from .checkpoint_meta import read_checkpoint_meta, read_session_meta
from .config import BACKBONE_ALIASES, BASELINE_NAMES, FitConfig
from .errors import BackboneError, ConfigError, DataError, OutputExistsError, SourceError
from .io.atomic import publish_dir, remove_stale, temporary_path
from .io.read import RESULTS_MODULE, read_session
from .io.sources import is_remote, open_nwb
from .io.write import (
    DecodingResults,
    check_in_place,
    check_output,
    default_output_path,
    write_derived,
    write_in_place,
)
from .progress import Progress

__all__ = ["FitReport", "ablate", "checkpoint_dir_for", "fit", "predict"]

#: Default numbers of ROIs ablated by the ablation check.
ABLATION_KS = (10, 50, 100)

log = logging.getLogger(__name__)


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


def _metric_rows(score: Any) -> list[dict[str, Any]]:
    """A ``Decoder.score`` Dataset as engine metric rows (global channel index)."""
    return [
        {
            "channel": c,
            "split": str(split),
            **{m: score[m].values[i, c].item() for m in ("rmse", "r2", "pearson", "n_frames")},
        }
        for c in range(score.sizes["channel"])
        for i, split in enumerate(score["split"].values)
    ]


def _resolve_output(
    source: str | os.PathLike[str],
    out: str | os.PathLike[str] | None,
    *,
    in_place: bool,
    overwrite: bool,
    checkpoint: bool = False,
) -> tuple[Path, Path | None]:
    """Where a run writes (results file, checkpoint directory or None), refused before any
    work when it cannot: existing outputs without ``overwrite``, unwritable files or
    directories, ``--out`` under a file, the source as ``--out``, ``--in-place`` on a
    remote or directory source, a stale checkpoint directory without its results."""
    if in_place:
        if is_remote(source):
            raise ConfigError(
                f"{source}: --in-place works on local files only; omit it to write a derived "
                "results file"
            )
        if out is not None:
            raise ConfigError("--in-place and --out exclude each other; give one")
        path = Path(source)
        results_exist = check_in_place(path, overwrite=overwrite)
    else:
        path = Path(out) if out is not None else default_output_path(source)
        check_output(path, overwrite=overwrite)
        if not is_remote(source) and path.exists() and path.resolve() == Path(source).resolve():
            raise OutputExistsError(
                f"{path}: is the source file; use --in-place to add results to it, or another --out"
            )
        results_exist = path.exists()
    remove_stale(path)
    if not checkpoint:
        return path, None
    ckpt = checkpoint_dir_for(path)
    remove_stale(ckpt)
    if ckpt.exists() or ckpt.is_symlink():
        if not ckpt.is_dir():
            raise OutputExistsError(
                f"{ckpt}: exists and is not a checkpoint directory; remove it or choose another "
                "--out"
            )
        if not overwrite and not results_exist:
            raise OutputExistsError(
                f"{ckpt}: a decoder checkpoint without its results file {path.name} (left by "
                "an interrupted or deleted run?); pass --overwrite to replace it, or remove it"
            )
    return path, ckpt


def checkpoint_dir_for(results: str | os.PathLike[str]) -> Path:
    """The checkpoint directory ``fit`` writes beside a results file.

    Examples
    --------
    >>> checkpoint_dir_for("out/s_desc-llmdecode.nwb").as_posix()
    'out/s_desc-llmdecode_checkpoint'
    """
    p = Path(results)
    return p.with_name(f"{p.stem}_checkpoint")


def _check_ks(ablation: Sequence[int], option: str) -> tuple[int, ...]:
    ks = tuple(ablation)
    bad = [k for k in ks if not isinstance(k, int | np.integer) or isinstance(k, bool) or k < 1]
    if not ks or bad:
        raise ConfigError(
            f"{option} {','.join(map(str, ks))}: expected positive whole numbers of ROIs, e.g. "
            f"{option} 10,50,100"
        )
    return tuple(int(k) for k in ks)


def _check_ablation(ablation: Sequence[int] | None, salience: str) -> tuple[int, ...] | None:
    if ablation is None:
        return None
    ks = _check_ks(ablation, "--ablation")
    if salience == "none":
        raise ConfigError(
            "--ablation needs salience to rank the ROIs, but salience is 'none'; drop "
            "--salience none or --ablation"
        )
    return ks


def _results_object_id(nwb_path: Path) -> str | None:
    """``object_id`` of the results module in a written file (ties a checkpoint to it)."""
    import h5py

    with h5py.File(nwb_path, "r") as f:
        v = f[f"processing/{RESULTS_MODULE}"].attrs.get("object_id")
    if isinstance(v, bytes):
        v = v.decode()
    return None if v is None else str(v)


def _check_backbone_path(name: str) -> None:
    """A backbone given as a path must exist: say so before any work (the full check,
    :func:`~nwb_llmdecode.models.backbones.resolve_backbone`, needs torch)."""
    if name in BASELINE_NAMES or name in BACKBONE_ALIASES:
        return
    looks_like_path = name.startswith((".", "/", "~")) or name.count("/") > 1
    if looks_like_path and not Path(name).expanduser().is_dir():
        raise BackboneError(
            f"unknown backbone {name!r}: no such directory; give {', '.join(BACKBONE_ALIASES)}, "
            f"{', '.join(BASELINE_NAMES)}, a HuggingFace model id or an existing model directory"
        )


def _check_results_layout(path: Path) -> str | None:
    """Cheap h5py checks of a results file before the session is read; returns the
    results module's ``object_id`` (``None`` when the file is not HDF5: ``open_nwb``
    then says what is wrong)."""
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError:
        return None
    with f:
        group = f.get(f"processing/{RESULTS_MODULE}")
        if group is None:
            raise DataError(f"{path}: no processing/{RESULTS_MODULE} module; run fit first")
        if not any(n.startswith("roi_salience") for n in group):
            raise DataError(
                f"{path}: no roi_salience table in processing/{RESULTS_MODULE}; fit with "
                "--salience to compute it"
            )
        found = group.attrs.get("object_id")
    if isinstance(found, bytes):
        found = found.decode()
    return None if found is None else str(found)


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
    t0 = time.perf_counter()
    config = config or FitConfig()
    if not isinstance(config, FitConfig):
        raise ConfigError(f"config must be a FitConfig, got {type(config).__name__}")
    ablation = _check_ablation(ablation, config.salience)
    _check_backbone_path(config.backbone)
    target, ckpt_dir = _resolve_output(
        source, out, in_place=in_place, overwrite=overwrite, checkpoint=checkpoint
    )

    if progress:
        progress("read session", 0, 1)
    with open_nwb(source, cache_dir=cache_dir) as src:
        ds = read_session(src, rois=rois, behavior=behavior)
    if progress:
        progress("read session", 1, 1)
    from .estimator import Decoder, _activity
    from .windows import split_blocks

    _activity(ds)  # NaN/inf refused, and enough frames for the split, before torch
    split_blocks(ds.sizes["time"], seq_len=config.seq_len, fractions=config.split)

    dec = Decoder(config).fit(ds, progress=progress)
    from .engine.distributed import is_main_process

    if not is_main_process():  # [distributed] rank 0 alone computes salience and writes
        return FitReport(
            output=target,
            metrics=_named_metrics(ds, dec.results().metrics),
            checkpoint=None,
            duration_s=time.perf_counter() - t0,
        )
    salience = ablation_ds = None
    if config.salience != "none":
        if dec.has_gradients:
            salience = dec.explain(method=config.salience, progress=progress)
            if ablation:
                ablation_ds = dec.ablate(k=ablation, salience=salience)
        else:
            log.warning("salience skipped: the %s baseline has no gradients", config.backbone)
    results = dec.results(salience=salience, ablation=ablation_ds)
    session_meta = dict(dec.session_facts(), source=str(source), results_file=str(target))
    if progress:
        progress("write results", 0, 1)
    # The checkpoint is built in a hidden temporary directory and published (renamed)
    # just before the results file, which is renamed into place last: a kill leaves the
    # old state, or a new checkpoint whose results file never appeared (refused by the
    # next fit unless --overwrite, and by ablate, which matches the results module's
    # object_id recorded in session.json).
    ckpt_tmp = temporary_path(ckpt_dir) if ckpt_dir is not None else None
    try:
        if ckpt_tmp is not None:
            dec.save(ckpt_tmp)

        def publish(tmp_nwb: Path) -> None:
            if ckpt_tmp is None or ckpt_dir is None:
                return
            meta = dict(session_meta, results_object_id=_results_object_id(tmp_nwb))
            (ckpt_tmp / "session.json").write_text(json.dumps(meta, indent=2))
            publish_dir(ckpt_tmp, ckpt_dir)

        if in_place:
            output = write_in_place(target, results, overwrite=overwrite, before_publish=publish)
        else:
            with open_nwb(source, cache_dir=cache_dir) as src:
                output = write_derived(
                    src, results, target, overwrite=overwrite, before_publish=publish
                )
    finally:
        if ckpt_tmp is not None and ckpt_tmp.exists():
            shutil.rmtree(ckpt_tmp, ignore_errors=True)
    if progress:
        progress("write results", 1, 1)
    return FitReport(
        output=output,
        metrics=_named_metrics(ds, results.metrics),
        checkpoint=ckpt_dir,
        duration_s=time.perf_counter() - t0,
        results=results,
    )


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
    trust_remote_code: bool = False,
) -> FitReport:
    """Apply a saved decoder to another session of the same ROIs and write the results.

    The whole session is predicted and evaluated as one block (split ``all``). The
    checkpoint is data: its ``config.json`` cannot switch on remote code; only
    ``trust_remote_code=True`` (``--trust-remote-code``) lets the backbone run its own
    code.
    """
    t0 = time.perf_counter()
    ckpt = Path(checkpoint)
    target, _ = _resolve_output(source, out, in_place=False, overwrite=overwrite)
    ckpt_meta, _ = read_checkpoint_meta(ckpt)  # the JSON files first: no torch yet
    meta = read_session_meta(ckpt)
    if behavior is None and meta.get("behavior_series"):
        behavior = [p.rsplit("/", 1)[-1] for p in meta["behavior_series"]]
    with open_nwb(source, cache_dir=cache_dir) as src:
        ds = read_session(src, rois=rois, behavior=behavior)
    n_expected = ckpt_meta["n_rois"]
    if ds.sizes["roi"] != n_expected:
        raise DataError(
            f"{ds.attrs['source']}: {ds.sizes['roi']} ROIs, but the decoder in {ckpt} was "
            f"trained on {n_expected}; predict needs the same ROIs (select them with --rois)"
        )

    from .estimator import Decoder

    dec = Decoder.load(ckpt, trust_remote_code=trust_remote_code)
    predictions = dec.predict(ds, progress=progress).values
    metrics = _metric_rows(dec.score(ds))
    cfg = dec.config
    results = DecodingResults(
        session=ds,
        predictions=predictions,
        splits=[("all", 0, ds.sizes["time"])],
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
            "device": dec.device_,
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
    trust_remote_code: bool = False,
) -> list[dict[str, Any]]:
    """The ablation check on a results file written by ``fit`` (with salience).

    Reads the session, the ``roi_salience`` tables and the test block from the results
    file, loads the decoder from ``<stem>_checkpoint/`` beside it, and writes the
    ``salience_ablation`` table into the results file (atomically). The checkpoint must
    be the one written with these results (its ``session.json`` records the results
    module's ``object_id``). ``trust_remote_code`` is as in :func:`predict`.
    """
    from .io.atomic import check_writable_file

    path = Path(results_path)
    ks = _check_ks(ks, "--k")
    if not isinstance(draws, int) or isinstance(draws, bool) or draws < 0:
        raise ConfigError(f"draws={draws!r}: expected a whole number >= 0 (--draws)")
    if not path.is_file():
        raise SourceError(f"{path}: no such results file (fit writes <stem>_desc-llmdecode.nwb)")
    if write:
        check_writable_file(path, what=f"ablate {path}")
        remove_stale(path)
    ckpt_dir = Path(checkpoint) if checkpoint else checkpoint_dir_for(path)
    if not ckpt_dir.is_dir():
        raise DataError(
            f"{path}: no decoder checkpoint at {ckpt_dir}; give it with --checkpoint "
            "(fit writes <results stem>_checkpoint/ beside the results)"
        )
    ckpt_meta, _ = read_checkpoint_meta(ckpt_dir)  # the JSON files first: no torch yet
    expected_id = read_session_meta(ckpt_dir).get("results_object_id")
    found = _check_results_layout(path)
    if expected_id is not None:
        if found is not None and str(found) != str(expected_id):
            raise DataError(
                f"{ckpt_dir}: this decoder checkpoint was written with other results than "
                f"{path} (results module object_id {found}, checkpoint for {expected_id}; an "
                "interrupted fit --overwrite?); run fit again, or give the right --checkpoint"
            )

    from .estimator import Decoder
    from .io.results import read_results
    from .io.write import write_ablation

    res = read_results(path)  # the results module is parsed in one place
    if "split_start" not in res or "test" not in res["split"].values:
        raise DataError(
            f"{path}: processing/{RESULTS_MODULE}/decoding_splits has no test block; run fit again"
        )
    n_rois = int(ckpt_meta["n_rois"])
    if n_rois != res.sizes["roi"]:
        raise DataError(f"{ckpt_dir}: decoder of {n_rois} ROIs, results of {res.sizes['roi']}")
    test = res.sel(split="test")
    block = (int(test["split_start"]), int(test["split_stop"]))
    dec = Decoder.load(ckpt_dir, trust_remote_code=trust_remote_code)
    ablation = dec.ablate(res, k=ks, draws=draws, salience=res["salience"], block=block)
    rows_out = Decoder.ablation_rows(ablation)
    if write:
        write_ablation(path, rows_out)
    return rows_out
