"""The plugin in real napari viewers (run under a display: ``xvfb-run``, as ``make test`` does).

Files are opened through the manifest, widgets are opened by plugin and widget name, and
rows and canvas positions are clicked with real Qt mouse events.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari", reason="napari is in the [napari] extra")
pytest.importorskip("pytestqt", reason="pytest-qt is in the [dev] extra")

from napari_data import PlantedFiles, make_planted_files
from napari_llmdecode._layers import paint, roi_world_position
from napari_llmdecode._widgets._explorer import _camera


def _has_display() -> bool:
    # napari's canvas needs OpenGL: Qt's offscreen platform has none, a (virtual) X or
    # Wayland display does
    if os.environ.get("QT_QPA_PLATFORM", "") in ("offscreen", "minimal"):
        return False
    if sys.platform != "linux":
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


pytestmark = [
    pytest.mark.gui,
    pytest.mark.skipif(
        not _has_display(),
        reason="no display with OpenGL for napari's canvas; run under xvfb-run (make test does)",
    ),
]

PLUGIN = "nwb-llmdecode"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> PlantedFiles:
    return make_planted_files(tmp_path_factory.mktemp("napari_widgets"))


def _open(viewer, path: Path) -> list:
    return viewer.open(str(path), plugin=PLUGIN)


def _layer(viewer, role: str, data=None):
    for layer in viewer.layers:
        info = layer.metadata.get("llmdecode", {})
        if info.get("role") == role and (data is None or info.get("data") is data):
            return layer
    raise LookupError(role)


def _explorer(viewer):
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Salience explorer")
    return widget


def _click(qtbot, widget, pos) -> None:
    from qtpy.QtCore import QPoint, Qt

    if not isinstance(pos, QPoint):
        pos = QPoint(int(pos[0]), int(pos[1]))
    qtbot.mouseClick(widget, Qt.MouseButton.LeftButton, pos=pos)


def _click_row(qtbot, table, row: int) -> None:
    _click(qtbot, table.viewport(), table.visualItemRect(table.item(row, 0)).center())


def _canvas_pixel(viewer, world: np.ndarray) -> np.ndarray:
    """Canvas pixel (x, y) where a world (z, y, x) point is drawn in the 2D view."""
    canvas = viewer.window._qt_viewer.canvas
    return canvas.view.scene.transform.map([world[2], world[1], 0, 1])[:2]


# ----------------------------------------------------------------------------------------
# reader through the manifest
# ----------------------------------------------------------------------------------------


def test_open_results_through_the_manifest(make_napari_viewer, files: PlantedFiles) -> None:
    viewer = make_napari_viewer()
    layers = _open(viewer, files.results)
    assert [(type(layer).__name__, layer.name) for layer in layers] == [
        ("Image", "planted_desc-llmdecode: mean image"),
        ("Image", "planted_desc-llmdecode: correlation image"),
        ("Labels", "planted_desc-llmdecode: ROIs (outlines)"),
        ("Image", "grad-x-input salience (a.u.)"),
        ("Labels", "planted_desc-llmdecode: salient ROIs"),
        ("Points", "planted_desc-llmdecode: salience ranks"),
    ]
    labels, sal, outl, ranks = (
        _layer(viewer, "labels"),
        _layer(viewer, "salience"),
        _layer(viewer, "outlines"),
        _layer(viewer, "ranks"),
    )
    data = labels.metadata["llmdecode"]["data"]
    for layer in layers:
        np.testing.assert_allclose(layer.scale, [12.0, 1.0, 1.0])
    # every ROI is shown, by its outline
    assert labels.visible and outl.visible and ranks.visible
    np.testing.assert_array_equal(labels.data, data.edges)
    sset = data.results.salience[0]
    np.testing.assert_array_equal(sal.data, paint(data.labels, sset.salience))
    assert sal.colormap.name == "llmdecode salience"
    assert sal.contrast_limits == [0.0, pytest.approx(float(sset.salience.max()))]
    # the colourbar and its title are on as soon as the file is open (no explorer yet)
    assert sal.colorbar.visible and sal.name_overlay.visible
    assert sal.name_overlay.position == sal.colorbar.position
    drivers = np.sort(files.truth.driver_rois)
    assert set(np.unique(outl.data)) - {0} == set((drivers + 1).tolist())  # only salient ROIs
    white = ranks.features["text_colour"] == "white"
    assert set(ranks.features["roi"][white]) == set(drivers.tolist())
    # viewer's z axis spans the two planes, 12 µm apart, and is called "plane"
    assert viewer.dims.range[0].step == 12.0 and viewer.dims.range[0].stop == 12.0
    assert tuple(viewer.dims.axis_labels) == ("plane", "y", "x")


def test_open_session_and_sample_data(make_napari_viewer, files, tmp_path, monkeypatch) -> None:
    viewer = make_napari_viewer()
    layers = _open(viewer, files.session)
    assert [type(layer).__name__ for layer in layers] == ["Image", "Image", "Labels"]
    assert layers[2].visible and tuple(viewer.dims.axis_labels) == ("plane", "y", "x")
    with pytest.raises(ValueError, match=PLUGIN):
        not_nwb = tmp_path / "x.nwb"
        not_nwb.write_text("hello")
        viewer.open(str(not_nwb), plugin=PLUGIN)
    monkeypatch.setenv("NAPARI_LLMDECODE_CACHE", str(tmp_path / "samples"))
    viewer.open_sample(PLUGIN, "synthetic_results")
    assert any(layer.name.endswith("salient ROIs") for layer in viewer.layers)


# ----------------------------------------------------------------------------------------
# salience explorer
# ----------------------------------------------------------------------------------------


def test_explorer_table_row_click_selects_centres_highlights_and_plots(
    make_napari_viewer, qtbot, files: PlantedFiles
) -> None:
    viewer = make_napari_viewer(show=True)
    _open(viewer, files.results)
    w = _explorer(viewer)
    data = w.data
    sset = data.results.salience[0]
    drivers = set(files.truth.driver_rois.tolist())
    # the table lists the top N by salience: the planted drivers first
    rois = w.table_rois()
    assert len(rois) == 50
    assert set(rois[: len(drivers)]) == drivers
    assert rois == np.argsort(-sset.salience, kind="stable")[:50].tolist()

    row = 2
    _click_row(qtbot, w.table, row)
    roi = rois[row]
    assert w.selected_roi == roi
    # selected label, view centred on it (plane and position), highlight on it
    assert _layer(viewer, "labels").selected_label == roi + 1
    world = roi_world_position(data, roi)
    assert viewer.dims.point[0] == pytest.approx(world[0])
    np.testing.assert_allclose(_camera(viewer).center[-2:], world[1:], atol=1e-6)
    hl = _layer(viewer, "highlight")
    np.testing.assert_allclose(hl.data[0] * hl.scale + hl.translate, world)
    # plot: ΔF/F of the ROI, target and prediction of the plot channel, split shading
    ds = files.planted.session
    lines = w.plot.lines
    np.testing.assert_array_equal(lines["activity"].get_ydata(), ds["activity"].values[:, roi])
    np.testing.assert_array_equal(lines["target"].get_ydata(), ds["behavior"].values[:, 0])
    np.testing.assert_array_equal(lines["prediction"].get_ydata(), files.planted.predictions[:, 0])
    assert len(w.plot.ax_beh.patches) == len(files.planted.splits)
    assert {t.get_text() for t in w.plot.ax_beh.get_legend().get_texts()} >= {
        "train",
        "validation",
        "test",
        "target",
        "prediction",
    }

    # another plot channel re-plots the same ROI
    w.plot_channel_box.setCurrentIndex(2)
    np.testing.assert_array_equal(w.plot.lines["target"].get_ydata(), ds["behavior"].values[:, 2])
    assert "tail_angles[2]" in w.metrics_label.text()

    # columns: short plane names, salience to 3 significant digits, one per channel
    from napari_llmdecode._widgets._explorer import SORT_ROLE

    heads = [w.table.horizontalHeaderItem(c).text() for c in range(w.table.columnCount())]
    assert heads == ["rank", "ROI", "plane", "salience", "[0]", "[1]", "[2]"]
    assert "tail_angles[0], tail_angles[1], tail_angles[2]" in w.table_caption.text()
    assert {w.table.item(i, 2).text() for i in range(50)} == {"plane0", "plane1"}
    for i in range(50):
        v = float(w.table.item(i, 3).data(SORT_ROLE))
        assert w.table.item(i, 3).text() == f"{v:.3g}"
        assert v == pytest.approx(float(sset.salience[w.table_rois()[i]]))
    # every column is in view in the dock (nothing cut off on the right)
    viewport = w.table.viewport().width()
    last = w.table.columnCount() - 1
    assert w.table.columnViewportPosition(last) + w.table.columnWidth(last) <= viewport

    # every column sorts by its numbers (plane by index), and row -> ROI stays right
    header = w.table.horizontalHeader()
    for col in range(w.table.columnCount()):
        for _ in range(2):  # ascending, then descending
            x = header.sectionViewportPosition(col) + header.sectionSize(col) // 2
            _click(qtbot, header.viewport(), (x, header.height() // 2))
            values = [float(w.table.item(i, col).data(SORT_ROLE)) for i in range(50)]
            assert values == sorted(values) or values == sorted(values, reverse=True), col
            rois = w.table_rois()
            assert sorted(rois) == sorted(np.argsort(-sset.salience, kind="stable")[:50])
            assert [int(w.table.item(i, 1).text()) for i in range(50)] == rois
    salience_col = 3
    x = header.sectionViewportPosition(salience_col) + header.sectionSize(salience_col) // 2
    _click(qtbot, header.viewport(), (x, header.height() // 2))
    last = w.table.rowCount() - 1
    w.table.scrollToItem(w.table.item(last, 0))
    _click_row(qtbot, w.table, last)
    assert w.selected_roi == w.table_rois()[last]
    assert int(w.table.item(last, 1).text()) == w.selected_roi

    # the rank labels can be hidden
    ranks = _layer(viewer, "ranks")
    assert ranks.visible
    w.ranks_check.setChecked(False)
    assert not ranks.visible
    w.ranks_check.setChecked(True)
    assert ranks.visible


def test_explorer_canvas_click_selects_the_roi_under_the_mouse(
    make_napari_viewer, qtbot, files: PlantedFiles
) -> None:
    viewer = make_napari_viewer(show=True)
    _open(viewer, files.results)
    w = _explorer(viewer)
    data = w.data
    # a ROI whose centroid pixel is its own (not covered by another ROI), in plane 1
    candidates = [
        k
        for k in range(data.n_rois)
        if data.roi_plane[k] == 1
        and data.labels[tuple(np.round(data.centroids[k]).astype(int))] == k + 1
    ]
    roi = candidates[len(candidates) // 2]
    world = roi_world_position(data, roi)
    viewer.dims.set_point(0, world[0])
    viewer.reset_view()
    qtbot.wait(50)
    assert w.selected_roi is None
    native = viewer.window._qt_viewer.canvas.native
    _click(qtbot, native, np.round(_canvas_pixel(viewer, world)))
    qtbot.waitUntil(lambda: w.selected_roi is not None, timeout=2000)
    assert w.selected_roi == roi
    np.testing.assert_allclose(_camera(viewer).center[-2:], world[1:], atol=1e-6)
    np.testing.assert_array_equal(
        w.plot.lines["activity"].get_ydata(), files.planted.session["activity"].values[:, roi]
    )
    # the table row of a clicked ROI is selected when it is listed
    if roi in w.table_rois():
        assert int(w.table.selectedItems()[1].text()) == roi
    # clicking the background keeps the selection
    free = np.argwhere(data.labels[1] == 0)
    y, x = free[np.argmin(np.abs(free - np.array(data.labels.shape[1:]) / 2).sum(axis=1))]
    _click(qtbot, native, np.round(_canvas_pixel(viewer, np.array([world[0], y, x]))))
    qtbot.wait(50)
    assert w.selected_roi == roi
    # and another ROI is selected by clicking it
    other = candidates[0]
    _click(qtbot, native, np.round(_canvas_pixel(viewer, roi_world_position(data, other))))
    qtbot.waitUntil(lambda: w.selected_roi == other, timeout=2000)


def test_explorer_switches_method_channel_and_frame(
    make_napari_viewer, qtbot, files: PlantedFiles
) -> None:
    viewer = make_napari_viewer()
    _open(viewer, files.results)
    _open(viewer, files.results_corr)
    w = _explorer(viewer)
    planted = next(v for v in w._views() if v.name == "planted_desc-llmdecode")
    w.session_box.setCurrentIndex(
        [w.session_box.itemText(i) for i in range(w.session_box.count())].index(
            "planted_desc-llmdecode (results)"
        )
    )
    assert w.data is planted
    # both methods can colour the same ROIs
    assert [s.method for s in w.sets] == ["grad-x-input", "abs-correlation"]
    assert w.method_box.isEnabled()
    sal = _layer(viewer, "salience", planted)
    outl = _layer(viewer, "outlines", planted)
    ranks = _layer(viewer, "ranks", planted)
    corr = w.sets[1]
    w.method_box.setCurrentIndex(1)
    np.testing.assert_array_equal(sal.data, paint(planted.labels, corr.salience))
    outlined = np.flatnonzero(corr.salience >= 0.2 * corr.salience.max())
    assert set(np.unique(outl.data)) - {0} == set((outlined + 1).tolist())
    white = ranks.features["text_colour"] == "white"
    top10 = np.argsort(-corr.salience, kind="stable")[:10]
    assert ranks.features["roi"][white].tolist() == top10.tolist()
    # (napari numbers equal layer names: the other file's layer has this title too)
    assert re.fullmatch(r"abs-correlation salience \(a\.u\.\)( \[\d+\])?", sal.name)
    assert w.table_rois()[:5] == np.argsort(-corr.salience, kind="stable")[:5].tolist()
    # one output channel
    w.channel_box.setCurrentText("tail_angles[1]")
    np.testing.assert_array_equal(sal.data, paint(planted.labels, corr.by_output[:, 1]))
    assert sal.contrast_limits[1] == pytest.approx(float(np.nanmax(corr.by_output[:, 1])))
    assert w.plot_channel_box.currentText() == "tail_angles[1]"
    assert sal.name.startswith("abs-correlation salience (a.u.), tail_angles[1]")
    # time-resolved salience, frame by frame (fixed colour scale)
    w.method_box.setCurrentIndex(0)
    planted_set = w.sets[0]
    w.time_check.setChecked(True)
    test_frames = np.flatnonzero(np.isfinite(planted_set.timecourse).any(axis=1))
    assert w.slider.maximum() == len(test_frames) - 1
    limits = tuple(sal.contrast_limits)
    for step in (0, 7, w.slider.maximum()):
        w.slider.setValue(step)
        frame = int(test_frames[step])
        assert w.frame == frame
        np.testing.assert_array_equal(
            sal.data, paint(planted.labels, planted_set.timecourse[frame])
        )
        assert tuple(sal.contrast_limits) == limits
        assert f"frame {frame}" in w.frame_label.text()
        # the colourbar's title says the scale is that of all frames
        assert sal.name.startswith(
            f"grad-x-input salience (a.u.), frame {frame}, one scale for all frames"
        )
        assert f"0 to {limits[1]:.3g} a.u. for all frames" in w.frame_label.text()
    w.select_roi(int(files.truth.driver_rois[0]))
    t = planted.results.times[w.frame]
    assert [ln.get_xdata()[0] for ln in w.plot.frame_lines] == [t, t]
    # play steps through the frames
    before = w.slider.value()
    w.play.setChecked(True)
    qtbot.waitUntil(lambda: w.slider.value() != before, timeout=2000)
    w.play.setChecked(False)
    w.time_check.setChecked(False)  # back to the chosen channel's salience
    np.testing.assert_array_equal(sal.data, paint(planted.labels, planted_set.by_output[:, 1]))


def test_explorer_follows_a_newly_opened_results_file(
    make_napari_viewer, files: PlantedFiles
) -> None:
    viewer = make_napari_viewer()
    _open(viewer, files.session)
    w = _explorer(viewer)
    assert w.data.results is None and w.table.rowCount() == 0
    # a session without results: the ROI's ΔF/F only
    w.select_roi(7)
    assert set(w.plot.lines) == {"activity"}
    np.testing.assert_array_equal(
        w.plot.lines["activity"].get_ydata(), files.planted.session["activity"].values[:, 7]
    )
    _open(viewer, files.results)
    first = w.data
    assert first.name == "planted_desc-llmdecode" and w.table.rowCount() == 50
    assert _layer(viewer, "salience", first).colorbar.visible
    _open(viewer, files.results_corr)
    second = w.data
    assert second.name == "planted_desc-corr" and [s.method for s in w.sets] == [
        "abs-correlation",
        "grad-x-input",
    ]
    # the other results of the same ROIs are hidden (they would cover these); the
    # session file's layers too, since it has the same ROIs
    for layer in viewer.layers:
        data, role = layer.metadata["llmdecode"]["data"], layer.metadata["llmdecode"]["role"]
        if data is second and (role in ("salience", "outlines") or "mean image" in layer.name):
            assert layer.visible, layer.name
        elif data is first:
            assert not layer.visible, layer.name
    assert _layer(viewer, "salience", second).colorbar.visible
    assert _layer(viewer, "salience", second).name_overlay.visible
    assert not _layer(viewer, "salience", first).colorbar.visible
    assert not _layer(viewer, "salience", first).name_overlay.visible


def test_rank_labels_follow_the_zoom_and_roi_outlines_leave_3d(
    make_napari_viewer, qtbot, files: PlantedFiles
) -> None:
    from napari_llmdecode._layers import rank_labels

    viewer = make_napari_viewer(show=True)
    _open(viewer, files.results)
    ranks, labels = _layer(viewer, "ranks"), _layer(viewer, "labels")
    data = ranks.metadata["llmdecode"]["data"]
    values = data.results.salience[0].values()
    viewer.reset_view()
    qtbot.wait(50)
    viewer.screenshot(canvas_only=True, flash=False)  # draws: the layer learns its zoom
    before = np.array(ranks.data)
    np.testing.assert_allclose(before, rank_labels(data, values, pixel=ranks.scale_factor)[0])
    # zoomed in 4x: the text keeps its size on screen, so labels sit closer to their ROIs
    # (in world units) and the halo is one screen pixel off again
    cam = _camera(viewer)
    cam.zoom = cam.zoom * 4
    viewer.screenshot(canvas_only=True, flash=False)
    qtbot.waitUntil(lambda: not np.allclose(np.array(ranks.data), before), timeout=2000)
    np.testing.assert_allclose(
        ranks.data, rank_labels(data, values, pixel=ranks.scale_factor)[0], rtol=1e-6
    )
    white = ranks.features["text_colour"] == "white"
    n = int(white.sum())
    halo = np.array(ranks.data)[~white][::n]  # the first label's eight halo copies
    spread = np.ptp(halo[:, 1:], axis=0) * np.asarray(data.scale[1:]) / ranks.scale_factor
    np.testing.assert_allclose(spread, [2.4, 2.4], rtol=1e-3)  # +-1.2 screen pixels
    # 3D: the outlines of every ROI of every plane would pile up, so they step aside
    assert labels.visible
    viewer.dims.ndisplay = 3
    assert not labels.visible and _layer(viewer, "outlines").visible
    viewer.dims.ndisplay = 2
    assert labels.visible
    labels.visible = False  # the user's choice is kept
    viewer.dims.ndisplay = 3
    viewer.dims.ndisplay = 2
    assert not labels.visible


def test_main_view_screenshot_is_not_blank(make_napari_viewer, qtbot, files: PlantedFiles) -> None:
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1500, 950)
    _open(viewer, files.results)
    w = _explorer(viewer)
    w.select_roi(w.table_rois()[0])  # moves to its plane
    qtbot.wait(100)  # let the dock widget take its space before fitting the view
    viewer.reset_view()
    qtbot.wait(100)
    canvas = viewer.screenshot(canvas_only=True, flash=False)
    assert canvas.ndim == 3 and canvas.shape[2] in (3, 4)
    assert canvas[..., :3].std() > 5
    assert len(np.unique(canvas[..., :3].reshape(-1, 3), axis=0)) > 50
    # the salience colours are on screen: warm (red > blue) pixels
    rgb = canvas[..., :3].astype(int)
    assert np.count_nonzero((rgb[..., 0] > rgb[..., 2] + 60) & (rgb[..., 0] > 120)) > 20
    full = viewer.screenshot(canvas_only=False, flash=False)
    assert full[..., :3].std() > 5
    target = os.environ.get("NAPARI_LLMDECODE_SCREENSHOT")
    if target:  # for a person to look at; never written into the repository
        from imageio.v3 import imwrite

        imwrite(target, full)


# ----------------------------------------------------------------------------------------
# fit decoder
# ----------------------------------------------------------------------------------------


def test_fit_widget_lists_the_series_of_the_open_session(
    make_napari_viewer, files: PlantedFiles
) -> None:
    viewer = make_napari_viewer()
    _open(viewer, files.session)
    _, fw = viewer.window.add_plugin_dock_widget(PLUGIN, "Fit decoder")
    assert fw.source.value == str(files.session)
    assert sorted(fw.rois.choices) == [
        "processing/ophys/DfOverF/RoiResponseSeries_plane0",
        "processing/ophys/DfOverF/RoiResponseSeries_plane1",
        "processing/ophys/Fluorescence/RoiResponseSeries_plane0",
        "processing/ophys/Fluorescence/RoiResponseSeries_plane1",
    ]
    assert sorted(fw.rois.value) == [
        "processing/ophys/DfOverF/RoiResponseSeries_plane0",
        "processing/ophys/DfOverF/RoiResponseSeries_plane1",
    ]
    assert fw.behavior.value == [files.truth.behavior_path]
    assert Path(fw.out.value).name == "planted_desc-llmdecode.nwb"
    fw.epochs.value = 3
    fw.seq_len.value = 8
    fw.backbone.value = "ridge"
    assert fw.options() == {
        "backbone": "ridge",
        "init": fw.init.value,
        "train_mode": fw.train_mode.value,
        "epochs": 3,
        "seq_len": 8,
        "salience": fw.salience.value,
    }
    from nwb_llmdecode import config

    assert list(fw.backbone.choices) == [*config.BACKBONE_ALIASES, *config.BASELINE_NAMES]
    assert fw.salience.value == config.FitConfig().salience


def test_fit_widget_runs_fit_in_a_worker_and_opens_the_results(
    make_napari_viewer, qtbot, files: PlantedFiles, tmp_path: Path
) -> None:
    from qtpy.QtCore import QTimer

    viewer = make_napari_viewer()
    _open(viewer, files.session)
    _, fw = viewer.window.add_plugin_dock_widget(PLUGIN, "Fit decoder")
    fw.backbone.value = "ridge"
    fw.epochs.value = 1
    fw.seq_len.value = 8
    out = tmp_path / "fit_desc-llmdecode.nwb"
    fw.out.value = out
    stages: list[tuple[str, int, int]] = []
    fw._bridge.progress.connect(lambda s, d, t: stages.append((s, d, t)))
    ticks: list[int] = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(1))
    timer.start(5)
    fw.run_button.native.click()
    assert fw.state == "running" and not fw.run_button.enabled and fw.cancel_button.enabled
    qtbot.waitUntil(lambda: fw.state != "running", timeout=120_000)
    timer.stop()
    assert fw.state == "done", fw.status.value
    assert out.exists() and fw.report.output == out
    assert stages and stages[0][0] == "read session"  # progress reached the GUI thread
    assert len(ticks) > 3  # the event loop kept running during the fit
    assert fw.run_button.enabled and not fw.cancel_button.enabled
    # the results were opened; the session's own layers are hidden
    opened = [layer for layer in viewer.layers if layer.name.startswith(out.stem + ":")]
    assert opened and all(
        not layer.visible for layer in viewer.layers if layer.name.startswith("planted:")
    )
    data = opened[0].metadata["llmdecode"]["data"]
    assert data.results is not None
    assert data.results.predictions.shape == files.planted.session["behavior"].shape


def test_fit_widget_cancel_stops_the_fit_and_writes_nothing(
    make_napari_viewer, qtbot, files: PlantedFiles, tmp_path: Path
) -> None:
    viewer = make_napari_viewer()
    _open(viewer, files.session)
    _, fw = viewer.window.add_plugin_dock_widget(PLUGIN, "Fit decoder")
    fw.backbone.value = "lstm"
    fw.epochs.value = 500
    fw.seq_len.value = 8
    out = tmp_path / "cancelled.nwb"
    fw.out.value = out
    seen: list[str] = []
    fw._bridge.progress.connect(lambda s, d, t: seen.append(s))
    fw.run_button.native.click()
    qtbot.waitUntil(lambda: any(s != "read session" for s in seen), timeout=60_000)
    fw.cancel_button.native.click()
    qtbot.waitUntil(lambda: fw.state != "running", timeout=60_000)
    assert fw.state == "cancelled", fw.status.value
    assert fw.status.value == "Cancelled"
    assert not out.exists() and fw.report is None
    assert fw.run_button.enabled and not fw.cancel_button.enabled


def test_fit_widget_reports_a_failing_fit_and_stays_usable(
    make_napari_viewer, qtbot, files: PlantedFiles, tmp_path: Path
) -> None:
    viewer = make_napari_viewer()
    _open(viewer, files.session)
    _, fw = viewer.window.add_plugin_dock_widget(PLUGIN, "Fit decoder")
    out = tmp_path / "exists.nwb"
    out.write_bytes(b"keep me")
    fw.out.value = out  # exists, and "overwrite output" is off: the fit must refuse
    fw.run_button.native.click()
    qtbot.waitUntil(lambda: fw.state != "running", timeout=60_000)
    assert fw.state == "error"
    assert fw.status.value.startswith("Error: ")
    assert out.read_bytes() == b"keep me"
    assert fw.run_button.enabled and not fw.cancel_button.enabled
    assert fw.report is None
