"""Synthetic calcium-imaging sessions with planted ground truth, written as real NWB.

A session has ``rois`` ROIs spread over ``planes`` imaging planes. Neural activity is made of
shared slow latent factors (so neurons are correlated, as in real brains) plus private
fluctuations, turned into spikes, convolved with a GCaMP-like calcium kernel and observed
with noise as ΔF/F. A known subset of *driver* ROIs determines the behaviour (tail-segment
angles sampled at a high rate) through a nonlinear, lagged readout of their private
activity. Which ROIs are drivers is returned as :class:`SyntheticTruth` and stored in the
file, in the boolean column ``synthetic_driver`` of each PlaneSegmentation.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from .errors import ConfigError, OutputExistsError

__all__ = ["SyntheticTruth", "make_session"]

MaskKind = Literal["image", "pixel", "voxel"]
Readout = Literal["linear", "bouts", "interaction"]
Noise = Literal["iid", "heteroscedastic", "correlated"]


@dataclass(frozen=True)
class SyntheticTruth:
    """What was planted in a synthetic session.

    Attributes
    ----------
    path
        The NWB file written.
    driver_rois
        Global ROI indices (planes concatenated in order) of the driver ROIs.
    weights
        Readout weights, shape (channels, drivers).
    lags
        Lag in frames of each driver's influence on behaviour.
    n_rois, n_frames, n_planes, frame_rate, behavior_rate
        Session size and rates.
    roi_series_paths
        Object path of the ΔF/F series of each plane, in order.
    behavior_path
        Object path of the behaviour series.
    decoy_rois
        Global indices of the non-driver ROIs made to share a driver's slow activity.
    readout, noise
        The readout and noise model used.
    """

    path: Path
    driver_rois: np.ndarray
    weights: np.ndarray
    lags: np.ndarray
    n_rois: int
    n_frames: int
    n_planes: int
    frame_rate: float
    behavior_rate: float
    roi_series_paths: tuple[str, ...] = field(default_factory=tuple)
    behavior_path: str = ""
    decoy_rois: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    readout: str = "linear"
    noise: str = "iid"

    def to_json(self) -> str:
        d = asdict(self)
        d["path"] = str(self.path)
        for k in ("driver_rois", "weights", "lags", "decoy_rois"):
            d[k] = np.asarray(d[k]).tolist()
        return json.dumps(d)


def _leaky(x: np.ndarray, a: float) -> np.ndarray:
    """``y[t] = x[t] + a * y[t - 1]`` along the first axis (scipy's
    ``lfilter([1], [1, -a], x, axis=0)``), in float64.

    A loop over frames, each step vectorised over ROIs: as fast as scipy's filter at these
    shapes, without the seconds that importing ``scipy.signal`` adds to every ``synth``."""
    out = np.array(x, dtype=np.float64, copy=True)
    for t in range(1, out.shape[0]):
        out[t] += a * out[t - 1]
    return out


def _ar1(rng: np.random.Generator, n: int, k: int, tau: float) -> np.ndarray:
    """k independent AR(1) processes of unit variance and time constant ``tau`` samples."""
    a = float(np.exp(-1.0 / tau))
    noise = rng.standard_normal((n, k)) * np.sqrt(1 - a * a)
    out = _leaky(noise, a)
    return out / out.std(axis=0, keepdims=True).clip(1e-6)


def _roi_masks(
    rng: np.random.Generator, n: int, size: int
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Round ROIs of radius 2-4 px: centres (n, 2) as (x, y), radii, and pixel lists."""
    margin = 5
    centres = rng.uniform(margin, size - margin, size=(n, 2))
    radii = rng.uniform(2.0, 4.0, size=n)
    yy, xx = np.mgrid[0:size, 0:size]
    pixels = []
    for (cx, cy), r in zip(centres, radii, strict=True):
        x0, x1 = int(max(cx - r - 1, 0)), int(min(cx + r + 2, size))
        y0, y1 = int(max(cy - r - 1, 0)), int(min(cy + r + 2, size))
        sx, sy = xx[y0:y1, x0:x1], yy[y0:y1, x0:x1]
        d2 = (sx - cx) ** 2 + (sy - cy) ** 2
        inside = d2 <= r * r
        w = np.exp(-d2[inside] / (2 * (r / 2) ** 2))
        pixels.append(np.column_stack([sx[inside], sy[inside], w / w.max()]).astype(np.float64))
    return centres, radii, pixels


def make_session(
    path: str | os.PathLike[str],
    *,
    frames: int = 1200,
    rois: int = 300,
    planes: int = 2,
    seed: int = 0,
    frame_rate: float = 2.0,
    behavior_rate: float = 200.0,
    n_drivers: int = 10,
    n_channels: int = 3,
    readout: Readout = "linear",
    population: float = 0.8,
    decoys: int = 0,
    spread_drivers: bool = False,
    noise: Noise = "iid",
    mask: MaskKind = "image",
    behavior_timestamps: bool = False,
    behavior_gap: tuple[float, float] | None = None,
    raw_imaging: bool = False,
    summary_images: bool = True,
    fluorescence: bool = True,
    recording: int = 0,
    subject_id: str = "synthetic-fish",
    overwrite: bool = False,
) -> SyntheticTruth:
    """Write a synthetic NWB session in which known *driver* ROIs determine behaviour.

    Parameters
    ----------
    path
        Output ``.nwb`` file.
    frames, rois, planes
        Number of imaging volumes, of ROIs in all, and of imaging planes (each plane has
        its own ImagingPlane, PlaneSegmentation and ΔF/F RoiResponseSeries, with a
        per-plane time offset within the volume).
    seed
        Seed of every random choice; the same arguments give the same file content.
    frame_rate, behavior_rate
        Volume rate of imaging and sample rate of the tail angles (Hz).
    n_drivers
        How many ROIs drive behaviour (spread over planes).
    n_channels
        Number of tail-segment angle channels.
    readout
        How driver activity becomes tail angles. ``"linear"``: a saturating
        (``0.6 tanh(1.2 u)``) function of a weighted sum ``u`` of the lagged drivers, close
        to linear, so lagged ridge regression is nearly the true model. ``"bouts"``: swim
        bouts, as real tail kinematics are: a vigour gate ``sigmoid(3 (v - 0.5))`` of a
        second (positive) driver mixture ``v`` multiplies the bend ``0.6 tanh(1.5 u)``, so the
        angle is near zero between bouts and its sign and size depend on the drivers
        jointly; a linear decoder cannot represent the product. ``"interaction"``: a
        lagged nonlinear readout with an interaction term, ``0.6 tanh(u + 0.9 a b)``,
        where ``a`` and ``b`` are two different lagged drivers per channel.
    population
        Weight of the slow population factors shared by all ROIs in every ROI's drive
        (0.8 by default; larger values correlate non-drivers more with drivers).
    decoys
        Number of non-driver ROIs that are given the slow component of a driver's
        activity (not its fast, behaviour-relevant part as seen alone): ROIs that
        correlate with drivers without driving, among which the drivers hide.
    spread_drivers
        Draw the drivers plane by plane in turn, so every plane holds some.
    noise
        Observation noise added to the recorded ΔF/F after behaviour is made: ``"iid"``
        (none beyond the base noise), ``"heteroscedastic"`` (noise that grows with each
        ROI's signal level) or ``"correlated"`` (a common-mode and low-rank fluctuation
        shared across ROIs, like neuropil or motion).
    mask
        ROI mask kind: ``"image"`` (dense image masks), ``"pixel"`` or ``"voxel"``.
    behavior_timestamps
        Store the behaviour with jittered ``timestamps`` (in a BehavioralTimeSeries
        container under ``processing/behavior``) instead of ``rate`` (in ``acquisition``).
    behavior_gap
        ``(start, stop)`` seconds with no behaviour samples (a tracking dropout);
        only with ``behavior_timestamps``.
    raw_imaging
        Add a raw TwoPhotonSeries (frames x height x width, uint16) to ``acquisition``,
        as real files have; it dominates the file size.
    summary_images
        Add per-plane mean and correlation images.
    fluorescence
        Also write raw fluorescence (a Fluorescence container) beside ΔF/F.
    recording
        Which recording of the same animal: ``0`` (the default) and any other number give
        sessions with the same ROIs, masks, driver ROIs, readout weights and lags but
        freshly drawn neural activity (and so behaviour), like two sessions of one fish
        imaged on the same planes. A decoder fitted on one predicts the other.
    subject_id
        The NWB ``Subject.subject_id`` (``"synthetic-fish"`` by default).
    overwrite
        Replace ``path`` if it exists.

    Returns
    -------
    SyntheticTruth
        The planted drivers, weights and lags, and the object paths written.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from nwb_llmdecode.synthetic import make_session
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "s.nwb"
    >>> truth = make_session(out, frames=120, rois=20, planes=1, n_drivers=3)
    >>> truth.driver_rois.shape
    (3,)
    """
    from hdmf.backends.hdf5.h5_utils import H5DataIO
    from pynwb import NWBHDF5IO, NWBFile, TimeSeries
    from pynwb.base import Images
    from pynwb.behavior import BehavioralTimeSeries
    from pynwb.file import Subject
    from pynwb.image import GrayscaleImage
    from pynwb.ophys import (
        DfOverF,
        Fluorescence,
        ImageSegmentation,
        OpticalChannel,
        RoiResponseSeries,
        TwoPhotonSeries,
    )

    path = Path(path)
    if frames < 10 or rois < 1 or planes < 1 or rois < planes:
        raise ConfigError(
            f"make_session: need frames >= 10 and rois >= planes >= 1 "
            f"(got frames={frames}, rois={rois}, planes={planes})"
        )
    if not 1 <= n_drivers <= rois:
        raise ConfigError(f"make_session: n_drivers must be in 1..rois (got {n_drivers})")
    if readout not in ("linear", "bouts", "interaction"):
        raise ConfigError(
            f"make_session: readout must be linear, bouts or interaction (got {readout!r})"
        )
    if noise not in ("iid", "heteroscedastic", "correlated"):
        raise ConfigError(
            f"make_session: noise must be iid, heteroscedastic or correlated (got {noise!r})"
        )
    if not 0 <= decoys <= rois - n_drivers:
        raise ConfigError(
            f"make_session: decoys must be in 0..rois - n_drivers ({rois - n_drivers}), "
            f"got {decoys}"
        )
    if not population >= 0:
        raise ConfigError(f"make_session: population must be >= 0 (got {population!r})")
    if mask not in ("image", "pixel", "voxel"):
        raise ConfigError(f"make_session: mask must be image, pixel or voxel (got {mask!r})")
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path}: exists; pass overwrite=True (--overwrite) to replace it")

    rng = np.random.default_rng(seed)
    dt = 1.0 / frame_rate

    # --- neural activity -------------------------------------------------------------
    n_latent = 5
    latents = _ar1(rng, frames, n_latent, tau=8.0 * frame_rate)  # slow shared factors
    private = _ar1(rng, frames, rois, tau=1.5 * frame_rate)  # fast private fluctuations
    loading = rng.normal(0.0, 1.0, size=(n_latent, rois)) / np.sqrt(n_latent)
    drive = population * (latents @ loading) + 1.0 * private
    rate = 0.15 * np.log1p(np.exp(1.5 * drive - 1.0))  # spikes per frame, softplus
    spikes = rng.poisson(rate).astype(np.float64)
    decay = float(np.exp(-dt / 1.2))  # GCaMP6s-like decay, tau ~ 1.2 s
    calcium = _leaky(spikes, decay)
    signal = calcium + 0.6 * drive.clip(0, None)  # sub-threshold modulation seen in ΔF/F
    dff = (0.25 * signal + rng.normal(0.0, 0.08, size=signal.shape)).astype(np.float32)
    if recording:
        # same animal, another recording: new activity draws from their own generator, so
        # that every later draw of `rng` (drivers, weights, lags, masks) stays the same
        rec_rng = np.random.default_rng([seed, 1000 + int(recording)])
        latents = _ar1(rec_rng, frames, n_latent, tau=8.0 * frame_rate)
        private = _ar1(rec_rng, frames, rois, tau=1.5 * frame_rate)
        drive = population * (latents @ loading) + 1.0 * private
        spikes = rec_rng.poisson(0.15 * np.log1p(np.exp(1.5 * drive - 1.0))).astype(np.float64)
        signal = _leaky(spikes, decay) + 0.6 * drive.clip(0, None)
        dff = (0.25 * signal + rec_rng.normal(0.0, 0.08, size=signal.shape)).astype(np.float32)

    # --- planted drivers and behaviour -------------------------------------------------
    if spread_drivers:  # round robin over planes (own generator: new sessions only)
        spread_rng = np.random.default_rng([seed, 2])
        pools = [list(spread_rng.permutation(m)) for m in np.array_split(np.arange(rois), planes)]
        picked: list[int] = []
        while len(picked) < n_drivers:
            for pool in pools:
                if pool and len(picked) < n_drivers:
                    picked.append(int(pool.pop()))
        drivers = np.sort(np.asarray(picked, dtype=np.int64))
    else:
        drivers = np.sort(rng.choice(rois, size=n_drivers, replace=False))
    lags = rng.integers(0, 3, size=n_drivers)
    decoy_rois = np.zeros(0, dtype=np.int64)
    if decoys:
        # non-drivers that share a driver's slow activity (exponential smoothing, ~8 s)
        decoy_rng = np.random.default_rng([seed, 3])
        others = np.setdiff1d(np.arange(rois), drivers)
        decoy_rois = np.sort(decoy_rng.choice(others, size=decoys, replace=False))
        slow = (1 - np.exp(-dt / 8.0)) * _leaky(dff[:, drivers], float(np.exp(-dt / 8.0)))
        slow = (slow - slow.mean(axis=0)) / slow.std(axis=0).clip(1e-6)
        which = decoy_rng.integers(0, n_drivers, size=decoys)
        scale = dff[:, decoy_rois].std(axis=0) * decoy_rng.uniform(0.8, 1.5, size=decoys)
        dff[:, decoy_rois] += (slow[:, which] * scale).astype(np.float32)
    weights = rng.normal(0.0, 1.0, size=(n_channels, n_drivers))
    weights /= np.abs(weights).sum(axis=1, keepdims=True).clip(1e-6)
    source = np.empty((frames, n_drivers))
    for j, (roi, lag) in enumerate(zip(drivers, lags, strict=True)):
        x = (dff[:, roi] - dff[:, roi].mean()) / dff[:, roi].std().clip(1e-6)
        source[:, j] = np.concatenate([np.full(lag, x[0]), x[: frames - lag]]) if lag else x
    if readout == "linear":
        frame_behavior = 0.6 * np.tanh(1.2 * source @ weights.T)  # radians, (frames, channels)
    elif readout == "interaction":
        # own generator: the pair of interacting drivers of each channel
        pair_rng = np.random.default_rng([seed, 4])
        pairs = [
            pair_rng.choice(n_drivers, size=2, replace=False) if n_drivers > 1 else np.array([0, 0])
            for _ in range(n_channels)
        ]
        inter = np.stack([source[:, a] * source[:, b] for a, b in pairs], axis=1)
        frame_behavior = 0.6 * np.tanh(source @ weights.T + 0.9 * inter)
    else:
        # own generator: the activity and every other draw match the "linear" session
        bout_rng = np.random.default_rng([seed, 1])
        vigour_w = bout_rng.uniform(0.5, 1.0, size=n_drivers)
        vigour = source @ (vigour_w / vigour_w.sum())
        vigour = (vigour - vigour.mean()) / vigour.std().clip(1e-6)
        gate = 1.0 / (1.0 + np.exp(-3.0 * (vigour - 0.5)))  # fraction of the frame swimming
        frame_behavior = 0.6 * gate[:, None] * np.tanh(1.5 * source @ weights.T)

    # --- observation noise on top (behaviour was made from the activity above) -------
    if noise != "iid":
        noise_rng = np.random.default_rng([seed, 5])
        sd = dff.std(axis=0, keepdims=True).clip(1e-6)
        if noise == "heteroscedastic":
            level = (dff - dff.min(axis=0, keepdims=True)) / sd  # grows with the signal
            dff += (0.35 * sd * level * noise_rng.standard_normal(dff.shape)).astype(np.float32)
        else:
            common = _ar1(noise_rng, frames, 1, tau=2.0 * frame_rate)
            low = _ar1(noise_rng, frames, 3, tau=0.5 * frame_rate)
            mix = noise_rng.normal(0.0, 1.0, size=(3, rois)) / np.sqrt(3)
            gain = noise_rng.uniform(0.3, 0.8, size=(1, rois))
            dff += (sd * (gain * common + 0.4 * (low @ mix))).astype(np.float32)
        dff = dff.astype(np.float32)

    # --- time bases ------------------------------------------------------------------
    t0 = 1.5  # imaging starts 1.5 s into the session
    plane_offset = dt / planes
    b_start, b_stop = t0 - 0.5, t0 + frames * dt + 0.5
    n_b = int(np.floor((b_stop - b_start) * behavior_rate))
    bt = b_start + np.arange(n_b) / behavior_rate
    if behavior_timestamps:
        bt = bt + rng.uniform(0, 0.3 / behavior_rate, size=n_b)
        if behavior_gap is not None:
            keep = (bt < behavior_gap[0]) | (bt >= behavior_gap[1])
            bt = bt[keep]
    frame_t = t0 + np.arange(frames) * dt
    # Piecewise-constant per frame plus tail beats (25 Hz) that average out within a frame.
    idx = np.clip(np.floor((bt - t0) / dt).astype(int), 0, frames - 1)
    smooth = frame_behavior[idx]
    beats = 0.15 * np.sin(2 * np.pi * 25.0 * (bt - frame_t[idx]))[:, None]
    tail = (smooth + beats * np.abs(smooth) + rng.normal(0, 0.02, size=smooth.shape)).astype(
        np.float32
    )

    # --- NWB file ----------------------------------------------------------------------
    nwbfile = NWBFile(
        session_description="Synthetic larval zebrafish session with planted driver ROIs "
        "(nwb_llmdecode.synthetic.make_session).",
        identifier=f"llmdecode-synthetic-{seed}-{frames}-{rois}-{planes}"
        + (f"-rec{recording}" if recording else ""),
        session_start_time=_dt.datetime(2025, 1, 1, 12, 0, tzinfo=_dt.timezone.utc),
        experimenter=["Synthetic, Data"],
        lab="nwb-llmdecode",
        institution="nwb-llmdecode",
        experiment_description="Ground truth for testing behaviour decoding and salience.",
        keywords=["synthetic", "calcium imaging", "zebrafish"],
        notes=json.dumps(
            {
                "generator": "nwb_llmdecode.synthetic.make_session",
                "seed": seed,
                "driver_rois": drivers.tolist(),
                "lags": lags.tolist(),
                "readout": readout,
                "noise": noise,
                "decoy_rois": decoy_rois.tolist(),
                "recording": int(recording),
            }
        ),
    )
    nwbfile.subject = Subject(
        subject_id=subject_id,
        species="Danio rerio",
        age="P6D",
        sex="U",
        description="Simulated 6 dpf larva.",
    )
    device = nwbfile.create_device(name="Microscope", description="Simulated two-photon scope.")
    ophys = nwbfile.create_processing_module("ophys", "Segmented ROIs and their ΔF/F.")
    img_seg = ImageSegmentation(name="ImageSegmentation")
    ophys.add(img_seg)
    dff_container = DfOverF(name="DfOverF")
    ophys.add(dff_container)
    f_container = Fluorescence(name="Fluorescence") if fluorescence else None
    if f_container is not None:
        ophys.add(f_container)

    per_plane = np.array_split(np.arange(rois), planes)
    size = int(max(48, np.ceil(np.sqrt(max(len(p) for p in per_plane) * 60))))
    spacing_um = 12.0
    roi_paths = []
    for p, members in enumerate(per_plane):
        name = f"plane{p}"
        plane = nwbfile.create_imaging_plane(
            name=f"ImagingPlane_{name}",
            optical_channel=OpticalChannel(
                name="GCaMP", description="GCaMP6s emission", emission_lambda=510.0
            ),
            description=f"Simulated plane {p}, {p * spacing_um:.0f} µm below the top plane.",
            device=device,
            excitation_lambda=920.0,
            imaging_rate=frame_rate,
            indicator="GCaMP6s",
            location="whole brain",
            grid_spacing=[1.0, 1.0],
            grid_spacing_unit="micrometers",
            origin_coords=[0.0, 0.0, p * spacing_um],
            origin_coords_unit="micrometers",
        )
        _centres, _radii, pixels = _roi_masks(rng, len(members), size)
        mean_img = np.full((size, size), 0.05)
        for pix, m in zip(pixels, members, strict=True):
            mean_img[pix[:, 1].astype(int), pix[:, 0].astype(int)] += pix[:, 2] * (
                0.5 + calcium[:, m].mean()
            )
        mean_img += rng.normal(0, 0.02, size=mean_img.shape)
        mean_img = mean_img.clip(0, None)
        ps = img_seg.create_plane_segmentation(
            name=f"PlaneSegmentation_{name}",
            description=f"Round synthetic ROIs of plane {p}.",
            imaging_plane=plane,
        )
        ps.add_column("synthetic_driver", "True for ROIs planted to drive the behaviour.")
        is_driver = np.isin(members, drivers)
        for pix, drv in zip(pixels, is_driver, strict=True):
            if mask == "image":
                img = np.zeros((size, size), dtype=np.float32)
                img[pix[:, 1].astype(int), pix[:, 0].astype(int)] = pix[:, 2]
                ps.add_roi(image_mask=img, synthetic_driver=bool(drv))
            elif mask == "pixel":
                ps.add_roi(pixel_mask=[tuple(r) for r in pix], synthetic_driver=bool(drv))
            else:
                vox = [(x, y, float(p), w) for x, y, w in pix]
                ps.add_roi(voxel_mask=vox, synthetic_driver=bool(drv))
        region = ps.create_roi_table_region(
            region=list(range(len(members))), description=f"All ROIs of plane {p}."
        )
        series_name = f"RoiResponseSeries_{name}"
        dff_container.add_roi_response_series(
            RoiResponseSeries(
                name=series_name,
                description=f"ΔF/F of plane {p}.",
                data=H5DataIO(dff[:, members], chunks=(min(frames, 256), len(members))),
                rois=region,
                unit="n.a.",
                starting_time=t0 + p * plane_offset,
                rate=frame_rate,
            )
        )
        roi_paths.append(f"processing/ophys/DfOverF/{series_name}")
        if f_container is not None:
            baseline = rng.uniform(100, 400, size=len(members)).astype(np.float32)
            f_container.add_roi_response_series(
                RoiResponseSeries(
                    name=series_name,
                    description=f"Raw fluorescence of plane {p}.",
                    data=H5DataIO(
                        baseline * (1 + dff[:, members]),
                        chunks=(min(frames, 256), len(members)),
                    ),
                    rois=region,
                    unit="a.u.",
                    starting_time=t0 + p * plane_offset,
                    rate=frame_rate,
                )
            )
        if summary_images:
            corr = np.clip(mean_img / mean_img.max(), 0, 1)
            ophys.add(
                Images(
                    name=f"SummaryImages_{name}",
                    description=f"Summary images of plane {p}.",
                    images=[
                        GrayscaleImage(
                            name="mean",
                            data=mean_img.astype(np.float32),
                            description="Mean fluorescence over the session.",
                        ),
                        GrayscaleImage(
                            name="correlation",
                            data=corr.astype(np.float32),
                            description="Local correlation image.",
                        ),
                    ],
                )
            )
        if raw_imaging and p == 0:
            nwbfile.add_acquisition(
                TwoPhotonSeries(
                    name="TwoPhotonSeries",
                    description="Raw frames of plane 0 (simulated).",
                    data=H5DataIO(
                        _raw_frames(rng, mean_img, frames),
                        chunks=(1, size, size),
                    ),
                    imaging_plane=plane,
                    unit="n.a.",
                    rate=frame_rate,
                    starting_time=t0,
                )
            )

    channels = n_channels
    tail_kwargs: dict = dict(
        name="tail_angles",
        description=f"Angles of {channels} tail segments relative to the body axis "
        "(simulated from the driver ROIs).",
        data=H5DataIO(tail, chunks=(min(len(tail), 8192), channels)),
        unit="radians",
    )
    if behavior_timestamps:
        behavior_module = nwbfile.create_processing_module("behavior", "Tail tracking.")
        bts = BehavioralTimeSeries(name="BehavioralTimeSeries")
        bts.add_timeseries(TimeSeries(timestamps=bt, **tail_kwargs))
        behavior_module.add(bts)
        behavior_path = "processing/behavior/BehavioralTimeSeries/tail_angles"
    else:
        nwbfile.add_acquisition(
            TimeSeries(starting_time=float(bt[0]), rate=behavior_rate, **tail_kwargs)
        )
        behavior_path = "acquisition/tail_angles"

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.partial.nwb")
    with NWBHDF5IO(str(tmp), "w") as io:
        io.write(nwbfile)
    os.replace(tmp, path)
    return SyntheticTruth(
        path=path,
        driver_rois=drivers,
        weights=weights,
        lags=lags,
        n_rois=rois,
        n_frames=frames,
        n_planes=planes,
        frame_rate=frame_rate,
        behavior_rate=behavior_rate,
        roi_series_paths=tuple(roi_paths),
        behavior_path=behavior_path,
        decoy_rois=decoy_rois,
        readout=readout,
        noise=noise,
    )


def _raw_frames(rng: np.random.Generator, mean_img: np.ndarray, frames: int):
    """Raw uint16 frames, generated chunk by chunk so memory stays small."""
    from hdmf.data_utils import DataChunkIterator

    scale = 2000.0 / max(float(mean_img.max()), 1e-6)

    def gen():
        for _ in range(frames):
            yield (
                (mean_img * scale + rng.normal(0, 50, size=mean_img.shape))
                .clip(0, 65535)
                .astype(np.uint16)
            )

    return DataChunkIterator(
        data=gen(), maxshape=(frames, *mean_img.shape), dtype=np.dtype(np.uint16), buffer_size=16
    )


def make_sessions(
    outdir: str | os.PathLike[str],
    n_sessions: int,
    *,
    rois: int = 120,
    roi_step: int = 20,
    seed: int = 0,
    overwrite: bool = False,
    **kwargs,
) -> list[SyntheticTruth]:
    """Write ``n_sessions`` sessions of as many animals with the same readout.

    Every session is one animal (``subject_id`` ``"synthetic-fish-<i>"``), with its own
    ROI count (``rois + i * roi_step``), its own ROI set and its own planted driver ROIs
    (drawn with seed ``seed + i``), and the same behaviour name (``tail_angles``), unit
    (radians), readout kind, frame rate and channel count: the same readout planted in
    different ROI sets of different animals. Each file records its planted drivers in
    its ``notes`` and the ``synthetic_driver`` column, as :func:`make_session` does.

    Parameters
    ----------
    outdir
        Folder of the files ``animal<i>.nwb``.
    n_sessions
        Number of sessions (animals), at least 1.
    rois, roi_step
        ROI count of the first animal and its increase from one animal to the next.
    seed
        Seed of the first animal; animal ``i`` uses ``seed + i``.
    overwrite
        Replace existing files.
    **kwargs
        Any other :func:`make_session` argument, the same for every animal.

    Returns
    -------
    list of SyntheticTruth
        The planted truth of each session, in order.
    """
    if n_sessions < 1:
        raise ValueError(f"n_sessions must be at least 1, not {n_sessions}")
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    return [
        make_session(
            out / f"animal{i}.nwb",
            rois=rois + i * roi_step,
            seed=seed + i,
            subject_id=f"synthetic-fish-{i}",
            overwrite=overwrite,
            **kwargs,
        )
        for i in range(n_sessions)
    ]
