"""napari plugin of nwb-llmdecode: salient neurons on the imaging volume.

Contributions (see ``napari.yaml``): a reader for NWB sessions and decoding results
(local, URL or DANDI), the *Salience explorer* and *Fit decoder* dock widgets, and
synthetic sample data. Nothing here imports Qt; the widgets live in
``napari_llmdecode._widgets`` and are imported by napari when opened.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("nwb-llmdecode")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = ["__version__"]
