"""The JSON files of a checkpoint directory, read and validated without torch.

``checkpoint.json`` and ``config.json`` (and ``session.json``, written by ``fit``) are data
from wherever the checkpoint came from: every field is checked before it is used, and a
damaged file is a one-line :class:`~nwb_llmdecode.errors.DataError` that names it. Kept
free of heavy imports so that the command line refuses a broken checkpoint at once.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .config import FitConfig
from .errors import ConfigError, DataError

__all__ = [
    "CHECKPOINT_FILES",
    "CHECKPOINT_FORMAT",
    "read_checkpoint_meta",
    "read_session_meta",
]

#: Version of the checkpoint layout written by
#: :func:`~nwb_llmdecode.engine.save_checkpoint`. Format 1 checkpoints written before the
#: backbone identity was recorded still load (with a logged warning).
CHECKPOINT_FORMAT = 1
CHECKPOINT_FILES = ("config.json", "checkpoint.json", "weights.pt")
_DAMAGED = "the checkpoint is damaged: save it again with fit"


def _json_object(p: Path) -> dict[str, Any]:
    try:
        data = json.loads(p.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(
            f"{p}: not valid JSON ({type(e).__name__}: {str(e).splitlines()[0]}); {_DAMAGED}"
        ) from None
    if not isinstance(data, dict):
        raise DataError(f"{p}: holds a JSON {type(data).__name__}, expected an object; {_DAMAGED}")
    return data


def _positive_int(meta: dict[str, Any], key: str, where: Path) -> int:
    v = meta.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise DataError(f"{where}: {key!r} is {v!r}, expected a positive integer; {_DAMAGED}")
    return v


def read_checkpoint_meta(directory: str | Path) -> tuple[dict[str, Any], FitConfig]:
    """``checkpoint.json`` (validated) and the :class:`FitConfig` of ``config.json``.

    Raises
    ------
    DataError
        Not a checkpoint directory, a file that is not a JSON object, a wrong format
        version, bad ``n_rois``/``n_channels``, an invalid configuration, or a
        ``config.json`` whose backbone is not the one ``checkpoint.json`` was written for.
    """
    d = Path(directory)
    if not d.is_dir():
        raise DataError(f"{d}: no such checkpoint directory (fit writes <results>_checkpoint/)")
    missing = [f for f in CHECKPOINT_FILES if not (d / f).is_file()]
    if missing:
        raise DataError(f"{d}: not a checkpoint directory (missing {', '.join(missing)})")
    meta = _json_object(d / "checkpoint.json")
    raw_config = _json_object(d / "config.json")
    try:
        config = FitConfig.from_dict(raw_config)
    except ConfigError as e:
        raise DataError(f"{d / 'config.json'}: {e}") from None
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise DataError(
            f"{d}/checkpoint.json: format {meta.get('format')!r}, this version reads "
            f"{CHECKPOINT_FORMAT}; save the decoder again with this version's fit"
        )
    for key in ("n_rois", "n_channels"):
        _positive_int(meta, key, d / "checkpoint.json")
    if meta.get("backbone") is not None and meta.get("backbone") != config.backbone:
        raise DataError(
            f"{d}: config.json names backbone {config.backbone!r} but the weights were "
            f"trained on {meta.get('backbone')!r} (checkpoint.json); the two files do not "
            "belong together: restore config.json or save the checkpoint again with fit"
        )
    return meta, config


def read_session_meta(directory: str | Path) -> dict[str, Any]:
    """``session.json`` of a checkpoint, validated (``{}`` when there is none)."""
    p = Path(directory) / "session.json"
    if not p.is_file():
        return {}
    meta = _json_object(p)
    for key in ("roi_series", "behavior_series"):
        v = meta.get(key)
        if v is not None and (not isinstance(v, list) or not all(isinstance(x, str) for x in v)):
            raise DataError(f"{p}: {key!r} is {v!r}, expected a list of object paths; {_DAMAGED}")
    if meta.get("n_rois") is not None:
        _positive_int(meta, "n_rois", p)
    v = meta.get("results_object_id")
    if v is not None and not isinstance(v, str):
        raise DataError(f"{p}: 'results_object_id' is {v!r}, expected a string; {_DAMAGED}")
    return meta
