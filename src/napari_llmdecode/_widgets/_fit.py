"""Fit decoder dock widget: run :func:`nwb_llmdecode.pipeline.fit` in a worker thread.

The fit reports ``progress(stage, done, total)``; the callback runs in the worker thread,
forwards it to the GUI thread through a Qt signal, and raises :class:`FitCancelled` once
Cancel was pressed, which stops the fit at its next progress report. The results file is
written atomically by the pipeline, so a cancelled fit leaves no partial output.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    Label,
    LineEdit,
    ProgressBar,
    PushButton,
    Select,
    SpinBox,
)
from qtpy.QtCore import QObject, Signal

from .._layers import SessionData, layer_role

if TYPE_CHECKING:
    import napari

__all__ = ["FitCancelled", "FitDecoderWidget"]

log = logging.getLogger(__name__)

_FALLBACK: dict[str, Any] = {
    "backbone": "minilm",
    "init": "pretrained",
    "train_mode": "full",
    "epochs": 30,
    "seq_len": 20,
    "salience": "integrated-gradients",
}
_CHOICES: dict[str, list[str]] = {
    "backbone": ["minilm", "smollm2", "ridge", "lstm", "reservoir"],
    "init": ["pretrained", "random"],
    "train_mode": ["frozen", "lora", "full"],
    "salience": ["integrated-gradients", "saliency", "grad-x-input", "none"],
}


class FitCancelled(RuntimeError):
    """Raised inside the fit (from its progress callback) when the user cancels."""


class _Bridge(QObject):
    progress = Signal(str, int, int)


def _config_defaults() -> tuple[dict[str, Any], dict[str, list[str]]]:
    """Defaults and choices of the options the widget shows, from ``nwb_llmdecode.config``."""
    try:
        from nwb_llmdecode import config

        cfg = config.FitConfig()
        defaults = {k: getattr(cfg, k, v) for k, v in _FALLBACK.items()}
        choices = {
            "backbone": [*config.BACKBONE_ALIASES, *config.BASELINE_NAMES],
            "init": list(config.INITS),
            "train_mode": list(config.TRAIN_MODES),
            "salience": list(config.SALIENCE_METHODS),
        }
        return defaults, choices
    except Exception:  # config not importable: the widget still shows sensible defaults
        log.debug("FitConfig defaults unavailable", exc_info=True)
        return dict(_FALLBACK), {k: list(v) for k, v in _CHOICES.items()}


def _make_config(options: dict[str, Any]) -> Any:
    from nwb_llmdecode.config import FitConfig

    return FitConfig.from_dict(options)


class FitDecoderWidget(Container):
    """Dock widget: pick series and options for the open session and fit a decoder.

    Parameters
    ----------
    napari_viewer
        The viewer (napari injects it).

    Attributes
    ----------
    worker
        The running (or last) worker, or ``None``.
    report
        :class:`~nwb_llmdecode.pipeline.FitReport` of the last successful fit.
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        defaults, choices = _config_defaults()
        self.viewer = napari_viewer
        self.worker: Any = None
        self.report: Any = None
        self.state = "idle"
        self._cancel = threading.Event()
        self.session = ComboBox(label="open file", choices=self._session_choices, nullable=True)
        self.source = LineEdit(label="source", tooltip="Path, https URL or DANDI identifier")
        self.load_button = PushButton(text="Load series from source")
        # choices are callables: napari calls reset_choices() on dock widgets when layers
        # change, which would otherwise restore an initial empty list
        self._roi_items: list[tuple[str, str]] = []
        self._behavior_items: list[tuple[str, str]] = []
        self.rois = Select(label="ROI series", choices=lambda _w: self._roi_items)
        self.behavior = Select(label="behaviour", choices=lambda _w: self._behavior_items)
        backbones = list(dict.fromkeys([str(defaults["backbone"]), *choices["backbone"]]))
        self.backbone = ComboBox(label="backbone", choices=backbones, value=defaults["backbone"])
        self.init = ComboBox(label="init", choices=choices["init"], value=defaults["init"])
        self.train_mode = ComboBox(
            label="train mode", choices=choices["train_mode"], value=defaults["train_mode"]
        )
        self.salience = ComboBox(
            label="salience", choices=choices["salience"], value=defaults["salience"]
        )
        self.epochs = SpinBox(label="epochs", min=1, max=100_000, value=int(defaults["epochs"]))
        self.seq_len = SpinBox(label="seq_len", min=1, max=100_000, value=int(defaults["seq_len"]))
        self.out = FileEdit(label="output", mode="w", filter="*.nwb")
        self.overwrite = CheckBox(text="overwrite output", value=False)
        self.run_button = PushButton(text="Fit")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(label="progress", min=0, max=1, value=0)
        self.status = Label(value="")
        super().__init__(
            widgets=[
                self.session,
                self.source,
                self.load_button,
                self.rois,
                self.behavior,
                self.backbone,
                self.init,
                self.train_mode,
                self.epochs,
                self.seq_len,
                self.salience,
                self.out,
                self.overwrite,
                self.run_button,
                self.cancel_button,
                self.progress,
                self.status,
            ],
            labels=True,
        )
        self.rois.native.setMinimumHeight(70)
        self.behavior.native.setMinimumHeight(60)
        self._bridge = _Bridge()
        self._bridge.progress.connect(self._on_progress)
        self.session.changed.connect(self._on_session)
        self.load_button.changed.connect(self.load_series)
        self.run_button.changed.connect(self.start)
        self.cancel_button.changed.connect(self.cancel)
        self.viewer.layers.events.inserted.connect(self._refresh_sessions)
        self.viewer.layers.events.removed.connect(self._refresh_sessions)
        self._refresh_sessions()

    # ------------------------------------------------------------------------------------
    # choosing what to fit
    # ------------------------------------------------------------------------------------

    def _session_choices(self, _widget: Any = None) -> list[tuple[str, SessionData]]:
        seen: dict[int, SessionData] = {}
        for layer in self.viewer.layers:
            role, data = layer_role(layer.metadata)
            if data is not None and role != "highlight":
                seen.setdefault(id(data), data)
        return [(d.name, d) for d in seen.values()]

    def _refresh_sessions(self, *_: Any) -> None:
        try:
            before = self.session.value
        except RuntimeError:  # Qt deleted the widget (dock closed): stop listening
            self.viewer.layers.events.inserted.disconnect(self._refresh_sessions)
            self.viewer.layers.events.removed.disconnect(self._refresh_sessions)
            return
        self.session.reset_choices()
        choices = [d for _, d in self._session_choices()]
        if before is None and choices:
            # prefer a session without results: that is what one fits
            pick = next((d for d in choices if d.results is None), choices[0])
            self.session.value = pick

    def _on_session(self, data: SessionData | None) -> None:
        if data is None:
            return
        self.source.value = data.source
        self._set_series(data.roi_series, data.behavior_series)

    def _set_series(self, roi_series: list[dict[str, Any]], behavior: list[dict[str, Any]]) -> None:
        self._roi_items = [(f"{c['path']} ({c['n_rois']} ROIs)", c["path"]) for c in roi_series]
        self._behavior_items = [
            (f"{c['path']} ({c['n_channels']} ch, {c['unit']})", c["path"]) for c in behavior
        ]
        self.rois.reset_choices()
        self.behavior.reset_choices()
        # default as the library picks it: ΔF/F of every plane, else fluorescence
        for kind in ("DfOverF", "Fluorescence", None):
            pick = [c["path"] for c in roi_series if kind is None or c["container"] == kind]
            if pick:
                break
        self.rois.value = pick if roi_series else []
        self.behavior.value = [behavior[0]["path"]] if behavior else []
        try:
            from nwb_llmdecode.io.write import default_output_path

            self.out.value = default_output_path(self.source.value)
        except Exception:  # only a default: leave the field as it is
            log.debug("no default output path", exc_info=True)
        self.status.value = f"{len(roi_series)} ROI series, {len(behavior)} behaviour series"

    def load_series(self) -> None:
        """Read the ROI and behaviour series of the typed source (in a worker thread)."""
        from napari.qt.threading import create_worker

        from nwb_llmdecode.io.read import inspect_source

        source = self.source.value.strip()
        if not source:
            self.status.value = "Give a path, URL or DANDI identifier first"
            return
        self.status.value = f"Reading {source} ..."
        worker = create_worker(inspect_source, source, _start_thread=False, _ignore_errors=True)
        worker.returned.connect(
            lambda info: self._set_series(info["roi_series"], info["behavior_series"])
        )
        worker.errored.connect(lambda exc: setattr(self.status, "value", f"Error: {exc}"))
        worker.start()

    # ------------------------------------------------------------------------------------
    # running
    # ------------------------------------------------------------------------------------

    def options(self) -> dict[str, Any]:
        """The FitConfig options chosen in the widget."""
        return {
            "backbone": self.backbone.value,
            "init": self.init.value,
            "train_mode": self.train_mode.value,
            "epochs": int(self.epochs.value),
            "seq_len": int(self.seq_len.value),
            "salience": self.salience.value,
        }

    def _progress_callback(self, stage: str, done: int, total: int) -> None:
        # runs in the worker thread
        if self._cancel.is_set() and not (stage == "write results" and done >= total):
            raise FitCancelled("fit cancelled by the user")
        self._bridge.progress.emit(str(stage), int(done), int(total))

    def start(self) -> None:
        """Start the fit in a worker thread (the UI stays responsive)."""
        from napari.qt.threading import create_worker

        if self.worker is not None and self.state == "running":
            return
        source = self.source.value.strip()
        if not source:
            self.status.value = "Choose an open file or give a source first"
            return
        try:
            from nwb_llmdecode.pipeline import fit

            config = _make_config(self.options())
        except Exception as exc:  # shown in the widget, not raised into Qt
            self.status.value = f"Cannot fit: {type(exc).__name__}: {exc}"
            self.state = "error"
            return
        out = Path(self.out.value) if str(self.out.value) not in ("", ".") else None
        kwargs: dict[str, Any] = {
            "config": config,
            "rois": list(self.rois.value) or None,
            "behavior": list(self.behavior.value) or None,
            "out": out,
            "overwrite": bool(self.overwrite.value),
            "progress": self._progress_callback,
        }
        self._cancel.clear()
        self.state = "running"
        self.progress.value = 0
        self.status.value = "Starting ..."
        self.run_button.enabled = False
        self.cancel_button.enabled = True
        worker = create_worker(fit, source, _start_thread=False, _ignore_errors=True, **kwargs)
        worker.returned.connect(self._on_returned)
        worker.errored.connect(self._on_errored)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        worker.start()

    def cancel(self) -> None:
        """Ask the running fit to stop at its next progress report."""
        if self.state == "running":
            self._cancel.set()
            self.status.value = "Cancelling ..."

    def _on_progress(self, stage: str, done: int, total: int) -> None:
        self.progress.max = max(int(total), 1)
        self.progress.value = min(int(done), self.progress.max)
        self.status.value = f"{stage}: {done}/{total}"

    def _on_returned(self, report: Any) -> None:
        self.report = report
        self.state = "done"
        test = [m for m in report.metrics if m.get("split") == "test"]
        summary = f", test r² {sum(float(m['r2']) for m in test) / len(test):.3f}" if test else ""
        self.status.value = f"Wrote {Path(report.output).name}{summary}"
        self.progress.value = self.progress.max
        source = self.source.value
        self.viewer.open(str(report.output), plugin="nwb-llmdecode")
        for layer in self.viewer.layers:
            _, data = layer_role(layer.metadata)
            if data is not None and data.source == source and data.results is None:
                layer.visible = False

    def _on_errored(self, exc: BaseException) -> None:
        if isinstance(exc, FitCancelled):
            self.state = "cancelled"
            self.status.value = "Cancelled"
        else:
            self.state = "error"
            self.status.value = f"Error: {exc}"
            log.error("fit failed: %s", exc)

    def _on_finished(self) -> None:
        self.run_button.enabled = True
        self.cancel_button.enabled = False
