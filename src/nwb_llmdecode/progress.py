"""The one progress type of the package.

Long functions take ``progress(stage, done, total)``: a callable told which stage runs
(``"load backbone"``, ``"epoch 3/20"``, ``"validate"``, ``"evaluate"``, ``"salience
(integrated-gradients)"``, ``"compare runs"``...) and how far it got. The command line
passes tqdm bars (or one log line per epoch off a terminal), napari its own progress bar;
library code only calls it.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["Progress", "format_eta"]

Progress = Callable[[str, int, int], None]
"""``progress(stage, done, total)``: ``done`` of ``total`` units of ``stage`` are done."""


def format_eta(seconds: float) -> str:
    """``"42 s"``, ``"3 min 5 s"`` or ``"1 h 02 min"``.

    Examples
    --------
    >>> format_eta(0.4), format_eta(185), format_eta(3725)
    ('0 s', '3 min 5 s', '1 h 02 min')
    """
    s = max(0, round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"
