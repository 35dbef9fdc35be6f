"""Salience explorer dock widget: top salient ROIs, click-through, traces, time-resolved view.

All array work is done by the pure functions of :mod:`napari_llmdecode._layers`; this module
only wires them to Qt widgets, matplotlib and the viewer's layers.
"""

from __future__ import annotations

import logging
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QSizePolicy,
    QSlider,
    QSpinBox,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from .._layers import (
    ALL_OUTPUTS,
    META_KEY,
    SalienceSet,
    SessionData,
    colour_update,
    compatible,
    layer_role,
    roi_on_ray,
    roi_world_position,
    salience_title,
    top_rows,
    trace_data,
)
from .._viewer import follow_zoom, hide_colourbar, relayout_ranks, show_colourbar

if TYPE_CHECKING:
    import napari

__all__ = ["SalienceExplorer"]

log = logging.getLogger(__name__)

_SPLIT_COLOURS = {"train": "#4c72b0", "validation": "#dd8452", "test": "#55a868"}
_BG = "#262930"
_FG = "#d6d6d6"
_ALL = ALL_OUTPUTS
#: Colour of the selected ROI's square (apart from the cyan outlines of salient ROIs).
_HIGHLIGHT = "#7cfc00"


def _camera(viewer: Any) -> Any:
    """The viewer's camera (``viewer.scene.camera`` since napari 0.9)."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None and hasattr(scene, "camera") else viewer.camera


#: Item data role holding a cell's number (what the column sorts by).
SORT_ROLE = Qt.ItemDataRole.UserRole + 1


class _Item(QTableWidgetItem):
    """A table cell that sorts by its number (:data:`SORT_ROLE`) when it has one."""

    def __lt__(self, other: QTableWidgetItem) -> bool:  # type: ignore[override]
        a, b = self.data(SORT_ROLE), other.data(SORT_ROLE)
        if a is not None and b is not None:
            return float(a) < float(b)
        return super().__lt__(other)


def _num_item(value: float | int) -> QTableWidgetItem:
    """A read-only cell: integers as they are, reals to 3 significant digits (the full
    value in the tooltip); sorts by the number."""
    item = _Item()
    v = float(value)
    if isinstance(value, int | np.integer):
        item.setText(str(int(value)))
    else:
        item.setText("" if not np.isfinite(v) else f"{v:.3g}")
        item.setToolTip(repr(v))
        item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
    item.setData(SORT_ROLE, v if np.isfinite(v) else -np.inf)
    item.setFlags(item.flags() & ~Qt.ItemFlag.ItemIsEditable)
    return item


def channel_headers(channels: list[str]) -> tuple[list[str], str]:
    """Narrow column headers of the per-channel salience columns, and a caption.

    Channels of one behaviour series (``tail_angles[0]``, ``tail_angles[1]``) are headed
    by their index alone and the caption names the series; channels of several series
    keep their names.

    Examples
    --------
    >>> channel_headers(["tail_angles[0]", "tail_angles[1]"])
    (['[0]', '[1]'], 'salience per output: [0], [1] = tail_angles[0], tail_angles[1]')
    >>> channel_headers(["speed[0]", "tail[0]"])[0]
    ['speed[0]', 'tail[0]']
    """
    parts = [c.rpartition("[") for c in channels]
    series = {head for head, sep, _ in parts if sep}
    if len(series) == 1 and all(sep for _, sep, _ in parts):
        heads = [f"[{tail}" for _, _, tail in parts]
        return heads, f"salience per output: {', '.join(heads)} = {', '.join(channels)}"
    return list(channels), "salience per output: one column per behaviour channel"


class _Plot(QWidget):
    """Matplotlib panel: ROI activity (top), target and prediction (bottom), split shading."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(4.5, 3.4), facecolor=_BG, layout="constrained")
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(240)
        self.canvas.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.ax_act, self.ax_beh = self.figure.subplots(2, 1, sharex=True)
        for ax in (self.ax_act, self.ax_beh):
            ax.set_facecolor(_BG)
            ax.tick_params(colors=_FG, labelsize=8)
            for s in ax.spines.values():
                s.set_color("#5a5f6a")
        self.lines: dict[str, Any] = {}
        self.frame_lines: list[Any] = []
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.canvas)
        self._message("Click a ROI in the table or on the canvas")

    def _message(self, text: str) -> None:
        for ax in (self.ax_act, self.ax_beh):
            ax.cla()
            ax.set_facecolor(_BG)
        self.lines = {}
        self.frame_lines = []
        self.ax_act.text(
            0.5,
            0.5,
            text,
            color=_FG,
            ha="center",
            va="center",
            fontsize=9,
            transform=self.ax_act.transAxes,
        )
        self.canvas.draw_idle()

    def show(self, d: dict[str, Any], title: str, frame_time: float | None) -> None:  # type: ignore[override]
        for ax in (self.ax_act, self.ax_beh):
            ax.cla()
            ax.set_facecolor(_BG)
            ax.tick_params(colors=_FG, labelsize=8)
        self.lines = {}
        if "activity" in d:
            (self.lines["activity"],) = self.ax_act.plot(
                d["time"], d["activity"], color="#7fd3ff", lw=0.9, label=d["activity_label"]
            )
        self.ax_act.set_ylabel(d["activity_label"], color=_FG, fontsize=8)
        self.ax_act.set_title(title, color=_FG, fontsize=9, loc="left")
        if "target" in d:
            (self.lines["target"],) = self.ax_beh.plot(
                d["results_time"], d["target"], color="#f2f2f2", lw=1.6, label="target"
            )
            (self.lines["prediction"],) = self.ax_beh.plot(
                d["results_time"], d["prediction"], color="#ff7f50", lw=0.9, label="prediction"
            )
            unit = f" ({d['unit']})" if d.get("unit") else ""
            self.ax_beh.set_ylabel(f"{d['channel_name']}{unit}", color=_FG, fontsize=8)
            seen = set()
            for name, a, b in d["splits"]:
                c = _SPLIT_COLOURS.get(name, "#888888")
                for ax in (self.ax_act, self.ax_beh):
                    ax.axvspan(
                        a,
                        b,
                        color=c,
                        alpha=0.16,
                        lw=0,
                        label=name if ax is self.ax_beh and name not in seen else None,
                    )
                seen.add(name)
            leg = self.ax_beh.legend(
                fontsize=7, ncols=5, loc="upper center", bbox_to_anchor=(0.5, -0.28), frameon=False
            )
            for t in leg.get_texts():
                t.set_color(_FG)
        else:
            self.ax_beh.text(
                0.5,
                0.5,
                "no decoding results in this file",
                color=_FG,
                ha="center",
                va="center",
                fontsize=8,
                transform=self.ax_beh.transAxes,
            )
        self.ax_beh.set_xlabel("time (s)", color=_FG, fontsize=8)
        self.frame_lines = []
        self.set_frame_time(frame_time)

    def set_frame_time(self, t: float | None) -> None:
        for ln in self.frame_lines:
            ln.remove()
        self.frame_lines = []
        if t is not None and self.lines:
            self.frame_lines = [
                ax.axvline(t, color="#ffd700", lw=0.8) for ax in (self.ax_act, self.ax_beh)
            ]
        self.canvas.draw_idle()


class SalienceExplorer(QWidget):
    """Dock widget: the most salient ROIs of an opened results file, and their traces.

    Parameters
    ----------
    napari_viewer
        The viewer (napari injects it).

    Attributes
    ----------
    selected_roi
        Global index of the selected ROI, or ``None``.
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.data: SessionData | None = None
        self.sets: list[SalienceSet] = []
        self.selected_roi: int | None = None
        self._frames = np.zeros(0, dtype=np.int64)
        self._course_limits: dict[int, tuple[float, float]] = {}
        self._highlight: Any = None
        self._updating = False

        self.info = QLabel("Open an NWB results file (File > Open, or File > Open Sample).")
        self.info.setWordWrap(True)
        self.session_box = QComboBox()
        self.method_box = QComboBox()
        self.channel_box = QComboBox()
        self.plot_channel_box = QComboBox()
        self.top_n = QSpinBox()
        self.top_n.setRange(1, 100_000)
        self.top_n.setValue(50)
        self.time_check = QCheckBox("time-resolved")
        self.ranks_check = QCheckBox("rank labels")
        self.ranks_check.setChecked(True)
        self.ranks_check.setToolTip("Show the rank and salience of the ten most salient ROIs")
        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setEnabled(False)
        self.play = QPushButton("▶")
        self.play.setCheckable(True)
        self.play.setFixedWidth(32)
        self.play.setEnabled(False)
        self.frame_label = QLabel("")
        self.frame_label.setWordWrap(True)
        self.metrics_label = QLabel("")
        self._view_by_id: dict[int, SessionData] = {}
        self._known: set[int] = set()
        self._timer = QTimer(self)
        self._timer.setInterval(100)

        self.table_caption = QLabel("")
        self.table_caption.setWordWrap(True)
        self.table = QTableWidget(0, 4)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        self.table.horizontalHeader().setSortIndicator(0, Qt.SortOrder.AscendingOrder)
        self.table.setSortingEnabled(True)
        self.plot = _Plot(self)

        form = QFormLayout()
        form.addRow("results", self.session_box)
        form.addRow("salience", self.method_box)
        form.addRow("colour by", self.channel_box)
        form.addRow("plot channel", self.plot_channel_box)
        top_row = QHBoxLayout()
        top_row.addWidget(self.top_n)
        top_row.addWidget(self.ranks_check)
        form.addRow("top N", top_row)
        time_row = QHBoxLayout()
        time_row.addWidget(self.time_check)
        time_row.addWidget(self.play)
        time_row.addWidget(self.slider, 1)
        split = QSplitter(Qt.Orientation.Vertical)
        table_box = QWidget()
        table_lay = QVBoxLayout(table_box)
        table_lay.setContentsMargins(0, 0, 0, 0)
        table_lay.addWidget(self.table_caption)
        table_lay.addWidget(self.table, 1)
        split.addWidget(table_box)
        split.addWidget(self.plot)
        split.setSizes([260, 320])
        lay = QVBoxLayout(self)
        lay.addWidget(self.info)
        lay.addLayout(form)
        lay.addLayout(time_row)
        lay.addWidget(self.frame_label)
        lay.addWidget(self.metrics_label)
        lay.addWidget(split, 1)

        self.session_box.currentIndexChanged.connect(self._on_session)
        self.method_box.currentIndexChanged.connect(self._on_colouring)
        self.channel_box.currentIndexChanged.connect(self._on_channel)
        self.plot_channel_box.currentIndexChanged.connect(self._on_plot_channel)
        self.top_n.valueChanged.connect(self._fill_table)
        self.time_check.toggled.connect(self._on_time_toggled)
        self.ranks_check.toggled.connect(self._on_ranks_toggled)
        self.slider.valueChanged.connect(self._on_slider)
        self.play.toggled.connect(self._on_play)
        self._timer.timeout.connect(self._step)
        self.table.itemSelectionChanged.connect(self._on_table_selection)
        self.viewer.layers.events.inserted.connect(self._refresh_sessions)
        self.viewer.layers.events.removed.connect(self._refresh_sessions)
        self.viewer.mouse_drag_callbacks.append(self._on_canvas_click)
        self.destroyed.connect(self._disconnect)
        self._refresh_sessions()

    # ------------------------------------------------------------------------------------
    # sessions, methods, channels
    # ------------------------------------------------------------------------------------

    def _alive(self) -> bool:
        """False once Qt has deleted the widget (the dock was closed); then disconnect."""
        try:
            self.objectName()
        except RuntimeError:
            self._disconnect()
            return False
        return True

    def _disconnect(self, *_: Any) -> None:
        if self._on_canvas_click in self.viewer.mouse_drag_callbacks:
            self.viewer.mouse_drag_callbacks.remove(self._on_canvas_click)
        self.viewer.layers.events.inserted.disconnect(self._refresh_sessions)
        self.viewer.layers.events.removed.disconnect(self._refresh_sessions)

    def _views(self) -> list[SessionData]:
        seen: dict[int, SessionData] = {}
        for layer in self.viewer.layers:
            role, data = layer_role(layer.metadata)
            if data is not None and role != "highlight":
                seen.setdefault(id(data), data)
        return list(seen.values())

    def _layer(self, role: str, data: SessionData | None = None) -> Any:
        data = data or self.data
        for layer in self.viewer.layers:
            r, d = layer_role(layer.metadata)
            if r == role and d is data:
                return layer
        return None

    def _refresh_sessions(self, *_: Any) -> None:
        if self._updating or not self._alive():
            return
        in_order = self._views()
        # a results file opened just now is followed (the newest one)
        fresh = [
            v
            for v in in_order
            if id(v) not in self._known and v.results is not None and v.results.salience
        ]
        self._known = {id(v) for v in in_order}
        views = sorted(in_order, key=lambda d: d.results is None)  # results files first
        ids = [id(v) for v in views]
        current = id(self.data) if self.data is not None else None
        self._updating = True
        try:
            self.session_box.clear()
            for v in views:
                tag = "results" if v.results is not None and v.results.salience else "session"
                self.session_box.addItem(f"{v.name} ({tag})", id(v))
            self._view_by_id = dict(zip(ids, views, strict=True))
            target = fresh[-1] if fresh else None
            if target is None and current not in ids:
                target = views[0] if views else None
            if target is not None:
                self.session_box.setCurrentIndex(ids.index(id(target)))
            elif current in ids:
                self.session_box.setCurrentIndex(ids.index(current))
        finally:
            self._updating = False
        if target is not None or current not in ids:
            self.set_session(target)
        else:
            self._fill_methods()

    def _on_session(self, index: int) -> None:
        if self._updating or index < 0:
            return
        self.set_session(self._view_by_id.get(self.session_box.itemData(index)))

    def set_session(self, data: SessionData | None) -> None:
        """Drive the layers of ``data`` (a file opened by this plugin)."""
        self._set_highlight(None)
        self.data = data
        self.selected_roi = None
        if data is None:
            self.info.setText("Open an NWB results file (File > Open, or File > Open Sample).")
            self.sets = []
            self._fill_methods()
            self.table.setRowCount(0)
            self.plot._message("No session open")
            return
        res = data.results
        if res is None:
            self.info.setText(
                f"<b>{data.name}</b>: a session without decoding results. "
                "Run the Fit decoder to make some."
            )
        else:
            run = res.run
            self.info.setText(
                f"<b>{data.name}</b><br>backbone {run.get('backbone', '?')} · init "
                f"{run.get('init', '?')} · train {run.get('train_mode', '?')} · seq_len "
                f"{run.get('seq_len', '?')} · {data.n_rois} ROIs in "
                f"{len(data.plane_names)} plane(s)"
            )
        self._updating = True
        try:
            self.channel_box.clear()
            self.plot_channel_box.clear()
            if res is not None:
                self.channel_box.addItem(_ALL)
                for c in res.channels:
                    self.channel_box.addItem(c)
                    self.plot_channel_box.addItem(c)
        finally:
            self._updating = False
        self._fill_methods()
        # show this file's layers; hide those of other files of the same ROIs (another
        # method's results), which would cover them
        for layer in self.viewer.layers:
            role, d = layer_role(layer.metadata)
            if d is None or role == "highlight":
                continue
            if d is data:
                if role in ("salience", "outlines"):
                    layer.visible = True
                elif role == "ranks":
                    layer.visible = self.ranks_check.isChecked()
            elif compatible(data, d):
                layer.visible = False
            if role == "salience":
                if d is data:
                    show_colourbar(layer)
                else:
                    hide_colourbar(layer)
        self.plot._message("Click a ROI in the table or on the canvas")
        self._metrics_line()

    def _fill_methods(self) -> None:
        data = self.data
        sets: list[SalienceSet] = []
        if data is not None:
            if data.results is not None:
                sets += data.results.salience
            for v in self._views():
                if v is not data and v.results is not None and compatible(data, v):
                    sets += [s for s in v.results.salience if s not in sets]
        current = self.sets[self.method_box.currentIndex()] if self.sets else None
        self.sets = sets
        self._updating = True
        try:
            self.method_box.clear()
            for s in sets:
                self.method_box.addItem(s.label)
            if current in sets:
                self.method_box.setCurrentIndex(sets.index(current))
        finally:
            self._updating = False
        self.method_box.setEnabled(len(sets) > 1)
        self._on_colouring()

    # ------------------------------------------------------------------------------------
    # colouring
    # ------------------------------------------------------------------------------------

    @property
    def current_set(self) -> SalienceSet | None:
        i = self.method_box.currentIndex()
        return self.sets[i] if 0 <= i < len(self.sets) else None

    @property
    def colour_channel(self) -> int | None:
        i = self.channel_box.currentIndex()
        return None if i <= 0 else i - 1

    @property
    def plot_channel(self) -> int | None:
        i = self.plot_channel_box.currentIndex()
        return i if i >= 0 else None

    @property
    def frame(self) -> int | None:
        if not self.time_check.isChecked() or not len(self._frames):
            return None
        return int(self._frames[self.slider.value()])

    def _on_channel(self, *_: Any) -> None:
        if self._updating:
            return
        c = self.colour_channel
        if c is not None and c < self.plot_channel_box.count():
            self._updating = True
            self.plot_channel_box.setCurrentIndex(c)
            self._updating = False
        self._on_colouring()

    def _on_colouring(self, *_: Any) -> None:
        if self._updating:
            return
        sset = self.current_set
        course = sset.timecourse if sset is not None else None
        self.time_check.setEnabled(course is not None)
        if course is not None:
            self._frames = np.flatnonzero(np.isfinite(course).any(axis=1))
            self._updating = True
            self.slider.setRange(0, max(0, len(self._frames) - 1))
            self._updating = False
        else:
            self._frames = np.zeros(0, dtype=np.int64)
            self.time_check.setChecked(False)
        self.apply_colouring()
        self._fill_table()
        if self.selected_roi is not None:
            self._plot_roi(self.selected_roi)

    def apply_colouring(self) -> None:
        """Recolour the salience image, outline the salient ROIs and label the top ten for
        the current choices; the colourbar's title says what is shown."""
        data, sset = self.data, self.current_set
        if data is None or sset is None:
            return
        frame = self.frame
        values = sset.values(self.colour_channel if frame is None else None, frame)
        limits = self._timecourse_limits(sset) if frame is not None else None
        upd = colour_update(data, values, limits=limits)
        sal = self._layer("salience")
        if sal is not None:
            sal.data = upd["volume"]
            sal.contrast_limits = upd["contrast_limits"]
            what = self.channel_box.currentText() or _ALL
            sal.name = salience_title(sset, what, frame=frame)
            show_colourbar(sal)
        outlines = self._layer("outlines")
        if outlines is not None:
            outlines.data = upd["outlines"]
            outlines.features = upd["outline_features"]
        ranks = self._layer("ranks")
        if ranks is not None:
            ranks.metadata[META_KEY]["values"] = values
            follow_zoom(ranks)  # (set up when the file opened; once)
            relayout_ranks(ranks)
        self._update_frame_label()

    def _on_ranks_toggled(self, on: bool) -> None:
        ranks = self._layer("ranks")
        if ranks is not None:
            ranks.visible = on

    def _timecourse_limits(self, sset: SalienceSet) -> tuple[float, float]:
        key = id(sset)
        if key not in self._course_limits:
            course = sset.timecourse if sset.timecourse is not None else np.zeros(0)
            finite = course[np.isfinite(course)]
            finite = finite[finite > 0]
            hi = float(np.percentile(finite, 99.5)) if finite.size else 1.0
            self._course_limits[key] = (0.0, hi if hi > 0 else 1.0)
        return self._course_limits[key]

    def _on_time_toggled(self, on: bool) -> None:
        self.slider.setEnabled(on)
        self.play.setEnabled(on)
        if not on:
            self.play.setChecked(False)
        self.apply_colouring()
        self._update_plot_frame()

    def _on_slider(self, *_: Any) -> None:
        if self._updating or not self.time_check.isChecked():
            return
        self.apply_colouring()
        self._update_plot_frame()

    def _on_play(self, on: bool) -> None:
        if on:
            self._timer.start()
        else:
            self._timer.stop()
        self.play.setText("⏸" if on else "▶")

    def _step(self) -> None:
        if self.slider.maximum() <= 0:
            return
        self.slider.setValue((self.slider.value() + 1) % (self.slider.maximum() + 1))

    def _frame_time(self) -> float | None:
        f = self.frame
        if f is None or self.data is None or self.data.results is None:
            return None
        return float(self.data.results.times[f])

    def _update_frame_label(self) -> None:
        f = self.frame
        t = self._frame_time()
        sset = self.current_set
        if f is None or t is None or sset is None:
            self.frame_label.setText("")
            return
        hi = self._timecourse_limits(sset)[1]
        self.frame_label.setText(
            f"frame {f}, t = {t:.2f} s · colour scale 0 to {hi:.3g} {sset.unit} for all frames "
            "(99.5th percentile of the time-resolved salience)"
        )

    def _update_plot_frame(self) -> None:
        self.plot.set_frame_time(self._frame_time())

    # ------------------------------------------------------------------------------------
    # table
    # ------------------------------------------------------------------------------------

    def _fill_table(self, *_: Any) -> None:
        data, sset = self.data, self.current_set
        header = self.table.horizontalHeader()
        sort_col, sort_order = header.sortIndicatorSection(), header.sortIndicatorOrder()
        self.table.setSortingEnabled(False)
        self.table.blockSignals(True)
        try:
            self.table.clearContents()
            if data is None or sset is None or data.results is None:
                self.table.setRowCount(0)
                self.table_caption.setText("")
                return
            rows = top_rows(data, sset, channel=self.colour_channel, n=self.top_n.value())
            chans = data.results.channels
            self.table.setColumnCount(4 + len(chans))
            heads = [
                ("rank", "rank under the chosen colouring (1 = most salient)"),
                ("ROI", "global ROI index (tooltip: table and row)"),
                ("plane", "ROI table (plane)"),
                ("salience", f"{sset.method} salience, mean over outputs ({sset.unit})"),
            ]
            ch_heads, caption = channel_headers(chans)
            heads += [
                (h, f"{sset.method} salience for output {c} ({sset.unit})")
                for h, c in zip(ch_heads, chans, strict=True)
            ]
            self.table_caption.setText(caption)
            for col, (text, tip) in enumerate(heads):
                item = QTableWidgetItem(text)
                item.setToolTip(tip)
                self.table.setHorizontalHeaderItem(col, item)
            n = len(rows["roi"])
            self.table.setRowCount(n)
            for i in range(n):
                roi = int(rows["roi"][i])
                self.table.setItem(i, 0, _num_item(int(rows["rank"][i])))
                roi_item = _num_item(roi)
                roi_item.setData(Qt.ItemDataRole.UserRole, roi)
                roi_item.setToolTip(data.roi_name(roi))
                self.table.setItem(i, 1, roi_item)
                plane = _Item(str(rows["plane"][i]))
                plane.setData(SORT_ROLE, int(data.roi_plane[roi]))
                plane.setToolTip(data.plane_names[int(data.roi_plane[roi])])
                plane.setFlags(plane.flags() & ~Qt.ItemFlag.ItemIsEditable)
                self.table.setItem(i, 2, plane)
                self.table.setItem(i, 3, _num_item(float(rows["salience"][i])))
                for c in range(len(chans)):
                    self.table.setItem(i, 4 + c, _num_item(float(rows["by_output"][i, c])))
            # one plane: the column would say the same on every row
            self.table.setColumnHidden(2, len(data.plane_names) < 2)
        finally:
            self.table.blockSignals(False)
            self.table.setSortingEnabled(True)
        if sort_col < self.table.columnCount():
            self.table.sortItems(sort_col, sort_order)
        self.table.resizeColumnsToContents()
        self._fit_table_width()
        self._select_table_row(self.selected_roi)

    def _fit_table_width(self) -> None:
        """Ask for the width that shows every column (up to 520 px) so that the dock
        opens wide enough; narrower docks scroll."""
        width = sum(
            self.table.columnWidth(c)
            for c in range(self.table.columnCount())
            if not self.table.isColumnHidden(c)
        )
        width += self.table.verticalScrollBar().sizeHint().width() + 2 * self.table.frameWidth()
        self.table.setMinimumWidth(min(width, 520))

    def table_rois(self) -> list[int]:
        """ROIs in the table, top to bottom as currently sorted."""
        out = []
        for i in range(self.table.rowCount()):
            item = self.table.item(i, 1)
            if item is not None:
                out.append(int(item.data(Qt.ItemDataRole.UserRole)))
        return out

    def _select_table_row(self, roi: int | None) -> None:
        self.table.blockSignals(True)
        try:
            self.table.clearSelection()
            if roi is not None:
                rois = self.table_rois()
                if roi in rois:
                    r = rois.index(roi)
                    self.table.selectRow(r)
                    self.table.scrollToItem(self.table.item(r, 0))
        finally:
            self.table.blockSignals(False)

    def _on_table_selection(self) -> None:
        rows = {i.row() for i in self.table.selectedItems()}
        if len(rows) != 1:
            return
        item = self.table.item(rows.pop(), 1)
        if item is not None:
            self.select_roi(int(item.data(Qt.ItemDataRole.UserRole)))

    # ------------------------------------------------------------------------------------
    # selection
    # ------------------------------------------------------------------------------------

    def _on_canvas_click(self, viewer: Any, event: Any) -> Generator[None, None, None]:
        # a closed dock keeps its widget: only a visible explorer selects
        if event.button != 1 or not self._alive() or not self.isVisible() or self.data is None:
            return
        dragged = False
        yield
        while event.type == "mouse_move":
            dragged = True
            yield
        if dragged:
            return
        roi = self.roi_at(event.position, event)
        if roi is not None:
            self.select_roi(roi)

    def roi_at(self, position: Any, event: Any = None) -> int | None:
        """Global ROI under a world ``position`` of the canvas, or ``None``."""
        data = self.data
        labels = self._layer("labels")
        if data is None or labels is None:
            return None
        if self.viewer.dims.ndisplay == 3 and event is not None:
            return roi_on_ray(
                data,
                np.asarray(position)[-3:],
                np.asarray(event.view_direction)[-3:],
            )
        # the ROI masks (the layer may show outlines only)
        idx = np.round(labels.world_to_data(np.asarray(position))).astype(int)
        inside = np.all((idx >= 0) & (idx < np.asarray(data.labels.shape)))
        value = int(data.labels[tuple(idx)]) if inside else 0
        return value - 1 if value else None

    def select_roi(self, roi: int, *, centre: bool = True) -> None:
        """Select global ROI ``roi``: highlight, centre the view, plot its traces."""
        data = self.data
        if data is None or not 0 <= roi < data.n_rois:
            return
        self.selected_roi = int(roi)
        labels = self._layer("labels")
        if labels is not None:
            labels.selected_label = roi + 1
        pos = roi_world_position(data, roi)
        if centre and np.all(np.isfinite(pos)):
            self.viewer.dims.set_point(0, float(pos[0]))
            camera = _camera(self.viewer)
            if self.viewer.dims.ndisplay == 3:
                camera.center = tuple(float(v) for v in pos)
            else:
                camera.center = (float(pos[1]), float(pos[2]))
        self._set_highlight(pos if np.all(np.isfinite(pos)) else None)
        self._select_table_row(roi)
        self._plot_roi(roi)

    def _set_highlight(self, world: np.ndarray | None) -> None:
        data = self.data
        layer = self._highlight
        if layer is not None and layer not in self.viewer.layers:
            layer = self._highlight = None
        if world is None or data is None:
            if layer is not None:
                layer.visible = False
            return
        point = (np.asarray(world) - np.asarray(data.translate)) / np.asarray(data.scale)
        if layer is None or layer.metadata.get("llmdecode", {}).get("data") is not data:
            if layer is not None:
                self.viewer.layers.remove(layer)
            active = self.viewer.layers.selection.active
            self._updating = True
            try:
                layer = self.viewer.add_points(
                    point[None],
                    name=f"{data.name}: selected ROI",
                    symbol="square",
                    size=2.2 * data.roi_diameter,
                    face_color="transparent",
                    border_color=_HIGHLIGHT,
                    border_width=0.06,
                    scale=data.scale,
                    translate=data.translate,
                    metadata={"llmdecode": {"role": "highlight", "data": data}},
                )
            finally:
                self._updating = False
            if active is not None:
                self.viewer.layers.selection.active = active
            self._highlight = layer
        else:
            layer.data = point[None]
            layer.visible = True

    def _on_plot_channel(self, *_: Any) -> None:
        if self._updating:
            return
        self._metrics_line()
        if self.selected_roi is not None:
            self._plot_roi(self.selected_roi)

    def _plot_roi(self, roi: int) -> None:
        data = self.data
        if data is None:
            return
        d = trace_data(data, roi, self.plot_channel)
        sset = self.current_set
        title = f"ROI {roi}  ·  {data.roi_name(roi)}"
        if sset is not None and np.isfinite(sset.salience[roi]):
            title += f"  ·  salience {float(sset.salience[roi]):.3g}"
        self.plot.show(d, title, self._frame_time())
        self._metrics_line()

    def _metrics_line(self) -> None:
        data, c = self.data, self.plot_channel
        if data is None or data.results is None or c is None:
            return
        name = data.results.channels[c]
        rows = [
            m
            for m in data.results.metrics
            if f"{m.get('behavior')}[{m.get('channel')}]" == name and m.get("split") == "test"
        ]
        self.metrics_label.setText(
            f"test {name}: r² {float(rows[0]['r2']):.3f}, r {float(rows[0]['pearson']):.3f}, "
            f"RMSE {float(rows[0]['rmse']):.3g}"
            if rows
            else ""
        )
