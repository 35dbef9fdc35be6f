"""Real whole-brain zebrafish activity, simulated behaviour: does salience find the drivers?

Data: Légaré A., Lemieux M., Boily V., Poulin S., Légaré A., Desrosiers P., De Koninck P.,
"Structural and genetic determinants of zebrafish functional brain networks", Borealis
(Université Laval), doi:10.5683/SP3/IIVGOB, v1.0 (2025), CC-BY 4.0 — a two-photon recording
of a 5–7 dpf Tg(elavl3:H2B-GCaMP6s) larva averaged into 70 brain regions (fish 6). The
data are read from the project's ``shared/data`` folder (or ``--data``); they are not part
of this package.

**The recording has no behaviour.** This example *simulates* a tail angle from the real
activity of four chosen regions (a nonlinear, lagged readout), writes everything as an NWB
session (regions as ROIs at their centroids on the top-view anatomy), decodes the
simulated behaviour from all 70 regions with the default backbone, and checks whether the
most salient regions are the ones the behaviour was built from. The volume rate is not part
of the data subset; ``--frame-rate`` (default 1 Hz) is an assumption.

Run: ``python examples/zebrafish_real_data.py`` (``--fast`` for a short version).
"""

from __future__ import annotations

import argparse
import datetime as dt
import tempfile
from pathlib import Path

import numpy as np

DEFAULT_DATA = (
    Path(__file__).resolve().parents[2] / "shared" / "data" / "zebrafish_legare2025_fish6"
)
DRIVERS = ("NMLF", "Cb", "IO", "SDMOS5")  # nMLF, cerebellum, inferior olive, medulla stripe 5
CREDIT = "Légaré et al., Borealis, doi:10.5683/SP3/IIVGOB (CC-BY 4.0), fish 6, 70-region subset"


def build_session(data: Path, out: Path, *, frame_rate: float, seed: int = 0) -> list[int]:
    """Write an NWB session from the real recording plus a simulated tail angle.

    Returns the ROI indices of the driver regions.
    """
    from pynwb import NWBHDF5IO, NWBFile, TimeSeries
    from pynwb.base import Images
    from pynwb.file import Subject
    from pynwb.image import GrayscaleImage
    from pynwb.ophys import DfOverF, ImageSegmentation, OpticalChannel, RoiResponseSeries

    ts = np.load(data / "timeseries_regions_fish6.npy")  # (70, frames)
    acr = np.load(data / "region_acronyms.npy").astype(str)
    names = np.load(data / "region_names.npy").astype(str)
    centroids = np.load(data / "region_centroids.npy")[: len(acr)]  # one hemisphere, µm
    anatomy = np.load(data / "top_projection.npy")
    activity = np.ascontiguousarray(ts.T, dtype=np.float32)  # (frames, regions)
    n_frames, n_regions = activity.shape
    drivers = [int(np.flatnonzero(acr == a)[0]) for a in DRIVERS]

    # Simulated behaviour: tail angle = nonlinear, lagged readout of the driver regions.
    rng = np.random.default_rng(seed)
    z = (activity - activity.mean(0)) / activity.std(0)
    lags = [0, 1, 1, 2]
    weights = np.array([0.9, -0.7, 0.6, 0.8])
    drive = sum(
        w * np.r_[np.full(lag, z[0, r]), z[: n_frames - lag, r]]
        for w, r, lag in zip(weights, drivers, lags, strict=True)
    )
    per_frame = 0.5 * np.tanh(drive / drive.std())
    rate = 200.0
    t = np.arange(int(n_frames / frame_rate * rate)) / rate
    frame = np.minimum((t * frame_rate).astype(int), n_frames - 1)
    tail = per_frame[frame] * (1 + 0.2 * np.sin(2 * np.pi * 25 * t)) + rng.normal(0, 0.02, len(t))

    f = NWBFile(
        session_description="Real whole-brain activity of 70 regions (Légaré et al. 2025, "
        "fish 6) with a SIMULATED tail angle built from four regions "
        f"({', '.join(DRIVERS)}); nwb-llmdecode example.",
        identifier=f"legare2025-fish6-simulated-behaviour-{seed}",
        session_start_time=dt.datetime(2025, 4, 7, tzinfo=dt.timezone.utc),
        experimenter=["Légaré, Antoine"],
        institution="Université Laval",
        related_publications=["doi:10.5683/SP3/IIVGOB"],
        keywords=["zebrafish", "whole brain", "simulated behaviour"],
        experiment_description=f"Data: {CREDIT}. Behaviour simulated; volume rate "
        f"assumed {frame_rate} Hz (not part of the data subset).",
    )
    f.subject = Subject(
        subject_id="fish6",
        species="Danio rerio",
        age="P5D/P7D",
        sex="U",
        description="Tg(elavl3:H2B-GCaMP6s) larva",
    )
    device = f.create_device(name="TwoPhotonMicroscope", description="as in the source study")
    plane = f.create_imaging_plane(
        name="ImagingPlane",
        device=device,
        description="Top-view projection of 21 planes.",
        optical_channel=OpticalChannel(name="GCaMP", description="GCaMP6s", emission_lambda=510.0),
        excitation_lambda=920.0,
        imaging_rate=frame_rate,
        indicator="GCaMP6s",
        location="whole brain",
        grid_spacing=[1.0, 1.0],
        grid_spacing_unit="micrometers",
    )
    ophys = f.create_processing_module("ophys", "Region-averaged activity.")
    seg = ImageSegmentation(name="ImageSegmentation")
    ophys.add(seg)
    ps = seg.create_plane_segmentation(
        name="PlaneSegmentation",
        imaging_plane=plane,
        description="Brain regions as discs (radius 8 µm) at their centroids (x, y in µm, "
        "1 µm per pixel of the top projection).",
    )
    ps.add_column("acronym", "region acronym")
    ps.add_column("region_name", "region name")
    yy, xx = np.mgrid[-8:9, -8:9]
    disc = (xx**2 + yy**2) <= 64
    for (x, y, _z), a, n in zip(centroids, acr, names, strict=True):
        px = [
            (round(x) + dx, round(y) + dy, 1.0) for dx, dy in zip(xx[disc], yy[disc], strict=True)
        ]
        ps.add_roi(pixel_mask=px, acronym=str(a), region_name=str(n))
    dff = DfOverF(name="DfOverF")
    ophys.add(dff)
    dff.add_roi_response_series(
        RoiResponseSeries(
            name="RoiResponseSeries",
            data=activity,
            unit="n.a.",
            rate=frame_rate,
            rois=ps.create_roi_table_region(region=list(range(n_regions)), description="regions"),
            description="Normalised fluorescence averaged per region (source data).",
        )
    )
    ophys.add(
        Images(
            name="SummaryImages",
            description="Anatomy.",
            images=[
                GrayscaleImage(
                    name="top_projection", data=anatomy, description="Top-view projection."
                )
            ],
        )
    )
    f.add_acquisition(
        TimeSeries(
            name="tail_angle",
            data=tail.astype(np.float32)[:, None],
            unit="radians",
            rate=rate,
            description="SIMULATED tail angle from regions " + ", ".join(DRIVERS) + ".",
        )
    )
    with NWBHDF5IO(str(out), "w") as io:
        io.write(f)
    return drivers


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument(
        "--frame-rate",
        type=float,
        default=1.0,
        help="assumed volume rate (Hz); not part of the data subset",
    )
    parser.add_argument("--fast", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if not (args.data / "timeseries_regions_fish6.npy").is_file():
        raise SystemExit(f"{args.data}: the zebrafish data folder is missing; pass --data")
    work = args.out or Path(tempfile.mkdtemp(prefix="llmdecode-zebrafish-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"Data: {CREDIT}")
    print("The behaviour in this example is SIMULATED from regions: " + ", ".join(DRIVERS))

    from nwb_llmdecode.config import FitConfig
    from nwb_llmdecode.pipeline import fit
    from nwb_llmdecode.salience import precision_at_k

    session = work / "legare2025_fish6_simulated.nwb"
    drivers = build_session(args.data, session, frame_rate=args.frame_rate)
    # fast mode (CI): two epochs and the cheaper grad x input attribution
    config = FitConfig(
        epochs=1 if args.fast else 30,
        salience="grad-x-input" if args.fast else "integrated-gradients",
    )
    report = fit(session, config=config, overwrite=True)
    print(f"results: {report.output}")
    for m in report.metrics:
        if m["split"] == "test":
            print(f"  test R² {m['r2']:.3f}  RMSE {m['rmse']:.3f} rad")
    sal = report.results.salience
    if sal is not None:
        acr = np.load(args.data / "region_acronyms.npy").astype(str)
        order = np.argsort(-sal["salience"].values)
        print("most salient regions:", ", ".join(acr[order[:8]]))
        p = precision_at_k(sal["salience"].values, drivers)
        print(f"precision@{len(drivers)} against the simulated drivers: {p:.0%}")


if __name__ == "__main__":
    main()
