"""Stream remote HDF5/NWB files: byte-range reads, retries and a local block cache.

:func:`open_remote_h5` resolves a source once (a DANDI identifier through
:mod:`nwb_llmdecode.io.dandi`, or a plain ``http(s)`` URL) to the URL its bytes live at,
checks that the server honours ``Range`` requests, and opens the file with h5py on a
:class:`RemoteFile`: a read-only file object that fetches only the byte ranges h5py asks
for. pynwb reads lazily through it, so the raw imaging in a file is never transferred
unless it is read.

Fetched bytes are kept in fixed-size blocks, in memory and in a size-bounded on-disk
cache (least recently used blocks are evicted first). Cache files are named after the
*content* (a hash of the asset's digest, or of the URL, ETag and size) and the block
index, never after a name taken from the server.

Network faults (timeouts, refused or reset connections, HTTP 429 and 5xx) are retried
with exponential backoff a bounded number of times; then a
:class:`~nwb_llmdecode.errors.RemoteError` names the URL and the failure in one line.

Settings (keyword arguments of :class:`RemoteOptions`, or environment variables):

``NWB_LLMDECODE_CACHE``
    Cache directory (default: the user's cache directory, e.g. ``~/.cache/nwb-llmdecode``);
    ``off`` disables the disk cache. The ``cache_dir`` argument takes precedence.
``NWB_LLMDECODE_CACHE_SIZE``
    Cache size bound, bytes or with a K/M/G/T suffix (default ``2G``).
``NWB_LLMDECODE_BLOCK_SIZE``
    Size of a read and cache block (default ``64K``; larger blocks mean fewer requests,
    which pays on high-latency links, and more bytes; see ``benchmarks/REMOTE.md``).
``NWB_LLMDECODE_TIMEOUT``
    Seconds to wait for a connection or for data before a try counts as failed (30).
``NWB_LLMDECODE_RETRIES``
    Retries after a failed try (4).
``NWB_LLMDECODE_BACKOFF``
    Seconds before the first retry; doubled for each further retry (0.5).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import re
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import requests
import requests.adapters

from ..errors import ConfigError, LLMDecodeError, RemoteError, SourceError

__all__ = [
    "BlockCache",
    "RemoteFile",
    "RemoteOptions",
    "default_cache_dir",
    "make_session",
    "open_remote_h5",
]

log = logging.getLogger(__name__)

#: HTTP statuses worth retrying (throttling and server-side failures).
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
_MAX_WAIT = 30.0  # cap of one backoff wait (and of a server's Retry-After), seconds
_CACHE_LAYOUT = "blocks-v1"
_SIZE_SUFFIX = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def _parse_size(text: str, what: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", text, flags=re.IGNORECASE)
    if not m:
        raise ConfigError(f"{what}={text!r}: not a size; give bytes or a number with K, M, G or T")
    return int(float(m.group(1)) * _SIZE_SUFFIX[m.group(2).upper()])


@dataclass(frozen=True)
class RemoteOptions:
    """How remote sources are read.

    Parameters
    ----------
    timeout
        Seconds to wait for a connection or for the next bytes of a response.
    retries
        Retries after a failed try (timeout, connection error, HTTP 429/5xx).
    backoff
        Seconds before the first retry, doubled for each further one (capped at 30 s).
    block_size
        Granularity of reads and of the cache, bytes.
    max_fetch
        Largest single range request when reads are sequential (read-ahead), bytes.
    memory_cache
        Bytes of blocks kept in memory per open file.
    cache_size
        Bound of the on-disk cache, bytes; least recently used blocks are evicted.

    Examples
    --------
    >>> RemoteOptions(timeout=5, retries=2).retries
    2
    """

    timeout: float = 30.0
    retries: int = 4
    backoff: float = 0.5
    block_size: int = 64 * 1024
    max_fetch: int = 8 * 1024 * 1024
    memory_cache: int = 64 * 1024 * 1024
    cache_size: int = 2 * 1024**3

    def __post_init__(self) -> None:
        if not self.timeout > 0:
            raise ConfigError(f"RemoteOptions: timeout must be > 0 seconds (got {self.timeout!r})")
        if self.retries < 0:
            raise ConfigError(f"RemoteOptions: retries must be >= 0 (got {self.retries!r})")
        if self.backoff < 0:
            raise ConfigError(f"RemoteOptions: backoff must be >= 0 (got {self.backoff!r})")
        if self.block_size < 512:
            raise ConfigError(
                f"RemoteOptions: block_size must be >= 512 bytes (got {self.block_size!r})"
            )
        if self.max_fetch < self.block_size:
            raise ConfigError(
                f"RemoteOptions: max_fetch ({self.max_fetch!r}) must be >= block_size "
                f"({self.block_size!r})"
            )
        if self.cache_size < 0 or self.memory_cache < 0:
            raise ConfigError("RemoteOptions: cache sizes must be >= 0")

    @classmethod
    def from_env(cls, **overrides: Any) -> RemoteOptions:
        """Options from the ``NWB_LLMDECODE_*`` environment variables, then ``overrides``."""
        values: dict[str, Any] = {}
        for name, var, conv in (
            ("timeout", "NWB_LLMDECODE_TIMEOUT", float),
            ("retries", "NWB_LLMDECODE_RETRIES", int),
            ("backoff", "NWB_LLMDECODE_BACKOFF", float),
        ):
            text = os.environ.get(var)
            if text:
                try:
                    values[name] = conv(text)
                except ValueError:
                    raise ConfigError(
                        f"{var}={text!r}: not a number; unset it or give e.g. {var}=10"
                    ) from None
        for name, var in (
            ("cache_size", "NWB_LLMDECODE_CACHE_SIZE"),
            ("block_size", "NWB_LLMDECODE_BLOCK_SIZE"),
        ):
            if text := os.environ.get(var):
                values[name] = _parse_size(text, var)
        known = {f.name for f in fields(cls)}
        values.update({k: v for k, v in overrides.items() if k in known and v is not None})
        return replace(cls(), **values)


def default_cache_dir() -> Path | None:
    """The block cache directory: ``NWB_LLMDECODE_CACHE``, else the user cache directory.

    Returns ``None`` when ``NWB_LLMDECODE_CACHE`` is ``off`` (no disk cache).
    """
    env = os.environ.get("NWB_LLMDECODE_CACHE")
    if env:
        if env.strip().lower() in ("off", "none", "0", "false"):
            return None
        return Path(env).expanduser()
    try:
        import platformdirs

        return Path(platformdirs.user_cache_dir("nwb-llmdecode", appauthor=False))
    except ImportError:  # platformdirs comes with dandi; fall back to the XDG default
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        return Path(base) / "nwb-llmdecode"


# ----------------------------------------------------------------------------------------
# on-disk block cache
# ----------------------------------------------------------------------------------------


class BlockCache:
    """Size-bounded on-disk cache of file blocks, evicting least recently used blocks.

    A block is stored at ``<root>/blocks-v1/<key[:2]>/<key>/<block_size>-<index>.blk``
    where ``key`` is a hex SHA-256 naming the content, so no name from a server ever
    reaches the file system. Reads refresh a block's modification time; eviction removes
    the oldest blocks until the cache is under 80 % of ``max_bytes``.

    Examples
    --------
    >>> import tempfile
    >>> cache = BlockCache(tempfile.mkdtemp(), max_bytes=1 << 20)
    >>> key = hashlib.sha256(b"some content id").hexdigest()
    >>> cache.put(key, 4096, 0, b"x" * 4096)
    >>> cache.get(key, 4096, 0, expected=4096) == b"x" * 4096
    True
    """

    def __init__(self, root: str | os.PathLike[str], *, max_bytes: int) -> None:
        self.root = Path(root).expanduser() / _CACHE_LAYOUT
        self.max_bytes = int(max_bytes)
        self._total: int | None = None
        self._lock = threading.Lock()
        self._disabled = False
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"{root}: cannot create the block cache there ({exc.strerror}); give a "
                "writable --cache-dir or set NWB_LLMDECODE_CACHE=off"
            ) from exc

    def _path(self, key: str, block_size: int, index: int) -> Path:
        if not re.fullmatch(r"[0-9a-f]{64}", key):
            raise ValueError(f"cache key must be a hex SHA-256, got {key!r}")
        return self.root / key[:2] / key / f"{int(block_size)}-{int(index)}.blk"

    def get(self, key: str, block_size: int, index: int, *, expected: int) -> bytes | None:
        """The cached block, or ``None`` if absent or not ``expected`` bytes long."""
        path = self._path(key, block_size, index)
        try:
            data = path.read_bytes()
        except OSError:
            return None
        if len(data) != expected:  # a torn or foreign file: drop it
            with contextlib.suppress(OSError):
                path.unlink()
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # LRU: a hit makes the block recent
        return data

    def put(self, key: str, block_size: int, index: int, data: bytes) -> None:
        """Store a block (atomically); evict old blocks when over the bound."""
        if self._disabled or self.max_bytes <= 0:
            return
        path = self._path(key, block_size, index)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            existed = path.exists()
            tmp.write_bytes(data)
            os.replace(tmp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            log.warning("block cache %s disabled for this file: %s", self.root, exc)
            self._disabled = True
            return
        with self._lock:
            if self._total is None:
                self._total = self._scan_total()
            elif not existed:
                self._total += len(data)
            if self._total > self.max_bytes:
                self._evict()

    def _entries(self) -> list[tuple[float, int, Path]]:
        out = []
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                if not name.endswith(".blk"):
                    continue
                p = Path(dirpath) / name
                with contextlib.suppress(OSError):
                    st = p.stat()
                    out.append((st.st_mtime, st.st_size, p))
        return out

    def _scan_total(self) -> int:
        return sum(size for _, size, _ in self._entries())

    def _evict(self) -> None:
        entries = sorted(self._entries(), key=lambda e: e[0])
        total = sum(size for _, size, _ in entries)
        target = int(0.8 * self.max_bytes)
        removed = 0
        for _mtime, size, path in entries:
            if total <= target:
                break
            with contextlib.suppress(OSError):
                path.unlink()
                total -= size
                removed += 1
        self._total = total
        log.debug("block cache %s: evicted %d blocks, %d bytes left", self.root, removed, total)


# ----------------------------------------------------------------------------------------
# HTTP with timeouts and bounded retries
# ----------------------------------------------------------------------------------------


def _describe(exc: BaseException, timeout: float) -> str:
    """A short one-line description of a network failure."""
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return f"connection timed out after {timeout:g} s"
    if isinstance(exc, requests.exceptions.ReadTimeout):
        return f"no response within {timeout:g} s (read timeout)"
    text = str(exc)
    for pattern, short in (
        ("Connection refused", "connection refused"),
        ("Connection reset", "connection reset by the server"),
        ("RemoteDisconnected", "the server closed the connection without answering"),
        ("IncompleteRead", "the connection broke off in the middle of a response"),
        ("Read timed out", f"no response within {timeout:g} s (read timeout)"),
        ("Name or service not known", "unknown host name"),
        ("Failed to resolve", "unknown host name"),
    ):
        if pattern in text:
            return short
    text = " ".join(text.split())
    return f"{type(exc).__name__}: {text[:160]}" if text else type(exc).__name__


def _retry_after(headers: Any) -> float | None:
    value = headers.get("Retry-After") if headers is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _wait(options: RemoteOptions, attempt: int, retry_after: float | None = None) -> float:
    delay = options.backoff * (2**attempt)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return min(delay, _MAX_WAIT)


_NETWORK_ERRORS: tuple[type[BaseException], ...] = (
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ContentDecodingError,
)


def _gave_up(url: str, failure: str, attempts: int, options: RemoteOptions) -> RemoteError:
    return RemoteError(
        f"{url}: {failure} (gave up after {attempts} "
        f"{'try' if attempts == 1 else 'tries'}); check the URL and your connection, or try "
        f"again later (NWB_LLMDECODE_TIMEOUT={options.timeout:g}, "
        f"NWB_LLMDECODE_RETRIES={options.retries})"
    )


class _RetryingAdapter(requests.adapters.HTTPAdapter):
    """Transport adapter: default timeout, bounded retries with backoff, RemoteError."""

    def __init__(self, options: RemoteOptions, stats: dict[str, Any] | None, counter: str):
        super().__init__(max_retries=0, pool_maxsize=16)
        self.options = options
        self.stats = stats
        self.counter = counter

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: float | tuple[float | None, float | None] | None = None,
        verify: bool | str = True,
        cert: str | tuple[str, str] | None = None,
        proxies: dict[str, str] | None = None,
    ) -> requests.Response:
        opts = self.options
        if timeout is None:
            timeout = opts.timeout
        idempotent = request.method in ("GET", "HEAD", "OPTIONS")
        attempts = opts.retries + 1 if idempotent else 1
        failure = ""
        for attempt in range(attempts):
            retry_after = None
            try:
                if self.stats is not None:
                    self.stats[self.counter] = self.stats.get(self.counter, 0) + 1
                resp = super().send(
                    request,
                    stream=stream,
                    timeout=timeout,
                    verify=verify,
                    cert=cert,
                    proxies=proxies,
                )
                if resp.status_code not in RETRY_STATUSES:
                    if not stream:
                        resp.content  # noqa: B018 - read the body inside the retry scope
                    return resp
                failure = f"HTTP {resp.status_code} {resp.reason or ''}".strip()
                retry_after = _retry_after(resp.headers)
                resp.close()
            except _NETWORK_ERRORS as exc:
                failure = _describe(exc, opts.timeout)
            if attempt + 1 < attempts:
                delay = _wait(opts, attempt, retry_after)
                log.info(
                    "%s %s: %s; retry %d in %.2f s",
                    request.method,
                    request.url,
                    failure,
                    attempt + 1,
                    delay,
                )
                if self.stats is not None:
                    self.stats["retries"] = self.stats.get("retries", 0) + 1
                time.sleep(delay)
        raise _gave_up(str(request.url), failure, attempts, opts)


def make_session(
    options: RemoteOptions,
    stats: dict[str, Any] | None = None,
    counter: str = "api_requests",
    *,
    session: requests.Session | None = None,
) -> requests.Session:
    """A :class:`requests.Session` whose requests time out and are retried per ``options``.

    Every request (including those the dandi client makes through the session) gets
    ``options.timeout`` unless it sets its own, is retried on connection errors,
    timeouts and HTTP 429/5xx (idempotent methods only), and raises
    :class:`RemoteError` once the retries are spent. ``stats[counter]`` counts the
    requests sent. Pass ``session`` to equip an existing session (e.g. a dandi client's).
    """
    if session is None:
        session = requests.Session()
    adapter = _RetryingAdapter(options, stats, counter)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


# ----------------------------------------------------------------------------------------
# the file object
# ----------------------------------------------------------------------------------------


_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


class RemoteFile(io.RawIOBase):
    """Read-only, seekable file object over HTTP ``Range`` requests, with a block cache.

    Reads are served from whole blocks of ``options.block_size`` bytes: from memory,
    else from the :class:`BlockCache`, else fetched with one range request per run of
    missing blocks. Sequential reads grow the request size (read-ahead, up to
    ``options.max_fetch``); random reads fetch only the blocks they touch.

    Use :meth:`open` to create one (it checks that the server honours ``Range``).
    ``stats`` is a live dict: ``bytes_fetched``, ``requests``, ``retries``,
    ``cache_hits`` and ``cache_misses`` (blocks).
    """

    def __init__(
        self,
        url: str,
        *,
        size: int,
        session: Any,
        options: RemoteOptions,
        key: str,
        cache: BlockCache | None = None,
        stats: dict[str, Any] | None = None,
        label: str | None = None,
    ) -> None:
        super().__init__()
        self.url = url
        self.size = int(size)
        self.session = session
        self.options = options
        self.key = key
        self.cache = cache
        self.label = label or url
        self.stats = stats if stats is not None else {}
        for k in ("bytes_fetched", "requests", "retries", "cache_hits", "cache_misses"):
            self.stats.setdefault(k, 0)
        self.failure: RemoteError | None = None
        self._pos = 0
        self._blocks: OrderedDict[int, bytes] = OrderedDict()
        self._max_blocks = max(4, options.memory_cache // options.block_size)
        self._next_seq = -1  # block after the last network fetch
        self._ahead = 1  # blocks of read-ahead for the next sequential fetch
        self._lock = threading.RLock()

    # -- construction ----------------------------------------------------------------

    @classmethod
    def open(
        cls,
        url: str,
        *,
        options: RemoteOptions,
        key_of: Callable[[str, int, str | None], str],
        size: int | None = None,
        key: str | None = None,
        cache: BlockCache | None = None,
        stats: dict[str, Any] | None = None,
        session: Any = None,
        label: str | None = None,
    ) -> RemoteFile:
        """Open ``url``; probe it with a first range request unless the cache suffices.

        ``key`` names the content when known beforehand (e.g. a DANDI digest); otherwise
        ``key_of(final_url, size, etag)`` computes it from the probe's answer.
        """
        stats = stats if stats is not None else {}
        session = session if session is not None else requests.Session()
        bs = options.block_size
        if key is not None and size is not None and cache is not None:
            first = cache.get(key, bs, 0, expected=min(bs, size))
            if first is not None:  # a known asset seen before: no request at all
                f = cls(
                    url,
                    size=size,
                    session=session,
                    options=options,
                    key=key,
                    cache=cache,
                    stats=stats,
                    label=label,
                )
                f._remember(0, first)
                stats["cache_hits"] = stats.get("cache_hits", 0) + 1
                return f
        probe = cls(
            url,
            size=size or bs,
            session=session,
            options=options,
            key=key or "0" * 64,
            cache=None,
            stats=stats,
            label=label,
        )
        final_url, total, etag, data = probe._probe()
        if size is not None and total != size:
            log.warning(
                "%s: the server reports %d bytes, the archive %d; using %d", url, total, size, total
            )
        if key is None:
            key = key_of(final_url, total, etag)
        f = cls(
            final_url,
            size=total,
            session=session,
            options=options,
            key=key,
            cache=cache,
            stats=stats,
            label=label,
        )
        for i in range(0, len(data), bs):
            f._store(i // bs, data[i : i + bs])
        return f

    def _probe(self) -> tuple[str, int, str | None, bytes]:
        """First range request: (final URL, total size, ETag, first block)."""
        bs = self.options.block_size
        resp, data = self._get_range(0, bs - 1, probe=True)
        total = self._total_from(resp, len(data))
        return str(resp.url), total, resp.headers.get("ETag"), data

    @staticmethod
    def _total_from(resp: Any, n: int) -> int:
        if resp.status_code == 200:
            return n
        m = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
        if m and m.group(3) != "*":
            return int(m.group(3))
        raise RemoteError(
            f"{resp.url}: the server's answer to a range request has no file size "
            f"(Content-Range {resp.headers.get('Content-Range')!r}); download the file and "
            "open it locally"
        )

    # -- io.RawIOBase --------------------------------------------------------------------

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self.size + offset
        else:
            raise ValueError(f"invalid whence {whence!r}")
        if pos < 0:
            raise ValueError(f"negative seek position {pos}")
        self._pos = pos
        return pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        start = self._pos
        end = min(start + len(view), self.size)
        if end <= start:
            return 0
        bs = self.options.block_size
        with self._lock:
            first, last = start // bs, (end - 1) // bs
            blocks = self._ensure(first, last)
            out = 0
            for i in range(first, last + 1):
                block = blocks[i]
                lo = max(start, i * bs) - i * bs
                hi = min(end, (i + 1) * bs) - i * bs
                view[out : out + hi - lo] = block[lo:hi]
                out += hi - lo
        self._pos = end
        return out

    # -- blocks ----------------------------------------------------------------------------

    def _remember(self, index: int, data: bytes) -> None:
        self._blocks[index] = data
        self._blocks.move_to_end(index)
        while len(self._blocks) > self._max_blocks:
            self._blocks.popitem(last=False)

    def _store(self, index: int, data: bytes) -> None:
        self._remember(index, data)
        if self.cache is not None:
            self.cache.put(self.key, self.options.block_size, index, data)

    def _block_len(self, index: int) -> int:
        bs = self.options.block_size
        return min(bs, self.size - index * bs)

    def _ensure(self, first: int, last: int) -> dict[int, bytes]:
        got: dict[int, bytes] = {}
        missing = []
        for i in range(first, last + 1):
            block = self._blocks.get(i)
            if block is not None:
                self._blocks.move_to_end(i)
            elif (
                self.cache is not None
                and (
                    block := self.cache.get(
                        self.key, self.options.block_size, i, expected=self._block_len(i)
                    )
                )
                is not None
            ):
                self.stats["cache_hits"] += 1
                self._remember(i, block)
            else:
                missing.append(i)
                continue
            got[i] = block
        # one request per run of consecutive missing blocks
        runs: list[list[int]] = []
        for i in missing:
            if runs and runs[-1][-1] == i - 1:
                runs[-1].append(i)
            else:
                runs.append([i])
        for run in runs:
            got.update(self._fetch_blocks(run[0], len(run)))
        return got

    def _fetch_blocks(self, start: int, count: int) -> dict[int, bytes]:
        bs = self.options.block_size
        n_blocks = (self.size + bs - 1) // bs
        if start == self._next_seq:  # sequential: read further ahead each time
            self._ahead = min(self._ahead * 2, self.options.max_fetch // bs)
            count = max(count, self._ahead)
        else:
            self._ahead = 1
        # stop the read-ahead at EOF and at the first block we already have
        end = start + count
        for j in range(start + 1, min(end, n_blocks)):
            if j in self._blocks:
                end = j
                break
        end = min(end, n_blocks)
        lo, hi = start * bs, min(end * bs, self.size) - 1
        _resp, data = self._get_range(lo, hi)
        out = {}
        for k, i in enumerate(range(start, end)):
            out[i] = data[k * bs : (k + 1) * bs]
            self._store(i, out[i])
        self.stats["cache_misses"] += end - start
        self._next_seq = end
        return out

    # -- HTTP --------------------------------------------------------------------------

    def _fail(self, error: RemoteError) -> RemoteError:
        self.failure = error
        return error

    def _get_range(self, lo: int, hi: int, *, probe: bool = False) -> tuple[Any, bytes]:
        """GET bytes ``lo..hi`` (inclusive), retried per the options; (response, body).

        A 200 answer (the whole file) is an error unless this is the ``probe`` of a file
        no larger than the range asked for.
        """
        if self.failure is not None:  # gave up on this file already: fail fast
            raise self.failure
        opts = self.options
        url = self.url
        attempts = opts.retries + 1
        failure = ""
        for attempt in range(attempts):
            retry_after = None
            try:
                self.stats["requests"] += 1
                resp = self.session.get(
                    url,
                    headers={"Range": f"bytes={lo}-{hi}", "Accept-Encoding": "identity"},
                    stream=True,
                    timeout=opts.timeout,
                )
                with contextlib.closing(resp):
                    if resp.history and not probe:  # the URL moved: go there directly
                        log.info("%s redirects to %s", url, resp.url)
                        self.url = url = str(resp.url)
                    status = resp.status_code
                    length = resp.headers.get("Content-Length")
                    small = length is not None and int(length) <= hi - lo + 1
                    if status == 206 or (status == 200 and probe and small):
                        data = resp.content
                        self.stats["bytes_fetched"] += len(data)
                        if status == 206:
                            self._check_range(resp, lo, hi, data)
                        return resp, data
                    if status == 200:
                        raise self._fail(
                            RemoteError(
                                f"{resp.url}: server ignores Range requests; download the file "
                                "and open it locally (it answered 200 with the whole file to a "
                                "byte-range request)"
                            )
                        )
                    if status in RETRY_STATUSES:
                        failure = f"HTTP {status} {resp.reason or ''}".strip()
                        retry_after = _retry_after(resp.headers)
                    elif status == 404:
                        raise self._fail(
                            RemoteError(
                                f"{url}: not found (HTTP 404); the file is gone or the URL is "
                                "wrong, check it (for DANDI, the asset may have been replaced: "
                                "open it again by its identifier)"
                            )
                        )
                    elif status in (401, 403):
                        raise self._fail(
                            RemoteError(
                                f"{url}: access denied (HTTP {status}); the link may have expired "
                                "(open the source again) or the data are embargoed (set "
                                "DANDI_API_KEY to a key with access)"
                            )
                        )
                    elif status == 416:
                        raise self._fail(
                            RemoteError(
                                f"{url}: range {lo}-{hi} not satisfiable (HTTP 416); the file "
                                "changed while it was read, open it again"
                            )
                        )
                    else:
                        raise self._fail(
                            RemoteError(
                                f"{url}: HTTP {status} {resp.reason or ''} to a byte-range "
                                "request; the server cannot stream this file, download it and "
                                "open it locally"
                            )
                        )
            except RemoteError:
                raise
            except _NETWORK_ERRORS as exc:
                failure = _describe(exc, opts.timeout)
            if attempt + 1 < attempts:
                delay = _wait(opts, attempt, retry_after)
                log.info(
                    "GET %s bytes %d-%d: %s; retry %d in %.2f s",
                    url,
                    lo,
                    hi,
                    failure,
                    attempt + 1,
                    delay,
                )
                self.stats["retries"] += 1
                time.sleep(delay)
        raise self._fail(_gave_up(url, failure, attempts, opts))

    def _check_range(self, resp: Any, lo: int, hi: int, data: bytes) -> None:
        m = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
        want = hi - lo + 1
        if m is not None and int(m.group(1)) != lo:
            raise self._fail(
                RemoteError(
                    f"{resp.url}: asked for bytes {lo}-{hi}, the server sent {m.group(0)!r}; "
                    "it does not serve byte ranges correctly, download the file and open it locally"
                )
            )
        if len(data) != want and not (m is not None and int(m.group(2)) < hi):
            raise self._fail(
                RemoteError(
                    f"{resp.url}: asked for {want} bytes ({lo}-{hi}), received {len(data)}; the "
                    "transfer was cut short, try again"
                )
            )


# ----------------------------------------------------------------------------------------
# entry point used by open_nwb
# ----------------------------------------------------------------------------------------


def _content_key(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def _url_key(url: str, size: int, etag: str | None) -> str:
    """Content key of a plain URL: the URL (without query when an ETag identifies the
    content, so that re-signed links share the cache), the ETag and the size."""
    base = url.split("?", 1)[0] if etag else url
    return _content_key("url", base, etag or "", str(size))


def _open_h5_fileobj(rfile: RemoteFile) -> Any:
    """``h5py.File(rfile)``, dropping h5py's frames from any error it raises.

    Those frames hold the file-access property list that references ``rfile``; kept alive
    by whoever holds the error (a caller, pytest), the list is freed only when HDF5 shuts
    down after the interpreter has, which crashes the process at exit.
    """
    import h5py

    try:
        return h5py.File(rfile, "r")
    except BaseException as exc:
        traceback.clear_frames(exc.__traceback__)
        raise


@contextlib.contextmanager
def open_remote_h5(
    source: str,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    options: RemoteOptions | None = None,
) -> Iterator[tuple[Any, str, dict[str, Any]]]:
    """Open a remote NWB file read-only with h5py, streaming byte ranges.

    Parameters
    ----------
    source
        A DANDI identifier or URL naming one asset (see
        :func:`nwb_llmdecode.io.dandi.resolve_source`), or an ``http(s)`` URL of an
        HDF5/NWB file.
    cache_dir
        Block cache directory; ``None`` uses :func:`default_cache_dir`.
    options
        Timeouts, retries and cache bounds; default :meth:`RemoteOptions.from_env`.

    Yields
    ------
    (h5py.File, str, dict)
        The open file, the URL its bytes are read from (after resolving DANDI
        identifiers and the archive's redirect), and live transfer statistics
        (``bytes_fetched``, ``requests``, ``cache_hits``... see :class:`RemoteFile`).

    Raises
    ------
    RemoteError
        When the source cannot be resolved or read after retries, or the server does
        not honour range requests.
    SourceError
        When the identifier is malformed or the bytes are not HDF5.

    Examples
    --------
    >>> source = "DANDI:000123/draft/sub-1/sub-1.nwb"
    >>> with open_remote_h5(source) as (f, url, stats):  # doctest: +SKIP
    ...     print(list(f), stats["bytes_fetched"])
    """

    from .dandi import resolve_source

    opts = options or RemoteOptions.from_env()
    t0 = time.perf_counter()
    stats: dict[str, Any] = {
        "source": source,
        "url": None,
        "size": None,
        "bytes_fetched": 0,
        "requests": 0,
        "retries": 0,
        "cache_hits": 0,
        "cache_misses": 0,
        "api_requests": 0,
        "cache_dir": None,
        "block_size": opts.block_size,
    }
    resolved = resolve_source(source, options=opts, stats=stats)
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    cache = BlockCache(root, max_bytes=opts.cache_size) if root is not None else None
    stats["cache_dir"] = str(cache.root) if cache is not None else None
    key = _content_key("dandi", resolved.digest) if resolved.digest else None
    # Plain session for the blob: RemoteFile does its own retries, and the archive's
    # Authorization header never goes to the blob host.
    session = requests.Session()
    try:
        rfile = RemoteFile.open(
            resolved.url,
            options=opts,
            key_of=_url_key,
            size=resolved.size,
            key=key,
            cache=cache,
            stats=stats,
            session=session,
            label=source,
        )
        stats["url"] = rfile.url
        stats["size"] = rfile.size
        stats["resolve_s"] = round(time.perf_counter() - t0, 3)
        log.info("%s: streaming %d bytes from %s", source, rfile.size, rfile.url)
        try:
            h5 = _open_h5_fileobj(rfile)
        except OSError as exc:
            if rfile.failure is not None:
                raise rfile.failure from exc
            raise SourceError(
                f"{source}: not an HDF5 file ({' '.join(str(exc).split())[:160]}); only "
                "HDF5 NWB files can be streamed"
            ) from exc
        try:
            yield h5, rfile.url, stats
        except Exception as exc:
            # h5py, hdmf and pynwb may wrap a network failure (pynwb's read into a
            # SourceError, for one); report the failure itself
            ours = isinstance(exc, LLMDecodeError) and not isinstance(exc, SourceError)
            if rfile.failure is not None and exc is not rfile.failure and not ours:
                raise rfile.failure from exc
            raise
        finally:
            h5.close()
            rfile.close()
    finally:
        session.close()
