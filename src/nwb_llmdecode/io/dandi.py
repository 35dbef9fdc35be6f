"""DANDI archive: resolve resource identifiers to streaming URLs, and list assets.

This module only resolves; :func:`nwb_llmdecode.io.sources.open_nwb` resolves a source
here, then opens it with :mod:`nwb_llmdecode.io.remote`. API requests go through the HTTP
policy of :mod:`nwb_llmdecode.io.http` (timeouts, one retry policy, one-line errors).

Parsing and API access go through the ``dandi`` client (``parse_dandi_url``,
``DandiAPIClient``, ``RemoteDandiset.get_asset_by_path``...). Accepted sources, when they
name one asset:

- ``DANDI:000123/draft/sub-1/sub-1_ses-1.nwb`` (also ``DANDI:000123/sub-1/...`` for the
  most recent version, and other instances: ``DANDI-SANDBOX:…``, ``LINC:…``);
- ``dandi://dandi/000123@draft/sub-1/sub-1_ses-1.nwb``;
- ``https://<server>/api/dandisets/000123/versions/draft/assets/?path=sub-1/…``;
- ``https://<server>/api/assets/<asset id>/download/`` (and the other asset-id URLs);
- every other form of ``dandi.dandiarchive.parse_dandi_url`` that ends on one asset.

An asset is a file (an HDF5 ``.nwb`` blob) or a Zarr store (``.nwb.zarr``); both resolve.

Any other ``http(s)`` URL is opened directly as the URL of an NWB file.

The DANDI instance is the one the identifier names (``DANDI:`` and ``dandi://dandi/`` are
the main archive). Environment variables:

``NWB_LLMDECODE_DANDI_API`` (or ``DANDI_API_URL``)
    API URL (e.g. ``http://localhost:8000/api``) that replaces the one of the default
    instance (``DANDI_INSTANCE``, default ``dandi``): ``DANDI:`` identifiers,
    ``dandi://dandi/…`` and ``dandi ls`` then use it. URLs naming a server are used as
    given.
``DANDI_INSTANCE``
    Default instance of ``list_assets`` (``dandi``, ``dandi-sandbox``...).
``DANDI_API_KEY`` (or ``<INSTANCE>_API_KEY``)
    API key for embargoed dandisets; sent to the archive API only, never to the host the
    bytes are read from.
"""

from __future__ import annotations

import contextlib
import difflib
import itertools
import logging
import os
import posixpath
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, unquote, urljoin, urlsplit

from ..errors import ConfigError, RemoteError, SourceError
from .http import RemoteOptions, ResolvedSource, Stats, describe_failure, make_session

__all__ = [
    "API_URL_ENV",
    "ResolvedSource",
    "is_dandi_identifier",
    "list_assets",
    "resolve_source",
]

log = logging.getLogger(__name__)

#: Environment variables (first set wins) holding a custom API URL for the default instance.
API_URL_ENV = ("NWB_LLMDECODE_DANDI_API", "DANDI_API_URL")

_SHORT_FORM = re.compile(r"(?P<inst>[A-Za-z][-\w.]*):(?P<id>\d{6})(?:/(?P<rest>.*))?")
_LS_SPEC = re.compile(
    r"(?:(?P<inst>[A-Za-z][-\w.]*):)?(?P<id>\d{6})(?:@(?P<ver>[^/]+))?(?:/(?P<prefix>.*))?"
)
_EXTRA_HOSTS = ("identifiers.org", "gui.dandiarchive.org", "gui-staging.dandiarchive.org")
_MAX_LISTED = 20000  # assets scanned for near matches of an unknown path
#: Paths of plain URLs that name a Zarr store: ``….zarr/`` or DANDI's ``/zarr/<uuid>/``.
_ZARR_URL = re.compile(r"(\.zarr|/zarr/[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12})/?$", re.I)


# ----------------------------------------------------------------------------------------
# helpers around the dandi client
# ----------------------------------------------------------------------------------------


class _DemoteToDebug(logging.Filter):
    """The dandi client logs (and prints, without logging set up) every failed request
    before raising; we raise one-line errors ourselves. So while we call it, its records
    are shown as DEBUG records when our logger is at DEBUG (``--debug``), else dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not logging.getLogger("nwb_llmdecode").isEnabledFor(logging.DEBUG):
            return False
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


@contextlib.contextmanager
def _quiet_dandi_logs() -> Iterator[None]:
    logger = logging.getLogger("dandi")
    flt = _DemoteToDebug()
    logger.addFilter(flt)
    try:
        yield
    finally:
        logger.removeFilter(flt)


def _override_api() -> str | None:
    for var in API_URL_ENV:
        if value := os.environ.get(var, "").strip():
            if not value.lower().startswith(("http://", "https://")):
                raise ConfigError(f"{var}={value!r}: not an http(s) URL of a DANDI API")
            return value.rstrip("/")
    return None


def _default_instance_name() -> str:
    return os.environ.get("DANDI_INSTANCE", "dandi").strip() or "dandi"


def _dandi_hosts() -> set[str]:
    from dandi.consts import known_instances

    hosts = set(_EXTRA_HOSTS)
    for inst in known_instances.values():
        for url in inst.urls():
            if host := urlsplit(url).hostname:
                hosts.add(host.lower())
    return hosts


def is_dandi_identifier(source: str) -> bool:
    """Whether ``source`` is a DANDI identifier or archive URL (not a plain file URL).

    Examples
    --------
    >>> is_dandi_identifier("DANDI:000123/draft/sub-1/sub-1.nwb")
    True
    >>> is_dandi_identifier("https://example.org/data/session.nwb")
    False
    """
    s = source.strip()
    if _SHORT_FORM.fullmatch(s) or s.lower().startswith("dandi://"):
        return True
    if not s.lower().startswith(("http://", "https://")):
        return False
    parts = urlsplit(s)
    if re.search(r"/api/(dandisets|assets)/", parts.path):
        return True
    override = _override_api()
    if override and s.startswith(override + "/"):
        return True
    return (parts.hostname or "").lower() in _dandi_hosts()


def _rewrite_short_form(source: str) -> str:
    """``DANDI:000123[/VERSION][/PATH]`` -> ``dandi://dandi/000123[@VERSION][/PATH]``.

    The client's own ``<INSTANCE>:<id>[/<version>]`` form stops at the version; this
    extends it with a path, as users write it.
    """
    from dandi.consts import VERSION_REGEX

    m = _SHORT_FORM.fullmatch(source.strip())
    if m is None:
        return source
    rest = (m.group("rest") or "").strip("/")
    first, _, tail = rest.partition("/")
    version, path = (first, tail) if re.fullmatch(VERSION_REGEX, first) else (None, rest)
    out = f"dandi://{m.group('inst').lower()}/{m.group('id')}"
    if version:
        out += f"@{version}"
    if path:
        out += f"/{path}"
    return out


def _check_server(url: str, options: RemoteOptions, stats: Stats | None) -> None:
    """Reach an unknown server's ``/server-info`` with our timeout and retries first.

    The dandi client fetches it with no timeout while parsing the URL; a server that is
    down or hangs is reported here instead, with a bounded wait.
    """
    parts = urlsplit(url)
    if (parts.hostname or "").lower() in _dandi_hosts():
        return
    with make_session(options, stats) as session:
        session.get(f"{parts.scheme}://{parts.netloc}/server-info").close()


def _parse(source: str, options: RemoteOptions, stats: Stats | None) -> Any:
    """The client's parse of ``source``, with the instance override applied."""
    from dandi.consts import DandiInstance
    from dandi.dandiarchive import parse_dandi_url
    from dandi.exceptions import UnknownURLError

    text = _rewrite_short_form(source)
    is_url = text.lower().startswith(("http://", "https://"))
    if is_url:
        _check_server(text, options, stats)
    try:
        parsed = parse_dandi_url(text)
    except UnknownURLError as exc:
        first = str(exc).strip().splitlines()[0]
        raise SourceError(
            f"{source}: not a DANDI identifier ({first}); use e.g. "
            "DANDI:000123/draft/sub-1/sub-1_ses-1.nwb, dandi://dandi/000123@draft/<path> or "
            "https://<server>/api/assets/<asset id>/download/"
        ) from exc
    except RuntimeError as exc:  # the client could not fetch the server's /server-info
        raise RemoteError(f"{source}: {' '.join(str(exc).split())}; check the URL") from exc
    override = _override_api()
    if not is_url and override and parsed.instance.name == _default_instance_name():
        parsed.instance = DandiInstance(name=parsed.instance.name, gui=None, api=override)
    return parsed


def _token(instance: Any) -> tuple[str, str] | None:
    """(variable, API key) from ``<INSTANCE>_API_KEY`` (the client's convention) or
    ``DANDI_API_KEY``."""
    names = [f"{instance.name.upper().replace('-', '_')}_API_KEY", "DANDI_API_KEY"]
    for var in names:
        if re.fullmatch(r"[A-Z_][A-Z0-9_]*", var) and (value := os.environ.get(var)):
            return var, value
    return None


@contextlib.contextmanager
def _client(instance: Any, options: RemoteOptions, stats: Stats | None) -> Iterator[Any]:
    """A DandiAPIClient for ``instance`` whose requests time out and retry per ``options``,
    authenticated when an API key is set.

    The retries are those of the session's transport (the one retry policy): it never
    hands the client a retryable status or a ``requests`` exception, so the client's own
    retry loop never runs on top of it.
    """
    import requests
    from dandi.dandiapi import DandiAPIClient

    client = DandiAPIClient(dandi_instance=instance)
    make_session(options, stats, session=client.session)
    with client:
        if tok := _token(instance):
            var, key = tok
            try:
                client.authenticate(key)
            except requests.HTTPError as exc:
                code = exc.response.status_code if exc.response is not None else "?"
                raise RemoteError(
                    f"{instance.api}: the API key in {var} was rejected (HTTP {code}); set it "
                    f"to a valid key from your account on {instance.gui or instance.api}"
                ) from exc
        yield client


@contextlib.contextmanager
def _api_errors(source: str, api: str) -> Iterator[None]:
    """Turn the dandi client's exceptions into one-line RemoteErrors."""
    import pydantic
    import requests
    from dandi.exceptions import NotFoundError

    try:
        yield
    except (RemoteError, SourceError, ConfigError):
        raise
    except NotFoundError as exc:
        raise RemoteError(
            f"{source}: not found on {api} ({' '.join(str(exc).split())}); check the identifier"
        ) from exc
    except requests.HTTPError as exc:
        code = exc.response.status_code if exc.response is not None else None
        if code in (401, 403):
            raise RemoteError(
                f"{source}: access denied by {api} (HTTP {code}); the dandiset is embargoed, "
                "set DANDI_API_KEY to an API key with access to it"
            ) from exc
        raise RemoteError(
            f"{source}: the DANDI API at {api} answered HTTP {code}; try again later"
        ) from exc
    except requests.RequestException as exc:
        raise RemoteError(f"{source}: {api}: {describe_failure(exc, 0)}; try again later") from exc
    except pydantic.ValidationError as exc:
        raise RemoteError(
            f"{source}: unexpected answer from the DANDI API at {api} "
            f"({exc.error_count()} invalid fields); is it a DANDI API?"
        ) from exc


def _dandiset(client: Any, dandiset_id: str, version_id: str | None, source: str) -> Any:
    """The dandiset at ``version_id`` (default: most recent published, else draft)."""
    from dandi.exceptions import NotFoundError

    try:
        d = client.get_dandiset(dandiset_id, version_id, lazy=False)
    except NotFoundError as exc:
        if "version" in str(exc).lower():
            raise RemoteError(
                f"{source}: dandiset {dandiset_id} has no version {version_id!r} on "
                f"{client.api_url}; use 'draft' or a published version (e.g. 0.230101.1200)"
            ) from exc
        raise RemoteError(
            f"{source}: no dandiset {dandiset_id} on {client.api_url} (or it is embargoed and "
            "DANDI_API_KEY is not set); check the number"
        ) from exc
    return d


def _not_found(dandiset: Any, path: str, source: str) -> RemoteError:
    """An error for an unknown asset path, listing near matches."""
    paths = [a.path for a in itertools.islice(dandiset.get_assets(), _MAX_LISTED)]
    where = f"dandiset {dandiset.identifier} version {dandiset.version_id}"
    ls = f"`nwb-llmdecode dandi ls {dandiset.identifier}@{dandiset.version_id}`"
    inside = [p for p in paths if p.startswith(path.rstrip("/") + "/")]
    if inside:
        shown = ", ".join(inside[:5]) + (", ..." if len(inside) > 5 else "")
        return RemoteError(
            f"{source}: {path!r} is a folder of {where}, not an asset; give one of its "
            f"{len(inside)} files: {shown}"
        )
    close = difflib.get_close_matches(path, paths, n=5, cutoff=0.6)
    if not close:
        base = posixpath.basename(path)
        close = [p for p in paths if posixpath.basename(p) == base][:5]
    hint = f"did you mean: {', '.join(close)}?" if close else f"it has {len(paths)} assets"
    return RemoteError(f"{source}: no asset {path!r} in {where}; {hint} (list them with {ls})")


def _one_asset(parsed: Any, client: Any, source: str) -> Any:
    """The single asset ``parsed`` names, or an error saying what it names instead."""
    from dandi import dandiarchive as da
    from dandi.exceptions import NotFoundError

    if isinstance(parsed, da.DandisetURL):
        d = parsed.dandiset_id
        raise SourceError(
            f"{source}: names dandiset {d}, not one asset; add the asset path "
            f"(DANDI:{d}/draft/<path>), list them with `nwb-llmdecode dandi ls {d}`"
        )
    if isinstance(parsed, da.AssetZarrEntryURL):
        raise SourceError(
            f"{source}: points inside a Zarr asset; give the asset itself (its path ending "
            "in .nwb.zarr, or its asset id)"
        )
    if isinstance(parsed, da.AssetItemURL | da.AssetPathPrefixURL):
        # an item path, or an API ``?path=`` URL whose path is that of one asset
        dandiset = _dandiset(client, parsed.dandiset_id, parsed.version_id, source)
        path = unquote(parsed.path)  # the client leaves ``?path=`` percent-encoded
        try:
            return dandiset.get_asset_by_path(path)
        except NotFoundError:
            raise _not_found(dandiset, path, source) from None
    if isinstance(parsed, da.AssetIDURL | da.BaseAssetIDURL):
        try:
            return next(iter(parsed.get_assets(client, strict=True)))
        except NotFoundError as exc:
            if str(exc).startswith("No such Dandiset"):
                raise RemoteError(
                    f"{source}: no dandiset {parsed.dandiset_id} on {client.api_url}; check "
                    "the number"
                ) from exc
            raise RemoteError(
                f"{source}: no asset with id {parsed.asset_id!r} on {client.api_url}; check "
                "the id, or list assets with `nwb-llmdecode dandi ls DANDISET`"
            ) from exc
    # a folder or a glob: fine if it holds exactly one asset
    assets = list(itertools.islice(parsed.get_assets(client, strict=False), 6))
    if len(assets) == 1:
        return assets[0]
    listed = ", ".join(a.path for a in assets[:5]) + (", ..." if len(assets) > 5 else "")
    raise SourceError(
        f"{source}: names {'no' if not assets else 'several'} assets"
        f"{' (' + listed + ')' if assets else ''}; give the path of one .nwb file"
    )


def _digest(metadata: dict[str, Any]) -> str | None:
    digests = metadata.get("digest") or {}
    for algo in ("dandi:dandi-etag", "dandi:sha2-256", "dandi:dandi-zarr-checksum"):
        if value := digests.get(algo):
            return f"{algo}:{value}"
    return None


def _content_url(client: Any, download_url: str, source: str) -> str:
    """Follow the ``/download/`` redirect once, with the API's credentials."""
    resp = client.session.get(download_url, allow_redirects=False, stream=True)
    with contextlib.closing(resp):
        if resp.is_redirect or resp.status_code in (301, 302, 303, 307, 308):
            return urljoin(download_url, resp.headers["Location"])
        if resp.status_code == 200:
            return download_url  # the API serves the bytes itself
        if resp.status_code == 404:
            raise RemoteError(
                f"{source}: {download_url} not found (HTTP 404); the asset was removed, "
                "check the identifier"
            )
        if resp.status_code in (401, 403):
            raise RemoteError(
                f"{source}: {download_url} denied (HTTP {resp.status_code}); the asset is "
                "embargoed, set DANDI_API_KEY to an API key with access to it"
            )
        raise RemoteError(
            f"{source}: {download_url} answered HTTP {resp.status_code}; try again later"
        )


# ----------------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------------


def _zarr_url(metadata: dict[str, Any], source: str, path: str) -> str:
    """The URL of a Zarr asset's store root, from its ``contentUrl`` list."""
    urls = metadata.get("contentUrl") or []
    for url in urls:
        if _ZARR_URL.search(urlsplit(url).path) and "/api/" not in url:
            return url.rstrip("/") + "/"
    raise RemoteError(
        f"{source}: the archive gives no URL of the Zarr store of {path} (contentUrl: "
        f"{urls!r}); download it with `dandi download` and open the local .nwb.zarr"
    )


def resolve_source(
    source: str, *, options: RemoteOptions | None = None, stats: Stats | None = None
) -> ResolvedSource:
    """Resolve a DANDI identifier (or plain URL) to the URL its bytes are read from.

    Parameters
    ----------
    source
        A DANDI identifier or archive URL naming one asset, or an ``http(s)`` URL.
    options
        :class:`~nwb_llmdecode.io.http.RemoteOptions` (timeouts, retries) for the API
        requests; default from the environment.
    stats
        If given, ``stats["api_requests"]`` counts the API requests made.

    Returns
    -------
    ResolvedSource
        ``kind`` is ``"zarr"`` for a Zarr asset (``url`` is then its store's root).

    Raises
    ------
    SourceError
        The identifier is malformed, or names a dandiset or folder, not one asset.
    RemoteError
        The archive cannot be reached, or the dandiset, version or asset does not exist
        (with near matches of an unknown path), or access is denied.

    Examples
    --------
    >>> r = resolve_source("https://example.org/data/session.nwb")
    >>> r.url
    'https://example.org/data/session.nwb'
    >>> resolve_source("DANDI:000123/draft/sub-1/sub-1.nwb").url  # doctest: +SKIP
    'https://dandiarchive.s3.amazonaws.com/blobs/...'
    """
    opts = options or RemoteOptions.from_env()
    if not is_dandi_identifier(source):
        if not source.lower().startswith(("http://", "https://")):
            raise SourceError(
                f"{source}: not a URL or DANDI identifier; give an https:// URL of an NWB "
                "file, DANDI:<dandiset>/<version>/<path> or a local path"
            )
        zarr = _ZARR_URL.search(urlsplit(source).path)
        return ResolvedSource(source=source, url=source, kind="zarr" if zarr else "hdf5")
    with _quiet_dandi_logs(), _api_errors(source, "the DANDI API"):
        parsed = _parse(source, opts, stats)
        api = parsed.instance.api
        with _api_errors(source, api), _client(parsed.instance, opts, stats) as client:
            asset = _one_asset(parsed, client, source)
            metadata = asset.get_raw_metadata()
            if asset.asset_type.name == "ZARR":
                kind, url = "zarr", _zarr_url(metadata, source, asset.path)
            else:
                kind, url = "hdf5", _content_url(client, asset.base_download_url, source)
    resolved = ResolvedSource(
        source=source,
        url=url,
        size=int(asset.size),
        digest=_digest(metadata) or f"dandi:blob:{getattr(asset, 'blob', asset.identifier)}",
        kind=kind,
        api_url=api,
        dandiset_id=getattr(asset, "dandiset_id", None) or parsed.dandiset_id,
        version_id=getattr(asset, "version_id", None) or parsed.version_id,
        path=asset.path,
        asset_id=asset.identifier,
        sha256=(metadata.get("digest") or {}).get("dandi:sha2-256"),
    )
    log.info("%s: asset %s (%d bytes) at %s", source, asset.identifier, resolved.size, url)
    return resolved


def _instance_for_listing(name: str | None) -> Any:
    from dandi.consts import DandiInstance, known_instances
    from dandi.utils import get_instance

    default = _default_instance_name()
    name = (name or default).lower()
    override = _override_api()
    if override and name == default.lower():
        return DandiInstance(name=name, gui=None, api=override)
    if name in known_instances:
        return known_instances[name]
    try:
        return get_instance(name)
    except (KeyError, RuntimeError, ValueError) as exc:
        raise ConfigError(
            f"DANDI instance {name!r} is unknown; use one of {', '.join(sorted(known_instances))} "
            f"or set {API_URL_ENV[0]} to an API URL"
        ) from exc


def _source_id(instance: Any, dandiset: str, version: str, path: str) -> str:
    from dandi.consts import known_instances

    if instance.name in known_instances:
        return f"dandi://{instance.name}/{dandiset}@{version}/{path}"
    return f"{instance.api}/dandisets/{dandiset}/versions/{version}/assets/?path={quote(path)}"


def list_assets(spec: str, *, options: RemoteOptions | None = None) -> list[dict[str, Any]]:
    """List the assets of a dandiset version, optionally under a path prefix.

    Parameters
    ----------
    spec
        ``DANDISET[@VERSION][/PATH-PREFIX]`` (``000123``, ``000123@draft/sub-1``), on the
        default instance (``DANDI_INSTANCE``, or the API URL in ``NWB_LLMDECODE_DANDI_API``);
        an instance may prefix it (``dandi-sandbox:000123``). Any DANDI identifier or URL
        of a dandiset, folder or asset is accepted too. Without a version: the most recent
        published version, else the draft.
    options
        :class:`~nwb_llmdecode.io.http.RemoteOptions` for the API requests.

    Returns
    -------
    list of dict
        One per asset, sorted by path: ``path``, ``size`` (bytes), ``asset_id``,
        ``modified`` (ISO 8601), ``dandiset``, ``version`` and ``source`` (an identifier
        that ``open_nwb`` accepts).

    Examples
    --------
    >>> [a["path"] for a in list_assets("000123@draft/sub-1")]  # doctest: +SKIP
    ['sub-1/sub-1_ses-1.nwb', 'sub-1/sub-1_ses-2.nwb']
    """
    from dandi import dandiarchive as da

    opts = options or RemoteOptions.from_env()
    text = spec.strip()
    m = _LS_SPEC.fullmatch(text)
    with _quiet_dandi_logs(), _api_errors(spec, "the DANDI API"):
        parsed: Any = None
        if m is not None:
            instance = _instance_for_listing(m.group("inst"))
            did, ver, prefix = m.group("id"), m.group("ver"), m.group("prefix") or ""
        elif is_dandi_identifier(text):
            parsed = _parse(text, opts, None)
            instance = parsed.instance
            did, ver, prefix = parsed.dandiset_id, parsed.version_id, ""
        else:
            raise ConfigError(
                f"{spec!r}: not DANDISET[@VERSION][/PATH-PREFIX] (e.g. 000123 or "
                "000123@draft/sub-1) nor a DANDI identifier"
            )
        with _api_errors(spec, instance.api), _client(instance, opts, None) as client:
            if parsed is None or isinstance(parsed, da.DandisetURL):
                dandiset = _dandiset(client, did, ver, spec)
                found = (
                    dandiset.get_assets_with_path_prefix(prefix)
                    if prefix
                    else dandiset.get_assets()
                )
                assets = list(found)
            else:
                assets = list(parsed.get_assets(client, strict=True))
    rows = []
    for a in assets:
        did = getattr(a, "dandiset_id", None)
        ver = getattr(a, "version_id", None)
        rows.append(
            {
                "path": a.path,
                "size": int(a.size),
                "asset_id": a.identifier,
                "modified": a.modified.isoformat(),
                "dandiset": did,
                "version": ver,
                "source": _source_id(instance, did, ver, a.path)
                if did and ver
                else f"{instance.api}/assets/{a.identifier}/download/",
            }
        )
    return sorted(rows, key=lambda r: r["path"])
