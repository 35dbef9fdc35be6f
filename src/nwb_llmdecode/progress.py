"""The one progress type of the package.

Long functions take ``progress(stage, done, total)``: a callable told which stage runs
(``"load backbone"``, ``"epoch 3/20"``, ``"validate"``, ``"evaluate"``, ``"salience
(integrated-gradients)"``, ``"compare runs"``...) and how far it got. The command line
passes tqdm bars (or one log line per epoch off a terminal), napari its own progress bar;
library code only calls it.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["Progress"]

Progress = Callable[[str, int, int], None]
"""``progress(stage, done, total)``: ``done`` of ``total`` units of ``stage`` are done."""
