"""Open a resolved remote HDF5 file: remfile for the bytes, our session and block cache.

The file object h5py reads an HDF5 NWB file through is :class:`remfile.File` (the
DANDI/neurosift authors' reader, which the pynwb streaming tutorial recommends): it
fetches only the byte ranges h5py asks for, in chunks of ``block_size``, reading further
ahead when reads are sequential. ``benchmarks/REMOTE.md`` compares it with the HTTP
client this module used to be and with fsspec. What this module adds to it:

- its requests go through the session of :func:`nwb_llmdecode.io.http.make_session`
  (timeouts, the one retry policy, one-line :class:`~nwb_llmdecode.errors.RemoteError`);
- an expired presigned URL (HTTP 403 from the blob store) is renewed by resolving the
  source again through the DANDI API, and the read goes on (remfile's ``get_url``
  protocol);
- its chunks are kept in :class:`BlockCache`, a size-bounded disk cache that verifies a
  checksum of every block it returns and is keyed on the asset's content digest.

(Remote Zarr NWB stores are opened by :func:`nwb_llmdecode.io.sources.open_nwb` with
hdmf-zarr over fsspec's HTTP, given the same policy by
:func:`nwb_llmdecode.io.http.zarr_storage_options`.)
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import sqlite3
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import requests

from ..errors import ConfigError, LLMDecodeError, RemoteError, SourceError
from .http import RemoteOptions, ResolvedSource, Stats, default_cache_dir, make_session

__all__ = ["BlockCache", "open_remote_h5"]

log = logging.getLogger(__name__)

_CACHE_LAYOUT = "blocks-v2"
_DIGEST_SIZE = 16  # bytes of BLAKE2b stored in front of each cached block
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
_RANGE = re.compile(r"bytes=(\d+)-(\d+)")
_TOTAL = "SELECT value FROM meta WHERE name = 'total'"

try:  # remfile retries every exception but this one; our adapter has retried already
    from remfile.RemFile import _PermanentHTTPError as _NoRetry
except ImportError:  # pragma: no cover - a remfile without it (tests catch the stacking)
    _NoRetry = Exception


class _BlobError(RemoteError, _NoRetry):  # type: ignore[misc, valid-type]
    """A failed blob read: our one-line error, which remfile passes on untouched."""


# ----------------------------------------------------------------------------------------
# on-disk block cache
# ----------------------------------------------------------------------------------------


class BlockCache:
    """Size-bounded on-disk cache of file blocks; verified on read, LRU-evicted.

    A block is stored at ``<root>/blocks-v2/<key[:2]>/<key>/<block_size>-<index>.blk``,
    where ``key`` is a hex SHA-256 naming the content (so no name from a server ever
    reaches the file system and a changed asset never meets its old blocks), as a
    BLAKE2b checksum followed by the bytes. A block whose length or checksum is wrong is
    deleted and reported missing, so the reader fetches it again.

    An SQLite index (``index.sqlite``) holds each block's size and last use and the
    running total, so a write never walks the cache: once the total passes
    ``max_bytes``, the least recently used blocks are removed until it is under 80 %.

    Examples
    --------
    >>> import tempfile
    >>> cache = BlockCache(tempfile.mkdtemp(), max_bytes=1 << 20)
    >>> key = hashlib.sha256(b"some content id").hexdigest()
    >>> cache.put(key, 4096, 0, b"x" * 4096)
    >>> cache.get(key, 4096, 0, expected=4096) == b"x" * 4096
    True
    >>> cache.close()
    """

    def __init__(self, root: str | os.PathLike[str], *, max_bytes: int) -> None:
        self.root = Path(root).expanduser() / _CACHE_LAYOUT
        self.max_bytes = int(max_bytes)
        self._lock = threading.Lock()
        self._disabled = False
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                self.root / "index.sqlite", timeout=30, check_same_thread=False
            )
            with self._db:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._db.execute(
                    "CREATE TABLE IF NOT EXISTS blocks (key TEXT, bs INTEGER, idx INTEGER, "
                    "size INTEGER, used REAL, PRIMARY KEY (key, bs, idx))"
                )
                self._db.execute("CREATE INDEX IF NOT EXISTS blocks_used ON blocks (used)")
                self._db.execute(
                    "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER)"
                )
                self._db.execute("INSERT OR IGNORE INTO meta VALUES ('total', 0)")
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(
                f"{root}: cannot use the block cache there ({exc}); give a writable "
                "--cache-dir or set NWB_LLMDECODE_CACHE=off"
            ) from exc

    def close(self) -> None:
        """Close the index (blocks stay on disk)."""
        with contextlib.suppress(sqlite3.Error):
            self._db.commit()
            self._db.close()

    def _path(self, key: str, block_size: int, index: int) -> Path:
        if not re.fullmatch(r"[0-9a-f]{64}", key):
            raise ValueError(f"cache key must be a hex SHA-256, got {key!r}")
        return self.root / key[:2] / key / f"{int(block_size)}-{int(index)}.blk"

    def _disable(self, exc: BaseException) -> None:
        log.warning("block cache %s disabled for this file: %s", self.root, exc)
        self._disabled = True

    def get(self, key: str, block_size: int, index: int, *, expected: int) -> bytes | None:
        """The cached block, or ``None`` if absent, not ``expected`` bytes long or not
        matching its checksum (then it is removed)."""
        if self._disabled:
            return None
        path = self._path(key, block_size, index)
        try:
            raw = path.read_bytes()
        except OSError:
            return None
        data = raw[_DIGEST_SIZE:]
        digest = hashlib.blake2b(data, digest_size=_DIGEST_SIZE).digest()
        if len(data) != expected or raw[:_DIGEST_SIZE] != digest:
            log.warning("block cache %s: %s is damaged; fetching it again", self.root, path.name)
            self._forget(key, block_size, index, path)
            return None
        with self._lock, contextlib.suppress(sqlite3.Error), self._db:  # commit: no lock held
            cur = self._db.execute(
                "UPDATE blocks SET used = ? WHERE key = ? AND bs = ? AND idx = ?",
                (time.time(), key, block_size, index),
            )
            if cur.rowcount == 0:  # a block the index lost (e.g. it was deleted): count it
                self._db.execute(
                    "INSERT INTO blocks VALUES (?, ?, ?, ?, ?)",
                    (key, block_size, index, len(raw), time.time()),
                )
                self._db.execute(
                    "UPDATE meta SET value = value + ? WHERE name = 'total'", (len(raw),)
                )
        return data

    def _forget(self, key: str, block_size: int, index: int, path: Path) -> None:
        with contextlib.suppress(OSError):
            path.unlink()
        with self._lock, contextlib.suppress(sqlite3.Error), self._db:
            row = self._db.execute(
                "SELECT size FROM blocks WHERE key = ? AND bs = ? AND idx = ?",
                (key, block_size, index),
            ).fetchone()
            if row is not None:
                self._db.execute(
                    "DELETE FROM blocks WHERE key = ? AND bs = ? AND idx = ?",
                    (key, block_size, index),
                )
                self._db.execute(
                    "UPDATE meta SET value = value - ? WHERE name = 'total'", (row[0],)
                )

    def put(self, key: str, block_size: int, index: int, data: bytes) -> None:
        """Store a block (atomically); evict old blocks when over the bound."""
        if self._disabled or self.max_bytes <= 0:
            return
        path = self._path(key, block_size, index)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        digest = hashlib.blake2b(data, digest_size=_DIGEST_SIZE).digest()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(digest + bytes(data))
            os.replace(tmp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            self._disable(exc)
            return
        size = len(data) + _DIGEST_SIZE
        try:
            with self._lock, self._db:
                old = self._db.execute(
                    "SELECT size FROM blocks WHERE key = ? AND bs = ? AND idx = ?",
                    (key, block_size, index),
                ).fetchone()
                self._db.execute(
                    "INSERT OR REPLACE INTO blocks VALUES (?, ?, ?, ?, ?)",
                    (key, block_size, index, size, time.time()),
                )
                self._db.execute(
                    "UPDATE meta SET value = value + ? WHERE name = 'total'",
                    (size - (old[0] if old else 0),),
                )
                (total,) = self._db.execute(_TOTAL).fetchone()
                if total > self.max_bytes:
                    self._evict(total)
        except sqlite3.Error as exc:
            self._disable(exc)

    def _evict(self, total: int) -> None:
        """Remove least recently used blocks until under 80 % of the bound (in the
        caller's transaction)."""
        target = int(0.8 * self.max_bytes)
        removed = 0
        while total > target:
            rows = self._db.execute(
                "SELECT key, bs, idx, size FROM blocks ORDER BY used LIMIT 256"
            ).fetchall()
            if not rows:
                break
            for key, bs, idx, size in rows:
                if total <= target:
                    break
                with contextlib.suppress(OSError):
                    self._path(key, bs, idx).unlink()
                self._db.execute(
                    "DELETE FROM blocks WHERE key = ? AND bs = ? AND idx = ?", (key, bs, idx)
                )
                total -= size
                removed += 1
        self._db.execute("UPDATE meta SET value = ? WHERE name = 'total'", (total,))
        log.debug("block cache %s: evicted %d blocks, %d bytes left", self.root, removed, total)

    def total(self) -> int:
        """Bytes the cache holds, by its index."""
        with self._lock:
            return int(self._db.execute(_TOTAL).fetchone()[0])


class _AssetBlocks:
    """remfile's disk-cache protocol (``get(key)``/``set(key, value)``) over a
    :class:`BlockCache`, for one asset.

    remfile names a chunk ``<url>|<chunk size>|<index>``; the URL part is dropped, the
    asset's content key is used instead, so that renewed URLs and every identifier of the
    same asset share the cache.
    """

    def __init__(self, cache: BlockCache, key: str, size: int, stats: Stats) -> None:
        self.cache, self.key, self.size, self.stats = cache, key, size, stats

    def _parse(self, name: str) -> tuple[int, int]:
        _url, bs, idx = name.rsplit("|", 2)
        return int(bs), int(idx)

    def get(self, name: str) -> bytes | None:
        bs, idx = self._parse(name)
        expected = max(0, min(bs, self.size - idx * bs))
        data = self.cache.get(self.key, bs, idx, expected=expected)
        self.stats["cache_hits" if data is not None else "cache_misses"] += 1
        return data

    def set(self, name: str, value: bytes) -> None:
        bs, idx = self._parse(name)
        self.cache.put(self.key, bs, idx, value)


# ----------------------------------------------------------------------------------------
# the blob session: range answers checked, expired links renewed
# ----------------------------------------------------------------------------------------


class _Link:
    """The URL a file's bytes are read from, renewed when the blob store refuses it.

    It is remfile's URL-renewal object (``get_url()``) and the blob session's response
    check (:data:`nwb_llmdecode.io.http.ResponseHook`).
    """

    def __init__(
        self,
        resolved: ResolvedSource,
        renew: Callable[[], ResolvedSource] | None,
        stats: Stats,
    ) -> None:
        self.resolved = resolved
        self.url = resolved.url
        self.renew = renew
        self.stats = stats

    def get_url(self) -> str:
        return self.url

    def _renewed(self, request: requests.PreparedRequest, status: int) -> Any:
        if self.renew is None:
            raise RemoteError(
                f"{request.url}: access denied (HTTP {status}); the link may have expired "
                "(open the source again) or the data are embargoed (set DANDI_API_KEY to a "
                "key with access)"
            )
        log.info("%s: the blob store refused the link (HTTP %d); renewing it", self.url, status)
        fresh = self.renew()
        if (fresh.digest, fresh.size) != (self.resolved.digest, self.resolved.size):
            raise RemoteError(
                f"{self.resolved.source}: the asset changed while it was read (its digest is "
                f"now {fresh.digest}); open it again"
            )
        self.url = self.stats["url"] = fresh.url
        self.stats["renewals"] = self.stats.get("renewals", 0) + 1
        again = request.copy()
        again.prepare_url(fresh.url, None)
        return again

    def check(self, request: requests.PreparedRequest, resp: requests.Response) -> Any:
        """Accept a correct range answer; renew on 401/403; raise for anything else."""
        url = str(request.url)
        status = resp.status_code
        m = _RANGE.fullmatch(request.headers.get("Range", ""))
        lo, hi = (int(m.group(1)), int(m.group(2))) if m else (0, -1)
        if status == 206:
            cr = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
            if cr is None or int(cr.group(1)) != lo:
                raise RemoteError(
                    f"{url}: asked for bytes {lo}-{hi}, the server sent "
                    f"{resp.headers.get('Content-Range')!r}; it does not serve byte ranges "
                    "correctly, download the file and open it locally"
                )
            if m is not None and int(cr.group(2)) != hi:
                raise RemoteError(
                    f"{url}: asked for bytes {lo}-{hi}, the server has only "
                    f"{resp.headers.get('Content-Range')!r}; the file is shorter than the "
                    "archive says (it changed?), open it again"
                )
            return None
        if status == 200:
            length = resp.headers.get("Content-Length")
            if m is None or (length is not None and int(length) <= hi - lo + 1):
                return None  # the whole file is no larger than the range asked for
            raise RemoteError(
                f"{url}: server ignores Range requests; download the file and open it locally "
                "(it answered 200 with the whole file to a byte-range request)"
            )
        if status in (401, 403):
            return self._renewed(request, status)
        if status == 404:
            raise RemoteError(
                f"{url}: not found (HTTP 404); the file is gone or the URL is wrong, check it "
                "(for DANDI, the asset may have been replaced: open it again by its identifier)"
            )
        if status == 416:
            raise RemoteError(
                f"{url}: range {lo}-{hi} not satisfiable (HTTP 416); the file changed while it "
                "was read, open it again"
            )
        raise RemoteError(
            f"{url}: HTTP {status} {resp.reason or ''} to a byte-range request; the server "
            "cannot stream this file, download it and open it locally"
        )


def _probe(session: requests.Session, link: _Link) -> tuple[int, str | None]:
    """One 1-byte range request: (size, ETag) of a plain URL."""
    resp = session.get(link.url, headers={"Range": "bytes=0-0", "Accept-Encoding": "identity"})
    if resp.history:  # the URL moved: go there directly
        log.info("%s redirects to %s", link.url, resp.url)
        link.url = str(resp.url)
    if resp.status_code == 200:
        return len(resp.content), resp.headers.get("ETag")
    m = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
    if m is None or m.group(3) == "*":
        raise RemoteError(
            f"{resp.url}: the server's answer to a range request has no file size "
            f"(Content-Range {resp.headers.get('Content-Range')!r}); download the file and "
            "open it locally"
        )
    return int(m.group(3)), resp.headers.get("ETag")


def _content_key(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def _url_key(url: str, size: int, etag: str | None) -> str:
    """Content key of a plain URL: the URL (without query when an ETag identifies the
    content, so that re-signed links share the cache), the ETag and the size."""
    base = url.split("?", 1)[0] if etag else url
    return _content_key("url", base, etag or "", str(size))


def _new_stats(resolved: ResolvedSource, opts: RemoteOptions, stats: Stats | None) -> Stats:
    out = stats if stats is not None else {}
    for k in ("bytes_fetched", "requests", "retries", "cache_hits", "cache_misses", "renewals"):
        out.setdefault(k, 0)
    out.setdefault("api_requests", 0)
    out.update(source=resolved.source, url=resolved.url, size=resolved.size)
    out.update(cache_dir=None, block_size=opts.block_size)
    return out


def _open_h5_fileobj(fileobj: Any) -> Any:
    """``h5py.File(fileobj)``, dropping h5py's frames from any error it raises.

    Those frames hold the file-access property list that references ``fileobj``; kept
    alive by whoever holds the error (a caller, pytest), the list is freed only when HDF5
    shuts down after the interpreter has, which crashes the process at exit.
    """
    import h5py

    try:
        return h5py.File(fileobj, "r")
    except BaseException as exc:
        traceback.clear_frames(exc.__traceback__)
        raise


@contextlib.contextmanager
def open_remote_h5(
    resolved: ResolvedSource,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    options: RemoteOptions | None = None,
    renew: Callable[[], ResolvedSource] | None = None,
    stats: Stats | None = None,
) -> Iterator[tuple[Any, Stats]]:
    """Open a resolved remote HDF5/NWB file read-only with h5py, streaming byte ranges.

    Parameters
    ----------
    resolved
        Where the bytes are (see :func:`nwb_llmdecode.io.dandi.resolve_source`).
    cache_dir
        Block cache directory; ``None`` uses :func:`~nwb_llmdecode.io.http.default_cache_dir`.
    options
        Timeouts, retries, block and cache sizes; default :meth:`RemoteOptions.from_env`.
    renew
        Resolves the source again, for a new link when the blob store refuses an
        expired one; ``None``: an expired link is an error.
    stats
        Live transfer statistics to fill (``bytes_fetched``, ``requests``, ``retries``,
        ``cache_hits``, ``cache_misses``, ``renewals``, ``url``, ``size``...).

    Yields
    ------
    (h5py.File, dict)
        The open file and the statistics.

    Raises
    ------
    RemoteError
        When the file cannot be read after retries, or the server does not honour
        range requests.
    SourceError
        When the bytes are not HDF5.

    Examples
    --------
    >>> from nwb_llmdecode.io.dandi import resolve_source
    >>> resolved = resolve_source("DANDI:000123/draft/sub-1/sub-1.nwb")  # doctest: +SKIP
    >>> with open_remote_h5(resolved) as (f, stats):  # doctest: +SKIP
    ...     print(list(f), stats["bytes_fetched"])
    """
    import remfile

    opts = options or RemoteOptions.from_env()
    stats = _new_stats(resolved, opts, stats)
    link = _Link(resolved, renew, stats)
    # A plain session for the blob: the archive's Authorization header never goes there.
    session = make_session(
        opts,
        stats,
        "requests",
        bytes_counter="bytes_fetched",
        on_response=link.check,
        error=_BlobError,
        fail_fast=True,
    )
    transport = session.get_adapter(resolved.url)
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    cache = BlockCache(root, max_bytes=opts.cache_size) if root is not None else None
    try:
        if resolved.size is not None and resolved.digest:
            size, key = resolved.size, _content_key("dandi", resolved.digest)
        else:
            try:
                size, etag = _probe(session, link)
            except _BlobError as exc:
                raise RemoteError(str(exc)) from None
            key = _url_key(link.url, size, etag)
        stats.update(size=size, url=link.url, cache_dir=str(cache.root) if cache else None)
        blocks = _AssetBlocks(cache, key, size, stats) if cache is not None else None
        rfile = remfile.File(
            link,
            disk_cache=blocks,
            _size=size,
            _min_chunk_size=opts.block_size,
            _max_chunk_size=opts.max_fetch,
            _max_cache_size=opts.memory_cache,
        )
        rfile.session.close()
        rfile.session = session  # our timeouts, retries, checks and renewal
        log.info("%s: streaming %d bytes from %s", resolved.source, size, link.url)
        try:
            h5 = _open_h5_fileobj(rfile)
        except _BlobError as exc:
            raise RemoteError(str(exc)) from None
        except OSError as exc:
            if transport.failure is not None:
                raise RemoteError(str(transport.failure)) from exc
            raise SourceError(
                f"{resolved.source}: not an HDF5 file ({' '.join(str(exc).split())[:160]}); "
                "only HDF5 NWB files and .nwb.zarr stores can be streamed"
            ) from exc
        try:
            yield h5, stats
        except Exception as exc:
            # h5py, hdmf and pynwb may wrap a network failure (pynwb's read into a
            # SourceError, for one); report the failure itself, as a plain RemoteError
            failure = transport.failure
            if isinstance(exc, _BlobError):
                raise RemoteError(str(exc)) from None
            ours = isinstance(exc, LLMDecodeError) and not isinstance(exc, SourceError)
            if failure is not None and not ours:
                raise RemoteError(str(failure)) from exc
            raise
        finally:
            stats["url"] = link.url
            h5.close()
    finally:
        session.close()
        if cache is not None:
            cache.close()
