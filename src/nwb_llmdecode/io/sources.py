"""The one I/O seam: open an NWB source (local path, URL, DANDI identifier) read-only.

Every reader in the package takes the :class:`NWBSource` that :func:`open_nwb` yields;
file handles never outlive the ``with`` block. A source is an HDF5 NWB file or an NWB
Zarr store (a ``.nwb.zarr`` directory, read with hdmf-zarr's ``NWBZarrIO``), local or
remote. A remote source is resolved first (:func:`nwb_llmdecode.io.dandi.resolve_source`:
a DANDI identifier to the URL of its bytes), then opened (:mod:`nwb_llmdecode.io.remote`);
the imports run one way, sources -> dandi, remote -> http.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import SourceError

if TYPE_CHECKING:  # io.http imports requests: only when a remote source is opened
    from .http import RemoteOptions, ResolvedSource, Stats

__all__ = ["NWBSource", "is_remote", "is_zarr_store", "open_nwb", "source_label"]

log = logging.getLogger(__name__)

_REMOTE_PREFIXES = ("http://", "https://", "dandi://", "dandi:")
#: ``<INSTANCE>:<dandiset>`` identifiers of any DANDI instance (DANDI-SANDBOX:000123, ...)
_INSTANCE_ID = re.compile(r"[A-Za-z][-\w.]*:\d{6}(/|$)")


@dataclass
class NWBSource:
    """An open NWB file, valid inside the ``with open_nwb(...)`` block.

    Attributes
    ----------
    nwbfile
        The :class:`pynwb.NWBFile` read lazily from the source.
    label
        How the source is named in messages (a path, a URL or a DANDI identifier).
    path
        Local path, or ``None`` for a remote source.
    url
        The URL bytes are streamed from, or ``None`` for a local file.
    stats
        Transfer statistics for remote sources (bytes fetched, requests, cache hits).
    backend
        ``"hdf5"`` or ``"zarr"``: how the source is stored. A Zarr source is a directory;
        results are written from it as HDF5 NWB (never into it).
    """

    nwbfile: Any
    label: str
    path: Path | None = None
    url: str | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    backend: str = "hdf5"

    @property
    def is_remote(self) -> bool:
        return self.path is None


def is_remote(source: str | os.PathLike[str]) -> bool:
    """Whether ``source`` names a remote resource (URL or DANDI identifier)."""
    if isinstance(source, os.PathLike):
        return False
    s = str(source)
    return s.lower().startswith(_REMOTE_PREFIXES) or bool(_INSTANCE_ID.match(s))


def source_label(source: str | os.PathLike[str]) -> str:
    """A short name for ``source`` to use in messages."""
    return str(source)


def is_zarr_store(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a local Zarr store directory (``.zgroup`` or ``zarr.json`` at
    its root), as an NWB Zarr file (``.nwb.zarr``) is.

    Examples
    --------
    >>> is_zarr_store("/no/such/session.nwb.zarr")
    False
    """
    p = Path(path).expanduser()
    return p.is_dir() and ((p / ".zgroup").is_file() or (p / "zarr.json").is_file())


def _check_local(path: Path) -> None:
    import h5py

    if not path.exists():
        raise SourceError(
            f"{path}: no such file; give the path of an NWB file (.nwb or .nwb.zarr), an "
            "https URL or a DANDI identifier"
        )
    if path.is_dir():
        raise SourceError(
            f"{path}: is a directory, not an NWB file nor an NWB Zarr store (no .zgroup in "
            "it); give the .nwb file inside it"
        )
    if path.stat().st_size == 0:
        raise SourceError(f"{path}: the file is empty; it is not an NWB file")
    if not h5py.is_hdf5(path):
        raise SourceError(
            f"{path}: not an HDF5 file, so not an NWB file (only HDF5 NWB is supported; "
            "check the file was fully downloaded)"
        )


def _open_h5(fileobj_or_path: Any, label: str) -> Any:
    import h5py

    try:
        return h5py.File(fileobj_or_path, "r")
    except OSError as exc:
        text = str(exc)
        if "truncated" in text.lower() or "eof" in text.lower():
            raise SourceError(
                f"{label}: the HDF5 file is truncated ({text.strip()}); the copy is "
                "incomplete, download or write it again"
            ) from exc
        raise SourceError(f"{label}: cannot be opened as HDF5 ({text.strip()})") from exc


@contextlib.contextmanager
def _lenient(label: str) -> Iterator[None]:
    """Lenient on read: the warnings pynwb/hdmf raise on odd but readable files become
    log records, one per distinct message (INFO for cached-namespace notices, which every
    file written with another pynwb version gives; WARNING otherwise)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    seen: set[tuple[str, str]] = set()
    for w in caught:
        key = (w.category.__name__, str(w.message))
        if key in seen:
            continue
        seen.add(key)
        level = logging.INFO if "cached namespace" in key[1].lower() else logging.WARNING
        log.log(level, "%s: %s: %s", label, key[0], " ".join(key[1].split()))


def _read_nwb(h5file: Any, label: str) -> tuple[Any, Any]:
    from pynwb import NWBHDF5IO

    if "nwb_version" not in h5file.attrs:
        raise SourceError(
            f"{label}: an HDF5 file but not NWB (no 'nwb_version' attribute at '/'); "
            "convert it to NWB first (e.g. with NeuroConv)"
        )
    try:
        with _lenient(label):
            io = NWBHDF5IO(file=h5file, mode="r", load_namespaces=True)
            nwbfile = io.read()
    except Exception as exc:  # hdmf raises many types on malformed files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SourceError(
            f"{label}: not a readable NWB file ({type(exc).__name__}: {first}); "
            "check it with `pynwb.validate` or the tool that wrote it"
        ) from exc
    return io, nwbfile


def _read_zarr(location: str, label: str, storage_options: dict[str, Any] | None = None) -> Any:
    """Open an NWB Zarr store read-only: (NWBZarrIO, NWBFile)."""
    from hdmf_zarr.nwb import NWBZarrIO

    from ..errors import RemoteError

    try:
        with _lenient(label):
            io = NWBZarrIO(location, mode="r", storage_options=storage_options)
    except RemoteError:
        raise
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SourceError(
            f"{label}: cannot be opened as a Zarr store ({type(exc).__name__}: {first}); "
            "NWB Zarr files are Zarr v2 stores written by hdmf-zarr"
        ) from exc
    try:
        return io, _read_with(io, label)
    except BaseException:
        io.close()
        raise


def _read_with(io: Any, label: str) -> Any:
    from ..errors import RemoteError

    try:
        with _lenient(label):
            return io.read()
    except RemoteError:
        raise
    except Exception as exc:  # hdmf raises many types on malformed files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SourceError(
            f"{label}: not a readable NWB file ({type(exc).__name__}: {first}); "
            "check it with `pynwb.validate` or the tool that wrote it"
        ) from exc


@contextlib.contextmanager
def _open_blob(
    resolved: ResolvedSource,
    *,
    cache_dir: str | os.PathLike[str] | None,
    options: RemoteOptions,
    renew: Callable[[], ResolvedSource] | None,
    stats: Stats,
) -> Iterator[tuple[Any, Stats]]:
    """(h5py.File, stats) of a resolved remote HDF5 file (the benchmark swaps layers here)."""
    from .remote import open_remote_h5

    with open_remote_h5(
        resolved, cache_dir=cache_dir, options=options, renew=renew, stats=stats
    ) as opened:
        yield opened


@contextlib.contextmanager
def _open_remote(
    source: str, cache_dir: str | os.PathLike[str] | None
) -> Iterator[tuple[Any, str, Stats, str]]:
    """Resolve ``source``, then open it: (NWBFile, url, stats, backend)."""
    from .dandi import resolve_source
    from .http import RemoteOptions, zarr_storage_options

    opts = RemoteOptions.from_env()
    stats: Stats = {"api_requests": 0}
    resolved = resolve_source(source, options=opts, stats=stats)
    # provenance of what was read (decoding_run.source / source_sha256 of the results)
    stats.update(
        asset_id=resolved.asset_id,
        dandiset_id=resolved.dandiset_id,
        version_id=resolved.version_id,
        digest=f"sha256:{resolved.sha256}" if resolved.sha256 else resolved.digest,
    )
    if resolved.kind == "zarr":
        stats.update(source=source, url=resolved.url, size=resolved.size, requests=0)
        stats.update(bytes_fetched=0, retries=0)
        io, nwbfile = _read_zarr(
            resolved.url.rstrip("/"), source, zarr_storage_options(opts, stats)
        )
        try:
            yield nwbfile, resolved.url, stats, "zarr"
        finally:
            io.close()
        return

    def renew() -> ResolvedSource:
        return resolve_source(source, options=opts, stats=stats)

    renewable = renew if resolved.asset_id is not None else None
    with _open_blob(resolved, cache_dir=cache_dir, options=opts, renew=renewable, stats=stats) as (
        h5file,
        stats,
    ):
        io, nwbfile = _read_nwb(h5file, source)
        try:
            yield nwbfile, stats["url"], stats, "hdf5"
        finally:
            io.close()


@contextlib.contextmanager
def open_nwb(
    source: str | os.PathLike[str],
    *,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Iterator[NWBSource]:
    """Open an NWB source read-only.

    Parameters
    ----------
    source
        A local path (an HDF5 ``.nwb`` file or a ``.nwb.zarr`` directory), an
        ``http(s)://`` URL of an NWB file, or a DANDI identifier or URL naming one asset
        (``DANDI:000123/draft/sub-1/sub-1_ses-1.nwb``, a ``.nwb.zarr`` asset,
        ``dandi://dandi/000123@draft/sub-1/...``, an API asset URL...).
    cache_dir
        Where remote byte ranges are cached (remote sources only). ``None`` uses the
        user's cache directory.

    Yields
    ------
    NWBSource
        The open file; it is closed when the block exits.

    Raises
    ------
    SourceError
        When the source is missing, not HDF5 or Zarr, not NWB or truncated.
    RemoteError
        When a remote source cannot be resolved or read (one line naming the URL).

    Examples
    --------
    >>> from nwb_llmdecode.io.sources import open_nwb
    >>> with open_nwb("session.nwb") as src:  # doctest: +SKIP
    ...     print(src.nwbfile.session_description)
    """
    if is_remote(source):
        with _open_remote(str(source), cache_dir) as (nwbfile, url, stats, backend):
            yield NWBSource(
                nwbfile=nwbfile, label=str(source), url=url, stats=stats, backend=backend
            )
        return

    path = Path(source).expanduser()
    if is_zarr_store(path):
        io, nwbfile = _read_zarr(str(path), str(path))
        try:
            yield NWBSource(nwbfile=nwbfile, label=str(path), path=path.resolve(), backend="zarr")
        finally:
            io.close()
        return
    _check_local(path)
    h5file = _open_h5(path, str(path))
    try:
        io, nwbfile = _read_nwb(h5file, str(path))
        try:
            yield NWBSource(nwbfile=nwbfile, label=str(path), path=path.resolve())
        finally:
            io.close()
    finally:
        h5file.close()
