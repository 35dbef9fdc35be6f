"""How fast the napari plugin opens a large results file and recolours it.

A synthetic session with ``--rois`` ROIs (pixel masks) over ``--planes`` planes is written
with ``nwb_llmdecode.synthetic.make_session``, and two results files are written for it by
the real writer (``write_derived``): the planted readout's grad x input salience, and
|correlation| salience (as in ``tests/napari_data.py``), so that two salience methods of
the same ROIs can be switched. Timed:

- **read + layer data** (no Qt): ``read_source`` + ``session_layers``, what the reader does;
- **open in napari**: ``viewer.open(path, plugin="nwb-llmdecode")`` until the canvas has
  drawn the layers (a canvas screenshot forces the draw), in a shown viewer;
- **open the Salience explorer** (table, colourbar) on the opened file;
- **switch colouring**: the explorer's method / output channel / time frame controls,
  each until the canvas has drawn the new colouring; "update" is the same without the
  draw (the layer data, points and table only).

Run from the repository root under a display (``xvfb-run -a`` on a headless machine)::

    xvfb-run -a -s "-screen 0 1600x1200x24" .venv/bin/python benchmarks/bench_napari.py

Prints a Markdown table (results are recorded in ``benchmarks/NAPARI.md``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def _files(directory: Path, rois: int, planes: int, frames: int) -> tuple[Path, Path, Path]:
    from napari_data import correlation_results
    from napari_llmdecode._sample_data import planted_results
    from nwb_llmdecode.io.sources import open_nwb
    from nwb_llmdecode.io.write import write_derived
    from nwb_llmdecode.synthetic import make_session

    session = directory / f"s{rois}.nwb"
    a = directory / f"s{rois}_desc-llmdecode.nwb"
    b = directory / f"s{rois}_desc-corr.nwb"
    if a.exists() and b.exists():
        return session, a, b
    t = time.perf_counter()
    truth = make_session(
        session,
        frames=frames,
        rois=rois,
        planes=planes,
        mask="pixel",
        fluorescence=False,
        n_drivers=max(10, rois // 500),
        overwrite=True,
    )
    res = planted_results(truth)
    with open_nwb(session) as src:
        write_derived(src, res, a, overwrite=True)
        write_derived(src, correlation_results(res), b, overwrite=True)
    print(f"(generated the files in {time.perf_counter() - t:.1f} s)", file=sys.stderr)
    return session, a, b


def _median(xs: list[float]) -> float:
    return statistics.median(xs)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rois", type=int, default=10_000)
    p.add_argument("--planes", type=int, default=10)
    p.add_argument("--frames", type=int, default=600)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "bench_napari")
    p.add_argument("--screenshot", type=Path, help="save a screenshot of the opened file")
    args = p.parse_args(argv)
    args.dir.mkdir(parents=True, exist_ok=True)
    _, res_a, res_b = _files(args.dir, args.rois, args.planes, args.frames)

    import napari
    from qtpy.QtWidgets import QApplication

    from napari_llmdecode._layers import read_source, session_layers

    rows: list[tuple[str, float, str]] = []

    # --- pure reading --------------------------------------------------------------------
    read_source(res_a)  # warm imports and the OS file cache
    times = []
    for _ in range(args.repeat):
        t = time.perf_counter()
        data = read_source(res_a)
        session_layers(data)
        times.append(time.perf_counter() - t)
    rows.append(("read + layer data (no Qt)", _median(times), f"median of {args.repeat}"))
    shape = data.labels.shape

    # --- in a viewer ---------------------------------------------------------------------
    def draw(viewer: Any) -> None:
        QApplication.processEvents()
        viewer.screenshot(canvas_only=True, flash=False)

    warm = napari.Viewer(show=True)
    warm.open(str(res_b), plugin="nwb-llmdecode")  # imports, GL context, plugin discovery
    draw(warm)
    warm.close()

    opens, explorers = [], []
    viewer = None
    for _ in range(args.repeat):
        if viewer is not None:
            viewer.close()
        viewer = napari.Viewer(show=True)
        viewer.window._qt_window.resize(1500, 950)
        QApplication.processEvents()
        t = time.perf_counter()
        viewer.open(str(res_a), plugin="nwb-llmdecode")
        draw(viewer)
        opens.append(time.perf_counter() - t)
        t = time.perf_counter()
        _, w = viewer.window.add_plugin_dock_widget("nwb-llmdecode", "Salience explorer")
        draw(viewer)
        explorers.append(time.perf_counter() - t)
    rows.append(
        ("open in napari, coloured by salience, drawn", _median(opens), f"median of {args.repeat}")
    )
    rows.append(("open the Salience explorer", _median(explorers), f"median of {args.repeat}"))

    viewer.open(str(res_b), plugin="nwb-llmdecode")
    w.set_session(next(v for v in w._views() if v.source == str(res_a)))
    assert len(w.sets) == 2, w.sets

    def timed(action: Any, render: bool) -> float:
        t = time.perf_counter()
        action()
        if render:
            draw(viewer)
        else:
            QApplication.processEvents()
        return time.perf_counter() - t

    n_ch = w.channel_box.count()
    for render in (False, True):
        suffix = ", drawn" if render else " (update only)"
        method = [
            timed(lambda i=i: w.method_box.setCurrentIndex(i % 2), render)
            for i in range(1, 2 * args.repeat + 1)
        ]
        channel = [
            timed(lambda i=i: w.channel_box.setCurrentIndex(i % n_ch), render)
            for i in range(1, n_ch * args.repeat + 1)
        ]
        w.channel_box.setCurrentIndex(0)
        w.time_check.setChecked(True)
        frames = [
            timed(lambda i=i: w.slider.setValue(i), render) for i in range(1, 3 * args.repeat + 1)
        ]
        w.time_check.setChecked(False)
        rows.append(
            (
                f"switch salience method{suffix}",
                _median(method),
                f"median of {len(method)}, max {max(method):.3f}",
            )
        )
        rows.append(
            (
                f"switch output channel{suffix}",
                _median(channel),
                f"median of {len(channel)}, max {max(channel):.3f}",
            )
        )
        rows.append(
            (
                f"next time-resolved frame{suffix}",
                _median(frames),
                f"median of {len(frames)}, max {max(frames):.3f}",
            )
        )
    select = [timed(lambda r=r: w.select_roi(r), True) for r in w.table_rois()[:5]]
    rows.append(
        (
            "select a ROI (centre, highlight, plot), drawn",
            _median(select),
            f"median of {len(select)}",
        )
    )
    overlay_rows = _overlay_costs(viewer, w, draw, args.repeat)
    if args.screenshot:
        w.select_roi(w.table_rois()[0])
        viewer.reset_view()
        from imageio.v3 import imwrite

        imwrite(args.screenshot, viewer.screenshot(canvas_only=False, flash=False))
    viewer.close()

    print(
        f"\n{args.rois} ROIs, {args.planes} planes, {args.frames} frames; label volume "
        f"{shape}; file {res_a.stat().st_size / 1e6:.1f} MB\n"
    )
    print("| step | seconds | |")
    print("|---|---:|---|")
    for name, sec, note in rows:
        print(f"| {name} | {sec:.3f} | {note} |")
    print("\nRecolour and draw, by what is updated (interleaved in one run):\n")
    print("| updated | seconds | |")
    print("|---|---:|---|")
    for name, sec, note in overlay_rows:
        print(f"| {name} | {sec:.3f} | {note} |")
    return 0


def _overlay_costs(viewer: Any, w: Any, draw: Any, repeat: int) -> list[tuple[str, float, str]]:
    """What each overlay adds to a recolouring: the salience image alone, with the
    salient-ROI outlines, with the rank labels, with both; the four interleaved, so that
    other load on the machine hits them alike."""
    from napari_llmdecode._layers import META_KEY, colour_update
    from napari_llmdecode._viewer import relayout_ranks

    data, sset = w.data, w.current_set
    sal, outl, ranks = w._layer("salience"), w._layer("outlines"), w._layer("ranks")
    modes = ["salience image only", "+ salient-ROI outlines", "+ rank labels", "all three"]
    times: dict[str, list[float]] = {m: [] for m in modes}
    n_ch = len(data.results.channels)
    for i in range(4 * 3 * repeat):
        mode = modes[i % 4]
        values = sset.values(i % n_ch)
        t = time.perf_counter()
        upd = colour_update(data, values)
        sal.data = upd["volume"]
        sal.contrast_limits = upd["contrast_limits"]
        if mode in (modes[1], modes[3]):
            outl.data = upd["outlines"]
            outl.features = upd["outline_features"]
        if mode in (modes[2], modes[3]):
            ranks.metadata[META_KEY]["values"] = values
            relayout_ranks(ranks)
        draw(viewer)
        times[mode].append(time.perf_counter() - t)
    return [(m, _median(x), f"median of {len(x)}, drawn") for m, x in times.items()]


if __name__ == "__main__":
    raise SystemExit(main())
