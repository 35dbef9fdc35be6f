"""A real HTTP server on 127.0.0.1 that speaks the DANDI API routes the dandi client uses.

For tests and benchmarks of streaming (no internet needed). It serves:

- instance discovery: ``/server-info`` and ``/api/info/``;
- ``/api/auth/token`` (checks ``Authorization: token <key>``);
- dandisets and versions: ``/api/dandisets/<id>/``, ``…/versions/<v>/info/``;
- asset listing ``/api/dandisets/<id>/versions/<v>/assets/`` with ``?path=`` (a prefix,
  as the archive does), ``?glob=``, and ``page``/``page_size`` pagination
  (``count``/``next``/``previous``/``results``);
- asset records and metadata (``contentUrl``, ``digest``) by id, with and without the
  dandiset: ``…/assets/<asset id>/info/`` and ``…/assets/<asset id>/``;
- ``…/assets/<asset id>/download/`` answering 302 to the blob URL;
- blobs ``/blobs/<blob id>`` with ``Range`` → 206 and ``Content-Range`` (HEAD too);
- Zarr assets (``.nwb.zarr`` directories): the asset record has ``zarr`` (no ``blob``),
  its ``contentUrl`` names the store's root ``/zarr/<zarr id>/``, whose objects are served
  from the directory at ``/zarr/<zarr id>/<key>`` (404 for a missing key, as S3).

Embargoed dandisets need the API key on every API route (401 otherwise) and their blob
URLs carry a signature the download redirect adds (403 without it), like presigned S3
links. With ``url_expiry=N`` every blob URL the archive hands out is presigned and
expires ``N`` seconds after it was signed (``X-Amz-Date``, ``X-Amz-Expires``, in seconds; S3
then answers 403 "Request has expired"), so long reads must renew their URL through the API.
Large assets can be served from a file (memory-mapped, never read whole). The server
counts requests and body bytes per route, records the
``Authorization`` header each route saw, and can be told to fail: answer a status N
times, reset connections, delay answers, ignore ``Range``, or throttle bandwidth and add
latency to every request.

Examples
--------
>>> with DandiTestServer() as archive:  # doctest: +SKIP
...     archive.add_dandiset("000123")
...     asset = archive.add_asset("000123", "sub-1/sub-1.nwb", "session.nwb")
...     url = f"{archive.api_url}/assets/{asset.asset_id}/download/"
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import mmap
import re
import socket
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

__all__ = ["Asset", "DandiTestServer", "Fault"]

_NOW = dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc).isoformat()
_SECRET = b"test-server-signing-key"


@dataclass
class Asset:
    """An asset served by :class:`DandiTestServer`."""

    asset_id: str
    dandiset_id: str
    version: str
    path: str
    blob_id: str
    data: bytes | mmap.mmap
    sha256: str
    etag: str
    embargoed: bool = False
    zarr_id: str | None = None
    zarr_dir: Path | None = None

    @property
    def size(self) -> int:
        if self.zarr_dir is not None:
            return sum(f.stat().st_size for f in self.zarr_dir.rglob("*") if f.is_file())
        return len(self.data)


@dataclass
class Fault:
    """What a route does wrong: ``status`` (answer it), ``reset`` (close the connection
    in the middle of the body) or ``delay`` (sleep before answering), ``times`` times
    (``None``: always)."""

    kind: str
    status: int = 500
    delay: float = 0.0
    times: int | None = None
    after: int = 0


@dataclass
class _Dandiset:
    identifier: str
    embargoed: bool = False
    published: list[str] = field(default_factory=list)


def _sign(blob_id: str, date: str = "", expires: str = "") -> str:
    text = blob_id if not date else f"{blob_id}|{date}|{expires}"
    return hmac.new(_SECRET, text.encode(), "sha256").hexdigest()


def _etag(data: bytes | mmap.mmap) -> str:
    """A DANDI-style multipart ETag (md5 of the part md5s, ``-<parts>``)."""
    part = 64 * 1024 * 1024
    md5s = [hashlib.md5(data[i : i + part]).digest() for i in range(0, max(len(data), 1), part)]
    return f"{hashlib.md5(b''.join(md5s)).hexdigest()}-{len(md5s)}"


class DandiTestServer:
    """DANDI API + blob store on ``127.0.0.1:<free port>``, in a background thread.

    Parameters
    ----------
    page_size
        Default page size of listings (small, so that pagination is exercised).
    api_key
        The key embargoed dandisets accept (``Authorization: token <api_key>``).
    bandwidth
        Bytes per second of every response body (``None``: unthrottled).
    latency
        Seconds added before every answer.
    url_expiry
        When set, blob URLs are presigned and expire this many seconds after signing.
    """

    def __init__(
        self,
        *,
        page_size: int = 2,
        api_key: str = "secret-key-123",
        bandwidth: float | None = None,
        latency: float = 0.0,
        url_expiry: float | None = None,
    ) -> None:
        self.page_size = page_size
        self.url_expiry = url_expiry
        self.api_key = api_key
        self.bandwidth = bandwidth
        self.latency = latency
        self.ignore_range = False
        self.dandisets: dict[str, _Dandiset] = {}
        self.assets: dict[str, Asset] = {}
        self.requests: Counter[str] = Counter()
        self.bytes_served: Counter[str] = Counter()
        self.auth_seen: list[tuple[str, str | None]] = []
        self.ranges: list[tuple[int, int]] = []
        self.expired = 0  # blob requests refused because their presigned URL had expired
        self.faults: dict[str, Fault] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._maps: list[tuple[Any, mmap.mmap]] = []
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> DandiTestServer:
        handler = type("Handler", (_Handler,), {"archive": self})
        self._httpd = _QuietServer(("127.0.0.1", 0), handler)
        self.port = self._httpd.server_address[1]
        self._stop.clear()
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; the port then refuses connections (a server that is down)."""
        self._stop.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
        for fh, mm in self._maps:
            mm.close()
            fh.close()
        self._maps.clear()

    def __enter__(self) -> DandiTestServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.url}/api"

    # -- content ---------------------------------------------------------------------

    def add_dandiset(self, identifier: str, *, embargoed: bool = False) -> None:
        self.dandisets[identifier] = _Dandiset(identifier, embargoed=embargoed)

    def add_asset(
        self,
        dandiset_id: str,
        path: str,
        content: bytes | mmap.mmap | str | Path,
        *,
        version: str = "draft",
    ) -> Asset:
        """Serve ``content`` (bytes or a file) as asset ``path`` of a dandiset version.

        A file is memory-mapped, so assets of any size are served without reading them
        into memory.
        """
        if isinstance(content, bytes | mmap.mmap):
            data: bytes | mmap.mmap = content
        else:
            fh = open(content, "rb")  # closed in stop()
            data = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
            self._maps.append((fh, data))
        sha = hashlib.sha256(data).hexdigest()
        asset = Asset(
            asset_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"{dandiset_id}/{version}/{path}")),
            dandiset_id=dandiset_id,
            version=version,
            path=path,
            blob_id=str(uuid.uuid5(uuid.NAMESPACE_URL, sha)),
            data=data,
            sha256=sha,
            etag=_etag(data),
            embargoed=self.dandisets[dandiset_id].embargoed,
        )
        self.assets[asset.asset_id] = asset
        return asset

    def publish(self, dandiset_id: str, version: str) -> None:
        """Copy the draft's assets into the published ``version`` (e.g. ``0.250101.1200``)."""
        for a in [a for a in self.assets.values() if a.dandiset_id == dandiset_id]:
            if a.version == "draft":
                self.add_asset(dandiset_id, a.path, a.data, version=version)
        self.dandisets[dandiset_id].published.append(version)

    def add_zarr_asset(
        self, dandiset_id: str, path: str, store: str | Path, *, version: str = "draft"
    ) -> Asset:
        """Serve the Zarr store directory ``store`` as Zarr asset ``path``."""
        store = Path(store)
        files = sorted(f for f in store.rglob("*") if f.is_file())
        md5s = hashlib.md5()
        for f in files:
            md5s.update(f.relative_to(store).as_posix().encode())
            md5s.update(hashlib.md5(f.read_bytes()).digest())
        size = sum(f.stat().st_size for f in files)
        checksum = f"{md5s.hexdigest()}-{len(files)}--{size}"
        asset = Asset(
            asset_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"{dandiset_id}/{version}/{path}")),
            dandiset_id=dandiset_id,
            version=version,
            path=path,
            blob_id=str(uuid.uuid5(uuid.NAMESPACE_URL, "blob:" + checksum)),
            data=b"",
            sha256="",
            etag=checksum,
            embargoed=self.dandisets[dandiset_id].embargoed,
            zarr_id=str(uuid.uuid5(uuid.NAMESPACE_URL, "zarr:" + checksum)),
            zarr_dir=store,
        )
        self.assets[asset.asset_id] = asset
        return asset

    def zarr_url(self, asset: Asset) -> str:
        return f"{self.url}/zarr/{asset.zarr_id}/"

    def replace_asset(self, asset: Asset, content: bytes | str | Path) -> Asset:
        """Give ``asset`` new content (a new blob, digest and ETag) under the same id and
        path, as when a file is re-uploaded to a draft."""
        new = self.add_asset(asset.dandiset_id, asset.path, content, version=asset.version)
        return new

    def blob_url(self, asset: Asset) -> str:
        """The URL the download redirect sends to: presigned when the asset is embargoed
        or ``url_expiry`` is set (then it carries its signing time and lifetime)."""
        url = f"{self.url}/blobs/{asset.blob_id}"
        if self.url_expiry is not None:
            date, expires = f"{time.time():.3f}", f"{self.url_expiry:g}"
            sig = _sign(asset.blob_id, date, expires)
            return (
                url
                + "?"
                + urlencode({"X-Amz-Date": date, "X-Amz-Expires": expires, "X-Amz-Signature": sig})
            )
        if asset.embargoed:
            url += f"?X-Amz-Signature={_sign(asset.blob_id)}"
        return url

    # -- faults and counters ----------------------------------------------------------

    def fail(self, route: str, status: int = 500, times: int | None = None, after: int = 0) -> None:
        """Answer ``status`` to ``times`` requests of ``route`` (None: all), once ``after``
        requests have been answered normally."""
        self.faults[route] = Fault("status", status=status, times=times, after=after)

    def reset_connections(self, route: str, times: int | None = None) -> None:
        """Cut the connection in the middle of the body of the next ``times`` answers."""
        self.faults[route] = Fault("reset", times=times)

    def delay(self, route: str, seconds: float, times: int | None = None) -> None:
        """Wait ``seconds`` before answering requests of ``route``."""
        self.faults[route] = Fault("delay", delay=seconds, times=times)

    def clear(self) -> None:
        """No faults, no throttling, Range honoured, counters at zero."""
        self.faults.clear()
        self.ignore_range = False
        self.bandwidth = None
        self.latency = 0.0
        self.url_expiry = None
        self.reset_counts()

    def reset_counts(self) -> None:
        with self._lock:
            self.requests.clear()
            self.bytes_served.clear()
            self.auth_seen.clear()
            self.ranges.clear()
            self.expired = 0

    @property
    def blob_bytes(self) -> int:
        """Body bytes of blob answers sent so far."""
        return self.bytes_served["blob"]

    def _take_fault(self, route: str) -> Fault | None:
        with self._lock:
            fault = self.faults.get(route)
            if fault is None:
                return None
            if fault.after > 0:
                fault.after -= 1
                return None
            if fault.times is not None:
                if fault.times <= 0:
                    return None
                fault.times -= 1
            return fault


def _version_json(archive: DandiTestServer, dandiset_id: str, version: str) -> dict[str, Any]:
    assets = [
        a for a in archive.assets.values() if a.dandiset_id == dandiset_id and a.version == version
    ]
    return {
        "version": version,
        "name": f"Test dandiset {dandiset_id}",
        "asset_count": len(assets),
        "size": sum(a.size for a in assets),
        "created": _NOW,
        "modified": _NOW,
        "status": "Published" if version != "draft" else "Valid",
    }


def _asset_json(archive: DandiTestServer, a: Asset, metadata: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "asset_id": a.asset_id,
        "blob": a.blob_id if a.zarr_id is None else None,
        "zarr": a.zarr_id,
        "path": a.path,
        "size": a.size,
        "created": _NOW,
        "modified": _NOW,
    }
    if metadata:
        out["metadata"] = _metadata_json(archive, a)
    return out


def _metadata_json(archive: DandiTestServer, a: Asset) -> dict[str, Any]:
    if a.zarr_id is not None:
        return {
            "schemaKey": "Asset",
            "schemaVersion": "0.6.7",
            "id": f"dandiasset:{a.asset_id}",
            "identifier": a.asset_id,
            "path": a.path,
            "contentSize": a.size,
            "encodingFormat": "application/x-nwb",
            "digest": {"dandi:dandi-zarr-checksum": a.etag},
            "contentUrl": [
                f"{archive.api_url}/assets/{a.asset_id}/download/",
                archive.zarr_url(a),
            ],
        }
    return {
        "schemaKey": "Asset",
        "schemaVersion": "0.6.7",
        "id": f"dandiasset:{a.asset_id}",
        "identifier": a.asset_id,
        "path": a.path,
        "contentSize": a.size,
        "encodingFormat": "application/x-nwb",
        "digest": {"dandi:dandi-etag": a.etag, "dandi:sha2-256": a.sha256},
        "contentUrl": [f"{archive.api_url}/assets/{a.asset_id}/download/", archive.blob_url(a)],
    }


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that hang up (as they must, e.g. on a 200 to a Range request)


class _Handler(BaseHTTPRequestHandler):
    archive: DandiTestServer
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # no 40 ms stall between headers and body

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    # -- plumbing ----------------------------------------------------------------------

    def do_GET(self) -> None:
        self._dispatch(head=False)

    def do_HEAD(self) -> None:
        self._dispatch(head=True)

    def _send(
        self,
        route: str,
        status: int,
        body: bytes = b"",
        *,
        head: bool = False,
        ctype: str = "application/json",
        headers: dict[str, str] | None = None,
        reset: bool = False,
    ) -> None:
        archive = self.archive
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if head:
            return
        if reset:  # half the body, then a torn connection
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        step = 64 * 1024
        for i in range(0, len(body), step):
            piece = body[i : i + step]
            if archive.bandwidth:
                if archive._stop.wait(len(piece) / archive.bandwidth):
                    return
            try:
                self.wfile.write(piece)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True
                return
            with archive._lock:
                archive.bytes_served[route] += len(piece)

    def _json(self, route: str, obj: Any, status: int = 200, head: bool = False) -> None:
        self._send(route, status, json.dumps(obj).encode(), head=head)

    def _dispatch(self, head: bool) -> None:
        archive = self.archive
        parts = urlsplit(self.path)
        query = dict(parse_qsl(parts.query))
        route, handler, args = self._route(parts.path)
        with archive._lock:
            archive.requests[route] += 1
            archive.auth_seen.append((route, self.headers.get("Authorization")))
        if archive.latency and archive._stop.wait(archive.latency):
            return
        fault = archive._take_fault(route)
        if fault is not None and fault.kind == "delay" and archive._stop.wait(fault.delay):
            return
        if fault is not None and fault.kind == "status":
            self._json(route, {"detail": f"injected HTTP {fault.status}"}, fault.status, head)
            return
        if handler is None:
            self._json(route, {"detail": "Not found."}, 404, head)
            return
        try:
            handler(route, head, query, fault is not None and fault.kind == "reset", *args)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _route(self, path: str) -> tuple[str, Any, tuple[str, ...]]:
        table = [
            (r"/server-info", "server-info", self._server_info),
            (r"/api/info/?", "info", self._server_info),
            (r"/api/auth/token/?", "auth", self._auth),
            (r"/api/dandisets/(\d{6})/?", "dandiset", self._dandiset),
            (r"/api/dandisets/(\d{6})/versions/([^/]+)/info/?", "version", self._version),
            (r"/api/dandisets/(\d{6})/versions/([^/]+)/assets/?", "assets", self._assets),
            (
                r"/api/dandisets/(\d{6})/versions/([^/]+)/assets/([^/]+)/info/?",
                "asset-info",
                self._asset_info_in,
            ),
            (
                r"/api/dandisets/(\d{6})/versions/([^/]+)/assets/([^/]+)/download/?",
                "download",
                self._download_in,
            ),
            (
                r"/api/dandisets/(\d{6})/versions/([^/]+)/assets/([^/]+)/?",
                "asset-metadata",
                self._asset_metadata_in,
            ),
            (r"/api/assets/([^/]+)/info/?", "asset-info", self._asset_info),
            (r"/api/assets/([^/]+)/download/?", "download", self._download),
            (r"/api/assets/([^/]+)/?", "asset-metadata", self._asset_metadata),
            (r"/blobs/([^/]+)", "blob", self._blob),
            (r"/zarr/([^/]+)/(.*)", "zarr", self._zarr),
        ]
        for pattern, name, fn in table:
            m = re.fullmatch(pattern, path)
            if m:
                return name, fn, m.groups()
        return "unknown", None, ()

    def _authorized(self, embargoed: bool) -> bool:
        if not embargoed:
            return True
        return self.headers.get("Authorization") == f"token {self.archive.api_key}"

    def _deny(self, route: str, head: bool) -> None:
        self._json(route, {"detail": "Authentication credentials were not provided."}, 401, head)

    # -- routes ------------------------------------------------------------------------

    def _server_info(self, route: str, head: bool, q: dict[str, str], reset: bool) -> None:
        api = self.archive.api_url
        self._json(
            route,
            {
                "version": "0.9.0",
                "schema_version": "0.6.7",
                "schema_url": "https://example.invalid/schema",
                "services": {
                    "api": {"url": api},
                    "webui": {"url": self.archive.url},
                    "jupyterhub": {"url": self.archive.url},
                },
                "cli-minimal-version": "0.60.0",
                "cli-bad-versions": [],
            },
            head=head,
        )

    def _auth(self, route: str, head: bool, q: dict[str, str], reset: bool) -> None:
        if self.headers.get("Authorization") != f"token {self.archive.api_key}":
            self._json(route, {"detail": "Invalid token."}, 401, head)
        else:
            self._json(route, self.archive.api_key, head=head)

    def _get_dandiset(self, route: str, head: bool, did: str) -> _Dandiset | None:
        d = self.archive.dandisets.get(did)
        if d is None:
            self._json(route, {"detail": "Not found."}, 404, head)
            return None
        if not self._authorized(d.embargoed):
            self._deny(route, head)
            return None
        return d

    def _dandiset(self, route: str, head: bool, q: dict[str, str], reset: bool, did: str) -> None:
        d = self._get_dandiset(route, head, did)
        if d is None:
            return
        published = _version_json(self.archive, did, d.published[-1]) if d.published else None
        body = {
            "identifier": did,
            "created": _NOW,
            "modified": _NOW,
            "contact_person": "Doe, Jane",
            "embargo_status": "EMBARGOED" if d.embargoed else "OPEN",
            "most_recent_published_version": published,
            "draft_version": _version_json(self.archive, did, "draft"),
        }
        self._json(route, body, head=head)

    def _version(
        self, route: str, head: bool, q: dict[str, str], reset: bool, did: str, ver: str
    ) -> None:
        d = self._get_dandiset(route, head, did)
        if d is None:
            return
        if ver != "draft" and ver not in d.published:
            self._json(route, {"detail": "Not found."}, 404, head)
            return
        body = {
            **_version_json(self.archive, did, ver),
            "asset_validation_errors": [],
            "version_validation_errors": [],
            "metadata": {},
        }
        self._json(route, body, head=head)

    def _assets(
        self, route: str, head: bool, q: dict[str, str], reset: bool, did: str, ver: str
    ) -> None:
        d = self._get_dandiset(route, head, did)
        if d is None:
            return
        if ver != "draft" and ver not in d.published:
            self._json(route, {"detail": "Not found."}, 404, head)
            return
        found = sorted(
            (a for a in self.archive.assets.values() if a.dandiset_id == did and a.version == ver),
            key=lambda a: a.path,
        )
        if "path" in q:
            found = [a for a in found if a.path.startswith(q["path"])]
        if "glob" in q:
            found = [a for a in found if fnmatchcase(a.path, q["glob"])]
        size = int(q.get("page_size", self.archive.page_size))
        page = int(q.get("page", 1))
        chunk = found[(page - 1) * size : page * size]
        base = f"{self.archive.api_url}/dandisets/{did}/versions/{ver}/assets/"

        def link(n: int) -> str | None:
            if n < 1 or (n - 1) * size >= len(found):
                return None
            return base + "?" + urlencode({**q, "page": str(n)})

        body = {
            "count": len(found),
            "next": link(page + 1),
            "previous": link(page - 1),
            "results": [_asset_json(self.archive, a, q.get("metadata") == "true") for a in chunk],
        }
        self._json(route, body, head=head)

    def _find(self, route: str, head: bool, aid: str, did: str | None = None) -> Asset | None:
        a = self.archive.assets.get(aid)
        if a is None or (did is not None and a.dandiset_id != did):
            self._json(route, {"detail": "Not found."}, 404, head)
            return None
        if not self._authorized(a.embargoed):
            self._deny(route, head)
            return None
        return a

    def _asset_info(self, route: str, head: bool, q: dict[str, str], reset: bool, aid: str) -> None:
        if a := self._find(route, head, aid):
            self._json(route, _asset_json(self.archive, a, metadata=True), head=head)

    def _asset_info_in(
        self, route: str, head: bool, q: dict[str, str], reset: bool, did: str, ver: str, aid: str
    ) -> None:
        if a := self._find(route, head, aid, did):
            self._json(route, _asset_json(self.archive, a, metadata=True), head=head)

    def _asset_metadata(
        self, route: str, head: bool, q: dict[str, str], reset: bool, aid: str
    ) -> None:
        if a := self._find(route, head, aid):
            self._json(route, _metadata_json(self.archive, a), head=head)

    def _asset_metadata_in(
        self, route: str, head: bool, q: dict[str, str], reset: bool, did: str, ver: str, aid: str
    ) -> None:
        if a := self._find(route, head, aid, did):
            self._json(route, _metadata_json(self.archive, a), head=head)

    def _download(self, route: str, head: bool, q: dict[str, str], reset: bool, aid: str) -> None:
        if a := self._find(route, head, aid):
            where = self.archive.zarr_url(a) if a.zarr_id else self.archive.blob_url(a)
            self._send(route, 302, head=head, headers={"Location": where})

    def _download_in(
        self, route: str, head: bool, q: dict[str, str], reset: bool, did: str, ver: str, aid: str
    ) -> None:
        self._download(route, head, q, reset, aid)

    def _blob(self, route: str, head: bool, q: dict[str, str], reset: bool, blob_id: str) -> None:
        archive = self.archive
        asset = next((a for a in archive.assets.values() if a.blob_id == blob_id), None)
        if asset is None:
            self._json(route, {"detail": "NoSuchKey"}, 404, head)
            return
        if asset.embargoed or archive.url_expiry is not None or "X-Amz-Signature" in q:
            date, expires = q.get("X-Amz-Date", ""), q.get("X-Amz-Expires", "")
            sig = _sign(blob_id, date, expires)
            if not hmac.compare_digest(q.get("X-Amz-Signature", ""), sig):
                self._json(route, {"detail": "AccessDenied"}, 403, head)
                return
            if date and time.time() > float(date) + float(expires):
                with archive._lock:
                    archive.expired += 1
                self._json(route, {"detail": "AccessDenied: Request has expired"}, 403, head)
                return
        data = asset.data
        headers = {"ETag": f'"{asset.etag}"', "Accept-Ranges": "bytes"}
        rng = self.headers.get("Range")
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng or "")
        if m is None or archive.ignore_range:
            self._send(
                route, 200, data, head=head, ctype="application/x-nwb", headers=headers, reset=reset
            )
            return
        lo = int(m.group(1))
        hi = min(int(m.group(2)) if m.group(2) else len(data) - 1, len(data) - 1)
        if lo >= len(data):
            headers["Content-Range"] = f"bytes */{len(data)}"
            self._send(route, 416, b"", head=head, headers=headers)
            return
        headers["Content-Range"] = f"bytes {lo}-{hi}/{len(data)}"
        with archive._lock:
            archive.ranges.append((lo, hi))
        self._send(
            route,
            206,
            data[lo : hi + 1],
            head=head,
            ctype="application/x-nwb",
            headers=headers,
            reset=reset,
        )

    def _zarr(
        self, route: str, head: bool, q: dict[str, str], reset: bool, zarr_id: str, key: str
    ) -> None:
        asset = next((a for a in self.archive.assets.values() if a.zarr_id == zarr_id), None)
        root = asset.zarr_dir if asset is not None else None
        target = (root / key).resolve() if root is not None and key else None
        if (
            target is None
            or root is None
            or not target.is_file()
            or not target.is_relative_to(root.resolve())
        ):
            self._json(route, {"detail": "NoSuchKey"}, 404, head)
            return
        self._send(
            route,
            200,
            target.read_bytes(),
            head=head,
            ctype="application/octet-stream",
            reset=reset,
        )
