"""Crash-safe publishing of what we write: temporaries, renames, fsync, stale clean-up.

Everything nwb-llmdecode writes is first built under a hidden temporary name beside its
final place and then renamed into place (``os.replace``, atomic on POSIX), followed by an
``fsync`` of the directory so the rename itself survives a power cut. A temporary is
named ``.<name>.<pid>-<random>.partial[.nwb]``: a run that is killed (SIGKILL, power
loss) leaves it behind, and the next run that writes beside it removes the temporaries
whose process is gone (:func:`remove_stale`). SIGINT and SIGTERM are turned into
exceptions by the command line, so ``finally`` blocks remove the temporaries at once.

Only standard-library imports here: the command line checks its outputs with these
functions before any heavy import or any work.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import stat
import time
import uuid
from pathlib import Path

from ..errors import ConfigError

__all__ = [
    "check_writable_dir",
    "check_writable_file",
    "fsync_dir",
    "publish_dir",
    "remove_stale",
    "temporary_path",
]

log = logging.getLogger(__name__)

_TAG = re.compile(r"^(?P<pid>\d+)-[0-9a-f]{8}$")
#: Temporaries of versions before the pid tag are removed when older than this.
_LEGACY_AGE_S = 600.0


def temporary_path(path: Path, suffix: str = "") -> Path:
    """A hidden, unique temporary beside ``path``: ``.<name>.<pid>-<hex>.partial<suffix>``.

    Examples
    --------
    >>> p = temporary_path(Path("out/res.nwb"), ".nwb")
    >>> p.parent.as_posix(), p.name.startswith(".res.nwb."), p.name.endswith(".partial.nwb")
    ('out', True, True)
    """
    return path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.partial{suffix}")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, someone else's
        return True
    except OSError:  # pragma: no cover - e.g. an invalid pid on this platform
        return False
    return True


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def remove_stale(path: Path) -> list[Path]:
    """Remove temporaries of ``path`` left by killed runs; return what was removed.

    Matches the names :func:`temporary_path` (and :func:`publish_dir`) make for ``path``
    whose process no longer runs, plus the untagged ``.<stem>.<hex>.partial.nwb`` names of
    earlier versions once they are older than ten minutes. Nothing else is touched.
    """
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        return []
    tagged = re.compile(
        rf"^\.{re.escape(path.name)}\.(?P<tag>\d+-[0-9a-f]{{8}})\.(partial|old)(\.nwb)?$"
    )
    legacy = re.compile(rf"^\.{re.escape(path.stem)}\.[0-9a-f]{{8}}\.partial\.nwb$")
    removed = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return []
    now = time.time()
    for p in entries:
        m = tagged.match(p.name)
        stale = False
        if m:
            pid = int(_TAG.match(m.group("tag")).group("pid"))  # type: ignore[union-attr]
            stale = not _pid_alive(pid)
        elif legacy.match(p.name):
            with contextlib.suppress(OSError):
                stale = now - p.stat().st_mtime > _LEGACY_AGE_S
        if stale:
            _remove(p)
            removed.append(p)
    if removed:
        log.warning(
            "removed %d temporary file(s) left by an interrupted run: %s",
            len(removed),
            ", ".join(p.name for p in removed),
        )
    return removed


def fsync_dir(directory: Path) -> None:
    """Flush a directory's entries (a rename inside it) to disk, where the OS allows."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def fsync_tree(directory: Path) -> None:
    """fsync every file in ``directory`` and the directory itself."""
    for p in directory.iterdir():
        if p.is_file():
            with open(p, "rb") as fh:
                os.fsync(fh.fileno())
    fsync_dir(directory)


def publish_dir(tmp: Path, final: Path) -> None:
    """Put the complete directory ``tmp`` at ``final``, replacing what is there.

    A directory cannot be renamed over a non-empty one, so an existing ``final`` is first
    renamed to a hidden ``.old`` name, then ``tmp`` takes its place, then the old one is
    deleted; a kill in between leaves the ``.old`` (removed by the next run).
    """
    fsync_tree(tmp)
    old = None
    if final.exists() or final.is_symlink():
        old = final.with_name(f".{final.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.old")
        os.replace(final, old)
    os.replace(tmp, final)
    fsync_dir(final.parent)
    if old is not None:
        _remove(old)


def _read_only(st: os.stat_result) -> bool:
    # Write bits all cleared: read-only by intent, even for root (who may write anyway).
    return not (stat.S_IMODE(st.st_mode) & 0o222)


def check_writable_dir(directory: Path, *, what: str) -> None:
    """Raise :class:`ConfigError` unless files can be created in ``directory``.

    ``directory`` need not exist yet: its nearest existing ancestor must be a writable
    directory (it will be created). ``what`` names the output in the message.
    """
    d = Path(directory)
    probe = d
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(
            f"{what}: {probe} is a file, not a directory; choose an output path in a directory"
        )
    try:
        st = probe.stat()
    except OSError as e:  # pragma: no cover - permission denied on stat
        raise ConfigError(f"{what}: cannot access {probe} ({e.strerror})") from None
    if _read_only(st) or not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(
            f"{what}: the directory {probe} is not writable; make it writable (chmod u+w) "
            "or choose another output path"
        )


def check_writable_file(path: Path, *, what: str) -> None:
    """Raise :class:`ConfigError` unless ``path`` (an existing file) may be replaced."""
    st = path.stat()
    if _read_only(st) or not os.access(path, os.W_OK):
        raise ConfigError(
            f"{what}: {path} is read-only; make it writable (chmod u+w) if it may be changed, "
            "or write a new file instead"
        )
    check_writable_dir(path.parent, what=what)
