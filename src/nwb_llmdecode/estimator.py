"""The decoder for Python users: xarray in, xarray out, scikit-learn's estimator contract.

:class:`Decoder` wraps the engine (:func:`~nwb_llmdecode.engine.fit_arrays`, salience,
the ablation check, checkpoints) around the :class:`xarray.Dataset` that
:func:`~nwb_llmdecode.load_session` returns, and keeps its coordinates: predictions come
back on the session's ``time`` and ``channel`` coordinates, salience on its ROIs
(``plane``, ``roi_id``, centroid ``x``/``y``/``z``). It knows no file format: a path or
DANDI identifier given to :meth:`Decoder.fit` is loaded with ``load_session``, and
:meth:`Decoder.to_nwb` hands the results to :mod:`nwb_llmdecode.io.write`.

Examples
--------
>>> import tempfile, pathlib
>>> from nwb_llmdecode import Decoder, load_session
>>> from nwb_llmdecode.synthetic import make_session
>>> path = pathlib.Path(tempfile.mkdtemp()) / "s.nwb"
>>> _ = make_session(path, frames=300, rois=12, planes=1, n_drivers=2)
>>> ds = load_session(path)
>>> dec = Decoder(backbone="ridge", seq_len=10).fit(ds)
>>> pred = dec.predict(ds)
>>> pred.dims, pred.sizes["time"] == ds.sizes["time"]
(('time', 'channel'), True)
>>> float(dec.score(ds)["r2"].sel(split="test").mean()) > 0.5
True
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from .config import FitConfig
from .errors import ConfigError, DataError, NotFittedError
from .progress import Progress

__all__ = ["Decoder"]

log = logging.getLogger(__name__)

#: Numbers of ROIs ablated by default.
ABLATION_KS = (10, 50, 100)
_METRICS = ("rmse", "r2", "pearson", "n_frames")


def _as_session(
    ds: Any,
    *,
    rois: str | Sequence[str] | None = None,
    behavior: str | Sequence[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    need_behavior: bool = True,
) -> xr.Dataset:
    """A session Dataset: ``ds`` itself, or ``load_session(ds)`` for a path / identifier."""
    if isinstance(ds, str | os.PathLike):
        from .io.read import load_session

        ds = load_session(ds, rois=rois, behavior=behavior, cache_dir=cache_dir)
    elif rois is not None or behavior is not None:
        raise ConfigError("rois= and behavior= select series of a file; select a Dataset with .sel")
    if not isinstance(ds, xr.Dataset):
        raise ConfigError(
            f"expected an xarray.Dataset from load_session (or a path / DANDI id), got "
            f"{type(ds).__name__}"
        )
    need = ["activity"] + (["behavior"] if need_behavior else [])
    for name, dims in (("activity", ("time", "roi")), ("behavior", ("time", "channel"))):
        if name not in need:
            continue
        if name not in ds or tuple(ds[name].dims) != dims:
            raise DataError(
                f"{ds.attrs.get('source', 'dataset')}: needs a variable {name!r} with dims "
                f"{dims} (as load_session returns); got "
                + (f"dims {ds[name].dims}" if name in ds else "none")
            )
    return ds


def _activity(ds: xr.Dataset) -> np.ndarray:
    a = np.asarray(ds["activity"].values, dtype=np.float32)
    bad = ~np.isfinite(a)
    if bad.any():
        frames, cols = np.nonzero(bad)
        series = ds.attrs.get("roi_series")
        where = ", ".join(json.loads(series)) if isinstance(series, str) else "activity"
        raise DataError(
            f"{ds.attrs.get('source', 'dataset')}: {int(bad.sum())} NaN/inf values in ROI "
            f"activity ({where}), e.g. frame {int(frames[0])} ROI {int(cols[0])}, in "
            f"{len(set(frames.tolist()))} frames and {len(set(cols.tolist()))} ROIs; "
            "interpolate them or select other ROIs"
        )
    return a


def _roi_coords(ds: xr.Dataset) -> dict[str, Any]:
    return {k: v for k, v in ds.coords.items() if v.dims == ("roi",)}


def _channel_coords(ds: xr.Dataset) -> dict[str, Any]:
    return {k: v for k, v in ds.coords.items() if v.dims == ("channel",)}


class Decoder:
    """Behaviour decoder with scikit-learn's estimator contract, xarray in and out.

    Parameters
    ----------
    config
        Run options (:class:`~nwb_llmdecode.config.FitConfig`); default ``FitConfig()``.
    **options
        Options that override ``config`` (``backbone="ridge"``, ``epochs=10``...),
        validated as in :class:`~nwb_llmdecode.config.FitConfig`.

    Attributes
    ----------
    config : FitConfig
        The effective options (``get_params`` / ``set_params`` read and change them).
    history_ : list of dict
        Per-epoch training history (or the closed-form fit's choices); set by ``fit``.
    splits_ : xarray.Dataset
        The time-ordered blocks (coordinate ``split``; ``start``, ``stop`` frames,
        ``start_time``, ``stop_time``).
    normalization_ : Normalization
        Training-block statistics used to z-score activity and behaviour.
    predictions_ : xarray.DataArray
        (time, channel) predictions of the fitted session, NaN in the gaps between blocks.
    session_ : xarray.Dataset or None
        The session it was fitted on (``None`` after :meth:`load`).
    """

    def __init__(self, config: FitConfig | None = None, **options: Any) -> None:
        base = FitConfig() if config is None else config
        if not isinstance(base, FitConfig):
            raise ConfigError(f"config must be a FitConfig, got {type(base).__name__}")
        self.config = base.replace(**options) if options else base
        self._fitted: Any = None  # FitResult after fit, Checkpoint after load
        self.session_: xr.Dataset | None = None

    # -- scikit-learn's parameter protocol ----------------------------------------------
    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The options, as ``Decoder(**get_params())`` takes them."""
        return {f.name: getattr(self.config, f.name) for f in dataclasses.fields(self.config)}

    def set_params(self, **params: Any) -> Decoder:
        """Change options (validated); returns ``self``. A fitted state is kept as is."""
        self.config = self.config.replace(**params)
        return self

    def __repr__(self) -> str:
        default = FitConfig()
        changed = {k: v for k, v in self.get_params().items() if getattr(default, k) != v}
        inner = ", ".join(f"{k}={v!r}" for k, v in changed.items())
        return f"Decoder({inner})"

    # -- fitted state -------------------------------------------------------------------
    def _check_fitted(self) -> Any:
        if self._fitted is None:
            raise NotFittedError(
                "this Decoder is not fitted yet; call fit(ds) (or Decoder.load(directory)) "
                "before predict, score, explain, ablate, save or to_nwb"
            )
        return self._fitted

    def __sklearn_is_fitted__(self) -> bool:
        return self._fitted is not None

    @property
    def history_(self) -> list[dict[str, Any]]:
        return list(getattr(self._check_fitted(), "history", None) or [])

    @property
    def normalization_(self) -> Any:
        return self._check_fitted().normalization

    @property
    def splits_(self) -> xr.Dataset:
        fitted = self._check_fitted()
        splits = getattr(fitted, "splits", None) or fitted.meta.get("splits", [])
        names = [str(s[0]) for s in splits]
        out = xr.Dataset(
            {
                "start": ("split", np.array([int(s[1]) for s in splits], dtype=np.int64)),
                "stop": ("split", np.array([int(s[2]) for s in splits], dtype=np.int64)),
            },
            coords={"split": ("split", names)},
        )
        if self.session_ is not None:
            t = self.session_["time"].values
            step = float(np.median(np.diff(t))) if len(t) > 1 else 1.0
            out["start_time"] = ("split", t[out["start"].values])
            out["stop_time"] = (
                "split",
                [t[s] if s < len(t) else t[-1] + step for s in out["stop"].values],
            )
        return out

    @property
    def predictions_(self) -> xr.DataArray:
        fitted = self._check_fitted()
        if self.session_ is None:
            raise NotFittedError("a loaded Decoder has no fitted session; use predict(ds)")
        return self._as_prediction(fitted.predictions, self.session_)

    @property
    def device_(self) -> str:
        """Where the model runs (``"cpu"``, ``"cuda:0"``)."""
        fitted = self._check_fitted()
        device = getattr(fitted, "device", None)
        if device is None:
            params = getattr(fitted.model, "parameters", None)
            device = next(params()).device if params is not None else "cpu"
        return str(device)

    @property
    def has_gradients(self) -> bool:
        """Whether salience can be computed (False for the closed-form baselines)."""
        import torch

        return isinstance(self._check_fitted().model, torch.nn.Module)

    def _is_fitted_session(self, ds: xr.Dataset) -> bool:
        s = self.session_
        if s is None:
            return False
        if ds is s:
            return True
        return (
            ds.sizes.get("time") == s.sizes["time"]
            and ds.sizes.get("roi") == s.sizes["roi"]
            and np.array_equal(ds["time"].values, s["time"].values)
            and np.array_equal(ds["activity"].values, s["activity"].values)
        )

    # -- fit / predict / score ----------------------------------------------------------
    def fit(
        self,
        ds: xr.Dataset | str | os.PathLike[str],
        *,
        behavior: str | Sequence[str] | None = None,
        rois: str | Sequence[str] | None = None,
        progress: Progress | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> Decoder:
        """Train on a session (time-ordered train / validation / test split).

        Parameters
        ----------
        ds
            What :func:`~nwb_llmdecode.load_session` returns (any Dataset with
            ``activity`` (time, roi) and ``behavior`` (time, channel)), or a path /
            DANDI identifier, which is loaded (``rois``, ``behavior``, ``cache_dir`` then
            select and stream as in ``load_session``).
        progress
            ``progress(stage, done, total)`` callback.

        Returns
        -------
        Decoder
            ``self``, fitted.
        """
        ds = _as_session(ds, rois=rois, behavior=behavior, cache_dir=cache_dir)
        activity = _activity(ds)  # checked before torch is imported

        from .engine import fit_arrays

        result = fit_arrays(
            activity,
            np.asarray(ds["behavior"].values, dtype=np.float32),
            config=self.config,
            progress=progress,
        )
        self._fitted = result
        self.session_ = ds
        return self

    def _as_prediction(self, values: np.ndarray, ds: xr.Dataset) -> xr.DataArray:
        out = xr.DataArray(
            np.asarray(values, dtype=np.float32),
            dims=("time", "channel"),
            coords={"time": ds["time"], **_channel_coords(ds)},
            name="predictions",
        )
        out.attrs.update(long_name="decoded behaviour")
        if "unit" in ds.coords:
            out.attrs["units"] = ", ".join(dict.fromkeys(map(str, ds["unit"].values)))
        return out

    def predict(
        self, ds: xr.Dataset | str | os.PathLike[str], *, progress: Progress | None = None
    ) -> xr.DataArray:
        """Decoded behaviour on ``ds``'s time and channel coordinates.

        On the fitted session: the predictions of each block, NaN in the gaps between
        blocks (no window reaches them). On another session with the same ROIs: the
        whole session as one block. Units are the behaviour's own.
        """
        from .engine import predict_arrays

        fitted = self._check_fitted()
        ds = _as_session(ds, need_behavior=False)
        if self._is_fitted_session(ds):
            return self._as_prediction(fitted.predictions, ds)
        pred = predict_arrays(fitted, _activity(ds), progress=progress)
        if "channel" in ds.dims and ds.sizes["channel"] != pred.shape[1]:
            raise DataError(
                f"{ds.attrs.get('source', 'dataset')}: {ds.sizes['channel']} behaviour "
                f"channels, the decoder predicts {pred.shape[1]}; select the same behaviour"
            )
        coords_from = ds if "channel" in ds.dims else self.session_
        if coords_from is None:
            coords_from = ds.assign_coords(channel=np.arange(pred.shape[1]))
        return self._as_prediction(pred, ds.assign_coords(_channel_coords(coords_from)))

    def score(self, ds: xr.Dataset | str | os.PathLike[str] | None = None) -> xr.Dataset:
        """Metrics (``rmse``, ``r2``, ``pearson``, ``n_frames``) per split and channel.

        On the fitted session (default): one row per block (train, validation, test). On
        another session: the whole session as split ``all``.
        """
        from .engine import compute_metrics
        from .windows import Block

        fitted = self._check_fitted()
        ds = self.session_ if ds is None else _as_session(ds)
        if ds is None:
            raise NotFittedError("a loaded Decoder has no fitted session; pass the session")
        if self._is_fitted_session(ds):
            rows, splits = fitted.metrics, [s[0] for s in fitted.splits]
        else:
            pred = self.predict(ds).values
            b = np.asarray(ds["behavior"].values, dtype=np.float32)
            rows, splits = compute_metrics(pred, b, [Block("all", 0, len(b))]), ["all"]
        return self._metrics_dataset(rows, splits, ds)

    @staticmethod
    def _metrics_dataset(
        rows: list[dict[str, Any]], splits: list[str], ds: xr.Dataset
    ) -> xr.Dataset:
        n_c = ds.sizes["channel"]
        values = {m: np.full((len(splits), n_c), np.nan) for m in _METRICS}
        for r in rows:
            for m in _METRICS:
                values[m][splits.index(r["split"]), int(r["channel"])] = r[m]
        out = xr.Dataset(
            {m: (("split", "channel"), values[m]) for m in _METRICS},
            coords={"split": ("split", splits), **_channel_coords(ds)},
        )
        out["n_frames"] = out["n_frames"].fillna(0).astype(np.int64)
        return out

    # -- salience and the ablation check ------------------------------------------------
    def _block(self, ds: xr.Dataset, block: str | tuple[int, int] | None) -> tuple[int, int]:
        if isinstance(block, tuple):
            return int(block[0]), int(block[1])
        if self._is_fitted_session(ds):
            name = block or "test"
            splits = self._check_fitted().splits
            for s in splits:
                if s[0] == name:
                    return int(s[1]), int(s[2])
            raise ConfigError(f"block={name!r}: no such split; splits are {[s[0] for s in splits]}")
        if block not in (None, "all"):
            raise ConfigError(f"block={block!r}: a new session has one block, 'all'")
        return 0, ds.sizes["time"]

    def explain(
        self,
        ds: xr.Dataset | str | os.PathLike[str] | None = None,
        *,
        method: str | None = None,
        block: str | tuple[int, int] | None = None,
        stride: int | None = None,
        progress: Progress | None = None,
    ) -> xr.Dataset:
        """Per-ROI salience of the decoded behaviour (captum attributions).

        Parameters
        ----------
        ds
            The session (default: the fitted one).
        method
            ``"integrated-gradients"``, ``"saliency"`` or ``"grad-x-input"``; default
            ``config.salience`` (integrated gradients when that is ``"none"``).
        block
            Frames to attribute: a split name of the fitted session (default
            ``"test"``), ``(start, stop)``, or the whole of another session.
        stride
            Attribute every ``stride``-th window (every frame stays covered); default
            ``config.salience_stride`` (``None`` there: ``max(1, seq_len // 4)``).

        Returns
        -------
        xarray.Dataset
            ``salience`` (roi), ``salience_by_output`` (roi, channel),
            ``salience_timecourse`` (time, roi; NaN outside the block) and ``rank`` (roi;
            1 = most salient), with ``ds``'s ROI and channel coordinates; attrs
            ``method``, ``baseline``, ``block`` and, for integrated gradients,
            ``convergence_delta`` and ``n_steps``.
        """
        from .salience import compute_salience, salience_order

        fitted = self._check_fitted()
        if not self.has_gradients:
            raise ConfigError(
                f"the {fitted.config.backbone} baseline is closed-form and has no gradients, so "
                "no salience; use a backbone or the lstm baseline"
            )
        ds = self.session_ if ds is None else _as_session(ds, need_behavior=False)
        if ds is None:
            raise NotFittedError("a loaded Decoder has no fitted session; pass the session")
        if method is None:
            method = self.config.salience if self.config.salience != "none" else None
            method = method or "integrated-gradients"
        start, stop = self._block(ds, block)
        if stride is None:
            stride = fitted.config.salience_window_stride
        z = fitted.normalization.activity(_activity(ds))
        sal = compute_salience(
            fitted.model,
            z,
            block=(start, stop),
            seq_len=fitted.config.seq_len,
            method=method,
            batch_size=fitted.config.batch_size,
            device=self.device_,
            progress=progress,
            stride=stride,
        )
        rank = np.empty(sal.sizes["roi"], dtype=np.int64)
        rank[salience_order(sal["salience"].values)] = np.arange(1, sal.sizes["roi"] + 1)
        out = xr.Dataset(
            {
                "salience": ("roi", sal["salience"].values),
                "salience_by_output": (("roi", "channel"), sal["salience_by_output"].values),
                "salience_timecourse": (("time", "roi"), sal["timecourse"].values),
                "rank": ("roi", rank),
            },
            coords={"time": ds["time"], **_roi_coords(ds)},
            attrs=dict(sal.attrs),
        )
        if "channel" in ds.dims:
            out = out.assign_coords(_channel_coords(ds))
        out["rank"].attrs["description"] = "1 = most salient"
        return out

    def ablate(
        self,
        ds: xr.Dataset | str | os.PathLike[str] | None = None,
        *,
        k: Sequence[int] = ABLATION_KS,
        draws: int = 5,
        salience: xr.Dataset | xr.DataArray | np.ndarray | None = None,
        block: str | tuple[int, int] | None = None,
    ) -> xr.Dataset:
        """The ablation check: test RMSE with the top-k salient vs k random ROIs at their
        training mean (NLP4Neuro, experiment 4).

        ``salience`` defaults to :meth:`explain` of the same block. Returns a Dataset
        along ``ablation`` with coordinates ``k``, ``kind`` (salient/random), ``draw``
        and variables ``rmse``, ``delta_rmse`` (increase over the intact model).
        """
        from .engine import predict_blocks
        from .salience import ablation_check
        from .windows import Block

        fitted = self._check_fitted()
        ds = self.session_ if ds is None else _as_session(ds)
        if ds is None:
            raise NotFittedError("a loaded Decoder has no fitted session; pass the session")
        ks = [int(v) for v in k]
        if not ks or any(v < 1 for v in ks):
            raise ConfigError(f"k={tuple(k)!r}: numbers of ROIs to ablate must be >= 1")
        if salience is None:
            salience = self.explain(ds, block=block)
        values = salience["salience"] if isinstance(salience, xr.Dataset) else salience
        values = np.nan_to_num(np.asarray(values, dtype=np.float64), nan=-np.inf)
        start, stop = self._block(ds, block)
        z = fitted.normalization.activity(_activity(ds))
        target = np.asarray(ds["behavior"].values, dtype=np.float32)[start:stop]
        blk = Block("test", start, stop)

        def evaluate(rois: np.ndarray) -> float:
            zz = z.copy()
            zz[:, np.asarray(rois, dtype=np.int64)] = 0.0
            pred_n = predict_blocks(
                fitted.model,
                zz,
                [blk],
                seq_len=fitted.config.seq_len,
                batch_size=fitted.config.eval_batch_size,
            )
            pred = fitted.normalization.behavior_units(pred_n)[start:stop]
            return float(np.mean(np.sqrt(np.nanmean((pred - target) ** 2, axis=0))))

        rows = ablation_check(evaluate, values, ks=ks, draws=draws, seed=fitted.config.seed)
        return self.ablation_dataset(rows)

    @staticmethod
    def ablation_rows(ablation: xr.Dataset) -> list[dict[str, Any]]:
        """Inverse of :meth:`ablation_dataset`: rows ``k``, ``kind``, ``draw``, ``rmse``,
        ``delta_rmse`` (the form the writer takes)."""
        return [
            {
                "k": int(ablation["k"].values[i]),
                "kind": str(ablation["kind"].values[i]),
                "draw": int(ablation["draw"].values[i]),
                "rmse": float(ablation["rmse"].values[i]),
                "delta_rmse": float(ablation["delta_rmse"].values[i]),
            }
            for i in range(ablation.sizes["ablation"])
        ]

    @staticmethod
    def ablation_dataset(rows: list[dict[str, Any]]) -> xr.Dataset:
        """Ablation rows (``k``, ``kind``, ``draw``, ``rmse``, ``delta_rmse``) as a Dataset."""
        return xr.Dataset(
            {
                "rmse": ("ablation", np.array([r["rmse"] for r in rows], dtype=np.float64)),
                "delta_rmse": (
                    "ablation",
                    np.array([r["delta_rmse"] for r in rows], dtype=np.float64),
                ),
            },
            coords={
                "k": ("ablation", np.array([r["k"] for r in rows], dtype=np.int64)),
                "kind": ("ablation", np.array([r["kind"] for r in rows], dtype=str)),
                "draw": ("ablation", np.array([r["draw"] for r in rows], dtype=np.int64)),
            },
        )

    # -- persistence ----------------------------------------------------------------------
    def save(self, directory: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write the fitted decoder as a checkpoint directory (weights, normalisation,
        config JSON, versions; see :mod:`nwb_llmdecode.engine.checkpoint`) and the
        session facts ``session.json`` (series, ROI count, channels)."""
        from .engine import save_checkpoint

        fitted = self._check_fitted()
        if self.session_ is None:
            raise NotFittedError("a loaded Decoder is saved already: copy its directory")
        d = save_checkpoint(fitted, directory, overwrite=overwrite)
        (d / "session.json").write_text(json.dumps(self.session_facts(), indent=2))
        return d

    def session_facts(self) -> dict[str, Any]:
        """What ``predict`` on another session needs to know of the fitted one."""
        ds = self.session_
        if ds is None:
            raise NotFittedError("a loaded Decoder has no fitted session")
        return {
            "source": str(ds.attrs.get("source", "")),
            "roi_series": json.loads(ds.attrs.get("roi_series", "[]")),
            "behavior_series": json.loads(ds.attrs.get("behavior_series", "[]")),
            "n_rois": int(ds.sizes["roi"]),
            "channels": [
                {"behavior": str(s), "channel": int(c), "unit": str(u)}
                for s, c, u in zip(
                    ds["series"].values, ds["series_channel"].values, ds["unit"].values, strict=True
                )
            ],
        }

    @classmethod
    def load(
        cls,
        directory: str | os.PathLike[str],
        *,
        device: str = "cpu",
        trust_remote_code: bool = False,
    ) -> Decoder:
        """A fitted Decoder from a checkpoint directory (:meth:`save` or ``fit``).

        Nothing in the directory can enable remote code: only ``trust_remote_code=True``
        here lets a hub backbone run its own code.
        """
        from .engine import load_checkpoint

        ckpt = load_checkpoint(directory, device=device, trust_remote_code=trust_remote_code)
        dec = cls(ckpt.config)
        dec._fitted = ckpt
        return dec

    # -- results as NWB -------------------------------------------------------------------
    def results(
        self,
        *,
        salience: xr.Dataset | None = None,
        ablation: xr.Dataset | None = None,
        run: dict[str, Any] | None = None,
    ) -> Any:
        """The :class:`~nwb_llmdecode.io.write.DecodingResults` of the fitted session."""
        from ._version import __version__
        from .io.write import DecodingResults

        fitted = self._check_fitted()
        ds = self.session_
        if ds is None:
            raise NotFittedError("a loaded Decoder has no fitted session to write")
        cfg = fitted.config
        rows = None if ablation is None else self.ablation_rows(ablation)
        info = {
            "backbone": cfg.backbone,
            "init": cfg.init,
            "train_mode": cfg.train_mode,
            "seq_len": int(cfg.seq_len),
            "epochs": len(fitted.history) if fitted.history else int(cfg.epochs),
            "seed": int(cfg.seed),
            "salience_method": "none" if salience is None else str(salience.attrs.get("method")),
            "package_version": __version__,
            "device": str(fitted.device),
            "duration_s": float(fitted.duration_s),
            "config_json": cfg.to_json(),
            "fit_json": json.dumps((getattr(fitted, "extra", None) or {}).get("fit", {})),
            **(run or {}),
        }
        return DecodingResults(
            session=ds,
            predictions=np.asarray(fitted.predictions, dtype=np.float32),
            splits=list(fitted.splits),
            metrics=list(fitted.metrics),
            run=info,
            salience=salience,
            ablation=rows,
        )

    def to_nwb(
        self,
        ds_or_source: xr.Dataset | str | os.PathLike[str] | None = None,
        out: str | os.PathLike[str] | None = None,
        *,
        in_place: bool = False,
        overwrite: bool = False,
        salience: xr.Dataset | None = None,
        ablation: xr.Dataset | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> Path:
        """Write the results module of the fitted session, as ``fit`` does.

        Parameters
        ----------
        ds_or_source
            The fitted session's Dataset or its source (path, URL, DANDI id); default
            the source the fitted session was loaded from.
        out
            Output file; default ``<stem>_desc-llmdecode.nwb`` (see
            :func:`~nwb_llmdecode.io.write.default_output_path`).
        in_place
            Append the module to the (local) source instead.
        salience, ablation
            What :meth:`explain` and :meth:`ablate` returned, to write with it.

        Returns
        -------
        pathlib.Path
            The file written.
        """
        from .io.sources import open_nwb
        from .io.write import default_output_path, write_derived, write_in_place

        self._check_fitted()
        if self.session_ is None:
            raise NotFittedError("a loaded Decoder has no fitted session to write")
        source = ds_or_source
        if source is None or isinstance(source, xr.Dataset):
            source = (source if source is not None else self.session_).attrs.get("source")
        if not source:
            raise ConfigError("to_nwb: the session has no 'source' attribute; give the source")
        results = self.results(salience=salience, ablation=ablation)
        if in_place:
            if out is not None:
                raise ConfigError("to_nwb: in_place=True and out exclude each other; give one")
            return write_in_place(source, results, overwrite=overwrite)
        target = Path(out) if out is not None else default_output_path(source)
        with open_nwb(source, cache_dir=cache_dir) as src:
            return write_derived(src, results, target, overwrite=overwrite)
