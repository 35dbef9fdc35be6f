"""NWB -> xarray: ROI activity, ROI tables, behaviour and summary images.

Readers take the :class:`~nwb_llmdecode.io.sources.NWBSource` yielded by
:func:`~nwb_llmdecode.io.sources.open_nwb` and read only what is asked for: the selected
ROI series, the ROI masks (in batches) and the part of the behaviour series that overlaps
imaging. Raw imaging in the same file is never touched.
"""

from __future__ import annotations

import json
import logging
import os
import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr

from ..errors import AlignmentError, SelectionError, SourceError
from .align import frame_average, frame_edges, sample_range
from .sources import NWBSource, open_nwb

__all__ = [
    "RESULTS_MODULE",
    "AlignmentWarning",
    "channel_labels",
    "inspect_source",
    "inventory",
    "load_images",
    "load_session",
    "read_session",
    "roi_centroids",
    "roi_label_volume",
    "run_config",
]

log = logging.getLogger(__name__)

#: Name of the processing module our results are written to (never read as input).
RESULTS_MODULE = "llmdecode"
_MASK_BATCH = 128


class AlignmentWarning(UserWarning):
    """Some imaging frames received no behaviour sample (they are NaN)."""


# ----------------------------------------------------------------------------------------
# walking the file
# ----------------------------------------------------------------------------------------


def _children(obj: Any) -> Iterator[tuple[str, Any]]:
    """Named children of NWB containers that hold other containers."""
    from pynwb.base import Images
    from pynwb.core import MultiContainerInterface

    if isinstance(obj, MultiContainerInterface):
        conf = obj.__clsconf__
        for c in conf if isinstance(conf, list) else [conf]:
            yield from getattr(obj, c["attr"]).items()
    elif isinstance(obj, Images):
        yield from obj.images.items()


def iter_objects(nwbfile: Any) -> Iterator[tuple[str, Any]]:
    """Yield ``(object path, container)`` for everything in acquisition and processing."""

    def walk(obj: Any, path: str) -> Iterator[tuple[str, Any]]:
        yield path, obj
        for name, child in _children(obj):
            yield from walk(child, f"{path}/{name}")

    for name, obj in nwbfile.acquisition.items():
        yield from walk(obj, f"acquisition/{name}")
    for mname, module in nwbfile.processing.items():
        for name, obj in module.data_interfaces.items():
            yield from walk(obj, f"processing/{mname}/{name}")


def _is_behavior(obj: Any, path: str) -> bool:
    from pynwb import TimeSeries
    from pynwb.ecephys import ElectricalSeries
    from pynwb.image import ImageSeries
    from pynwb.misc import AnnotationSeries, IntervalSeries
    from pynwb.ophys import RoiResponseSeries

    if not isinstance(obj, TimeSeries):
        return False
    if path.startswith(f"processing/{RESULTS_MODULE}/"):
        return False
    if isinstance(
        obj, ImageSeries | RoiResponseSeries | ElectricalSeries | AnnotationSeries | IntervalSeries
    ):
        return False
    dtype = getattr(obj.data, "dtype", None)
    return dtype is None or np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.bool_)


def _shape(data: Any) -> tuple[int, ...]:
    shape = getattr(data, "shape", None)
    return tuple(shape) if shape is not None else np.shape(data)


def _timing(ts: Any) -> dict[str, Any]:
    if ts.timestamps is not None:
        t = ts.timestamps
        n = _shape(t)[0]
        return {
            "rate": None,
            "timestamps": True,
            "start": float(t[0]) if n else None,
            "stop": float(t[n - 1]) if n else None,
        }
    n = _shape(ts.data)[0]
    start = float(ts.starting_time or 0.0)
    return {
        "rate": float(ts.rate),
        "timestamps": False,
        "start": start,
        "stop": start + (n - 1) / float(ts.rate) if n else start,
    }


@dataclass(frozen=True)
class _Inventory:
    roi_series: list[dict[str, Any]]
    behavior_series: list[dict[str, Any]]
    images: list[dict[str, Any]]
    imaging_planes: list[dict[str, Any]]
    plane_segmentations: list[dict[str, Any]]
    objects: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {
            "roi_series": self.roi_series,
            "behavior_series": self.behavior_series,
            "images": self.images,
            "imaging_planes": self.imaging_planes,
            "plane_segmentations": self.plane_segmentations,
        }


def inventory(src: NWBSource) -> _Inventory:
    """Catalogue ROI series, behaviour candidates, images and planes of an open file.

    Reads only metadata (shapes, attributes, the first and last timestamps).
    """
    from pynwb.base import Image
    from pynwb.ophys import PlaneSegmentation, RoiResponseSeries

    nwbfile = src.nwbfile
    objects: dict[str, Any] = {}
    paths_by_id: dict[int, str] = {}
    for path, obj in iter_objects(nwbfile):
        objects[path] = obj
        paths_by_id[id(obj)] = path

    planes = []
    for name, plane in nwbfile.imaging_planes.items():
        grid = getattr(plane, "grid_spacing", None)
        origin = getattr(plane, "origin_coords", None)
        planes.append(
            {
                "path": f"general/optophysiology/{name}",
                "name": name,
                "description": plane.description,
                "location": plane.location,
                "indicator": plane.indicator,
                "imaging_rate": None if plane.imaging_rate is None else float(plane.imaging_rate),
                "grid_spacing": None if grid is None else [float(v) for v in grid[:]],
                "grid_spacing_unit": getattr(plane, "grid_spacing_unit", None),
                "origin_coords": None if origin is None else [float(v) for v in origin[:]],
            }
        )

    segs, rois, behavior, images = [], [], [], []
    for path, obj in objects.items():
        if path.startswith(f"processing/{RESULTS_MODULE}/"):
            continue
        if isinstance(obj, PlaneSegmentation):
            mask = next(
                (m for m in ("image_mask", "pixel_mask", "voxel_mask") if m in obj.colnames), None
            )
            segs.append(
                {
                    "path": path,
                    "name": obj.name,
                    "n_rois": len(obj.id),
                    "mask": mask,
                    "imaging_plane": obj.imaging_plane.name,
                }
            )
        elif isinstance(obj, RoiResponseSeries):
            shape = _shape(obj.data)
            table = obj.rois.table
            parent = path.rsplit("/", 2)[-2] if path.count("/") >= 3 else ""
            rois.append(
                {
                    "path": path,
                    "name": obj.name,
                    "container": parent,
                    "n_frames": int(shape[0]),
                    "n_rois": int(shape[1]) if len(shape) > 1 else 1,
                    "unit": obj.unit,
                    "plane_segmentation": paths_by_id.get(id(table), table.name),
                    "imaging_plane": getattr(getattr(table, "imaging_plane", None), "name", None),
                    **_timing(obj),
                }
            )
        elif _is_behavior(obj, path):
            shape = _shape(obj.data)
            behavior.append(
                {
                    "path": path,
                    "name": obj.name,
                    "type": type(obj).__name__,
                    "n_samples": int(shape[0]),
                    "n_channels": int(np.prod(shape[1:])) if len(shape) > 1 else 1,
                    "unit": obj.unit,
                    **_timing(obj),
                }
            )
        elif isinstance(obj, Image):
            images.append(
                {
                    "path": path,
                    "name": obj.name,
                    "type": type(obj).__name__,
                    "shape": _shape(obj.data),
                }
            )
    return _Inventory(rois, behavior, images, planes, segs, objects)


def inspect_source(
    source: str | os.PathLike[str] | NWBSource, *, cache_dir: str | None = None
) -> dict[str, Any]:
    """Describe what can be decoded from an NWB source.

    Returns a JSON-ready dict with keys ``roi_series``, ``behavior_series``, ``images``,
    ``imaging_planes``, ``plane_segmentations`` and ``session``.

    Examples
    --------
    >>> info = inspect_source("session.nwb")  # doctest: +SKIP
    >>> [s["path"] for s in info["roi_series"]]  # doctest: +SKIP
    ['processing/ophys/DfOverF/RoiResponseSeries_plane0']
    """
    if isinstance(source, NWBSource):
        inv = inventory(source)
        out = inv.as_dict()
        f = source.nwbfile
        out["session"] = {
            "source": source.label,
            "identifier": f.identifier,
            "session_description": f.session_description,
            "session_start_time": f.session_start_time.isoformat(),
            "has_results": RESULTS_MODULE in f.processing,
        }
        if source.stats:
            out["session"]["transfer"] = dict(source.stats)
        return out
    with open_nwb(source, cache_dir=cache_dir) as src:
        return inspect_source(src)


# ----------------------------------------------------------------------------------------
# selection
# ----------------------------------------------------------------------------------------


def _natural_key(s: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def _match(query: str, candidates: list[dict[str, Any]]) -> list[dict[str, Any]]:
    q = query.strip("/")
    exact = [c for c in candidates if c["path"] == q]
    if exact:
        return exact
    # a container (e.g. "DfOverF" or "processing/ophys/DfOverF") selects all its series
    return [
        c
        for c in candidates
        if c["name"] == q
        or c["path"].endswith("/" + q)
        or c["path"].startswith(q + "/")
        or ("/" + q + "/") in ("/" + c["path"])
    ]


def _listing(cands: list[dict[str, Any]]) -> str:
    return ", ".join(c["path"] for c in cands) or "none"


def _select_rois(
    inv: _Inventory, rois: str | Sequence[str] | None, label: str
) -> list[dict[str, Any]]:
    cands = inv.roi_series
    if not cands:
        raise SelectionError(
            f"{label}: no ophys ROI data (no RoiResponseSeries in a DfOverF or Fluorescence "
            "container); decoding needs segmented ROI traces"
        )
    if rois is None:
        for kind in ("DfOverF", "Fluorescence", None):
            chosen = [c for c in cands if kind is None or c["container"] == kind]
            if chosen:
                break
        tables = [c["plane_segmentation"] for c in chosen]
        if len(set(tables)) != len(tables):
            raise SelectionError(
                f"{label}: several ROI series refer to the same ROI table; choose with "
                f"rois=/--rois among: {_listing(chosen)}"
            )
    else:
        queries = [rois] if isinstance(rois, str) else list(rois)
        chosen = []
        for q in queries:
            found = _match(q, cands)
            if not found:
                raise SelectionError(f"{label}: no ROI series {q!r}; available: {_listing(cands)}")
            chosen.extend(c for c in found if c not in chosen)
        tables = [c["plane_segmentation"] for c in chosen]
        if len(set(tables)) != len(tables):
            raise SelectionError(
                f"{label}: {_listing(chosen)} refer to the same ROI table; select one series "
                "per imaging plane"
            )
    return sorted(chosen, key=lambda c: _natural_key(c["path"])) if rois is None else chosen


def _select_behavior(
    inv: _Inventory, behavior: str | Sequence[str] | None, label: str
) -> list[dict[str, Any]]:
    cands = inv.behavior_series
    if behavior is None:
        if len(cands) == 1:
            return cands
        if not cands:
            raise SelectionError(
                f"{label}: no behaviour series (TimeSeries/SpatialSeries in acquisition or "
                "processing); add one or decode another session"
            )
        raise SelectionError(
            f"{label}: {len(cands)} behaviour series, choose with behavior=/--behavior: "
            f"{_listing(cands)}"
        )
    queries = [behavior] if isinstance(behavior, str) else list(behavior)
    chosen: list[dict[str, Any]] = []
    for q in queries:
        found = _match(q, cands)
        if not found:
            raise SelectionError(
                f"{label}: no behaviour series {q!r}; available: {_listing(cands)}"
            )
        chosen.extend(c for c in found if c not in chosen)
    return chosen


# ----------------------------------------------------------------------------------------
# reading
# ----------------------------------------------------------------------------------------


def _times(ts: Any, n: int) -> np.ndarray:
    if ts.timestamps is not None:
        return np.asarray(ts.timestamps[:n], dtype=np.float64)
    return float(ts.starting_time or 0.0) + np.arange(n) / float(ts.rate)


def _mask_column(ps: Any) -> str | None:
    return next((m for m in ("image_mask", "pixel_mask", "voxel_mask") if m in ps.colnames), None)


def _ragged(ps: Any, column: str) -> tuple[np.ndarray, np.ndarray]:
    """(flat compound records, end offsets per row) of a ragged mask column."""
    index = ps[column]  # VectorIndex for ragged columns
    ends = np.asarray(index.data[:], dtype=np.int64)
    records = index.target.data[:]
    return np.asarray(records), ends


def roi_centroids(ps: Any, rows: np.ndarray | None = None, *, plane_z: float = 0.0) -> np.ndarray:
    """Weighted mask centroids (x, y, z) of ``rows`` of a PlaneSegmentation.

    Parameters
    ----------
    ps
        A PlaneSegmentation read from a file (image, pixel or voxel masks).
    rows
        Row indices; default all rows.
    plane_z
        z given to 2-D (image or pixel) masks, e.g. the plane's position in a stack.

    Returns
    -------
    numpy.ndarray
        (n, 3) float64 in mask pixel units; NaN where a mask is empty or absent.
    """
    rows = np.arange(len(ps.id)) if rows is None else np.asarray(rows, dtype=np.int64)
    out = np.full((len(rows), 3), np.nan)
    column = _mask_column(ps)
    if column == "image_mask":
        data = ps["image_mask"].data
        shape = _shape(data)
        order = np.argsort(rows)
        sorted_rows = rows[order]
        for b in range(0, len(rows), _MASK_BATCH):
            sel = sorted_rows[b : b + _MASK_BATCH]
            if len(sel) and sel[-1] - sel[0] == len(sel) - 1:
                m = np.asarray(data[int(sel[0]) : int(sel[-1]) + 1], dtype=np.float64)
            else:
                m = np.asarray(data[list(sel)], dtype=np.float64)
            m = np.clip(m, 0, None)
            total = m.reshape(len(sel), -1).sum(axis=1)
            total[total == 0] = np.nan
            idx = order[b : b + _MASK_BATCH]
            if len(shape) == 3:  # (n, y, x)
                out[idx, 0] = (m.sum(axis=1) * np.arange(shape[2])).sum(axis=1) / total
                out[idx, 1] = (m.sum(axis=2) * np.arange(shape[1])).sum(axis=1) / total
                out[idx, 2] = plane_z
            elif len(shape) == 4:  # (n, z, y, x)
                out[idx, 0] = (m.sum(axis=(1, 2)) * np.arange(shape[3])).sum(axis=1) / total
                out[idx, 1] = (m.sum(axis=(1, 3)) * np.arange(shape[2])).sum(axis=1) / total
                out[idx, 2] = (m.sum(axis=(2, 3)) * np.arange(shape[1])).sum(axis=1) / total
    elif column in ("pixel_mask", "voxel_mask"):
        records, ends = _ragged(ps, column)
        starts = np.concatenate([[0], ends[:-1]])
        w = np.asarray(records["weight"], dtype=np.float64)
        fields = ["x", "y"] + (["z"] if column == "voxel_mask" else [])
        for i, row in enumerate(rows):
            s, e = starts[row], ends[row]
            ww = w[s:e]
            tot = ww.sum()
            if e <= s or tot <= 0:
                continue
            for k, f in enumerate(fields):
                out[i, k] = float((np.asarray(records[f][s:e], dtype=np.float64) * ww).sum() / tot)
        if column == "pixel_mask":
            out[:, 2] = plane_z
    return out


def _check_frame_times(t: np.ndarray, where: str) -> None:
    """Imaging frame times must be finite and strictly increasing (refused otherwise:
    reordering imaging frames would silently change what the decoder sees)."""
    bad = ~np.isfinite(t)
    if bad.any():
        raise AlignmentError(
            f"{where}: {int(bad.sum())} timestamps are NaN/inf (e.g. frame "
            f"{int(np.flatnonzero(bad)[0])}); fix the series' timestamps"
        )
    steps = np.diff(t)
    if (steps <= 0).any():
        i = int(np.flatnonzero(steps <= 0)[0])
        raise AlignmentError(
            f"{where}: timestamps are not strictly increasing (frame {i + 1} at {t[i + 1]:.6g} s "
            f"follows {t[i]:.6g} s; {int((steps <= 0).sum())} such steps); fix the series' "
            "timestamps"
        )


def _behavior_order(t: np.ndarray, where: str) -> np.ndarray | None:
    """``None`` when behaviour timestamps are sorted; else the stable sorting order, with
    a warning naming the series (the frame averaging needs times in order). NaN/inf
    timestamps are refused."""
    bad = ~np.isfinite(t)
    if bad.any():
        raise AlignmentError(
            f"{where}: {int(bad.sum())} timestamps are NaN/inf (e.g. sample "
            f"{int(np.flatnonzero(bad)[0])}); fix the series' timestamps or choose another "
            "behaviour series"
        )
    back = np.diff(t) < 0
    if not back.any():
        return None
    warnings.warn(
        f"{where}: timestamps are not in increasing order ({int(back.sum())} steps back, first "
        f"after sample {int(np.flatnonzero(back)[0])}); the samples were sorted by time",
        AlignmentWarning,
        stacklevel=4,
    )
    return np.argsort(t, kind="stable")


def read_session(
    src: NWBSource,
    *,
    rois: str | Sequence[str] | None = None,
    behavior: str | Sequence[str] | None = None,
) -> xr.Dataset:
    """Read ROI activity and frame-aligned behaviour from an open NWB source.

    See :func:`load_session` for the parameters and the returned Dataset.
    """
    label = src.label
    inv = inventory(src)
    roi_sel = _select_rois(inv, rois, label)
    beh_sel = _select_behavior(inv, behavior, label)

    # --- one frame time base over planes ----------------------------------------------
    series = [inv.objects[c["path"]] for c in roi_sel]
    n_frames = min(c["n_frames"] for c in roi_sel)
    if max(c["n_frames"] for c in roi_sel) != n_frames:
        counts = {c["path"]: c["n_frames"] for c in roi_sel}
        warnings.warn(
            f"{label}: planes have different frame counts {counts}; using the first {n_frames}",
            AlignmentWarning,
            stacklevel=3,
        )
    if n_frames < 2:
        raise AlignmentError(f"{label}: {roi_sel[0]['path']} has {n_frames} frame(s); need >= 2")
    plane_times = np.stack([_times(s, n_frames) for s in series])
    for c, t in zip(roi_sel, plane_times, strict=True):
        _check_frame_times(t, f"{label}: {c['path']}")
    steps = np.median(np.diff(plane_times, axis=1), axis=1)
    if np.any(np.abs(steps - steps[0]) > 0.01 * abs(steps[0])):
        raise AlignmentError(
            f"{label}: the selected ROI series have different frame rates "
            f"({', '.join(f'{1 / s:.4g} Hz' for s in steps)}); select series of one volume rate"
        )
    frame_times = plane_times.min(axis=0)

    # --- activity and ROI coordinates -------------------------------------------------
    blocks, coords = [], {k: [] for k in ("plane", "roi_id", "roi_row", "x", "y", "z", "offset")}
    for p, (c, s) in enumerate(zip(roi_sel, series, strict=True)):
        data = s.data
        shape = _shape(data)
        block = np.asarray(data[:n_frames], dtype=np.float32)
        if len(shape) == 1:
            block = block[:, None]
        blocks.append(block)
        table = s.rois.table
        rows = np.asarray(s.rois.data[:], dtype=np.int64)
        ids = np.asarray(table.id.data[:], dtype=np.int64)[rows]
        cen = roi_centroids(table, rows, plane_z=float(p))
        coords["plane"] += [table.name] * len(rows)
        coords["roi_id"].append(ids)
        coords["roi_row"].append(rows)
        coords["x"].append(cen[:, 0])
        coords["y"].append(cen[:, 1])
        coords["z"].append(cen[:, 2])
        coords["offset"].append(np.full(len(rows), float(np.mean(plane_times[p] - frame_times))))
        if block.shape[1] != len(rows):
            raise SourceError(
                f"{label}: {c['path']} has {block.shape[1]} columns but its 'rois' region "
                f"names {len(rows)} ROIs; the file is inconsistent"
            )
    activity = np.concatenate(blocks, axis=1)

    # --- behaviour onto frames --------------------------------------------------------
    edges = frame_edges(frame_times)
    beh_blocks, chan_series, chan_index, chan_unit = [], [], [], []
    for c in beh_sel:
        ts = inv.objects[c["path"]]
        n = c["n_samples"]
        order = None
        if ts.timestamps is not None:
            t_all = np.asarray(ts.timestamps[:], dtype=np.float64)
            order = _behavior_order(t_all, f"{label}: behaviour {c['path']}")
            if order is not None:
                t_all = t_all[order]
            i0, i1 = np.searchsorted(t_all, [edges[0], edges[-1]], side="left")
            t = t_all[i0:i1]
        else:
            i0, i1 = sample_range(
                edges, start=float(ts.starting_time or 0.0), rate=float(ts.rate), n_samples=n
            )
            t = float(ts.starting_time or 0.0) + np.arange(i0, i1) / float(ts.rate)
        if i1 <= i0:
            raise AlignmentError(
                f"{label}: behaviour {c['path']} ({c['start']:.3f}-{c['stop']:.3f} s) does not "
                f"overlap imaging ({edges[0]:.3f}-{edges[-1]:.3f} s); check the series' "
                "starting_time/timestamps or choose another behaviour series"
            )
        if order is None:
            x = np.asarray(ts.data[int(i0) : int(i1)], dtype=np.float64)
        else:  # unsorted timestamps: the samples follow their times
            x = np.asarray(ts.data[:], dtype=np.float64)[order[int(i0) : int(i1)]]
        x = x.reshape(int(i1 - i0), -1)
        mean, counts = frame_average(t, x, edges)
        beh_blocks.append(mean)
        chan_series += [c["name"]] * mean.shape[1]
        chan_index += list(range(mean.shape[1]))
        chan_unit += [c["unit"]] * mean.shape[1]
    beh = np.concatenate(beh_blocks, axis=1).astype(np.float32)
    empty = np.isnan(beh).all(axis=1)
    if empty.all():
        raise AlignmentError(
            f"{label}: no behaviour sample falls inside any imaging frame "
            f"({edges[0]:.3f}-{edges[-1]:.3f} s); choose another behaviour series"
        )
    if empty.any():
        where = np.flatnonzero(empty)
        warnings.warn(
            f"{label}: {int(empty.sum())} of {len(empty)} imaging frames have no behaviour "
            f"sample (NaN), e.g. frames {where[:5].tolist()}; they are left out of training "
            "and evaluation",
            AlignmentWarning,
            stacklevel=3,
        )

    n_rois = activity.shape[1]
    ds = xr.Dataset(
        data_vars={
            "activity": (("time", "roi"), activity),
            "behavior": (("time", "channel"), beh),
        },
        coords={
            "time": ("time", frame_times),
            "roi": ("roi", np.arange(n_rois)),
            "plane": ("roi", np.asarray(coords["plane"], dtype=object).astype(str)),
            "roi_id": ("roi", np.concatenate(coords["roi_id"])),
            "roi_row": ("roi", np.concatenate(coords["roi_row"])),
            "x": ("roi", np.concatenate(coords["x"])),
            "y": ("roi", np.concatenate(coords["y"])),
            "z": ("roi", np.concatenate(coords["z"])),
            "time_offset": ("roi", np.concatenate(coords["offset"])),
            "channel": ("channel", np.arange(beh.shape[1])),
            "series": ("channel", np.asarray(chan_series).astype(str)),
            "series_channel": ("channel", np.asarray(chan_index, dtype=np.int64)),
            "unit": ("channel", np.asarray(chan_unit).astype(str)),
        },
        attrs={
            "source": label,
            "roi_series": json.dumps([c["path"] for c in roi_sel]),
            "plane_segmentations": json.dumps([c["plane_segmentation"] for c in roi_sel]),
            "behavior_series": json.dumps([c["path"] for c in beh_sel]),
            "frame_rate": float(1.0 / np.median(np.diff(frame_times))),
            "frames_without_behavior": int(empty.sum()),
        },
    )
    ds["time"].attrs.update(units="s", long_name="imaging volume start time")
    ds["activity"].attrs.update(
        long_name="ΔF/F" if roi_sel[0]["container"] == "DfOverF" else "fluorescence",
        units=roi_sel[0]["unit"],
    )
    ds["behavior"].attrs.update(long_name="behaviour averaged per imaging frame")
    for k in ("x", "y"):
        ds[k].attrs["units"] = "pixels"
    ds["z"].attrs["description"] = "voxel z of the mask, or the plane's position in the stack"
    return ds


def load_session(
    source: str | os.PathLike[str] | NWBSource,
    *,
    rois: str | Sequence[str] | None = None,
    behavior: str | Sequence[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> xr.Dataset:
    """Load ROI activity and frame-aligned behaviour of an NWB session as xarray.

    Parameters
    ----------
    source
        Local path, URL or DANDI identifier (see :func:`~nwb_llmdecode.io.sources.open_nwb`),
        or an already open :class:`~nwb_llmdecode.io.sources.NWBSource`.
    rois
        ROI series to use, by object path or name, or a container (``"DfOverF"``) to take
        all its series. Several series (one per imaging plane) are concatenated along
        ``roi``. Default: the ΔF/F series (else fluorescence) of every plane.
    behavior
        Behaviour series by path or name (several are concatenated along ``channel``).
        Default: the only behaviour series; an error lists the choices if there are more.
    cache_dir
        Block cache of remote sources.

    Returns
    -------
    xarray.Dataset
        ``activity`` (time, roi) float32 and ``behavior`` (time, channel) float32 on the
        imaging frame times (``time``, seconds; the earliest plane of each volume). ROI
        coordinates: ``roi`` (global index), ``plane``, ``roi_id``, ``roi_row``, ``x``,
        ``y``, ``z`` (mask centroid), ``time_offset``; channel coordinates: ``series``,
        ``series_channel``, ``unit``. Behaviour is the mean of all samples inside each
        frame interval; NaN where a frame got none (``attrs['frames_without_behavior']``).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from nwb_llmdecode.synthetic import make_session
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "s.nwb"
    >>> _ = make_session(path, frames=60, rois=12, planes=2, n_drivers=2)
    >>> ds = load_session(path)
    >>> dict(ds.sizes)
    {'time': 60, 'roi': 12, 'channel': 3}
    """
    if isinstance(source, NWBSource):
        return read_session(source, rois=rois, behavior=behavior)
    with open_nwb(source, cache_dir=cache_dir) as src:
        return read_session(src, rois=rois, behavior=behavior)


# ----------------------------------------------------------------------------------------
# images and labels (for the viewer)
# ----------------------------------------------------------------------------------------


def load_images(src: NWBSource) -> dict[str, xr.DataArray]:
    """Summary images of the file, by object path, as (y, x) or (y, x, rgb) DataArrays."""
    inv = inventory(src)
    out = {}
    for c in inv.images:
        data = np.asarray(inv.objects[c["path"]].data[:])
        dims = ("y", "x") if data.ndim == 2 else ("y", "x", "rgb")[: data.ndim]
        out[c["path"]] = xr.DataArray(data, dims=dims, name=c["name"], attrs={"path": c["path"]})
    return out


def roi_label_volume(src: NWBSource, plane_segmentations: Sequence[str]) -> np.ndarray:
    """Render ROI masks into a (z, y, x) int32 label volume.

    Label ``k + 1`` is the ROI with global index ``k`` (planes concatenated in the order
    given, all rows of each PlaneSegmentation); 0 is background. Image and pixel masks
    fill the z slice of their plane; voxel masks use their own z.
    """
    inv = inventory(src)
    tables = [inv.objects[p] for p in plane_segmentations]
    shapes, zmax = [], len(tables)
    for ps in tables:
        col = _mask_column(ps)
        if col == "image_mask":
            shapes.append(_shape(ps["image_mask"].data)[-2:])
        elif col in ("pixel_mask", "voxel_mask"):
            rec, _ = _ragged(ps, col)
            shapes.append(
                (int(np.max(rec["y"])) + 1, int(np.max(rec["x"])) + 1) if len(rec) else (1, 1)
            )
            if col == "voxel_mask" and len(rec):
                zmax = max(zmax, int(np.max(rec["z"])) + 1)
        else:
            shapes.append((1, 1))
    h = max(s[0] for s in shapes)
    w = max(s[1] for s in shapes)
    vol = np.zeros((zmax, h, w), dtype=np.int32)
    offset = 0
    for z, ps in enumerate(tables):
        col = _mask_column(ps)
        n = len(ps.id)
        if col == "image_mask":
            data = ps["image_mask"].data
            for b in range(0, n, _MASK_BATCH):
                m = np.asarray(data[b : b + _MASK_BATCH])
                if m.ndim == 3:
                    m = m[:, None]
                for i in range(m.shape[0]):
                    zz, yy, xx = np.nonzero(m[i] > 0)
                    vol[zz + (z if m.shape[1] == 1 else 0), yy, xx] = offset + b + i + 1
        elif col in ("pixel_mask", "voxel_mask"):
            rec, ends = _ragged(ps, col)
            lab = np.repeat(np.arange(n), np.diff(np.concatenate([[0], ends])))
            zz = np.rint(rec["z"]).astype(int) if col == "voxel_mask" else np.full(len(rec), z)
            keep = rec["weight"] > 0
            vol[
                zz[keep], np.rint(rec["y"][keep]).astype(int), np.rint(rec["x"][keep]).astype(int)
            ] = offset + lab[keep] + 1
        offset += n
    return vol


def channel_labels(ds: xr.Dataset) -> list[str]:
    """``series[channel]`` name of each behaviour channel of a session Dataset.

    Examples
    --------
    >>> ds = xr.Dataset(coords={"series": ("channel", ["tail", "tail"]),
    ...                         "series_channel": ("channel", [0, 1])})
    >>> channel_labels(ds)
    ['tail[0]', 'tail[1]']
    """
    return [
        f"{s}[{int(c)}]"
        for s, c in zip(ds["series"].values, ds["series_channel"].values, strict=True)
    ]


def run_config(config_json: str) -> dict[str, Any]:
    """The run configuration stored in ``decoding_run.config_json`` as a dict.

    The column holds ``[option, value]`` pairs (nested for nested options).

    Examples
    --------
    >>> run_config('[["backbone", "minilm"], ["split", [0.7, 0.1, 0.2]]]')
    {'backbone': 'minilm', 'split': [0.7, 0.1, 0.2]}
    """

    def unpack(v: Any) -> Any:
        if (
            isinstance(v, list)
            and v
            and all(isinstance(p, list) and len(p) == 2 and isinstance(p[0], str) for p in v)
        ):
            return {k: unpack(x) for k, x in v}
        return v

    data = json.loads(config_json)
    return data if isinstance(data, dict) else unpack(data)
