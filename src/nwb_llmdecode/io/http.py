"""The HTTP policy of every remote read: settings, timeouts, one retry policy, errors.

Both the DANDI API requests (through the ``dandi`` client's session) and the byte-range
reads of a blob (through remfile, :mod:`nwb_llmdecode.io.remote`) go through a
:class:`requests.Session` made by :func:`make_session`. Its transport adapter is the only
place where requests are retried: network faults (timeouts, refused or reset
connections, a body cut short) and HTTP 408/429/5xx are retried with exponential backoff
(honouring ``Retry-After``) a bounded number of times; then one
:class:`~nwb_llmdecode.errors.RemoteError` names the URL and the failure in one line.
Neither the dandi client (it retries only on ``requests`` exceptions and retryable
statuses, which never leave the adapter) nor remfile (the adapter's errors are of a kind
it re-raises at once) retries again on top.

Settings (keyword arguments of :class:`RemoteOptions`, or environment variables):

``NWB_LLMDECODE_CACHE``
    Cache directory (default: the user's cache directory, e.g. ``~/.cache/nwb-llmdecode``);
    ``off`` disables the disk cache. A ``cache_dir`` argument (``--cache-dir``) takes
    precedence.
``NWB_LLMDECODE_CACHE_SIZE``
    Bound of the disk cache, bytes or with a K/M/G/T suffix (default ``2G``).
``NWB_LLMDECODE_BLOCK_SIZE``
    Size of a read and cache block (default ``100K``, remfile's chunk size).
``NWB_LLMDECODE_TIMEOUT``
    Seconds to wait for a connection or for data before a try counts as failed (30).
``NWB_LLMDECODE_RETRIES``
    Retries after a failed try (4).
``NWB_LLMDECODE_BACKOFF``
    Seconds before the first retry; doubled for each further retry (0.5).
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import requests
import requests.adapters

from ..errors import ConfigError, RemoteError

__all__ = [
    "RETRY_STATUSES",
    "RemoteOptions",
    "ResolvedSource",
    "Stats",
    "default_cache_dir",
    "describe_failure",
    "make_session",
]

log = logging.getLogger(__name__)

#: HTTP statuses worth retrying (throttling and server-side failures).
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
_MAX_WAIT = 30.0  # cap of one backoff wait (and of a server's Retry-After), seconds
_SIZE_SUFFIX = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}

#: Live transfer statistics of one open source (``bytes_fetched``, ``requests``...).
Stats = dict[str, Any]


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
        Retries after a failed try (timeout, connection error, HTTP 408/429/5xx).
    backoff
        Seconds before the first retry, doubled for each further one (capped at 30 s).
    block_size
        Granularity of reads and of the disk cache, bytes.
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
    block_size: int = 100 * 1024
    max_fetch: int = 32 * 1024 * 1024
    memory_cache: int = 128 * 1024 * 1024
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
    """The cache directory: ``NWB_LLMDECODE_CACHE``, else the user cache directory.

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


@dataclass(frozen=True)
class ResolvedSource:
    """Where the bytes of a source are read from (what resolving a source gives).

    Attributes
    ----------
    source
        The source as given.
    url
        The content URL: for a DANDI file asset, the blob URL after one redirect of the
        asset's ``/download/`` URL; for a DANDI Zarr asset, the URL of the Zarr store's
        root; otherwise the URL as given.
    size
        Size in bytes when the archive says, else ``None``.
    digest
        ``"<algorithm>:<value>"`` content digest from the asset metadata (it names the
        cache, so a changed asset never meets the blocks of its old content), else
        ``None``.
    kind
        ``"hdf5"`` (one file) or ``"zarr"`` (a Zarr store: a tree of objects).
    api_url, dandiset_id, version_id, path, asset_id
        The DANDI asset, for DANDI sources.
    sha256
        The asset's SHA-256 (hex) when the archive gives one.
    """

    source: str
    url: str
    size: int | None = None
    digest: str | None = None
    kind: str = "hdf5"
    api_url: str | None = None
    dandiset_id: str | None = None
    version_id: str | None = None
    path: str | None = None
    asset_id: str | None = None
    sha256: str | None = None


# ----------------------------------------------------------------------------------------
# failures
# ----------------------------------------------------------------------------------------


def describe_failure(exc: BaseException, timeout: float) -> str:
    """A short one-line description of a network failure.

    Examples
    --------
    >>> describe_failure(requests.exceptions.ReadTimeout("Read timed out."), 5)
    'no response within 5 s (read timeout)'
    """
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


def gave_up(url: str, failure: str, attempts: int, options: RemoteOptions) -> str:
    """The one-line message of a request that failed ``attempts`` times."""
    return (
        f"{url}: {failure} (gave up after {attempts} "
        f"{'try' if attempts == 1 else 'tries'}); check the URL and your connection, or try "
        f"again later (NWB_LLMDECODE_TIMEOUT={options.timeout:g}, "
        f"NWB_LLMDECODE_RETRIES={options.retries})"
    )


#: ``on_response(request, response)``: raise for a final answer that is an error, return a
#: new request to send in its place (a renewed URL), or ``None`` to accept the answer.
ResponseHook = Callable[[requests.PreparedRequest, requests.Response], Any]


class RetryingAdapter(requests.adapters.HTTPAdapter):
    """Transport adapter: default timeout, the one retry policy, one-line errors.

    Parameters
    ----------
    options
        Timeout, retries and backoff.
    stats
        Live statistics: ``stats[counter]`` counts requests sent, ``stats["retries"]``
        retries, ``stats[bytes_counter]`` (when given) body bytes received.
    on_response
        Called with each answer that is not retried, before its body is read (see
        :data:`ResponseHook`).
    error
        The exception type raised (a :class:`RemoteError`).
    fail_fast
        Once a request has failed for good, fail every later one at once with the same
        error (for the reads of one file: a reader that retries elsewhere in the file
        would only multiply the wait).
    """

    def __init__(
        self,
        options: RemoteOptions,
        stats: Stats | None = None,
        counter: str = "api_requests",
        *,
        bytes_counter: str | None = None,
        on_response: ResponseHook | None = None,
        error: type[RemoteError] = RemoteError,
        fail_fast: bool = False,
    ) -> None:
        super().__init__(max_retries=0, pool_maxsize=16)
        self.options = options
        self.stats = stats if stats is not None else {}
        self.counter = counter
        self.bytes_counter = bytes_counter
        self.on_response = on_response
        self.error = error
        self.fail_fast = fail_fast
        self.failure: RemoteError | None = None  # the first error raised; later calls fail fast

    def _fail(self, message: str) -> RemoteError:
        err = self.error(message)
        if self.failure is None:
            self.failure = err
        return err

    def send(  # type: ignore[override]
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: float | tuple[float | None, float | None] | None = None,
        verify: bool | str = True,
        cert: str | tuple[str, str] | None = None,
        proxies: dict[str, str] | None = None,
    ) -> requests.Response:
        if self.fail_fast and self.failure is not None:  # gave up on this file already
            raise self.failure
        opts = self.options
        if timeout is None:
            timeout = opts.timeout
        idempotent = request.method in ("GET", "HEAD", "OPTIONS")
        attempts = opts.retries + 1 if idempotent else 1
        failure = ""
        attempt = 0
        renewals = 0
        while attempt < attempts:
            retry_after = None
            try:
                self.stats[self.counter] = self.stats.get(self.counter, 0) + 1
                resp = super().send(
                    request,
                    stream=True,
                    timeout=timeout,
                    verify=verify,
                    cert=cert,
                    proxies=proxies,
                )
                if resp.status_code in RETRY_STATUSES:
                    failure = f"HTTP {resp.status_code} {resp.reason or ''}".strip()
                    retry_after = _retry_after(resp.headers)
                    resp.close()
                else:
                    if self.on_response is not None:
                        try:
                            again = self.on_response(request, resp)
                        except RemoteError as exc:
                            resp.close()
                            raise self._fail(str(exc)) from None
                        if again is not None:  # a renewed URL: send that instead
                            resp.close()
                            if renewals >= 2:
                                raise self._fail(
                                    f"{request.url}: still denied (HTTP {resp.status_code}) "
                                    "after renewing the link twice; open the source again"
                                )
                            request, renewals = again, renewals + 1
                            continue
                    if not stream:
                        data = resp.content  # read the body inside the retry scope
                        if self.bytes_counter:
                            key = self.bytes_counter
                            self.stats[key] = self.stats.get(key, 0) + len(data)
                    return resp
            except RemoteError:
                raise
            except _NETWORK_ERRORS as exc:
                failure = describe_failure(exc, opts.timeout)
            attempt += 1
            if attempt < attempts:
                delay = _wait(opts, attempt - 1, retry_after)
                log.info(
                    "%s %s: %s; retry %d in %.2f s",
                    request.method,
                    request.url,
                    failure,
                    attempt,
                    delay,
                )
                self.stats["retries"] = self.stats.get("retries", 0) + 1
                time.sleep(delay)
        raise self._fail(gave_up(str(request.url), failure, attempts, opts))


def make_session(
    options: RemoteOptions,
    stats: Stats | None = None,
    counter: str = "api_requests",
    *,
    session: requests.Session | None = None,
    **adapter: Any,
) -> requests.Session:
    """A :class:`requests.Session` whose requests time out and are retried per ``options``.

    Every request (including those the dandi client makes through the session) gets
    ``options.timeout`` unless it sets its own, is retried on connection errors,
    timeouts and HTTP 408/429/5xx (idempotent methods only), and raises
    :class:`RemoteError` once the retries are spent. ``stats[counter]`` counts the
    requests sent. Pass ``session`` to equip an existing session (e.g. a dandi client's);
    further keyword arguments go to :class:`RetryingAdapter`.

    Examples
    --------
    >>> with make_session(RemoteOptions(timeout=5)) as session:
    ...     type(session.get_adapter("https://example.org")).__name__
    'RetryingAdapter'
    """
    if session is None:
        session = requests.Session()
    transport = RetryingAdapter(options, stats, counter, **adapter)
    session.mount("http://", transport)
    session.mount("https://", transport)
    return session


def zarr_storage_options(options: RemoteOptions, stats: Stats | None = None) -> dict[str, Any]:
    """fsspec HTTP ``storage_options`` for zarr: the same timeout and retry policy.

    Zarr reads through fsspec's aiohttp client, not through :mod:`requests`; this gives
    that client the policy of :class:`RetryingAdapter` as an aiohttp middleware (the only
    retry loop of those requests) and ``options.timeout`` for connecting and reading.
    """
    import asyncio

    import aiohttp

    counts = stats if stats is not None else {}

    async def retrying(req: Any, handler: Any) -> Any:
        attempts = options.retries + 1
        failure = ""
        for attempt in range(attempts):
            retry_after = None
            counts["requests"] = counts.get("requests", 0) + 1
            try:
                resp = await handler(req)
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
                failure = describe_failure(exc, options.timeout)
            except asyncio.TimeoutError:
                failure = f"no response within {options.timeout:g} s (read timeout)"
            else:
                if resp.status not in RETRY_STATUSES:
                    if resp.content_length:
                        counts["bytes_fetched"] = counts.get("bytes_fetched", 0) + int(
                            resp.content_length
                        )
                    return resp
                failure = f"HTTP {resp.status} {resp.reason or ''}".strip()
                retry_after = _retry_after(resp.headers)
                resp.release()
            if attempt + 1 < attempts:
                counts["retries"] = counts.get("retries", 0) + 1
                await asyncio.sleep(_wait(options, attempt, retry_after))
        raise RemoteError(gave_up(str(req.url), failure, attempts, options))

    timeout = aiohttp.ClientTimeout(
        total=None, sock_connect=options.timeout, sock_read=options.timeout
    )
    return {"client_kwargs": {"timeout": timeout, "middlewares": (retrying,)}}
