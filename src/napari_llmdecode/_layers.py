"""NWB session or decoding results -> napari layer data, as pure functions.

Nothing here imports Qt or napari: the functions read an NWB source once into a
:class:`SessionData` (arrays in memory, file closed again) and turn it into napari
``LayerDataTuple``\\ s ``(data, kwargs, layer_type)``. Colouring ROIs by salience is a
look-up table indexed by the label volume (label ``k + 1`` is global ROI ``k``), so it is
one vectorised gather however many ROIs there are.

Global ROI index
    The PlaneSegmentation tables of the file, sorted by object path, concatenated with all
    their rows: ROI ``k`` is row ``k - offsets[p]`` of table ``p``. The label volume of
    :func:`nwb_llmdecode.io.read.roi_label_volume` uses the same numbering.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "ALL_OUTPUTS",
    "META_KEY",
    "OUTLINE_COLOUR",
    "SALIENCE_COLORMAP",
    "LayerDataTuple",
    "ResultsData",
    "SalienceSet",
    "SessionData",
    "colour_update",
    "compatible",
    "contrast_limits",
    "labels_layer",
    "layer_role",
    "nominal_pixel",
    "outline_layer",
    "outline_thickness",
    "outline_volume",
    "paint",
    "plane_short_names",
    "rank_labels",
    "rank_layer",
    "read_source",
    "roi_edges",
    "roi_on_ray",
    "roi_world_position",
    "salience_image_layer",
    "salience_title",
    "salient_rois",
    "session_layers",
    "short_name",
    "top_rows",
    "trace_data",
]

log = logging.getLogger(__name__)

LayerDataTuple = tuple[Any, dict[str, Any], str]

#: Key under which our layers keep ``{"role": ..., "data": SessionData}`` in ``metadata``.
META_KEY = "llmdecode"

_INFERNO = [
    [0.001, 0.000, 0.014],
    [0.129, 0.047, 0.291],
    [0.342, 0.062, 0.429],
    [0.541, 0.135, 0.415],
    [0.736, 0.216, 0.330],
    [0.894, 0.353, 0.194],
    [0.978, 0.558, 0.035],
    [0.975, 0.798, 0.206],
    [0.988, 0.998, 0.645],
]
_ALPHA = [0.0, 0.55, 0.85, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]

#: Inferno whose low end fades out, so weakly salient ROIs let the anatomy show through
#: and only salient ones are coloured.
#: A dict napari turns into a ``Colormap`` (``ensure_colormap``), so no napari import here.
SALIENCE_COLORMAP: dict[str, Any] = {
    "name": "llmdecode salience",
    "colors": [[*c, a] for c, a in zip(_INFERNO, _ALPHA, strict=True)],
    "interpolation": "linear",
}

#: Outline colour of the salient ROIs: cyan stands apart from grey anatomy and from the
#: black-red-yellow salience colours.
OUTLINE_COLOUR = "#00e5ff"

#: What the salience colouring shows by default (the mean over behaviour channels).
ALL_OUTPUTS = "mean over outputs"

# Activity kept in memory up to this many values (float32); above, traces are read per ROI.
MAX_ACTIVITY_VALUES = 64_000_000
#: Salient ROIs (outlined) have salience >= this fraction of the maximum ...
MIN_POINT_FRACTION = 0.2
#: ... and for at most this many ROIs (the strongest).
MAX_POINTS = 500
# Time-resolved salience kept in memory up to this many values.
MAX_TIMECOURSE_VALUES = 64_000_000

_IMAGE_PREFERENCE = ("mean", "meanimg", "average", "avg", "max", "maximg", "correlation", "vcorr")


# ----------------------------------------------------------------------------------------
# data read from one NWB file
# ----------------------------------------------------------------------------------------


@dataclass(eq=False, repr=False)
class SalienceSet:
    """One salience method of one results file, on the global ROIs of its session.

    Attributes
    ----------
    method
        Attribution method (``decoding_run.salience_method``).
    origin
        Name of the results file it was read from.
    salience
        (rois,) mean over outputs; NaN for ROIs the decoder did not use.
    by_output
        (rois, channels) salience per behaviour channel.
    rank
        (rois,) 1 = most salient as written in the file; 0 where not ranked.
    timecourse
        (time, rois) time-resolved salience (NaN outside the explained block), or ``None``.
    unit
        Unit of the salience values (that of ``salience_timecourse``; ``a.u.`` otherwise).
    """

    method: str
    origin: str
    salience: np.ndarray
    by_output: np.ndarray
    rank: np.ndarray
    timecourse: np.ndarray | None = None
    unit: str = "a.u."

    @property
    def label(self) -> str:
        return f"{self.method} ({self.origin})"

    def __repr__(self) -> str:
        return f"SalienceSet({self.label!r}, rois={len(self.salience)})"

    def values(self, channel: int | None = None, frame: int | None = None) -> np.ndarray:
        """Per-ROI values to colour by: overall, one output ``channel``, or one ``frame``.

        Examples
        --------
        >>> s = SalienceSet("ig", "f", np.array([1.0, 2.0]), np.array([[1, 3], [2, 0.5]]),
        ...                 np.array([2, 1]))
        >>> s.values(channel=1).tolist()
        [3.0, 0.5]
        """
        if frame is not None:
            if self.timecourse is None:
                raise ValueError(f"{self.label}: no time-resolved salience in the file")
            return np.asarray(self.timecourse[int(frame)], dtype=np.float32)
        if channel is None:
            return np.asarray(self.salience, dtype=np.float32)
        return np.asarray(self.by_output[:, int(channel)], dtype=np.float32)


@dataclass(eq=False, repr=False)
class ResultsData:
    """The ``processing/llmdecode`` module of a results file (small parts in memory)."""

    times: np.ndarray
    channels: list[str]
    units: list[str]
    targets: np.ndarray
    predictions: np.ndarray
    splits: list[tuple[str, float, float]]
    metrics: list[dict[str, Any]]
    run: dict[str, Any]
    salience: list[SalienceSet] = field(default_factory=list)


@dataclass(eq=False, repr=False)
class SessionData:
    """What the viewer needs from one NWB file, read once.

    Attributes
    ----------
    source
        Path, URL or DANDI identifier as given.
    name
        Short name used in layer names.
    plane_segmentations, plane_names
        Object paths and names of the ROI tables, in global-ROI order.
    offsets
        (planes + 1,) first global ROI of each table; ``offsets[-1]`` is the ROI count.
    labels
        (z, y, x) int32 label volume, label ``k + 1`` = global ROI ``k``.
    centroids
        (rois, 3) z, y, x centroid of each ROI in voxel units (NaN when not drawn).
    scale, translate
        Physical voxel size and origin, (z, y, x); ``unit`` names their unit.
    images
        Summary image kind -> (z, y, x) float32 volume, one slice per plane.
    activity
        (time, rois) ΔF/F (or fluorescence), NaN for ROIs without a series; ``None`` when too
        large to keep (then :func:`trace_data` reads single ROIs from the source).
    """

    source: str
    name: str
    plane_segmentations: list[str]
    plane_names: list[str]
    offsets: np.ndarray
    labels: np.ndarray
    centroids: np.ndarray
    scale: tuple[float, float, float]
    translate: tuple[float, float, float]
    unit: str | None
    images: dict[str, np.ndarray]
    activity: np.ndarray | None
    activity_times: np.ndarray | None
    activity_label: str
    activity_series: list[dict[str, Any]]
    roi_series: list[dict[str, Any]]
    behavior_series: list[dict[str, Any]]
    results: ResultsData | None = None
    identifier: str = ""
    roi_diameter: float = 5.0
    _edges: np.ndarray | None = field(default=None, repr=False)

    @property
    def n_rois(self) -> int:
        return int(self.offsets[-1])

    @property
    def edges(self) -> np.ndarray:
        """The label volume kept on each ROI's outline (:func:`roi_edges`), computed once."""
        if self._edges is None:
            self._edges = roi_edges(self.labels, outline_thickness(self.roi_diameter))
        return self._edges

    @property
    def axis_labels(self) -> tuple[str, str, str]:
        """``plane, y, x`` when each z slice is one imaging plane, else ``z, y, x``."""
        first = "plane" if self.labels.shape[0] <= len(self.plane_names) else "z"
        return (first, "y", "x")

    @property
    def plane_short_names(self) -> list[str]:
        """Plane names without what they all share (see :func:`plane_short_names`)."""
        return plane_short_names(self.plane_names)

    def __repr__(self) -> str:
        res = self.results is not None
        return f"SessionData({self.source!r}, rois={self.n_rois}, results={res})"

    @property
    def roi_plane(self) -> np.ndarray:
        """(rois,) index of each ROI's table."""
        return np.repeat(np.arange(len(self.plane_names)), np.diff(self.offsets))

    @property
    def roi_signature(self) -> tuple[tuple[str, int], ...]:
        """(table name, rows) per table: results with equal signatures share ROIs."""
        return tuple(
            (n, int(c)) for n, c in zip(self.plane_names, np.diff(self.offsets), strict=True)
        )

    def roi_name(self, roi: int) -> str:
        p = int(self.roi_plane[roi])
        return f"{self.plane_names[p]}[{roi - int(self.offsets[p])}]"


def short_name(source: str | os.PathLike[str]) -> str:
    """Short display name of a source: the file name without ``.nwb``.

    Examples
    --------
    >>> short_name("/data/sub-1_ses-2_desc-llmdecode.nwb")
    'sub-1_ses-2_desc-llmdecode'
    >>> short_name("https://example.org/files/x.nwb?download=1")
    'x'
    """
    s = str(source).split("?")[0].rstrip("/")
    name = re.split(r"[/\\]", s)[-1] or s
    return name[:-4] if name.lower().endswith(".nwb") else name


def plane_short_names(names: Sequence[str]) -> list[str]:
    """Short plane names for tables: the names without the prefix they all share.

    Examples
    --------
    >>> plane_short_names(["PlaneSegmentation_plane0", "PlaneSegmentation_plane10"])
    ['plane0', 'plane10']
    >>> plane_short_names(["PlaneSegmentation"])
    ['PlaneSegmentation']
    """
    names = [str(n) for n in names]
    if len(names) < 2:
        return names
    first, last = min(names), max(names)
    n = next((i for i, (a, b) in enumerate(zip(first, last, strict=False)) if a != b), len(first))
    prefix = first[:n]
    # cut at a separator, so that "plane1" / "plane2" keep their word
    cut = max(prefix.rfind(c) for c in "_-. /") + 1
    short = [n[cut:] for n in names]
    return short if all(short) and len(set(short)) == len(short) else names


def _natural_key(s: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def _tokens(s: str) -> set[str]:
    return {t for t in re.split(r"[^0-9a-zA-Z]+|_", s.lower()) if t}


# ----------------------------------------------------------------------------------------
# reading
# ----------------------------------------------------------------------------------------


def read_source(
    source: str | os.PathLike[str],
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    max_activity_values: int = MAX_ACTIVITY_VALUES,
) -> SessionData:
    """Read everything the viewer shows from an NWB session or results file.

    Parameters
    ----------
    source
        Local path, URL or DANDI identifier (see :func:`nwb_llmdecode.io.sources.open_nwb`).
    cache_dir
        Block cache of remote sources.
    max_activity_values
        Keep ROI activity in memory up to this many values; larger sessions read single
        traces on demand.

    Returns
    -------
    SessionData

    Raises
    ------
    nwb_llmdecode.errors.SourceError
        When the source cannot be opened as NWB, or has no ROI table.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from nwb_llmdecode.synthetic import make_session
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "s.nwb"
    >>> _ = make_session(p, frames=30, rois=6, planes=2, n_drivers=2)
    >>> data = read_source(p)
    >>> data.labels.shape[0], data.n_rois, sorted(data.images)
    (2, 6, ['correlation', 'mean'])
    """
    from nwb_llmdecode.io.sources import open_nwb

    with open_nwb(source, cache_dir=cache_dir) as src:
        return _read_open(src, str(source), max_activity_values)


def _read_open(src: Any, source: str, max_activity_values: int) -> SessionData:
    from nwb_llmdecode.errors import SourceError
    from nwb_llmdecode.io.read import RESULTS_MODULE, inventory, roi_label_volume

    inv = inventory(src)
    segs = sorted(inv.plane_segmentations, key=lambda c: _natural_key(c["path"]))
    if not segs:
        raise SourceError(
            f"{src.label}: no PlaneSegmentation (ROI table) in the file; the viewer draws "
            "segmented ROIs, so open a file with ophys segmentation"
        )
    ps_paths = [c["path"] for c in segs]
    tables = [inv.objects[p] for p in ps_paths]
    counts = np.array([c["n_rois"] for c in segs], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)])

    labels = roi_label_volume(src, ps_paths)
    images = _plane_images(inv, tables)
    shape = _common_shape(labels, images)
    labels = _pad(labels, shape)
    images = {k: _pad(v, shape) for k, v in images.items()}
    centroids = _mask_centroids(tables, offsets, labels)
    scale, translate, unit = _geometry(tables, labels.shape[0])

    activity, times, act_label, act_series = _read_activity(
        inv, ps_paths, offsets, max_activity_values
    )
    results = None
    if RESULTS_MODULE in src.nwbfile.processing:
        results = _read_results(src, tables, offsets, short_name(source))
    return SessionData(
        source=source,
        name=short_name(source),
        plane_segmentations=ps_paths,
        plane_names=[t.name for t in tables],
        offsets=offsets,
        labels=labels,
        centroids=centroids,
        scale=scale,
        translate=translate,
        unit=unit,
        images=images,
        activity=activity,
        activity_times=times,
        activity_label=act_label,
        activity_series=act_series,
        roi_series=list(inv.roi_series),
        behavior_series=list(inv.behavior_series),
        results=results,
        identifier=str(getattr(src.nwbfile, "identifier", "")),
        roi_diameter=_roi_diameter(labels, int(offsets[-1])),
    )


def _common_shape(labels: np.ndarray, images: dict[str, np.ndarray]) -> tuple[int, int, int]:
    shapes = [labels.shape] + [v.shape for v in images.values()]
    return (
        max(s[0] for s in shapes),
        max(s[1] for s in shapes),
        max(s[2] for s in shapes),
    )


def _pad(a: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    if a.shape == shape:
        return a
    out = np.zeros(shape, dtype=a.dtype)
    out[: a.shape[0], : a.shape[1], : a.shape[2]] = a
    return out


def _plane_images(inv: Any, tables: Sequence[Any]) -> dict[str, np.ndarray]:
    """Summary images matched to planes by name, stacked per kind into (z, y, x)."""
    names = [t.name + " " + t.imaging_plane.name for t in tables]
    toks = [_tokens(n) for n in names]
    common = set.intersection(*toks) if toks else set()
    distinct = [t - common for t in toks]
    per_kind: dict[str, dict[int, np.ndarray]] = {}
    for c in inv.images:
        if len(c["shape"]) != 2:
            continue  # RGB(A) summaries are skipped
        path_toks = _tokens(c["path"].split("/", 2)[-1])
        if len(tables) == 1:
            plane = 0
        else:
            hits = [p for p, d in enumerate(distinct) if d and d <= path_toks]
            if len(hits) != 1:
                continue
            plane = hits[0]
        name = c["name"]
        kind_toks = [t for t in re.split(r"[^0-9a-zA-Z]+|_", name) if t]
        kind = "_".join(t for t in kind_toks if t.lower() not in distinct[plane]) or name
        per_kind.setdefault(kind, {})[plane] = np.asarray(
            inv.objects[c["path"]].data[:], dtype=np.float32
        )
    out = {}
    for kind, planes in per_kind.items():
        h = max(a.shape[0] for a in planes.values())
        w = max(a.shape[1] for a in planes.values())
        vol = np.zeros((len(tables), h, w), dtype=np.float32)
        for p, a in planes.items():
            vol[p, : a.shape[0], : a.shape[1]] = a
        out[kind] = vol

    def pref(k: str) -> tuple[int, str]:
        low = k.lower()
        return (_IMAGE_PREFERENCE.index(low) if low in _IMAGE_PREFERENCE else 99, low)

    return {k: out[k] for k in sorted(out, key=pref)}


def _mask_centroids(tables: Sequence[Any], offsets: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(n_rois, 3) z, y, x weighted mask centroids (the library's, as in ``read_session``).

    ROIs hidden under others in the label volume keep their own centroid. Falls back to
    the centroids of the drawn label voxels if the masks cannot be read that way.
    """
    try:
        from nwb_llmdecode.io.read import roi_centroids

        out = np.full((int(offsets[-1]), 3), np.nan)
        for p, ps in enumerate(tables):
            xyz = roi_centroids(ps, plane_z=float(p))
            out[offsets[p] : offsets[p + 1]] = xyz[:, ::-1]
        return out
    except Exception:  # lenient on read: the drawn voxels give centroids too
        log.warning("mask centroids unavailable; using the label volume", exc_info=True)
        return _label_centroids(labels, int(offsets[-1]))


def _label_centroids(labels: np.ndarray, n_rois: int) -> np.ndarray:
    """(n_rois, 3) z, y, x centroids of each label's drawn voxels (NaN if none)."""
    flat = labels.ravel()
    nz = np.flatnonzero(flat)
    lab = flat[nz]
    zyx = np.unravel_index(nz, labels.shape)
    count = np.bincount(lab, minlength=n_rois + 1)[1 : n_rois + 1].astype(np.float64)
    out = np.full((n_rois, 3), np.nan)
    seen = count > 0
    for k in range(3):
        s = np.bincount(lab, weights=zyx[k], minlength=n_rois + 1)[1 : n_rois + 1]
        out[seen, k] = s[seen] / count[seen]
    return out


def _geometry(
    tables: Sequence[Any], n_z: int
) -> tuple[tuple[float, float, float], tuple[float, float, float], str | None]:
    """Voxel size and origin (z, y, x) from the imaging planes' grid spacing and origins."""
    grids, origins, unit = [], [], None
    for t in tables:
        plane = t.imaging_plane
        g = getattr(plane, "grid_spacing", None)
        o = getattr(plane, "origin_coords", None)
        grids.append(None if g is None else [float(v) for v in g[:]])
        origins.append(None if o is None else [float(v) for v in o[:]])
        unit = unit or getattr(plane, "grid_spacing_unit", None)
    g0 = next((g for g in grids if g), None)
    dx = dy = 1.0
    if g0:
        dx = g0[0] if g0[0] > 0 else 1.0
        dy = g0[1] if len(g0) > 1 and g0[1] > 0 else dx
    dz = None
    if g0 and len(g0) > 2 and g0[2] > 0 and n_z > len(tables):
        dz = g0[2]  # voxel masks: z is a voxel index
    zs = [o[2] for o in origins if o and len(o) > 2]
    if dz is None and len(zs) == len(tables) > 1:
        steps = np.abs(np.diff(zs))
        if np.all(steps > 0):
            dz = float(np.median(steps))
            if np.ptp(steps) > 0.01 * dz:
                log.info("planes are unevenly spaced (%s); using the median step", steps)
    if dz is None:
        dz = g0[2] if g0 and len(g0) > 2 and g0[2] > 0 else max(dx, dy)
    o0 = origins[0]
    translate = (0.0, 0.0, 0.0)
    if o0 and len(o0) >= 2:
        translate = (float(o0[2]) if len(o0) > 2 else 0.0, float(o0[1]), float(o0[0]))
    return (float(dz), float(dy), float(dx)), translate, unit


def _read_activity(
    inv: Any, ps_paths: list[str], offsets: np.ndarray, max_values: int
) -> tuple[np.ndarray | None, np.ndarray | None, str, list[dict[str, Any]]]:
    """ΔF/F (else fluorescence) of every table on the global ROIs."""
    chosen = []
    for p, ps_path in enumerate(ps_paths):
        cands = [c for c in inv.roi_series if c["plane_segmentation"] == ps_path]
        for kind in ("DfOverF", "Fluorescence", None):
            pick = [c for c in cands if kind is None or c["container"] == kind]
            if pick:
                chosen.append((p, sorted(pick, key=lambda c: _natural_key(c["path"]))[0]))
                break
    if not chosen:
        return None, None, "activity", []
    label = "ΔF/F" if chosen[0][1]["container"] == "DfOverF" else "fluorescence"
    n_frames = min(c["n_frames"] for _, c in chosen)
    first = inv.objects[chosen[0][1]["path"]]
    times = np.asarray(first.get_timestamps()[:n_frames], dtype=np.float64)
    series = []
    for p, c in chosen:
        s = inv.objects[c["path"]]
        rows = np.asarray(s.rois.data[:], dtype=np.int64)
        series.append({"path": c["path"], "roi": (offsets[p] + rows).tolist()})
    n_rois = int(offsets[-1])
    if n_frames * n_rois > max_values:
        return None, times, label, series
    activity = np.full((n_frames, n_rois), np.nan, dtype=np.float32)
    for info in series:
        block = np.asarray(inv.objects[info["path"]].data[:n_frames], dtype=np.float32)
        activity[:, info["roi"]] = block.reshape(n_frames, -1)
    return activity, times, label, series


def _read_results(src: Any, tables: list[Any], offsets: np.ndarray, origin: str) -> ResultsData:
    """The results module of an open source, through ``nwb_llmdecode.read_results`` (the
    one parser of our output), on the viewer's global ROIs (all tables of the file)."""
    from nwb_llmdecode.io.results import results_from_source

    res = results_from_source(src, session=False, max_timecourse_values=MAX_TIMECOURSE_VALUES)
    times = np.asarray(res["time"].values, dtype=np.float64)
    channels = [
        f"{s}[{int(c)}]"
        for s, c in zip(res["series"].values, res["series_channel"].values, strict=True)
    ]
    units = [str(u) for u in res["unit"].values]

    splits: list[tuple[str, float, float]] = []
    if "split_start_time" in res:
        splits = [
            (str(n), float(a), float(b))
            for n, a, b in zip(
                res["split"].values,
                res["split_start_time"].values,
                res["split_stop_time"].values,
                strict=True,
            )
        ]
    metrics: list[dict[str, Any]] = []
    if "r2" in res:
        for i, split in enumerate(res["split"].values):
            for c in range(res.sizes["channel"]):
                if not np.isfinite(res["r2"].values[i, c]) and not res["n_frames"].values[i, c]:
                    continue  # no row of this split and channel in the file
                metrics.append(
                    {
                        "behavior": str(res["series"].values[c]),
                        "channel": int(res["series_channel"].values[c]),
                        "split": str(split),
                        **{
                            m: res[m].values[i, c].item()
                            for m in ("rmse", "r2", "pearson", "n_frames")
                        },
                    }
                )
    run = dict(res.attrs.get("run", {}))

    # --- salience on the global ROIs ---------------------------------------------------
    sets: list[SalienceSet] = []
    if "salience" in res:
        n_rois = int(offsets[-1])
        plane_of = {t.name: p for p, t in enumerate(tables)}
        where = np.array(
            [
                offsets[plane_of[str(pl)]] + int(r) if str(pl) in plane_of else -1
                for pl, r in zip(res["plane"].values, res["roi_row"].values, strict=True)
            ],
            dtype=np.int64,
        )
        if (where < 0).any():
            warnings.warn(
                f"{origin}: salience of {int((where < 0).sum())} ROI(s) refers to a ROI table "
                "that is not in the file; skipped",
                UserWarning,
                stacklevel=2,
            )
        ok = where >= 0
        sal = np.full(n_rois, np.nan, dtype=np.float32)
        sal[where[ok]] = res["salience"].values[ok]
        by_out = np.full((n_rois, len(channels)), np.nan, dtype=np.float32)
        by_out[where[ok]] = res["salience_by_output"].values[ok]
        rank = np.zeros(n_rois, dtype=np.int64)
        rank[where[ok]] = res["rank"].values[ok]
        course = None
        if "salience_timecourse" in res:
            course = np.full((len(times), n_rois), np.nan, dtype=np.float32)
            course[:, where[ok]] = res["salience_timecourse"].values[:, ok]
        method = str(run.get("salience_method") or "salience")
        if method in ("none", ""):
            method = "salience"
        sets.append(SalienceSet(method, origin, sal, by_out, rank, course))
    return ResultsData(
        times=times,
        channels=channels,
        units=units,
        targets=np.asarray(res["targets"].values, dtype=np.float32),
        predictions=np.asarray(res["predictions"].values, dtype=np.float32),
        splits=splits,
        metrics=metrics,
        run=run,
        salience=sets,
    )


# ----------------------------------------------------------------------------------------
# colouring
# ----------------------------------------------------------------------------------------


def paint(labels: np.ndarray, values: np.ndarray, *, background: float = np.nan) -> np.ndarray:
    """Paint per-ROI ``values`` into the label volume (one gather through a look-up table).

    Examples
    --------
    >>> paint(np.array([[0, 1], [2, 2]]), np.array([0.5, 2.0])).tolist()
    [[nan, 0.5], [2.0, 2.0]]
    """
    lut = np.empty(len(values) + 1, dtype=np.float32)
    lut[0] = background
    lut[1:] = values
    return lut[labels]


def contrast_limits(values: np.ndarray) -> tuple[float, float]:
    """``(0, max)`` of the finite values, ``(0, 1)`` when there are none.

    Examples
    --------
    >>> contrast_limits(np.array([np.nan, 0.2, 0.8]))
    (0.0, 0.8)
    """
    finite = values[np.isfinite(values)]
    hi = float(finite.max()) if finite.size else 0.0
    return (0.0, hi if hi > 0 else 1.0)


def _roi_diameter(labels: np.ndarray, n_rois: int) -> float:
    """Median equivalent diameter of the drawn ROIs, in voxels."""
    counts = np.bincount(labels.ravel(), minlength=n_rois + 1)[1:]
    counts = counts[counts > 0]
    area = float(np.median(counts)) if counts.size else 25.0
    return float(2.0 * np.sqrt(area / np.pi))


def outline_thickness(diameter: float) -> int:
    """Outline width in pixels: 1 for small ROIs, 2 from 10 px across, 3 from 30 px.

    Examples
    --------
    >>> [outline_thickness(d) for d in (5.0, 17.0, 40.0)]
    [1, 2, 3]
    """
    return 1 if diameter < 10 else 2 if diameter < 30 else 3


def roi_edges(labels: np.ndarray, thickness: int = 1) -> np.ndarray:
    """The label volume kept only on each ROI's in-plane outline (inner edge, ``thickness``
    pixels wide); 0 inside the ROIs and outside them.

    A pixel is on the outline of its ROI when a pixel within ``thickness`` of it in the
    same plane (z slice) has another label, or lies outside the image. Outlines are drawn
    per plane, so in 3D they sit at each ROI's plane depth.

    Examples
    --------
    >>> lab = np.zeros((1, 5, 5), dtype=np.int32)
    >>> lab[0, 1:4, 1:4] = 3
    >>> roi_edges(lab)[0].tolist()[1:4]
    [[0, 3, 3, 3, 0], [0, 3, 0, 3, 0], [0, 3, 3, 3, 0]]
    """
    from scipy import ndimage

    k = 2 * int(max(1, thickness)) + 1
    size = (1, k, k) if labels.ndim == 3 else (k, k)
    lo = ndimage.minimum_filter(labels, size=size, mode="constant", cval=0)
    hi = ndimage.maximum_filter(labels, size=size, mode="constant", cval=0)
    edge = (labels > 0) & ((lo != labels) | (hi != labels))
    return np.where(edge, labels, 0).astype(labels.dtype, copy=False)


def outline_volume(edges: np.ndarray, rois: np.ndarray, n_rois: int) -> np.ndarray:
    """Outlines of the chosen ``rois`` only, from :func:`roi_edges` (one gather).

    Examples
    --------
    >>> e = np.array([[0, 1, 2, 2]], dtype=np.int32)
    >>> outline_volume(e, np.array([1]), 2).tolist()
    [[0, 0, 2, 2]]
    """
    keep = np.zeros(n_rois + 1, dtype=bool)
    keep[np.asarray(rois, dtype=np.int64) + 1] = True
    return np.where(keep[edges], edges, 0).astype(edges.dtype, copy=False)


def _legend_text(values: np.ndarray, top: int = 10) -> np.ndarray:
    from nwb_llmdecode.salience import salience_order

    text = np.full(len(values), "", dtype=object)
    v = np.nan_to_num(values, nan=-np.inf)
    order = salience_order(v)[:top]
    order = order[np.isfinite(v[order]) & (v[order] > 0)]
    for r, i in enumerate(order, start=1):
        text[i] = f"#{r} {values[i]:.3g}"
    return text


def salient_rois(data: SessionData, values: np.ndarray, vmax: float) -> np.ndarray:
    """Global indices (ascending) of the salient ROIs: value >= 20 % of ``vmax``, at most
    the :data:`MAX_POINTS` strongest (so the cost does not grow with the ROI count).

    Examples
    --------
    >>> d = type("D", (), {"centroids": np.zeros((4, 3))})()
    >>> salient_rois(d, np.array([0.1, 1.0, np.nan, 0.5]), 1.0).tolist()
    [1, 3]
    """
    v = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(v) & np.isfinite(data.centroids).all(axis=1)
    keep = np.flatnonzero(finite & (v > 0) & (v >= MIN_POINT_FRACTION * vmax))
    if len(keep) > MAX_POINTS:
        from nwb_llmdecode.salience import salience_order

        keep = np.sort(keep[salience_order(v[keep])[:MAX_POINTS]])
    return keep


#: Directions of the dark halo drawn behind each rank label (8 neighbours).
_HALO = np.array([(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx], dtype=float)
#: Width and height of a text character relative to the text size (vispy draws the size
#: in points, about 4/3 pixel each; DejaVu Sans digits are about 0.6 em wide).
_CHAR_WIDTH = 0.85
_CHAR_HEIGHT = 1.9


#: Font size of the rank labels (points; fixed on screen, whatever the zoom).
TEXT_POINTS = 10.0


def nominal_pixel(data: SessionData) -> float:
    """World units per screen pixel when the whole field of view fills about 800 pixels:
    the rank labels' layout before napari has drawn them (then they follow the zoom)."""
    extent = np.asarray(data.labels.shape[1:], dtype=float) * np.asarray(data.scale[1:])
    return float(max(extent.max() / 800.0, 1e-9))


def _place_labels(
    centres: np.ndarray, widths: np.ndarray, height: float, radius: float, bounds: np.ndarray
) -> np.ndarray:
    """Lower-left corners (y, x; world, y down) of text boxes beside each centre, chosen in
    order among eight places around it so that boxes overlap neither each other nor the
    image border where that can be helped (greedy: the first label gets the best place)."""
    boxes: list[tuple[float, float, float, float]] = []
    out = np.zeros((len(centres), 2))
    for i, ((cy, cx), w) in enumerate(zip(centres, widths, strict=True)):
        r = radius
        cands = [
            (cy - 0.3 * r, cx + r),  # right, slightly above
            (cy + r + height, cx + 0.3 * r),  # below right
            (cy - 0.3 * r, cx - r - w),  # left
            (cy - r, cx + 0.3 * r),  # above right
            (cy + r + height, cx - w),  # below left
            (cy - r, cx - w),  # above left
            (cy + 0.5 * height, cx + r),  # right, centred
            (cy + 0.5 * height, cx - r - w),  # left, centred
        ]

        def cost(c: tuple[float, float], w: float = w) -> float:
            y0, x0 = c
            box = (y0 - height, y0, x0, x0 + w)
            over = sum(
                max(0.0, min(box[1], b[1]) - max(box[0], b[0]))
                * max(0.0, min(box[3], b[3]) - max(box[2], b[2]))
                for b in boxes
            )
            outside = (
                max(0.0, bounds[0] - box[0])
                + max(0.0, box[1] - bounds[1])
                + max(0.0, bounds[2] - box[2])
                + max(0.0, box[3] - bounds[3])
            )
            return over + outside * height

        best = min(range(len(cands)), key=lambda k: (cost(cands[k]) > 1e-9, cost(cands[k]), k))
        y0, x0 = cands[best]
        boxes.append((y0 - height, y0, x0, x0 + w))
        out[i] = (y0, x0)
    return out


def rank_labels(
    data: SessionData, values: np.ndarray, *, pixel: float | None = None
) -> tuple[np.ndarray, dict[str, Any]]:
    """Points and features of the rank labels (``#rank value``) of the ten most salient
    ROIs, in white over a dark halo so that they read on any colour.

    The text has a fixed size on screen (:data:`TEXT_POINTS`), so the layout depends on
    the zoom: ``pixel`` is the size of a screen pixel in world units (napari's
    ``layer.scale_factor``; :func:`nominal_pixel` when not given). Each label's point is
    the centre of its text, placed beside its ROI where it covers no other label (see
    :func:`_place_labels`). The halo is eight dark copies one pixel off, drawn before
    the white copy. Returns ``(coords, features)``; features ``roi``, ``label`` and
    ``text_colour``.

    Examples
    --------
    >>> d = type("D", (), {})()
    >>> d.centroids = np.full((3, 3), 50.0)
    >>> d.labels, d.scale = np.zeros((1, 120, 120), np.int32), (1.0, 1.0, 1.0)
    >>> d.translate, d.roi_diameter = (0.0, 0.0, 0.0), 5.0
    >>> c, f = rank_labels(d, np.array([0.5, 2.0, 0.0]))
    >>> len(c), f["label"][-2:].tolist(), f["text_colour"][-1]
    (18, ['#1 2', '#2 0.5'], 'white')
    """
    text = _legend_text(np.asarray(values, dtype=np.float64))
    ok = np.isfinite(data.centroids).all(axis=1)
    rois = np.flatnonzero((text != "") & ok)
    rank = np.array([int(str(t)[1:].split()[0]) for t in text[rois]], dtype=np.int64)
    rois = rois[np.argsort(rank, kind="stable")]
    strings = text[rois].astype(str)
    if not len(rois):
        none = np.zeros(0, dtype=object)
        return np.zeros((0, 3)), {"roi": np.zeros(0, np.int64), "label": none, "text_colour": none}
    scale = np.asarray(data.scale, dtype=float)
    px = float(pixel) if pixel and np.isfinite(pixel) and pixel > 0 else nominal_pixel(data)
    size = TEXT_POINTS * px  # the text size in world units at this zoom
    world = data.centroids[rois] * scale
    widths = np.array([_CHAR_WIDTH * size * len(t) for t in strings])
    bounds = np.array([0.0, data.labels.shape[1] * scale[1], 0.0, data.labels.shape[2] * scale[2]])
    radius = 0.6 * data.roi_diameter * float(scale[1:].min())
    height = _CHAR_HEIGHT * size
    corners = _place_labels(world[:, 1:], widths, height, radius, bounds)
    centres = corners + np.column_stack([np.full(len(rois), -height / 2), widths / 2])
    base = np.column_stack([data.centroids[rois, 0], centres / scale[1:]])
    step = 1.2 * px / scale[1:]
    halo = [base + np.r_[0.0, d * step] for d in _HALO]
    coords = np.concatenate([*halo, base])
    feats = {
        "roi": np.tile(rois, len(_HALO) + 1),
        "label": np.tile(strings, len(_HALO) + 1),
        "text_colour": np.array(
            ["#000000"] * (len(rois) * len(_HALO)) + ["white"] * len(rois), dtype=object
        ),
    }
    return coords, feats


def colour_update(
    data: SessionData,
    values: np.ndarray,
    *,
    limits: tuple[float, float] | None = None,
    pixel: float | None = None,
) -> dict[str, Any]:
    """Everything that changes when the colouring changes, computed at once.

    Returns a dict with ``volume`` (salience painted into the labels), ``contrast_limits``,
    ``rois`` (the salient ROIs, see :func:`salient_rois`), ``outlines`` (the outline
    volume of those ROIs) with ``outline_features``, and for the rank labels ``points``
    and ``features`` (see :func:`rank_labels`, laid out for ``pixel``). The Qt side only
    assigns them.
    """
    lim = limits or contrast_limits(values)
    rois = salient_rois(data, values, lim[1])
    coords, feats = rank_labels(data, values, pixel=pixel)
    return {
        "volume": paint(data.labels, values),
        "contrast_limits": lim,
        "rois": rois,
        "outlines": outline_volume(data.edges, rois, data.n_rois),
        "outline_features": _outline_features(data, values),
        "points": coords,
        "features": feats,
    }


def _outline_features(data: SessionData, values: np.ndarray) -> dict[str, Any]:
    """Hover features of the outline layer: ROI, salience and rank under the colouring."""
    from nwb_llmdecode.salience import salience_order

    n = data.n_rois
    v = np.asarray(values, dtype=np.float64)
    rank = np.zeros(n, dtype=np.int64)
    order = salience_order(np.nan_to_num(v, nan=-np.inf))
    order = order[np.isfinite(v[order])]
    rank[order] = np.arange(1, len(order) + 1)
    return {
        "index": np.arange(n + 1),
        "roi": np.concatenate([[-1], np.arange(n)]),
        "salience": np.concatenate([[np.nan], v]).astype(np.float32),
        "rank": np.concatenate([[0], rank]),
    }


# ----------------------------------------------------------------------------------------
# layer data tuples
# ----------------------------------------------------------------------------------------


def _meta(data: SessionData, role: str, **extra: Any) -> dict[str, Any]:
    return {META_KEY: {"role": role, "data": data, **extra}}


def layer_role(metadata: dict[str, Any]) -> tuple[str | None, SessionData | None]:
    """``(role, SessionData)`` of one of our layers from its metadata, else ``(None, None)``."""
    info = metadata.get(META_KEY) if isinstance(metadata, dict) else None
    if not isinstance(info, dict):
        return None, None
    return info.get("role"), info.get("data")


def _geo(data: SessionData) -> dict[str, Any]:
    return {"scale": data.scale, "translate": data.translate, "axis_labels": data.axis_labels}


def _robust_limits(vol: np.ndarray) -> tuple[float, float]:
    finite = vol[np.isfinite(vol)]
    if finite.size == 0:
        return (0.0, 1.0)
    sample = finite[:: max(1, finite.size // 200_000)]
    lo, hi = np.percentile(sample, [1.0, 99.7])
    return (float(lo), float(hi if hi > lo else lo + 1.0))


def labels_layer(data: SessionData, *, salience: np.ndarray | None = None) -> LayerDataTuple:
    """Labels layer of all ROIs; hovering shows ROI, table and row in the status bar.

    Shown for sessions and results files alike. Under the salience colouring of a results
    file (``salience`` given) every ROI is drawn by its outline (:attr:`SessionData.edges`),
    so that the salience fill and the anatomy stay visible.
    """
    n = data.n_rois
    features: dict[str, Any] = {
        "index": np.arange(n + 1),
        "roi": np.concatenate([[-1], np.arange(n)]),
        "table": np.concatenate([[""], np.asarray(data.plane_names, dtype=object)[data.roi_plane]]),
        "row": np.concatenate([[-1], np.arange(n) - data.offsets[data.roi_plane]]),
    }
    if salience is not None:
        features["salience"] = np.concatenate([[np.nan], salience]).astype(np.float32)
    kwargs = {
        "name": f"{data.name}: ROIs" + ("" if salience is None else " (outlines)"),
        "opacity": 0.5 if salience is None else 0.4,
        "features": features,
        "metadata": _meta(data, "labels"),
        **_geo(data),
    }
    return (data.labels if salience is None else data.edges, kwargs, "labels")


def salience_title(sset: SalienceSet, what: str = ALL_OUTPUTS, *, frame: int | None = None) -> str:
    """Name of the salience layer, shown as the title of its colourbar: the method, the
    unit, and what is coloured (nothing more for the mean over outputs; one channel; or
    one frame, whose colour scale is fixed over all frames). Short, to fit beside the
    colourbar, so without the file name (the explorer shows one file's salience at a
    time).

    Examples
    --------
    >>> s = SalienceSet("ig", "f", np.zeros(1), np.zeros((1, 1)), np.zeros(1))
    >>> salience_title(s)
    'ig salience (a.u.)'
    >>> salience_title(s, "tail[1]")
    'ig salience (a.u.), tail[1]'
    >>> salience_title(s, frame=3)
    'ig salience (a.u.), frame 3, one scale for all frames'
    """
    head = f"{sset.method} salience ({sset.unit})"
    if frame is not None:
        return f"{head}, frame {frame}, one scale for all frames"
    return head if what == ALL_OUTPUTS else f"{head}, {what}"


def salience_image_layer(
    data: SessionData, sset: SalienceSet, values: np.ndarray | None = None
) -> LayerDataTuple:
    """Image of salience painted into the ROI masks, continuous colormap, NaN outside."""
    v = sset.values() if values is None else values
    return (
        paint(data.labels, v),
        {
            "name": salience_title(sset),
            "colormap": SALIENCE_COLORMAP,
            "contrast_limits": contrast_limits(v),
            "blending": "translucent",
            "metadata": _meta(data, "salience", method=sset.method),
            **_geo(data),
        },
        "image",
    )


def outline_layer(
    data: SessionData, sset: SalienceSet, values: np.ndarray | None = None
) -> LayerDataTuple:
    """Outlines of the salient ROIs (their own mask's edge), one colour, at any zoom.

    Labels layer whose voxels are the outline pixels of the salient ROIs (see
    :func:`salient_rois`); hovering an outline shows the ROI, its salience and rank.
    """
    v = sset.values() if values is None else values
    rois = salient_rois(data, v, contrast_limits(v)[1])
    return (
        outline_volume(data.edges, rois, data.n_rois),
        {
            "name": f"{data.name}: salient ROIs",
            "colormap": {None: OUTLINE_COLOUR, 0: "transparent"},
            "features": _outline_features(data, v),
            "opacity": 1.0,
            "blending": "translucent",
            "metadata": _meta(data, "outlines", method=sset.method),
            **_geo(data),
        },
        "labels",
    )


def rank_layer(
    data: SessionData, sset: SalienceSet, values: np.ndarray | None = None
) -> LayerDataTuple:
    """Rank and value of the ten most salient ROIs, white on a dark halo (readable on any
    colour), fixed size on screen; hide it with the layer's eye or the explorer's *rank
    labels* box. :func:`napari_llmdecode._viewer.follow_zoom` lays it out again on zoom."""
    v = sset.values() if values is None else values
    coords, feats = rank_labels(data, v)
    return (
        coords,
        {
            "name": f"{data.name}: salience ranks",
            "features": feats,
            "size": max(data.roi_diameter * 0.2, 1e-3),
            "face_color": "transparent",
            "border_width": 0,
            "text": {
                "string": "{label}",
                "color": {"feature": "text_colour"},
                "size": TEXT_POINTS,
                "anchor": "center",
            },
            # the values, to lay the labels out again when the zoom changes
            "metadata": _meta(data, "ranks", method=sset.method, values=v),
            **_geo(data),
        },
        "points",
    )


def session_layers(data: SessionData) -> list[LayerDataTuple]:
    """All layers of a file: summary images (or an activity projection), ROI labels and,
    with results, salience colouring, outlines of the salient ROIs and their ranks.

    Pure data (no viewer): what layer keywords cannot say (the salience colourbar and its
    title, rank labels that follow the zoom, ROI outlines that step aside in 3D) is set up
    by the npe2 entry points as the viewer adds the layers
    (:func:`napari_llmdecode._viewer.show_on_insert`).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from nwb_llmdecode.synthetic import make_session
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "s.nwb"
    >>> _ = make_session(p, frames=30, rois=6, planes=2, n_drivers=2)
    >>> [t[2] for t in session_layers(read_source(p))]
    ['image', 'image', 'labels']
    """
    layers: list[LayerDataTuple] = []
    for i, (kind, vol) in enumerate(data.images.items()):
        layers.append(
            (
                vol,
                {
                    "name": f"{data.name}: {kind} image",
                    "colormap": "gray",
                    "contrast_limits": _robust_limits(vol),
                    "visible": i == 0,
                    "metadata": _meta(data, "image", kind=kind),
                    **_geo(data),
                },
                "image",
            )
        )
    if not data.images and data.activity is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN ROIs
            proj = np.nanstd(data.activity, axis=0)
        vol = paint(data.labels, proj, background=0.0)
        layers.append(
            (
                vol,
                {
                    "name": f"{data.name}: {data.activity_label} s.d. (no summary image)",
                    "colormap": "gray",
                    "contrast_limits": _robust_limits(vol),
                    "metadata": _meta(data, "image", kind="activity projection"),
                    **_geo(data),
                },
                "image",
            )
        )
    sets = data.results.salience if data.results is not None else []
    layers.append(labels_layer(data, salience=sets[0].values() if sets else None))
    if sets:
        layers.append(salience_image_layer(data, sets[0]))
        layers.append(outline_layer(data, sets[0]))
        layers.append(rank_layer(data, sets[0]))
    return layers


# ----------------------------------------------------------------------------------------
# what the explorer shows
# ----------------------------------------------------------------------------------------


def compatible(a: SessionData, b: SessionData) -> bool:
    """Whether salience of ``b`` can be painted on the ROIs of ``a`` (same tables, sizes)."""
    return a.roi_signature == b.roi_signature and a.labels.shape == b.labels.shape


def roi_world_position(data: SessionData, roi: int) -> np.ndarray:
    """World (z, y, x) of a ROI's centroid (physical units, as napari shows them)."""
    return data.centroids[roi] * np.asarray(data.scale) + np.asarray(data.translate)


def top_rows(
    data: SessionData, sset: SalienceSet, *, channel: int | None = None, n: int = 50
) -> dict[str, np.ndarray]:
    """The ``n`` most salient ROIs under the chosen colouring, most salient first.

    Returns columns ``rank`` (1 = most salient by the chosen values), ``roi``, ``plane``
    (short table name, :func:`plane_short_names`), ``salience`` (overall) and
    ``by_output`` (n, channels).

    Examples
    --------
    >>> import numpy as np
    >>> d = type("D", (), {"plane_names": ["a", "b"], "roi_plane": np.array([0, 0, 1])})()
    >>> s = SalienceSet("m", "f", np.array([0.1, 0.9, 0.5]),
    ...                 np.array([[0.1, 0.0], [0.2, 1.6], [0.9, 0.1]]), np.array([3, 1, 2]))
    >>> top_rows(d, s, channel=0, n=2)["roi"].tolist()
    [2, 1]
    """
    from nwb_llmdecode.salience import salience_order

    v = np.nan_to_num(sset.values(channel), nan=-np.inf)
    order = salience_order(v)
    order = order[np.isfinite(v[order])][:n]
    return {
        "rank": np.arange(1, len(order) + 1),
        "roi": order,
        "plane": np.asarray(plane_short_names(data.plane_names), dtype=object)[
            data.roi_plane[order]
        ],
        "salience": np.asarray(sset.salience[order], dtype=np.float64),
        "by_output": np.asarray(sset.by_output[order], dtype=np.float64),
    }


def trace_data(data: SessionData, roi: int, channel: int | None) -> dict[str, Any]:
    """Arrays for the plot panel: the ROI's activity, target and prediction, split blocks.

    Returns a dict with ``time`` and ``activity`` (the ROI), ``activity_label``, and when
    the file has results ``results_time``, ``target``, ``prediction``, ``channel_name``,
    ``unit`` and ``splits`` [(name, start_s, stop_s)].
    """
    out: dict[str, Any] = {"activity_label": data.activity_label, "roi": roi}
    if data.activity is not None:
        out["time"] = data.activity_times
        out["activity"] = data.activity[:, roi]
    elif data.activity_times is not None:
        out["time"] = data.activity_times
        out["activity"] = _read_trace(data, roi)
    res = data.results
    if res is not None and res.targets.shape[1] and channel is not None:
        c = int(channel)
        out.update(
            results_time=res.times,
            target=res.targets[:, c],
            prediction=res.predictions[:, c],
            channel_name=res.channels[c],
            unit=res.units[c] if c < len(res.units) else "",
            splits=list(res.splits),
        )
    return out


def _read_trace(data: SessionData, roi: int) -> np.ndarray:
    """One ROI's trace from the source (for sessions too large to keep in memory)."""
    from nwb_llmdecode.io.read import inventory
    from nwb_llmdecode.io.sources import open_nwb

    n = len(data.activity_times) if data.activity_times is not None else 0
    for info in data.activity_series:
        if roi in info["roi"]:
            col = info["roi"].index(roi)
            with open_nwb(data.source) as src:
                series = inventory(src).objects[info["path"]]
                return np.asarray(series.data[:n, col], dtype=np.float32)
    return np.full(n, np.nan, dtype=np.float32)


def roi_on_ray(data: SessionData, origin: np.ndarray, direction: np.ndarray) -> int | None:
    """The ROI whose centroid lies closest to a viewing ray (3D clicks), within one ROI
    diameter; the nearest to the viewer wins among those. World (z, y, x) coordinates.

    Examples
    --------
    >>> import numpy as np
    >>> d = type("D", (), {})()
    >>> d.centroids = np.array([[0.0, 5, 5], [1.0, 20, 20]])
    >>> d.scale, d.translate, d.roi_diameter = (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), 4.0
    >>> roi_on_ray(d, np.array([-10.0, 20, 21]), np.array([1.0, 0, 0]))
    1
    """
    world = data.centroids * np.asarray(data.scale) + np.asarray(data.translate)
    ok = np.isfinite(world).all(axis=1)
    u = np.asarray(direction, dtype=np.float64)
    u = u / max(float(np.linalg.norm(u)), 1e-12)
    rel = world - np.asarray(origin, dtype=np.float64)
    along = rel @ u
    dist = np.linalg.norm(rel - along[:, None] * u, axis=1)
    radius = data.roi_diameter * float(np.min(np.asarray(data.scale)[1:]))
    hit = np.flatnonzero(ok & (dist <= radius))
    if not hit.size:
        return None
    return int(hit[np.argmin(along[hit])])
