"""npe2 reader: NWB sessions and decoding results (local files, https URLs, DANDI).

NWB is read from HDF5 files (``.nwb``) and from Zarr stores (``.nwb.zarr`` directories),
local or on DANDI. ``napari_get_reader`` only looks at the path (and, for local sources,
the root attributes); it returns ``None`` for anything that is not NWB and never raises. Reading
goes through :func:`nwb_llmdecode.io.sources.open_nwb`, the same source handling as the
command line. No Qt is imported here.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

__all__ = ["is_nwb_source", "napari_get_reader", "read_nwb"]

log = logging.getLogger(__name__)

#: DANDI API routes that name assets (``/api/assets/<id>/...``, ``/api/dandisets/<id>/...``)
_DANDI_API_PATH = re.compile(r"/api/(assets|dandisets)/")

PathOrPaths = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]


def _is_remote_nwb(s: str) -> bool:
    low = s.lower()
    if low.startswith(("dandi://", "dandi:")):
        return True
    try:
        from nwb_llmdecode.io.sources import is_remote

        if not is_remote(s):
            return False
    except Exception:  # a reader probe must never raise
        return False
    parsed = urlparse(s)
    if parsed.scheme in ("http", "https"):
        # only what names NWB: a .nwb file, or an asset of a DANDI archive (any instance)
        path = parsed.path.lower()
        return (
            path.endswith((".nwb", ".nwb.zarr", ".nwb.zarr/"))
            or "dandi" in parsed.netloc.lower()
            or bool(_DANDI_API_PATH.search(path))
        )
    return True  # <INSTANCE>:<dandiset>/... identifiers


def _is_nwb_zarr(p: Path) -> bool:
    """A Zarr (v2) store directory whose root attributes name an NWB version."""
    import json

    attrs = p / ".zattrs"
    if not (p / ".zgroup").is_file() or not attrs.is_file():
        return False
    return "nwb_version" in json.loads(attrs.read_text(encoding="utf-8"))


def is_nwb_source(path: Any) -> bool:
    """Whether ``path`` is something this plugin reads: an NWB HDF5 file or NWB Zarr
    store (``.nwb.zarr`` directory), or a URL or DANDI identifier of one. Local sources
    are checked for the ``nwb_version`` attribute.

    Never raises.

    Examples
    --------
    >>> is_nwb_source("/no/such/file.nwb"), is_nwb_source("DANDI:000123/draft/a.nwb")
    (False, True)
    """
    try:
        if not isinstance(path, str | os.PathLike):
            return False
        s = os.fspath(path)
        if not s:
            return False
        if _is_remote_nwb(s):
            return True
        p = Path(s).expanduser()
        if p.is_dir():
            return _is_nwb_zarr(p)
        if not p.is_file() or p.stat().st_size == 0:
            return False
        import h5py

        if not h5py.is_hdf5(p):
            return False
        with h5py.File(p, "r") as f:
            return "nwb_version" in f.attrs
    except Exception:  # a reader probe must never raise
        log.debug("not an NWB source: %r", path, exc_info=True)
        return False


def napari_get_reader(path: PathOrPaths) -> Callable[[PathOrPaths], list[Any]] | None:
    """npe2 ``get_reader`` hook: :func:`read_nwb` for NWB sources, otherwise ``None``.

    Examples
    --------
    >>> napari_get_reader("image.tif") is None
    True
    """
    if isinstance(path, str | os.PathLike):
        paths: list[Any] = [path]
    elif isinstance(path, list | tuple):
        paths = list(path)
    else:
        return None
    if not paths or not all(is_nwb_source(p) for p in paths):
        return None
    return read_nwb


def read_nwb(path: PathOrPaths) -> list[Any]:
    """Layer data tuples of one or several NWB files (see ``_layers.session_layers``)."""
    from ._layers import read_source, session_layers
    from ._viewer import show_on_insert

    paths = [path] if isinstance(path, str | os.PathLike) else list(path)
    layers: list[Any] = []
    for p in paths:
        these = session_layers(read_source(os.fspath(p)))
        show_on_insert(these)  # colourbar, zoom-following ranks, 3D: as napari adds them
        layers.extend(these)
    return layers
