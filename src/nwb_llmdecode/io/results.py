"""Read a results module back: the inverse of :mod:`nwb_llmdecode.io.write`.

:func:`read_results` opens a file written by ``fit`` / ``predict`` (a derived file, or a
source with results appended ``--in-place``), local or streamed, and returns one
:class:`xarray.Dataset` holding the session the decoder saw (its ROI activity, behaviour
and ROI/channel coordinates, read with :func:`~nwb_llmdecode.io.read.read_session` from
the series the run recorded) and every object of ``processing/llmdecode``
(``shared/NWB_RESULTS.md``) joined back onto those ROIs, channels and frames. This is the
one place that parses the results module.
"""

from __future__ import annotations

import json
import os
import warnings
from typing import Any

import numpy as np
import xarray as xr

from ..errors import DataError
from .read import RESULTS_MODULE, AlignmentWarning, read_session, run_config
from .sources import NWBSource, open_nwb

__all__ = ["METRIC_VARIABLES", "read_results", "results_from_source"]

#: Metric variables of the Dataset, each (split, channel).
METRIC_VARIABLES = ("rmse", "r2", "pearson", "n_frames")


def _text(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.generic):
        return v.item()
    return v


def _column(table: Any, name: str) -> list[Any]:
    return [_text(v) for v in np.asarray(table[name].data[:]).tolist()]


def _json_list(text: Any) -> list[Any] | None:
    try:
        value = json.loads(str(text))
    except (TypeError, ValueError):
        return None
    return value if isinstance(value, list) and value else None


def _pairs(text: Any) -> dict[str, Any]:
    if not text:
        return {}
    try:
        return run_config(str(text))
    except ValueError:
        return {}


def _coordinates(
    src: NWBSource, roi_series: list[Any] | None, behavior_series: list[Any] | None, times: Any
) -> xr.Dataset:
    """The session's coordinates without its data: ROIs (``plane``, ``roi_row``,
    ``roi_id``) of the decoded series, channels (``series``, ``series_channel``, ``unit``)
    and the frame ``time`` of the results."""
    from .read import _select_behavior, _select_rois, inventory

    inv = inventory(src)
    planes, rows, ids = [], [], []
    for c in _select_rois(inv, roi_series, src.label):
        region = inv.objects[c["path"]].rois
        r = np.asarray(region.data[:], dtype=np.int64)
        planes += [region.table.name] * len(r)
        rows.append(r)
        ids.append(np.asarray(region.table.id.data[:], dtype=np.int64)[r])
    series, channel, unit = [], [], []
    for c in _select_behavior(inv, behavior_series, src.label):
        series += [c["name"]] * c["n_channels"]
        channel += list(range(c["n_channels"]))
        unit += [c["unit"]] * c["n_channels"]
    return xr.Dataset(
        coords={
            "time": ("time", np.asarray(times, dtype=np.float64)),
            "roi": ("roi", np.arange(len(planes))),
            "plane": ("roi", np.asarray(planes, dtype=str)),
            "roi_row": ("roi", np.concatenate(rows) if rows else np.zeros(0, np.int64)),
            "roi_id": ("roi", np.concatenate(ids) if ids else np.zeros(0, np.int64)),
            "channel": ("channel", np.arange(len(series))),
            "series": ("channel", np.asarray(series, dtype=str)),
            "series_channel": ("channel", np.asarray(channel, dtype=np.int64)),
            "unit": ("channel", np.asarray(unit, dtype=str)),
        },
        attrs={"source": src.label},
    )


def results_from_source(
    src: NWBSource, *, session: bool = True, max_timecourse_values: int | None = None
) -> xr.Dataset:
    """:func:`read_results` of an already open source (see there)."""
    f = src.nwbfile
    if RESULTS_MODULE not in f.processing:
        raise DataError(
            f"{src.label}: no processing/{RESULTS_MODULE} module, so no decoding results; "
            "run `nwb-llmdecode fit` on the session first"
        )
    module = f.processing[RESULTS_MODULE]
    ifaces = module.data_interfaces
    for need in ("predictions", "targets", "decoding_run"):
        if need not in ifaces:
            raise DataError(
                f"{src.label}: processing/{RESULTS_MODULE} has no {need!r}; the results module "
                "is incomplete, fit again with --overwrite"
            )
    run_table = ifaces["decoding_run"]
    run = {c: _column(run_table, c)[0] for c in run_table.colnames}
    config = _pairs(run.pop("config_json", ""))
    salience_attrs = _pairs(run.pop("salience_json", ""))
    fit_choices = _pairs(run.pop("fit_json", ""))
    roi_series = _json_list(run.get("roi_series"))
    behavior_series = _json_list(run.get("behavior_series"))
    predictions = ifaces["predictions"].time_series
    targets = ifaces["targets"].time_series
    if behavior_series is None:  # files written before the run recorded its series
        behavior_series = list(targets)
    if session:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AlignmentWarning)  # reported when it was fitted
            ds = read_session(src, rois=roi_series, behavior=behavior_series)
    else:
        first = next(iter(targets.values()))
        ds = _coordinates(src, roi_series, behavior_series, first.get_timestamps()[:])

    # --- predictions and targets, channel by channel ---------------------------------
    n_t, n_c = ds.sizes["time"], ds.sizes["channel"]
    pred = np.full((n_t, n_c), np.nan, dtype=np.float32)
    targ = np.full((n_t, n_c), np.nan, dtype=np.float32)
    series = ds["series"].values
    for name in dict.fromkeys(series.tolist()):
        sel = np.flatnonzero(series == name)
        for store, source in ((pred, predictions), (targ, targets)):
            if name in source:
                data = np.asarray(source[name].data[:], dtype=np.float32).reshape(n_t, -1)
                store[:, sel] = data[:, : len(sel)]
    out = ds.assign(
        predictions=(("time", "channel"), pred),
        targets=(("time", "channel"), targ),
    )
    out.attrs["session_data"] = bool(session)
    unit = ds["unit"].values
    out["predictions"].attrs.update(long_name="decoded behaviour", units=", ".join(set(unit)))
    out["targets"].attrs.update(long_name="behaviour averaged per imaging frame")

    # --- splits and metrics ----------------------------------------------------------
    times = ds["time"].values
    if "decoding_splits" in ifaces:
        sp = ifaces["decoding_splits"]
        column = "split_name" if "split_name" in sp.colnames else "split"  # older files
        names = [str(n) for n in _column(sp, column)]
        start_t = np.asarray(_column(sp, "start_time"), dtype=np.float64)
        stop_t = np.asarray(_column(sp, "stop_time"), dtype=np.float64)
        tol = 1e-6 * (float(np.median(np.diff(times))) if len(times) > 1 else 1.0)
        out = out.assign_coords(split=("split", names))
        out["split_start_time"] = ("split", start_t)
        out["split_stop_time"] = ("split", stop_t)
        out["split_start"] = ("split", np.searchsorted(times, start_t - tol).astype(np.int64))
        out["split_stop"] = ("split", np.searchsorted(times, stop_t - tol).astype(np.int64))
    if "decoding_metrics" in ifaces:
        mt = ifaces["decoding_metrics"]
        rows = list(
            zip(
                _column(mt, "behavior"),
                _column(mt, "channel"),
                [str(v) for v in _column(mt, "split")],
                *(_column(mt, m) for m in METRIC_VARIABLES),
                strict=True,
            )
        )
        known = [str(v) for v in out["split"].values] if "split" in out.coords else []
        splits = list(dict.fromkeys(known + [r[2] for r in rows]))
        if splits != known:
            out = out.drop_vars([v for v in out.variables if "split" in out[v].dims])
            out = out.assign_coords(split=("split", splits))
        channel_of = {
            (str(s), int(c)): i
            for i, (s, c) in enumerate(zip(series, ds["series_channel"].values, strict=True))
        }
        values = {m: np.full((len(splits), n_c), np.nan) for m in METRIC_VARIABLES}
        for behavior, channel, split, *metric in rows:
            c = channel_of.get((str(behavior), int(channel)))
            if c is not None:
                for m, v in zip(METRIC_VARIABLES, metric, strict=True):
                    values[m][splits.index(split), c] = v
        for m in METRIC_VARIABLES:
            out[m] = (("split", "channel"), values[m])
        out["n_frames"] = out["n_frames"].fillna(0).astype(np.int64)

    # --- salience, joined back to the ROIs of every plane ------------------------------
    tables = [ifaces[n] for n in ifaces if n.startswith("roi_salience")]
    if tables:
        n_r = ds.sizes["roi"]
        planes, rows = ds["plane"].values, ds["roi_row"].values
        where = {(str(p), int(r)): i for i, (p, r) in enumerate(zip(planes, rows, strict=True))}
        sal = np.full(n_r, np.nan)
        by_out = np.full((n_r, n_c), np.nan)
        rank = np.zeros(n_r, dtype=np.int64)
        keep_course = max_timecourse_values is None or n_t * n_r <= max_timecourse_values
        course = np.full((n_t if keep_course else 0, n_r), np.nan, dtype=np.float32)
        for t in tables:
            region = t["roi"]
            plane = region.table.name
            idx = np.array([where.get((plane, int(r)), -1) for r in region.data[:]])
            ok = idx >= 0
            sal[idx[ok]] = np.asarray(t["salience"].data[:], dtype=np.float64)[ok]
            b = np.asarray(t["salience_by_output"].data[:], dtype=np.float64).reshape(len(idx), -1)
            by_out[idx[ok], : b.shape[1]] = b[ok, :n_c]
            if "rank" in t.colnames:
                rank[idx[ok]] = np.asarray(t["rank"].data[:], dtype=np.int64)[ok]
            name = "salience_timecourse" + t.name[len("roi_salience") :]
            if keep_course and name in ifaces:
                data = np.asarray(ifaces[name].data[:], dtype=np.float32).reshape(n_t, -1)
                course[:, idx[ok]] = data[:, ok]
        out["salience"] = ("roi", sal)
        out["salience_by_output"] = (("roi", "channel"), by_out)
        if keep_course:
            out["salience_timecourse"] = (("time", "roi"), course)
        out["rank"] = ("roi", rank)
        method = str(run.get("salience_method", ""))
        for v in ("salience", "salience_by_output", "salience_timecourse"):
            if v in out:
                out[v].attrs.update(method=method, units="a.u.")
        out["rank"].attrs["description"] = "1 = most salient over all planes"

    # --- ablation --------------------------------------------------------------------
    if "salience_ablation" in ifaces:
        ab = ifaces["salience_ablation"]
        out = out.assign_coords(
            ablation_k=("ablation", np.asarray(_column(ab, "k"), dtype=np.int64)),
            ablation_kind=("ablation", np.asarray(_column(ab, "kind"), dtype=str)),
            ablation_draw=("ablation", np.asarray(_column(ab, "draw"), dtype=np.int64)),
        )
        out["ablation_rmse"] = ("ablation", np.asarray(_column(ab, "rmse"), dtype=np.float64))
        out["ablation_delta_rmse"] = (
            "ablation",
            np.asarray(_column(ab, "delta_rmse"), dtype=np.float64),
        )

    out.attrs.update(
        results_file=src.label,
        run=run,
        config=config,
        salience=salience_attrs,
        fit=fit_choices,
    )
    return out


def read_results(
    source: str | os.PathLike[str] | NWBSource,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    session: bool = True,
    max_timecourse_values: int | None = None,
) -> xr.Dataset:
    """Read a results file (``processing/llmdecode``) back as one xarray Dataset.

    Parameters
    ----------
    source
        A results file written by ``fit`` or ``predict`` (local path, URL or DANDI
        identifier), or an open :class:`~nwb_llmdecode.io.sources.NWBSource`.
    cache_dir
        Block cache of remote sources.
    session
        Read the session's data (``activity``, ``behavior`` and the ROI centroids) too;
        ``False`` gives only the results on the ROI (``plane``, ``roi_row``, ``roi_id``),
        channel and time coordinates, without reading the ROI traces (a viewer's choice).
    max_timecourse_values
        Leave out ``salience_timecourse`` when it holds more values than this.

    Returns
    -------
    xarray.Dataset
        The session the decoder was fitted on, as :func:`~nwb_llmdecode.load_session`
        returns it (``activity`` (time, roi), ``behavior`` (time, channel) and their
        coordinates), plus:

        * ``predictions``, ``targets`` (time, channel);
        * coordinate ``split`` (train / validation / test, or ``all`` for ``predict``)
          with ``split_start_time``, ``split_stop_time`` (s) and ``split_start``,
          ``split_stop`` (frames, stop exclusive);
        * ``rmse``, ``r2``, ``pearson``, ``n_frames`` (split, channel);
        * with salience: ``salience`` (roi), ``salience_by_output`` (roi, channel),
          ``salience_timecourse`` (time, roi) and ``rank`` (roi), on the ROIs of every
          plane;
        * with the ablation check: dimension ``ablation`` with coordinates
          ``ablation_k``, ``ablation_kind``, ``ablation_draw`` and variables
          ``ablation_rmse``, ``ablation_delta_rmse``;
        * attrs ``run`` (the ``decoding_run`` row as a dict), ``config`` (the run
          configuration as a dict), ``salience`` (baseline, convergence delta...),
          ``fit`` (what the fit chose on the validation block: best epoch, early stop,
          the ridge base's lags and penalty; empty in files of earlier versions) and
          ``results_file``.

    Raises
    ------
    DataError
        The file has no (or an incomplete) results module.

    Examples
    --------
    >>> res = read_results("session_desc-llmdecode.nwb")  # doctest: +SKIP
    >>> float(res["r2"].sel(split="test").mean())  # doctest: +SKIP
    0.72
    >>> res["salience"].sortby("rank")[:5].roi_id.values  # doctest: +SKIP
    array([16, 39, 25, 33, 37])
    """
    kw = {"session": session, "max_timecourse_values": max_timecourse_values}
    if isinstance(source, NWBSource):
        return results_from_source(source, **kw)
    with open_nwb(source, cache_dir=cache_dir) as src:
        return results_from_source(src, **kw)
