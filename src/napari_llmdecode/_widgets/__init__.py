"""Dock widgets of the plugin (Qt and magicgui live only in this subpackage)."""

from __future__ import annotations

from ._explorer import SalienceExplorer
from ._fit import FitCancelled, FitDecoderWidget

__all__ = ["FitCancelled", "FitDecoderWidget", "SalienceExplorer"]
