"""Decoding results -> NWB, as specified in ``shared/NWB_RESULTS.md``.

Two ways to write:

* :func:`write_derived` makes a stand-alone ``<stem>_desc-llmdecode.nwb``: session metadata,
  subject, devices, imaging planes, ROI tables with masks, summary images, the ROI and
  behaviour series that were used, and the ``processing/llmdecode`` module. Raw imaging is
  not copied. The file is written under a temporary name and renamed into place.
* :func:`write_in_place` appends the module to a local source: a copy of the source gets the
  module and then replaces the source atomically, so an interrupted run leaves the source
  as it was.

Only core NWB types are used, so any NWB reader opens the results without this package.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import numpy as np
import xarray as xr

from ..errors import ConfigError, OutputExistsError, SourceError
from .align import regular_timing
from .atomic import check_writable_dir, check_writable_file, fsync_dir, remove_stale, temporary_path
from .read import RESULTS_MODULE, _mask_column, _ragged, channel_labels, inventory
from .sources import NWBSource

__all__ = [
    "DERIVED_DESC",
    "DecodingResults",
    "check_in_place",
    "check_output",
    "default_output_path",
    "derived_name",
    "sha256_file",
    "source_provenance",
    "write_ablation",
    "write_derived",
    "write_in_place",
]

log = logging.getLogger(__name__)

_SESSION_FIELDS = (
    "session_description",
    "session_start_time",
    "timestamps_reference_time",
    "experimenter",
    "experiment_description",
    "session_id",
    "institution",
    "keywords",
    "notes",
    "pharmacology",
    "protocol",
    "related_publications",
    "slices",
    "source_script",
    "data_collection",
    "surgery",
    "virus",
    "stimulus_notes",
    "lab",
)
_SUBJECT_FIELDS = (
    "age",
    "age__reference",
    "description",
    "genotype",
    "sex",
    "species",
    "subject_id",
    "weight",
    "strain",
    "date_of_birth",
)


@dataclass
class DecodingResults:
    """Everything a decoding run writes into ``processing/llmdecode``.

    Attributes
    ----------
    session
        The Dataset the model was trained on (from :func:`~nwb_llmdecode.load_session`):
        its ``time``, ROI coordinates (``plane``, ``roi_row``), channel coordinates
        (``series``, ``series_channel``, ``unit``) and attrs (object paths) say where
        everything came from.
    predictions
        (time, channel) decoded behaviour in the behaviour's units, NaN where no window
        reached.
    splits
        Contiguous blocks as ``(split, start_frame, stop_frame)`` (stop exclusive).
    metrics
        Rows with ``channel``, ``split``, ``rmse``, ``r2``, ``pearson``, ``n_frames``.
    run
        One row: ``backbone``, ``init``, ``train_mode``, ``seq_len``, ``epochs``, ``seed``,
        ``salience_method``, ``package_version``, ``device``, ``duration_s``,
        ``config_json``.
    salience
        Optional Dataset with ``salience`` (roi), ``salience_by_output`` (roi, channel) and
        ``salience_timecourse`` (time, roi; ``timecourse`` is accepted too), on the
        session's ROIs, as :meth:`nwb_llmdecode.Decoder.explain` returns it.
    ablation
        Optional rows with ``k``, ``kind``, ``draw``, ``rmse``, ``delta_rmse``.
    """

    session: xr.Dataset
    predictions: np.ndarray
    splits: list[tuple[str, int, int]]
    metrics: list[dict[str, Any]]
    run: dict[str, Any]
    salience: xr.Dataset | None = None
    ablation: list[dict[str, Any]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


#: The ``desc`` entity that marks our derived files (``sub-1_ses-2_desc-llmdecode_ophys.nwb``).
DERIVED_DESC = "llmdecode"
# DANDI's layout (dandi.organize.ORGANIZED_FILENAME_REGEX): sub-<label>[_ses-<label>]
# [_<entity>-<label>]...[_<modality>[+<modality>]...].nwb
_DANDI_LABEL = r"[^_*\\/<>:|\"'?%@;.]+"
_DANDI_NAME = re.compile(
    rf"(?P<sub>sub-{_DANDI_LABEL})(?P<ses>_ses-{_DANDI_LABEL})?"
    rf"(?P<entities>(?:_(?:tis|slice|cell|desc|probe|obj)-{_DANDI_LABEL})*)"
    r"(?P<suffix>_[a-z]+(?:\+[a-z]+)*)?"
)
_ENTITY = re.compile(rf"_(tis|slice|cell|desc|probe|obj)-({_DANDI_LABEL})")


def _source_stem(source: str) -> str:
    """A visible, file-system-safe stem from the last component of a path, URL or id.

    Percent-escapes are decoded before the last component is taken, so no escaped ``/``
    or ``..`` of a URL reaches the name; leading dots (hidden files) are dropped.
    """
    s = unquote(str(source).strip().split("?", 1)[0].split("#", 1)[0]).replace("\\", "/")
    parts = [p for p in s.rstrip("/").split("/") if p not in ("", ".", "..")]
    name = parts[-1] if parts else ""
    if name == "download" and len(parts) >= 2 and "assets" in parts[:-1]:
        name = f"asset-{parts[-2]}"  # .../api/assets/<id>/download/
    name = re.sub(r"\.nwb(\.zarr)?$", "", name, flags=re.IGNORECASE)  # .nwb, .nwb.zarr
    name = re.sub(r"[^A-Za-z0-9._+-]+", "_", name).strip("._- ")
    return name or "session"


def derived_name(stem: str) -> str:
    """File name of the results derived from a source with this stem.

    A source named after DANDI's layout (``sub-<x>[_ses-<y>][_<entity>-<z>][_<modality>]``)
    gets the same name with the entity ``desc-llmdecode`` (replacing another ``desc``),
    so ``dandi validate`` accepts the result in the subject's folder; any other stem
    gets ``_desc-llmdecode`` appended.

    Examples
    --------
    >>> derived_name("sub-fish1_ses-2_ophys")
    'sub-fish1_ses-2_desc-llmdecode_ophys.nwb'
    >>> derived_name("sub-1_desc-raw_ophys+behavior")
    'sub-1_desc-llmdecode_ophys+behavior.nwb'
    >>> derived_name("fish9")
    'fish9_desc-llmdecode.nwb'
    """
    m = _DANDI_NAME.fullmatch(stem)
    if m is None:
        tag = f"_desc-{DERIVED_DESC}"
        return f"{stem}.nwb" if stem.endswith(tag) else f"{stem}{tag}.nwb"
    entities = [f"_{k}-{v}" for k, v in _ENTITY.findall(m.group("entities") or "") if k != "desc"]
    return (
        f"{m.group('sub')}{m.group('ses') or ''}{''.join(entities)}_desc-{DERIVED_DESC}"
        f"{m.group('suffix') or ''}.nwb"
    )


def default_output_path(source: str | os.PathLike[str], *, directory: Path | None = None) -> Path:
    """Where results of ``source`` go by default: :func:`derived_name` of its stem, beside
    a local source, in the current directory for a remote one (or in ``directory``).

    Examples
    --------
    >>> default_output_path("data/sub-1_ses-2_ophys.nwb").as_posix()
    'data/sub-1_ses-2_desc-llmdecode_ophys.nwb'
    >>> default_output_path("https://host/a/..%2F..%2Fevil.nwb", directory=Path("out")).as_posix()
    'out/evil_desc-llmdecode.nwb'
    >>> default_output_path("data/sub-1_ses-2.nwb.zarr").as_posix()
    'data/sub-1_ses-2_desc-llmdecode.nwb'
    """
    from .sources import is_remote

    s = os.fspath(source)
    name = derived_name(_source_stem(s))
    if directory is not None:
        return directory / name
    if is_remote(s):
        return Path.cwd() / name
    return Path(s).expanduser().parent / name


# ----------------------------------------------------------------------------------------
# copying what the results refer to
# ----------------------------------------------------------------------------------------


def _copy_session(src_file: Any) -> Any:
    from pynwb import NWBFile
    from pynwb.file import Subject

    kwargs = {}
    for f in _SESSION_FIELDS:
        v = getattr(src_file, f, None)
        if v is not None:
            kwargs[f] = list(v) if isinstance(v, tuple | np.ndarray) else v
    kwargs["identifier"] = str(uuid.uuid4())
    kwargs["file_create_date"] = _dt.datetime.now(_dt.timezone.utc)
    if "keywords" in kwargs:
        kwargs["keywords"] = [str(k) for k in kwargs["keywords"]]
    out = NWBFile(**kwargs)
    if src_file.subject is not None:
        sub = {}
        for f in _SUBJECT_FIELDS:
            v = getattr(src_file.subject, f, None)
            if v is not None:
                sub[f] = v
        out.subject = Subject(**sub)
    return out


def _copy_plane(out: Any, plane: Any, devices: dict[str, Any]) -> Any:
    from pynwb.device import Device
    from pynwb.ophys import OpticalChannel

    if plane.name in out.imaging_planes:
        return out.imaging_planes[plane.name]
    dev = plane.device
    if dev.name not in devices:
        devices[dev.name] = Device(
            name=dev.name,
            description=dev.description,
            manufacturer=getattr(dev, "manufacturer", None),
        )
        out.add_device(devices[dev.name])
    channels = [
        OpticalChannel(name=c.name, description=c.description, emission_lambda=c.emission_lambda)
        for c in plane.optical_channel
    ]
    kwargs: dict[str, Any] = dict(
        name=plane.name,
        optical_channel=channels,
        description=plane.description,
        device=devices[dev.name],
        excitation_lambda=plane.excitation_lambda,
        indicator=plane.indicator,
        location=plane.location,
    )
    for f in ("imaging_rate", "grid_spacing_unit", "origin_coords_unit", "reference_frame"):
        v = getattr(plane, f, None)
        if v is not None:
            kwargs[f] = v
    for f in ("grid_spacing", "origin_coords"):
        v = getattr(plane, f, None)
        if v is not None:
            kwargs[f] = [float(x) for x in v[:]]
    return out.create_imaging_plane(**kwargs)


def _copy_plane_segmentation(ps: Any, plane: Any) -> Any:
    """A copy of ``ps`` (ids, masks and simple columns), streamed in batches."""
    from hdmf.backends.hdf5.h5_utils import H5DataIO
    from hdmf.common import VectorData, VectorIndex
    from hdmf.data_utils import DataChunkIterator
    from pynwb.ophys import PlaneSegmentation

    n = len(ps.id)
    columns = []
    col = _mask_column(ps)
    if col == "image_mask":
        data = ps["image_mask"].data
        shape = tuple(data.shape)

        def batches() -> Iterator[np.ndarray]:
            for b in range(0, n, 64):
                yield from np.asarray(data[b : b + 64])

        columns.append(
            VectorData(
                name="image_mask",
                description=ps["image_mask"].description,
                data=H5DataIO(
                    DataChunkIterator(data=batches(), maxshape=shape, dtype=np.dtype(data.dtype)),
                    compression="gzip",
                    chunks=(1, *shape[1:]),
                ),
            )
        )
    elif col in ("pixel_mask", "voxel_mask"):
        records, ends = _ragged(ps, col)
        target = VectorData(name=col, description=ps[col].target.description, data=records)
        columns += [target, VectorIndex(name=f"{col}_index", data=ends, target=target)]
    for name in ps.colnames:
        if name in ("image_mask", "pixel_mask", "voxel_mask"):
            continue
        column = ps[name]
        if isinstance(column, VectorData) and not isinstance(column, VectorIndex):
            values = np.asarray(column.data[:])
            if values.ndim == 1 and values.dtype.kind in "biuf":
                columns.append(VectorData(name=name, description=column.description, data=values))
    return PlaneSegmentation(
        name=ps.name,
        description=ps.description,
        imaging_plane=plane,
        id=np.asarray(ps.id.data[:]),
        columns=columns,
        colnames=[c.name for c in columns if not isinstance(c, VectorIndex)],
    )


def _timing_kwargs(ts: Any) -> dict[str, Any]:
    if ts.timestamps is not None:
        return {"timestamps": np.asarray(ts.timestamps[:])}
    return {"rate": float(ts.rate), "starting_time": float(ts.starting_time or 0.0)}


def _container_for(
    out: Any, path: str, src_objects: dict[str, Any], modules: dict[str, Any]
) -> tuple[Any, str | None]:
    """Module (or NWBFile for acquisition) and container that ``path`` goes into."""
    parts = path.split("/")
    if parts[0] == "acquisition":
        return out, None
    mname = parts[1]
    if mname not in out.processing:
        desc = src_objects.get("__modules__", {}).get(mname, f"Copied from the source ({mname}).")
        modules[mname] = out.create_processing_module(mname, desc)
    module = out.processing[mname]
    if len(parts) == 4:  # processing/<module>/<container>/<series>
        cname = parts[2]
        if cname not in module.data_interfaces:
            src_container = src_objects["/".join(parts[:3])]
            module.add(type(src_container)(name=cname))
        return module, cname
    return module, None


def _add_series(
    out: Any, path: str, series: Any, src_objects: dict[str, Any], modules: dict
) -> None:
    parent, cname = _container_for(out, path, src_objects, modules)
    if parent is out:
        out.add_acquisition(series)
    elif cname is None:
        parent.add(series)
    else:
        container = parent.data_interfaces[cname]
        conf = container.__clsconf__
        conf = conf[0] if isinstance(conf, list) else conf
        getattr(container, conf["add"])(series)


def _copy_timeseries(ts: Any) -> Any:
    from pynwb import TimeSeries
    from pynwb.behavior import SpatialSeries

    kwargs: dict[str, Any] = dict(
        name=ts.name,
        data=np.asarray(ts.data[:]),
        unit=ts.unit,
        description=ts.description,
        comments=ts.comments,
        conversion=float(ts.conversion),
        offset=float(getattr(ts, "offset", 0.0) or 0.0),
        resolution=float(ts.resolution),
        **_timing_kwargs(ts),
    )
    if isinstance(ts, SpatialSeries):
        return SpatialSeries(reference_frame=ts.reference_frame, **kwargs)
    return TimeSeries(**kwargs)


def _build_derived(src: NWBSource, session: xr.Dataset) -> tuple[Any, dict[str, Any]]:
    """A new in-memory NWBFile with everything the results refer to; PS by source path."""
    from pynwb.base import Images
    from pynwb.image import GrayscaleImage, RGBAImage, RGBImage
    from pynwb.ophys import ImageSegmentation, RoiResponseSeries

    inv = inventory(src)
    objects = dict(inv.objects)
    objects["__modules__"] = {m: mod.description for m, mod in src.nwbfile.processing.items()}
    out = _copy_session(src.nwbfile)
    devices: dict[str, Any] = {}
    modules: dict[str, Any] = {}
    ps_map: dict[str, Any] = {}

    for ps_path in json.loads(session.attrs["plane_segmentations"]):
        ps = inv.objects[ps_path]
        plane = _copy_plane(out, ps.imaging_plane, devices)
        new_ps = _copy_plane_segmentation(ps, plane)
        parent_path = ps_path.rsplit("/", 1)[0]
        module, cname = _container_for(out, ps_path, objects, modules)
        if cname is None:  # PlaneSegmentation directly in a module (unusual)
            module.add(new_ps)
        else:
            seg = module.data_interfaces[cname]
            if not isinstance(seg, ImageSegmentation):
                raise SourceError(f"{src.label}: {parent_path} is not an ImageSegmentation")
            seg.add_plane_segmentation(new_ps)
        ps_map[ps_path] = new_ps

    for rrs_path in json.loads(session.attrs["roi_series"]):
        rrs = inv.objects[rrs_path]
        table_path = next(c["plane_segmentation"] for c in inv.roi_series if c["path"] == rrs_path)
        new_ps = ps_map[table_path]
        region = new_ps.create_roi_table_region(
            region=np.asarray(rrs.rois.data[:]).tolist(), description=rrs.rois.description
        )
        _add_series(
            out,
            rrs_path,
            RoiResponseSeries(
                name=rrs.name,
                data=np.asarray(rrs.data[:]),
                rois=region,
                unit=rrs.unit,
                description=rrs.description,
                conversion=float(rrs.conversion),
                resolution=float(rrs.resolution),
                **_timing_kwargs(rrs),
            ),
            objects,
            modules,
        )

    for beh_path in json.loads(session.attrs["behavior_series"]):
        _add_series(out, beh_path, _copy_timeseries(inv.objects[beh_path]), objects, modules)

    image_types = {"GrayscaleImage": GrayscaleImage, "RGBImage": RGBImage, "RGBAImage": RGBAImage}
    containers: dict[str, list[Any]] = {}
    for img in inv.images:
        container_path = img["path"].rsplit("/", 1)[0]
        if container_path.startswith("processing/"):
            obj = inv.objects[img["path"]]
            cls = image_types.get(img["type"], GrayscaleImage)
            kw: dict[str, Any] = {"name": obj.name, "data": np.asarray(obj.data[:])}
            if getattr(obj, "resolution", None) is not None:
                kw["resolution"] = float(obj.resolution)
            if getattr(obj, "description", None):
                kw["description"] = obj.description
            containers.setdefault(container_path, []).append(cls(**kw))
    for container_path, images in containers.items():
        src_images = inv.objects[container_path]
        if not isinstance(src_images, Images):
            continue
        module, _ = _container_for(out, container_path, objects, modules)
        module.add(Images(name=src_images.name, description=src_images.description, images=images))
    return out, ps_map


# ----------------------------------------------------------------------------------------
# the results module
# ----------------------------------------------------------------------------------------


def _as_pairs(obj: Any) -> Any:
    """JSON objects -> lists of [key, value] pairs, recursively.

    NWB best practice (nwbinspector ``check_table_values_for_dict``) forbids dictionaries
    encoded in table strings, so ``config_json`` holds pairs; ``dict(json.loads(s))``
    (see :func:`~nwb_llmdecode.io.read.run_config`) gives the mapping back.
    """
    if isinstance(obj, dict):
        return [[k, _as_pairs(v)] for k, v in obj.items()]
    if isinstance(obj, list | tuple):
        return [_as_pairs(v) for v in obj]
    return obj


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def source_provenance(src: NWBSource, session: xr.Dataset) -> dict[str, str]:
    """The ``decoding_run`` provenance columns of results read from ``src``.

    ``source`` is the local path, the URL, or for a DANDI asset its identifier with the
    asset id and version; ``source_sha256`` hashes a local file, and for a streamed one
    is the archive's digest when the API gave one (else empty, as for a local Zarr store).
    """
    identifier = str(src.nwbfile.identifier)
    info = getattr(src, "stats", None) or {}
    if src.path is not None:  # a Zarr store is a directory: no single file to hash
        source = str(src.path)
        digest = sha256_file(src.path) if src.path.is_file() else ""
    else:
        source = str(session.attrs.get("source", src.label))
        asset, version = info.get("asset_id"), info.get("version_id")
        if asset:
            source += f" (DANDI asset {asset}" + (f", version {version})" if version else ")")
        digest = str(info.get("digest") or "")
    return {
        "source": source,
        "source_identifier": identifier,
        "source_sha256": digest,
        "sessions": json.dumps([identifier]),
    }


def _session_columns(results: DecodingResults) -> dict[str, str]:
    """``decoding_run`` columns that say which series were decoded and how salience was
    made, so that :func:`~nwb_llmdecode.io.results.read_results` can invert the writer."""
    attrs = results.session.attrs
    details = ""
    if results.salience is not None:
        keep = {
            k: (v.item() if isinstance(v, np.generic) else v)
            for k, v in results.salience.attrs.items()
            if isinstance(v, str | int | float | list | np.generic)
        }
        details = json.dumps(_as_pairs(keep))
    return {
        "roi_series": str(attrs.get("roi_series", "[]")),
        "behavior_series": str(attrs.get("behavior_series", "[]")),
        "salience_json": details,
    }


def _add_results_module(
    nwbfile: Any,
    results: DecodingResults,
    ps_by_path: dict[str, Any],
    provenance: dict[str, str] | None = None,
) -> Any:
    """Add ``processing/llmdecode`` to ``nwbfile`` (in memory) and fill it.

    ``provenance`` gives the ``decoding_run`` columns that trace the results to their
    source (:func:`source_provenance`); keys in ``results.run`` take precedence.
    """
    provenance = provenance or {}
    from hdmf.common import DynamicTable, VectorData
    from pynwb import TimeSeries
    from pynwb.behavior import BehavioralTimeSeries
    from pynwb.epoch import TimeIntervals

    ds = results.session
    times = np.asarray(ds["time"].values, dtype=np.float64)
    timing = regular_timing(times)
    module = nwbfile.create_processing_module(
        name=RESULTS_MODULE,
        description="Behaviour decoded from ROI activity with nwb-llmdecode "
        f"(backbone {results.run.get('backbone')}); predictions, targets, splits, metrics"
        + (", salience" if results.salience is not None else "")
        + ".",
    )

    # predictions and targets: one TimeSeries per source behaviour series
    preds = BehavioralTimeSeries(name="predictions")
    targets = BehavioralTimeSeries(name="targets")
    series_names = list(dict.fromkeys(ds["series"].values.tolist()))
    for name in series_names:
        sel = np.flatnonzero(ds["series"].values == name)
        unit = str(ds["unit"].values[sel[0]])
        target = TimeSeries(
            name=name,
            data=np.asarray(ds["behavior"].values[:, sel], dtype=np.float32),
            unit=unit,
            **timing,
            description=f"Behaviour series '{name}' averaged over each imaging frame interval "
            "(the decoder's training target).",
        )
        targets.add_timeseries(target)
        preds.add_timeseries(
            TimeSeries(
                name=name,
                data=np.asarray(results.predictions[:, sel], dtype=np.float32),
                unit=unit,
                **({"timestamps": target} if "timestamps" in timing else timing),
                description=f"Decoded '{name}' at the imaging frame times; overlapping "
                "window predictions averaged per frame; NaN where no window reached.",
            )
        )
    module.add(preds)
    module.add(targets)

    splits = TimeIntervals(
        name="decoding_splits",
        description="Contiguous time blocks used for training, validation and test.",
    )
    # "split_name", not "split": the latter clashes with pynapple's IntervalSet.split
    splits.add_column(name="split_name", description="train, validation or test")
    step = float(np.median(np.diff(times))) if len(times) > 1 else 1.0
    for split, start, stop in results.splits:
        end = times[stop] if stop < len(times) else times[-1] + step
        splits.add_row(start_time=float(times[start]), stop_time=float(end), split_name=split)
    module.add(splits)

    channel_names = channel_labels(ds)
    m = results.metrics
    module.add(
        DynamicTable(
            name="decoding_metrics",
            description="Decoding quality per behaviour channel and split (original units).",
            columns=[
                VectorData(
                    name="behavior",
                    description="behaviour series name",
                    data=[str(ds["series"].values[r["channel"]]) for r in m],
                ),
                VectorData(
                    name="channel",
                    description="channel index within the series",
                    data=[int(ds["series_channel"].values[r["channel"]]) for r in m],
                ),
                VectorData(
                    name="split",
                    description="train, validation or test",
                    data=[str(r["split"]) for r in m],
                ),
                VectorData(
                    name="rmse",
                    description="root mean squared error",
                    data=[float(r["rmse"]) for r in m],
                ),
                VectorData(
                    name="r2",
                    description="coefficient of determination",
                    data=[float(r["r2"]) for r in m],
                ),
                VectorData(
                    name="pearson",
                    description="Pearson correlation",
                    data=[float(r["pearson"]) for r in m],
                ),
                VectorData(
                    name="n_frames",
                    description="frames evaluated",
                    data=[int(r["n_frames"]) for r in m],
                ),
            ],
        )
    )

    run_cols = []
    for key, desc in (
        ("backbone", "backbone name, hub id or path"),
        ("init", "pretrained or random"),
        ("train_mode", "frozen, lora or full"),
        ("seq_len", "window length in frames"),
        ("epochs", "epochs trained"),
        ("seed", "random seed"),
        ("salience_method", "attribution method, or none"),
        ("package_version", "nwb-llmdecode version"),
        ("device", "device trained on"),
        ("duration_s", "wall time of the run in seconds"),
        ("config_json", "the full run configuration as a JSON list of [option, value] pairs"),
        ("source", "the source session: local path, URL, or DANDI asset (id and version)"),
        ("source_identifier", "the identifier of the source NWB file"),
        (
            "source_sha256",
            "SHA-256 of the local source file as read; for a streamed source the archive's "
            "digest of the asset (algorithm:value) when it gives one, else empty",
        ),
        ("sessions", "identifiers of the sessions the decoder was trained on (JSON list)"),
        ("roi_series", "object paths of the ROI series decoded from, in ROI order (JSON list)"),
        ("behavior_series", "object paths of the behaviour series decoded (JSON list)"),
        (
            "salience_json",
            "salience method details (baseline, convergence delta, steps) as a JSON list of "
            "[key, value] pairs; empty without salience",
        ),
        (
            "fit_json",
            "what the fit chose on the validation block (best epoch, epochs run, early stop; "
            "the ridge base's lags and penalty for the ridge-residual decoder) as a JSON "
            "list of [key, value] pairs; empty for predictions from a checkpoint",
        ),
    ):
        v = {**provenance, **_session_columns(results), **results.run}.get(key)
        if key in ("config_json", "fit_json") and isinstance(v, str) and v:
            v = json.dumps(_as_pairs(json.loads(v)))
        if isinstance(v, bool | np.bool_):
            v = str(v)
        if v is None:
            v = "none"
        run_cols.append(VectorData(name=key, description=desc, data=[v]))
    module.add(
        DynamicTable(name="decoding_run", description="How the decoder was made.", columns=run_cols)
    )

    if results.salience is not None:
        _add_salience(module, results, ps_by_path, times, channel_names)
    if results.ablation:
        module.add(_ablation_table(results.ablation))
    return module


def _ablation_table(rows: Sequence[dict[str, Any]]) -> Any:
    from hdmf.common import DynamicTable, VectorData

    return DynamicTable(
        name="salience_ablation",
        description="Test RMSE after replacing k ROIs by their training mean: the top-k "
        "salient ROIs vs k random ROIs (several draws).",
        columns=[
            VectorData(name="k", description="ROIs ablated", data=[int(r["k"]) for r in rows]),
            VectorData(
                name="kind", description="salient or random", data=[str(r["kind"]) for r in rows]
            ),
            VectorData(
                name="draw",
                description="random draw (0 for salient)",
                data=[int(r["draw"]) for r in rows],
            ),
            VectorData(
                name="rmse",
                description="test RMSE after ablation (mean over channels)",
                data=[float(r["rmse"]) for r in rows],
            ),
            VectorData(
                name="delta_rmse",
                description="increase over the intact model",
                data=[float(r["delta_rmse"]) for r in rows],
            ),
        ],
    )


def write_ablation(path: str | os.PathLike[str], rows: Sequence[dict[str, Any]]) -> Path:
    """Put (or replace) the ``salience_ablation`` table of a results file, atomically."""
    import h5py
    from pynwb import NWBHDF5IO

    path = Path(path)
    check_writable_file(path, what=str(path))
    with _atomic_target(path) as tmp:
        shutil.copy2(path, tmp)
        with h5py.File(tmp, "r+") as f:
            if f"processing/{RESULTS_MODULE}" not in f:
                raise SourceError(f"{path}: no processing/{RESULTS_MODULE} module; run fit first")
            if f"processing/{RESULTS_MODULE}/salience_ablation" in f:
                del f[f"processing/{RESULTS_MODULE}/salience_ablation"]
        with NWBHDF5IO(str(tmp), "a") as io:
            nwbfile = io.read()
            nwbfile.processing[RESULTS_MODULE].add(_ablation_table(rows))
            io.write(nwbfile)
    return path


def _add_salience(
    module: Any,
    results: DecodingResults,
    ps_by_path: dict[str, Any],
    times: np.ndarray,
    channel_names: list[str],
) -> None:
    from hdmf.common import DynamicTable, DynamicTableRegion, VectorData
    from pynwb.ophys import RoiResponseSeries

    from ..salience import salience_order

    ds, sal = results.session, results.salience
    assert sal is not None
    per_roi = np.asarray(sal["salience"].values, dtype=np.float64)
    by_out = np.asarray(sal["salience_by_output"].values, dtype=np.float64)
    name = "salience_timecourse" if "salience_timecourse" in sal else "timecourse"
    course = np.asarray(sal[name].values, dtype=np.float32)
    rank = np.empty(len(per_roi), dtype=np.int64)
    rank[salience_order(per_roi)] = np.arange(1, len(per_roi) + 1)
    method = str(sal.attrs.get("method", results.run.get("salience_method", "")))
    how = method
    delta = sal.attrs.get("convergence_delta")  # integrated gradients only
    if delta is not None:
        how += (
            f"; baseline: {sal.attrs.get('baseline', 'zeros')}; convergence delta "
            f"{float(delta):.3g} (mean |delta| / mean |output|)"
        )
    ps_paths = json.loads(ds.attrs["plane_segmentations"])
    planes = ds["plane"].values
    several = len(ps_paths) > 1
    for ps_path in ps_paths:
        ps = ps_by_path[ps_path]
        sel = np.flatnonzero(planes == ps.name)
        suffix = f"_{ps.name}" if several else ""
        rows = np.asarray(ds["roi_row"].values[sel], dtype=np.int64)
        table = DynamicTable(
            name=f"roi_salience{suffix}",
            description=f"Salience of each ROI of {ps.name} for the decoded behaviour "
            f"({how}; test block; channels: {', '.join(channel_names)}).",
            columns=[
                DynamicTableRegion(
                    name="roi", data=rows.tolist(), table=ps, description=f"the ROI in {ps.name}"
                ),
                VectorData(
                    name="salience",
                    description="mean |attribution| over outputs, frames and test windows",
                    data=per_roi[sel],
                ),
                VectorData(
                    name="salience_by_output",
                    description=f"salience per behaviour channel ({', '.join(channel_names)})",
                    data=by_out[sel],
                ),
                VectorData(
                    name="rank", description="1 = most salient over all planes", data=rank[sel]
                ),
            ],
        )
        module.add(table)
        region = DynamicTableRegion(
            name="rois", data=rows.tolist(), table=ps, description=f"ROIs of {ps.name}"
        )
        module.add(
            RoiResponseSeries(
                name=f"salience_timecourse{suffix}",
                data=course[:, sel],
                rois=region,
                unit="a.u.",
                **regular_timing(times),
                description=f"Time-resolved {method} attribution of each ROI (frames x ROIs), "
                "each frame averaged over the windows that contain it. This is attribution, "
                "not fluorescence.",
            )
        )


# ----------------------------------------------------------------------------------------
# writing files
# ----------------------------------------------------------------------------------------


@contextlib.contextmanager
def _atomic_target(
    path: Path, *, before_publish: Callable[[Path], None] | None = None
) -> Iterator[Path]:
    """A temporary path beside ``path`` that replaces it on success, vanishes on failure.

    On success the temporary is fsynced, ``before_publish(tmp)`` runs (e.g. to publish a
    checkpoint that belongs to the file first), the temporary is renamed over ``path``
    and the directory is fsynced. Temporaries that killed runs left beside ``path`` are
    removed first (see :mod:`nwb_llmdecode.io.atomic`).
    """
    remove_stale(path)
    tmp = temporary_path(path, ".nwb")
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        if before_publish is not None:
            before_publish(tmp)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def check_output(path: Path, *, overwrite: bool) -> None:
    """Refuse an output path before any work: it exists (and overwrite is off), it is a
    directory, or its directory cannot be written (:class:`ConfigError`,
    :class:`OutputExistsError`)."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory; give a file name ending in .nwb")
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path}: exists; pass --overwrite to replace it")
    if path.exists():
        check_writable_file(path, what=str(path))
    else:
        check_writable_dir(path.parent, what=str(path))


def write_derived(
    src: NWBSource,
    results: DecodingResults,
    path: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    before_publish: Callable[[Path], None] | None = None,
) -> Path:
    """Write a stand-alone results file (see the module docstring).

    Parameters
    ----------
    src
        The open source the session was read from.
    results
        What to write.
    path
        Output file.
    overwrite
        Replace an existing output file.
    before_publish
        Called with the complete temporary file just before it is renamed to ``path``
        (``fit`` publishes the decoder checkpoint there, so the results file appears last).

    Returns
    -------
    Path
        The written file.
    """
    from pynwb import NWBHDF5IO

    path = Path(path)
    check_output(path, overwrite=overwrite)
    if src.path is not None and path.resolve() == src.path.resolve():
        raise OutputExistsError(
            f"{path}: is the source file; use --in-place to add results to it, or another --out"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    out, ps_map = _build_derived(src, results.session)
    _add_results_module(out, results, ps_map, source_provenance(src, results.session))
    with _atomic_target(path, before_publish=before_publish) as tmp:
        with NWBHDF5IO(str(tmp), "w") as io:
            io.write(out)
    log.info("wrote %s", path)
    return path


def check_in_place(source_path: str | os.PathLike[str], *, overwrite: bool) -> bool:
    """Refuse ``--in-place`` on ``source_path`` before any work; return whether it
    already holds a results module.

    The source must be a local, writable HDF5 file in a writable directory (the copy that
    replaces it is made beside it); a directory (NWB-Zarr) is refused: its atomic
    replacement is not supported.
    """
    import h5py

    p = Path(source_path)
    if p.is_dir():
        raise SourceError(
            f"{p}: --in-place needs an HDF5 .nwb file; this source is a directory (NWB-Zarr), "
            "which cannot be replaced atomically; omit --in-place to write a derived file"
        )
    if not p.is_file():
        raise SourceError(f"{p}: no such file")
    check_writable_file(p, what=f"--in-place {p}")
    try:
        with h5py.File(p, "r") as f:
            has = f"processing/{RESULTS_MODULE}" in f
    except OSError:
        return False  # open_nwb reports what is wrong with the file
    if has and not overwrite:
        raise OutputExistsError(
            f"{p}: already has a processing/{RESULTS_MODULE} module; pass --overwrite to replace it"
        )
    return has


def write_in_place(
    source_path: str | os.PathLike[str],
    results: DecodingResults,
    *,
    overwrite: bool = False,
    before_publish: Callable[[Path], None] | None = None,
) -> Path:
    """Append the results module to a local source file, atomically.

    The source is copied beside itself, the module is written into the copy, and the copy
    replaces the source; an interruption at any point leaves the source as it was.
    ``before_publish`` is as in :func:`write_derived`.
    """
    import h5py
    from pynwb import NWBHDF5IO

    source_path = Path(source_path)
    has = check_in_place(source_path, overwrite=overwrite)
    with _atomic_target(source_path, before_publish=before_publish) as tmp:
        shutil.copy2(source_path, tmp)
        if has:
            with h5py.File(tmp, "r+") as f:
                del f[f"processing/{RESULTS_MODULE}"]
        with NWBHDF5IO(str(tmp), "a") as io:
            nwbfile = io.read()
            here = NWBSource(nwbfile=nwbfile, label=str(source_path), path=source_path)
            inv = inventory(here)
            ps_map = {
                p: inv.objects[p] for p in json.loads(results.session.attrs["plane_segmentations"])
            }
            # the source is still the original here: its digest is that of the data read
            _add_results_module(nwbfile, results, ps_map, source_provenance(here, results.session))
            io.write(nwbfile)
    log.info("appended processing/%s to %s", RESULTS_MODULE, source_path)
    return source_path


def results_paths(names: Sequence[str]) -> list[str]:
    """Object paths of named results objects (for messages and tests)."""
    return [f"processing/{RESULTS_MODULE}/{n}" for n in names]
