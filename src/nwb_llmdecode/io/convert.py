"""Convert the NLP4Neuro dataset's NumPy files into an NWB session.

The NLP4Neuro data (Harvard Dataverse, doi:10.7910/DVN/I8LULX) come per fish as

* ``fishN_neural_data_matched.npy``: neurons x (frames + 2) normalised activity; the
  paper's scripts drop the last two columns (``[:, :-2]``) before decoding;
* ``fishN_tail_data_matched.npy``: frames x 6 tail-segment angles averaged per frame;
* optionally ``fishN_tail_data_full.npy``: the 200 Hz samples, columns
  ``theta_00 … theta_05, t, frame``.

The files carry no frame rate (it is a required option) and no ROI masks. Where ROI
positions are not given, the ROI table has no masks and says so plainly.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import uuid
from pathlib import Path

import numpy as np

from ..errors import DataError, OutputExistsError, SourceError
from .align import regular_timing

__all__ = ["convert_nlp4neuro"]

log = logging.getLogger(__name__)


def _load(path: str | os.PathLike[str], what: str) -> np.ndarray:
    p = Path(path)
    if not p.is_file():
        raise SourceError(f"{p}: no such file (expected the NLP4Neuro {what} array, .npy)")
    try:
        return np.load(p, allow_pickle=False)
    except Exception as exc:
        raise SourceError(f"{p}: not a NumPy .npy array ({exc}); give the {what} file") from exc


def convert_nlp4neuro(
    neural: str | os.PathLike[str],
    tail: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    frame_rate: float,
    tail_full: str | os.PathLike[str] | None = None,
    positions: str | os.PathLike[str] | None = None,
    subject_id: str = "fish",
    age: str | None = None,
    session_start_time: _dt.datetime | None = None,
    overwrite: bool = False,
) -> Path:
    """Write an NWB session from NLP4Neuro arrays.

    Parameters
    ----------
    neural
        ``fishN_neural_data_matched.npy`` (neurons x (frames + 2)); the last two columns
        are dropped as in the paper's code.
    tail
        ``fishN_tail_data_matched.npy`` (frames x 6), stored as the behaviour at the frame
        times (``processing/behavior/BehavioralTimeSeries/tail_angles``).
    out
        Output ``.nwb`` path.
    frame_rate
        Imaging volume rate in Hz (not in the files; required).
    tail_full
        Optional ``fishN_tail_data_full.npy`` (samples x 8: six angles, ``t`` in seconds
        from the first frame, ``frame``), stored as ``acquisition/tail_angles_full``.
    positions
        Optional ``.npy`` of ROI positions (neurons x 2 or 3, pixels: x, y[, z]); written
        as one-pixel (or one-voxel) masks. Without it the ROI table has no masks.
    subject_id, age, session_start_time
        Session metadata (``age`` in ISO 8601, e.g. ``P7D``; not in the files). The start
        time defaults to the Unix epoch, stated as unknown.
    overwrite
        Replace ``out``.

    Returns
    -------
    Path
        The written file.
    """
    from hdmf.common import VectorData, VectorIndex
    from pynwb import NWBHDF5IO, NWBFile, TimeSeries
    from pynwb.behavior import BehavioralTimeSeries
    from pynwb.file import Subject
    from pynwb.ophys import DfOverF, ImageSegmentation, OpticalChannel, RoiResponseSeries

    out = Path(out)
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out}: exists; pass --overwrite to replace it")
    if not frame_rate or frame_rate <= 0:
        raise DataError(f"frame rate must be a positive number of Hz (got {frame_rate!r})")
    x = _load(neural, "neural_data_matched")
    y = _load(tail, "tail_data_matched")
    if x.ndim != 2 or x.shape[1] < 3:
        raise DataError(f"{neural}: expected neurons x (frames + 2), got shape {x.shape}")
    activity = np.ascontiguousarray(x[:, :-2].T, dtype=np.float32)  # (frames, neurons)
    if y.ndim == 1:
        y = y[:, None]
    if y.shape[0] != activity.shape[0]:
        raise DataError(
            f"{tail}: {y.shape[0]} frames, but {neural} has {activity.shape[0]} (after dropping "
            "its last two columns); give the matching fish's files"
        )
    pos = None
    if positions is not None:
        pos = _load(positions, "ROI positions")
        if pos.ndim != 2 or pos.shape[0] != activity.shape[1] or pos.shape[1] not in (2, 3):
            raise DataError(
                f"{positions}: expected {activity.shape[1]} x 2 or 3 positions, got {pos.shape}"
            )

    n_frames, n_rois = activity.shape
    start = session_start_time or _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)
    nwbfile = NWBFile(
        session_description=f"NLP4Neuro larval zebrafish session ({Path(neural).name}), "
        f"{n_rois} neurons, {n_frames} frames at {frame_rate} Hz.",
        identifier=str(uuid.uuid4()),
        session_start_time=start,
        related_publications=["doi:10.7910/DVN/I8LULX", "arXiv:2507.02264"],
        notes=(
            "Converted by nwb-llmdecode convert-nlp4neuro. "
            + ("" if session_start_time else "The session start time is unknown. ")
            + ("ROI positions are unknown: the source files carry none." if pos is None else "")
        ),
    )
    nwbfile.subject = Subject(
        subject_id=subject_id,
        species="Danio rerio",
        sex="U",
        age=age,
        description="Larval zebrafish (NLP4Neuro dataset).",
    )
    device = nwbfile.create_device(name="Microscope", description="As in the source dataset.")
    plane = nwbfile.create_imaging_plane(
        name="ImagingPlane",
        optical_channel=OpticalChannel(
            name="GCaMP", description="calcium indicator emission", emission_lambda=np.nan
        ),
        description="Whole-brain volume (details in the source publication).",
        device=device,
        excitation_lambda=np.nan,
        imaging_rate=float(frame_rate),
        indicator="GCaMP (see the source publication)",
        location="whole brain",
    )
    ophys = nwbfile.create_processing_module("ophys", "Neuron activity from NLP4Neuro.")
    seg = ImageSegmentation(name="ImageSegmentation")
    ophys.add(seg)
    if pos is None:
        # NWB needs a mask column; empty pixel masks say "no position" without inventing one.
        empty = VectorData(
            name="pixel_mask",
            description="Empty: ROI positions are unknown.",
            data=np.zeros(0, dtype=[("x", "<u4"), ("y", "<u4"), ("weight", "<f4")]),
        )
        ps = seg.create_plane_segmentation(
            name="PlaneSegmentation",
            description="Neurons of the NLP4Neuro dataset. ROI positions are unknown: the "
            "source files carry none, so every pixel mask is empty.",
            imaging_plane=plane,
            id=np.arange(n_rois),
            columns=[
                empty,
                VectorIndex(
                    name="pixel_mask_index", data=np.zeros(n_rois, dtype=np.int64), target=empty
                ),
            ],
            colnames=["pixel_mask"],
        )
    else:
        ps = seg.create_plane_segmentation(
            name="PlaneSegmentation",
            description="Neurons of the NLP4Neuro dataset as one-pixel masks at their positions.",
            imaging_plane=plane,
        )
        for p in pos:
            if pos.shape[1] == 2:
                ps.add_roi(pixel_mask=[(float(p[0]), float(p[1]), 1.0)])
            else:
                ps.add_roi(voxel_mask=[(float(p[0]), float(p[1]), float(p[2]), 1.0)])
    region = ps.create_roi_table_region(region=list(range(n_rois)), description="all neurons")
    dff = DfOverF(name="DfOverF")
    ophys.add(dff)
    dff.add_roi_response_series(
        RoiResponseSeries(
            name="RoiResponseSeries",
            description="Normalised activity per neuron (NLP4Neuro neural_data_matched).",
            data=activity,
            rois=region,
            unit="n.a.",
            rate=float(frame_rate),
            starting_time=0.0,
        )
    )
    behavior = nwbfile.create_processing_module("behavior", "Tail tracking.")
    bts = BehavioralTimeSeries(name="BehavioralTimeSeries")
    bts.add_timeseries(
        TimeSeries(
            name="tail_angles",
            description="Six tail-segment angles averaged per imaging frame "
            "(NLP4Neuro tail_data_matched).",
            data=np.asarray(y, dtype=np.float32),
            unit="n.a.",
            rate=float(frame_rate),
            starting_time=0.0,
        )
    )
    behavior.add(bts)
    if tail_full is not None:
        full = _load(tail_full, "tail_data_full")
        if full.ndim != 2 or full.shape[1] != 8:
            raise DataError(
                f"{tail_full}: expected samples x 8 (6 angles, t, frame), got {full.shape}"
            )
        nwbfile.add_acquisition(
            TimeSeries(
                name="tail_angles_full",
                description="Six tail-segment angles at the tracking rate (NLP4Neuro "
                "tail_data_full, columns theta_00-theta_05).",
                data=np.asarray(full[:, :6], dtype=np.float32),
                unit="n.a.",
                **regular_timing(np.asarray(full[:, 6], dtype=np.float64)),
            )
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.partial.nwb")
    try:
        with NWBHDF5IO(str(tmp), "w") as io:
            io.write(nwbfile)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    log.info("wrote %s (%d neurons, %d frames)", out, n_rois, n_frames)
    return out
