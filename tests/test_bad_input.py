"""A hostile and a careless user against the real command line (issue 11).

Every case builds its broken input itself and runs ``nwb-llmdecode`` as a subprocess. Each
must end with exit code 2 and exactly one stderr line ``nwb-llmdecode: error: ...`` that
names the file or option and the fix, no traceback, nothing left at the output path, and
every input file byte for byte as it was.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest

from nwb_llmdecode.synthetic import make_session

EXE = [sys.executable, "-m", "nwb_llmdecode.cli"]


@dataclass
class World:
    """Good inputs shared by every case (never modified: cases copy what they break)."""

    root: Path
    session: Path  # a small synthetic session
    other_rois: Path  # the same kind of session with other ROIs
    results: Path  # fit results with salience
    checkpoint: Path  # their checkpoint
    plain_results: Path  # results without salience (ridge)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    from nwb_llmdecode.config import FitConfig
    from nwb_llmdecode.pipeline import fit

    root = tmp_path_factory.mktemp("world")
    kw = dict(frames=120, planes=1, n_drivers=3, n_channels=2)
    session = make_session(root / "s.nwb", rois=10, seed=0, **kw).path
    other = make_session(root / "other.nwb", rois=7, seed=1, **kw).path
    cfg = FitConfig(backbone="lstm", epochs=1, seq_len=5, lstm={"hidden": 8}, salience="saliency")
    (root / "fit").mkdir()
    rep = fit(session, config=cfg, out=root / "fit" / "r.nwb")
    (root / "ridge").mkdir()
    plain = fit(session, config=cfg.replace(backbone="ridge"), out=root / "ridge" / "r.nwb")
    assert rep.checkpoint is not None
    return World(root, session, other, rep.output, rep.checkpoint, plain.output)


# ----------------------------------------------------------------------------------------
# the cases
# ----------------------------------------------------------------------------------------


@dataclass
class Case:
    """``setup(world, tmp)`` returns ``(argv, output path that must not appear or None)``;
    ``needles`` must all be in the error line."""

    id: str
    setup: Callable[[World, Path], tuple[list[object], Path | None]]
    needles: tuple[str, ...]


CASES: list[Case] = []


def case(id: str, *needles: str) -> Callable:
    def deco(fn: Callable[[World, Path], tuple[list[object], Path | None]]) -> Callable:
        CASES.append(Case(id, fn, needles))
        return fn

    return deco


def _fit(w: World, tmp: Path, *extra: object) -> tuple[list[object], Path]:
    out = tmp / "out.nwb"
    return ["fit", w.session, "--backbone", "ridge", "--seq-len", "5", "--out", out, *extra], out


def _simple_fit_case(id: str, extra: tuple[object, ...], *needles: str) -> None:
    CASES.append(Case(id, lambda w, t: _fit(w, t, *extra), needles))


# --- fit: options --------------------------------------------------------------------
for _id, _extra, _needles in [
    ("fit-seq-len-abc", ("--seq-len", "abc"), ("--seq-len", "invalid int", "--help")),
    ("fit-epochs-abc", ("--epochs", "abc"), ("--epochs", "invalid int")),
    ("fit-lr-abc", ("--lr", "x"), ("--lr", "invalid float")),
    ("fit-backbone-choice-init", ("--init", "magic"), ("--init", "invalid choice")),
    ("fit-unknown-option", ("--frobnicate",), ("unrecognized arguments", "--frobnicate")),
    ("fit-epochs-zero", ("--epochs", "0"), ("epochs=0", "expected an integer >= 1")),
    ("fit-batch-size-negative", ("--batch-size", "-4"), ("batch_size=-4", "expected")),
    ("fit-lr-zero", ("--lr", "0"), ("lr=0.0", "positive number")),
    ("fit-lr-nan", ("--lr", "nan"), ("lr=nan", "positive number")),
    ("fit-patience-negative", ("--patience", "-1"), ("patience=-1", "expected")),
    ("fit-kernel-zero", ("--embedding-kernel", "0"), ("embedding_kernel=0", "expected")),
    ("fit-device-tpu", ("--device", "tpu"), ("device='tpu'", "auto, cpu, cuda")),
    ("fit-split-abc", ("--split", "a,b,c"), ("--split a,b,c", "0.7,0.1,0.2")),
    ("fit-split-two", ("--split", "0.5,0.5"), ("split=", "three fractions")),
    ("fit-split-sum", ("--split", "0.7,0.2,0.2"), ("split=", "summing to 1")),
    ("fit-split-negative", ("--split", "0.9,-0.1,0.2"), ("split=", "three fractions")),
    ("fit-ablation-abc", ("--ablation", "abc"), ("--ablation abc", "whole numbers")),
    ("fit-ablation-negative", ("--ablation", "0,-3"), ("--ablation", "positive whole numbers")),
    ("fit-ablation-no-salience", ("--ablation", "3", "--salience", "none"), ("--salience none",)),
    ("fit-quantize-baseline", ("--quantize", "4bit"), ("quantize='4bit'", "drop quantize")),
    ("fit-seq-len-too-long", ("--seq-len", "500"), ("frames", "--seq-len")),
    (
        "fit-backbone-no-dir",
        ("--backbone", "./no/such/model"),
        ("no such directory", "existing model directory"),
    ),
    ("fit-rois-unknown", ("--rois", "NoSuchSeries"), ("NoSuchSeries",)),
    ("fit-behavior-unknown", ("--behavior", "NoSuchBehaviour"), ("NoSuchBehaviour",)),
]:
    _simple_fit_case(_id, _extra, *_needles)


@case("fit-quantize-cpu", "quantize='8bit'", "CUDA")
def _(w, t):
    return _fit(w, t, "--backbone", "minilm", "--quantize", "8bit", "--train-mode", "lora",
                "--device", "cpu")  # fmt: skip


@case("fit-in-place-and-out", "--in-place and --out")
def _(w, t):
    src = _copy(w.session, t)
    return ["fit", src, "--in-place", "--out", t / "x.nwb", "--backbone", "ridge"], t / "x.nwb"


# --- fit: outputs (all refused before any work) -----------------------------------------
def _copy(p: Path, t: Path, name: str | None = None) -> Path:
    dst = t / (name or p.name)
    shutil.copy2(p, dst)
    return dst


@case("fit-out-read-only-dir", "not writable", "chmod")
def _(w, t):
    d = t / "ro"
    d.mkdir()
    d.chmod(0o555)
    return [*_fit(w, t)[0][:-2], "--out", d / "x.nwb"], d / "x.nwb"


@case("fit-out-under-a-file", "s.nwb is a file, not a directory")
def _(w, t):
    src = _copy(w.session, t)
    return ["fit", src, "--backbone", "ridge", "--out", src / "x.nwb"], None


@case("fit-out-exists", "out.nwb: exists", "--overwrite")
def _(w, t):
    argv, out = _fit(w, t)
    out.write_bytes(b"precious")
    return argv, None  # the existing file must survive (checked by hash)


@case("fit-out-is-a-directory", "is a directory", ".nwb")
def _(w, t):
    d = t / "adir"
    d.mkdir()
    return [*_fit(w, t)[0][:-2], "--out", d], None


@case("fit-out-is-the-source", "is the source file", "--in-place")
def _(w, t):
    src = _copy(w.session, t)
    return ["fit", src, "--backbone", "ridge", "--out", src, "--overwrite"], None


@case("fit-default-out-exists", "exists", "--overwrite")
def _(w, t):
    src = _copy(w.session, t)
    (t / "s_desc-llmdecode.nwb").write_bytes(b"earlier results")
    return ["fit", src, "--backbone", "ridge"], None


@case("fit-stale-checkpoint", "out_checkpoint", "without its results file", "--overwrite")
def _(w, t):
    shutil.copytree(w.checkpoint, t / "out_checkpoint")
    return _fit(w, t)


@case("fit-checkpoint-name-is-a-file", "out_checkpoint", "not a checkpoint directory")
def _(w, t):
    (t / "out_checkpoint").write_text("not mine")
    return _fit(w, t, "--overwrite")


@case("fit-in-place-read-only-file", "read-only", "chmod u+w")
def _(w, t):
    src = _copy(w.session, t)
    src.chmod(0o444)
    return ["fit", src, "--in-place", "--backbone", "ridge"], t / "s_checkpoint"


@case("fit-in-place-read-only-dir", "not writable", "chmod")
def _(w, t):
    d = t / "ro"
    d.mkdir()
    src = _copy(w.session, d)
    d.chmod(0o555)
    return ["fit", src, "--in-place", "--backbone", "ridge"], d / "s_checkpoint"


@case("fit-in-place-directory-source", "--in-place needs an HDF5 .nwb file", "directory")
def _(w, t):
    d = t / "s.nwb.zarr"
    d.mkdir()
    (d / ".zgroup").write_text('{"zarr_format": 2}')
    return ["fit", d, "--in-place", "--backbone", "ridge"], t / "s.nwb_checkpoint"


@case("fit-in-place-has-results", "already has a processing/llmdecode", "--overwrite")
def _(w, t):
    src = _copy(w.results, t)
    return ["fit", src, "--in-place", "--backbone", "ridge"], None


# --- fit: sources --------------------------------------------------------------------
@case("fit-missing-source", "nope.nwb")
def _(w, t):
    return ["fit", t / "nope.nwb", "--backbone", "ridge"], t / "nope_desc-llmdecode.nwb"


@case("fit-random-bytes-source", "junk.nwb")
def _(w, t):
    (t / "junk.nwb").write_bytes(os.urandom(4096))
    return ["fit", t / "junk.nwb", "--backbone", "ridge"], t / "junk_desc-llmdecode.nwb"


@case("fit-empty-source", "empty.nwb")
def _(w, t):
    (t / "empty.nwb").write_bytes(b"")
    return ["fit", t / "empty.nwb", "--backbone", "ridge"], t / "empty_desc-llmdecode.nwb"


@case("fit-truncated-source", "cut.nwb")
def _(w, t):
    data = w.session.read_bytes()
    (t / "cut.nwb").write_bytes(data[: len(data) // 3])
    return ["fit", t / "cut.nwb", "--backbone", "ridge"], t / "cut_desc-llmdecode.nwb"


@case("fit-hdf5-not-nwb", "plain.nwb")
def _(w, t):
    with h5py.File(t / "plain.nwb", "w") as f:
        f["x"] = np.arange(3)
    return ["fit", t / "plain.nwb", "--backbone", "ridge"], t / "plain_desc-llmdecode.nwb"


def _edit_timestamps(src: Path, dst: Path, path: str, change: Callable) -> Path:
    shutil.copy2(src, dst)
    with h5py.File(dst, "r+") as f:
        g = f[path]
        if "timestamps" in g:
            t = g["timestamps"][:]
            del g["timestamps"]
        else:
            n = g["data"].shape[0]
            rate = float(g["starting_time"].attrs["rate"])
            t = float(g["starting_time"][()]) + np.arange(n) / rate
            del g["starting_time"]
        g["timestamps"] = change(np.asarray(t, dtype=np.float64))
        g["timestamps"].attrs["unit"] = "seconds"
        g["timestamps"].attrs["interval"] = 1
    return dst


def _roi_series_path(p: Path) -> str:
    with h5py.File(p, "r") as f:
        return next(
            f"processing/ophys/{c}/{n}"
            for c in ("DfOverF", "Fluorescence")
            if c in f["processing/ophys"]
            for n in f[f"processing/ophys/{c}"]
        )


def _behavior_path(p: Path) -> str:
    with h5py.File(p, "r") as f:
        found: list[str] = []
        f.visititems(
            lambda name, obj: (
                found.append(name)
                if isinstance(obj, h5py.Group) and obj.attrs.get("neurodata_type") == "TimeSeries"
                else None
            )
        )
    return found[0]


@case("fit-frame-times-backwards", "RoiResponseSeries", "not strictly increasing", "timestamps")
def _(w, t):
    def swap(ts):
        ts[10], ts[11] = ts[11], ts[10]
        return ts

    src = _edit_timestamps(w.session, t / "bad.nwb", _roi_series_path(w.session), swap)
    return ["fit", src, "--backbone", "ridge", "--seq-len", "5"], t / "bad_desc-llmdecode.nwb"


@case("fit-frame-times-nan", "RoiResponseSeries", "NaN/inf")
def _(w, t):
    def nan(ts):
        ts[3] = np.nan
        return ts

    src = _edit_timestamps(w.session, t / "bad.nwb", _roi_series_path(w.session), nan)
    return ["fit", src, "--backbone", "ridge", "--seq-len", "5"], t / "bad_desc-llmdecode.nwb"


@case("fit-behavior-times-inf", "behaviour", "NaN/inf", "timestamps")
def _(w, t):
    def inf(ts):
        ts[5] = np.inf
        return ts

    src = _edit_timestamps(w.session, t / "bad.nwb", _behavior_path(w.session), inf)
    return ["fit", src, "--backbone", "ridge", "--seq-len", "5"], t / "bad_desc-llmdecode.nwb"


@case("fit-nan-activity", "NaN/inf values in ROI activity", "interpolate")
def _(w, t):
    dst = _copy(w.session, t, "nan.nwb")
    with h5py.File(dst, "r+") as f:
        d = f[_roi_series_path(w.session) + "/data"]
        d[4, 2] = np.nan
    return ["fit", dst, "--backbone", "ridge", "--seq-len", "5"], t / "nan_desc-llmdecode.nwb"


# --- fit: config files ----------------------------------------------------------------
def _config_case(id: str, name: str, content: bytes, *needles: str) -> None:
    def setup(w: World, t: Path) -> tuple[list[object], Path | None]:
        (t / name).write_bytes(content)
        argv, out = _fit(w, t)
        return [*argv, "--config", t / name], out

    CASES.append(Case(id, setup, (name, *needles)))


for _id, _name, _content, _needles in [
    ("config-missing", None, None, ("no such config file",)),
    ("config-json-suffix", "c.json", b"{}", ("TOML (.toml) or YAML",)),
    ("config-toml-syntax", "c.toml", b"epochs = = 3\n", ("cannot parse", "fix the syntax")),
    ("config-yaml-syntax", "c.yaml", b"epochs: [1, 2\nlr: 3\n", ("cannot parse",)),
    ("config-not-utf8", "c.toml", b"backbone = '\xff\xfe'\n", ("not UTF-8", "UTF-8")),
    ("config-yaml-list", "c.yaml", b"- 1\n- 2\n", ("table/mapping", "list")),
    ("config-fit-not-table", "c.toml", b"fit = 3\n", ("'fit' must be a table",)),
    ("config-out-number", "c.toml", b"out = 3\n", ("out = 3", "output file name")),
    ("config-rois-number", "c.toml", b"rois = 5\n", ("rois = 5", "series name")),
    ("config-rois-list-ints", "c.yaml", b"rois: [1, 2]\n", ("rois = [1, 2]", "list of names")),
    ("config-unknown-key", "c.toml", b"epoch = 3\n", ("unknown option(s) 'epoch'",)),
    ("config-epochs-string", "c.toml", b'epochs = "x"\n', ("epochs='x'", "integer")),
    ("config-seq-len-bool", "c.yaml", b"seq_len: true\n", ("seq_len=True", "integer")),
    ("config-split-string", "c.toml", b'split = "0.7,0.1,0.2"\n', ("split=", "list")),
    ("config-trust", "c.toml", b"trust_remote_code = true\n", ("--trust-remote-code",)),
    ("config-fit-table-bad", "c.toml", b"[fit]\nlr = -1\n", ("lr=-1", "positive")),
]:
    if _name is None:
        CASES.append(
            Case(
                _id,
                lambda w, t: (_fit(w, t)[0] + ["--config", t / "none.toml"], t / "out.nwb"),
                ("none.toml", *_needles),
            )
        )
    else:
        _config_case(_id, _name, _content, *_needles)


# --- predict -------------------------------------------------------------------------
def _ckpt(w: World, t: Path) -> Path:
    d = t / "ckpt"
    shutil.copytree(w.checkpoint, d)
    return d


def _predict_case(id: str, damage: Callable[[Path], None], *needles: str) -> None:
    def setup(w: World, t: Path) -> tuple[list[object], Path | None]:
        d = _ckpt(w, t)
        damage(d)
        return ["predict", d, w.session, "--out", t / "p.nwb"], t / "p.nwb"

    CASES.append(Case(id, setup, needles))


def _write(name: str, content: bytes | str) -> Callable[[Path], None]:
    def f(d: Path) -> None:
        p = d / name
        p.write_bytes(content.encode() if isinstance(content, str) else content)

    return f


def _truncate_weights(d: Path) -> None:
    data = (d / "weights.pt").read_bytes()
    (d / "weights.pt").write_bytes(data[: len(data) // 2])


def _pickled_weights(d: Path) -> None:
    import torch

    torch.save({"model.x": argparse.Namespace(evil=True)}, d / "weights.pt")


def _not_tensors(d: Path) -> None:
    import torch

    torch.save({"model.x": 3}, d / "weights.pt")


def _json_edit(name: str, change: Callable[[dict], object]) -> Callable[[Path], None]:
    def f(d: Path) -> None:
        data = json.loads((d / name).read_text())
        (d / name).write_text(json.dumps(change(data)))

    return f


def _drop(key: str) -> Callable[[dict], dict]:
    return lambda m: {k: v for k, v in m.items() if k != key}


for _id, _damage, _needles in [
    ("predict-weights-truncated", _truncate_weights, ("weights.pt", "save the checkpoint again")),
    ("predict-weights-random", _write("weights.pt", os.urandom(2048)), ("weights.pt", "again")),
    ("predict-weights-pickled", _pickled_weights, ("weights.pt", "never pickled objects")),
    ("predict-weights-not-tensors", _not_tensors, ("weights.pt", "dict of named tensors")),
    ("predict-weights-missing", lambda d: (d / "weights.pt").unlink(), ("missing weights.pt",)),
    ("predict-meta-no-n-rois", _json_edit("checkpoint.json", _drop("n_rois")), ("'n_rois'",)),
    ("predict-meta-list", _write("checkpoint.json", "[1, 2]"), ("checkpoint.json", "a JSON list")),
    ("predict-meta-n-rois-x", _json_edit("checkpoint.json", lambda m: {**m, "n_rois": "x"}),
     ("'n_rois' is 'x'", "positive integer")),
    ("predict-meta-not-json", _write("checkpoint.json", "{nope"), ("checkpoint.json", "JSON")),
    ("predict-meta-format", _json_edit("checkpoint.json", lambda m: {**m, "format": 99}),
     ("format 99", "save the decoder again")),
    ("predict-config-swapped-backbone",
     _json_edit("config.json", lambda c: {**c, "backbone": "minilm"}),
     ("config.json names backbone 'minilm'", "do not belong together")),
    ("predict-config-bad-value", _json_edit("config.json", lambda c: {**c, "epochs": 0}),
     ("config.json", "epochs=0")),
    ("predict-config-unknown-key", _json_edit("config.json", lambda c: {**c, "evil": 1}),
     ("config.json", "'evil'")),
    ("predict-config-not-utf8", _write("config.json", b"\xff\xfe{}"), ("config.json", "JSON")),
    ("predict-session-not-json", _write("session.json", "not json"),
     ("session.json", "not valid JSON")),
    ("predict-session-list", _write("session.json", "[]"), ("session.json", "a JSON list")),
    ("predict-session-series-number",
     _json_edit("session.json", lambda m: {**m, "behavior_series": 3}),
     ("session.json", "'behavior_series'")),
    ("predict-session-n-rois-x", _json_edit("session.json", lambda m: {**m, "n_rois": "x"}),
     ("session.json", "'n_rois' is 'x'")),
]:  # fmt: skip
    if _damage is not None:
        _predict_case(_id, _damage, *_needles)


@case("predict-no-checkpoint-dir", "no such checkpoint directory")
def _(w, t):
    return ["predict", t / "nothing", w.session, "--out", t / "p.nwb"], t / "p.nwb"


@case("predict-empty-checkpoint-dir", "not a checkpoint directory", "missing")
def _(w, t):
    (t / "ck").mkdir()
    return ["predict", t / "ck", w.session, "--out", t / "p.nwb"], t / "p.nwb"


@case("predict-other-rois", "7 ROIs", "trained on 10", "--rois")
def _(w, t):
    return ["predict", w.checkpoint, w.other_rois, "--out", t / "p.nwb"], t / "p.nwb"


@case("predict-out-read-only-dir", "not writable")
def _(w, t):
    d = t / "ro"
    d.mkdir()
    d.chmod(0o555)
    return ["predict", w.checkpoint, w.session, "--out", d / "p.nwb"], d / "p.nwb"


@case("predict-out-exists", "p.nwb: exists", "--overwrite")
def _(w, t):
    (t / "p.nwb").write_bytes(b"keep me")
    return ["predict", w.checkpoint, w.session, "--out", t / "p.nwb"], None


@case("predict-missing-source", "gone.nwb")
def _(w, t):
    return ["predict", w.checkpoint, t / "gone.nwb", "--out", t / "p.nwb"], t / "p.nwb"


# --- ablate --------------------------------------------------------------------------
def _results(w: World, t: Path, *, ckpt: bool = True) -> Path:
    r = _copy(w.results, t)
    if ckpt:
        shutil.copytree(w.checkpoint, t / f"{r.stem}_checkpoint")
    return r


@case("ablate-missing-results", "gone.nwb", "no such results file")
def _(w, t):
    return ["ablate", t / "gone.nwb"], None


@case("ablate-read-only-results", "read-only", "chmod u+w")
def _(w, t):
    r = _results(w, t)
    r.chmod(0o444)
    return ["ablate", r, "--k", "2"], None


@case("ablate-read-only-dir", "not writable")
def _(w, t):
    d = t / "ro"
    d.mkdir()
    r = _results(w, d)
    d.chmod(0o555)
    return ["ablate", r, "--k", "2"], None


@case("ablate-k-abc", "--k abc", "whole numbers")
def _(w, t):
    return ["ablate", _results(w, t), "--k", "abc"], None


@case("ablate-k-zero", "--k 0", "positive whole numbers")
def _(w, t):
    return ["ablate", _results(w, t), "--k", "0"], None


@case("ablate-draws-negative", "draws=-1")
def _(w, t):
    return ["ablate", _results(w, t), "--draws", "-1"], None


@case("ablate-draws-abc", "--draws", "invalid int")
def _(w, t):
    return ["ablate", _results(w, t), "--draws", "x"], None


@case("ablate-no-checkpoint", "no decoder checkpoint", "--checkpoint")
def _(w, t):
    return ["ablate", _results(w, t, ckpt=False)], None


@case("ablate-checkpoint-of-other-results", "written with other results", "fit again")
def _(w, t):
    r = _results(w, t)
    meta = t / f"{r.stem}_checkpoint" / "session.json"
    data = json.loads(meta.read_text())
    data["results_object_id"] = str(uuid.uuid4())
    meta.write_text(json.dumps(data))
    return ["ablate", r, "--k", "2"], None


@case("ablate-no-salience", "no roi_salience table", "--salience")
def _(w, t):
    r = _copy(w.plain_results, t)
    shutil.copytree(w.checkpoint, t / f"{r.stem}_checkpoint")
    meta = t / f"{r.stem}_checkpoint" / "session.json"
    data = json.loads(meta.read_text())
    data.pop("results_object_id")
    meta.write_text(json.dumps(data))
    return ["ablate", r, "--k", "2"], None


@case("ablate-on-a-source-file", "no processing/llmdecode module", "run fit first")
def _(w, t):
    r = _copy(w.session, t)
    shutil.copytree(w.checkpoint, t / "s_checkpoint")
    meta = t / "s_checkpoint" / "session.json"
    data = json.loads(meta.read_text())
    data.pop("results_object_id")
    meta.write_text(json.dumps(data))
    return ["ablate", r, "--k", "2"], None


@case("ablate-checkpoint-missing-dir", "no decoder checkpoint at")
def _(w, t):
    return ["ablate", _results(w, t, ckpt=False), "--checkpoint", t / "nowhere"], None


# --- inspect -------------------------------------------------------------------------
@case("inspect-missing", "missing.nwb")
def _(w, t):
    return ["inspect", t / "missing.nwb"], None


@case("inspect-random-bytes", "junk.nwb")
def _(w, t):
    (t / "junk.nwb").write_bytes(os.urandom(1000))
    return ["inspect", t / "junk.nwb"], None


@case("inspect-empty", "empty.nwb")
def _(w, t):
    (t / "empty.nwb").write_bytes(b"")
    return ["inspect", t / "empty.nwb", "--json"], None


@case("inspect-hdf5-not-nwb", "plain.h5")
def _(w, t):
    with h5py.File(t / "plain.h5", "w") as f:
        f["x"] = 1
    return ["inspect", t / "plain.h5"], None


@case("inspect-truncated", "cut.nwb")
def _(w, t):
    data = w.session.read_bytes()
    (t / "cut.nwb").write_bytes(data[: len(data) // 2])
    return ["inspect", t / "cut.nwb"], None


@case("inspect-no-argument", "inspect", "required", "source")
def _(w, t):
    return ["inspect"], None


# --- dandi ls ------------------------------------------------------------------------
@case("dandi-ls-bad-spec", "not a dandiset", "DANDISET[@VERSION]")
def _(w, t):
    return ["dandi", "ls", "not a dandiset"], None


@case("dandi-ls-short-id", "'12'", "DANDISET[@VERSION]")
def _(w, t):
    return ["dandi", "ls", "12"], None


@case("dandi-ls-no-subcommand", "dandi", "required")
def _(w, t):
    return ["dandi"], None


# --- synth ---------------------------------------------------------------------------
@case("synth-frames-abc", "--frames", "invalid int")
def _(w, t):
    return ["synth", t / "x.nwb", "--frames", "abc"], t / "x.nwb"


@case("synth-drivers-too-many", "n_drivers")
def _(w, t):
    return ["synth", t / "x.nwb", "--rois", "5", "--drivers", "9"], t / "x.nwb"


@case("synth-out-exists", "exists", "--overwrite")
def _(w, t):
    (t / "x.nwb").write_bytes(b"keep")
    return ["synth", t / "x.nwb", "--frames", "60", "--rois", "6", "--drivers", "2"], None


@case("synth-readout-choice", "--readout", "invalid choice")
def _(w, t):
    return ["synth", t / "x.nwb", "--readout", "quadratic"], t / "x.nwb"


# --- convert-nlp4neuro ---------------------------------------------------------------
def _npys(t: Path, neural_frames: int = 50, tail_frames: int = 50) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    neural = np.concatenate(
        [rng.uniform(0, 100, (8, 2)), rng.standard_normal((8, neural_frames))], axis=1
    )
    np.save(t / "neural.npy", neural)
    np.save(t / "tail.npy", rng.standard_normal((tail_frames, 6)))
    return t / "neural.npy", t / "tail.npy"


@case("convert-missing-frame-rate", "--frame-rate", "required")
def _(w, t):
    n, tl = _npys(t)
    return ["convert-nlp4neuro", n, tl, t / "o.nwb"], t / "o.nwb"


@case("convert-missing-neural", "nothing.npy")
def _(w, t):
    _, tl = _npys(t)
    return ["convert-nlp4neuro", t / "nothing.npy", tl, t / "o.nwb", "--frame-rate", "1"], (
        t / "o.nwb"
    )


@case("convert-neural-not-npy", "neural.npy")
def _(w, t):
    n, tl = _npys(t)
    n.write_bytes(os.urandom(500))
    return ["convert-nlp4neuro", n, tl, t / "o.nwb", "--frame-rate", "1"], t / "o.nwb"


@case("convert-pickled-npy", "neural.npy")
def _(w, t):
    n, tl = _npys(t)
    np.save(n, np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    return ["convert-nlp4neuro", n, tl, t / "o.nwb", "--frame-rate", "1"], t / "o.nwb"


@case("convert-frame-mismatch", "tail.npy")
def _(w, t):
    n, tl = _npys(t, neural_frames=50, tail_frames=40)
    return ["convert-nlp4neuro", n, tl, t / "o.nwb", "--frame-rate", "1"], t / "o.nwb"


@case("convert-out-exists", "exists", "--overwrite")
def _(w, t):
    n, tl = _npys(t)
    (t / "o.nwb").write_bytes(b"keep")
    return ["convert-nlp4neuro", n, tl, t / "o.nwb", "--frame-rate", "1"], None


# --- compare -------------------------------------------------------------------------
@case("compare-seeds-zero", "--seeds")
def _(w, t):
    return ["compare", w.session, "--models", "ridge", "--seeds", "0", "--report", t / "r"], (
        t / "r"
    )


@case("compare-seq-len-abc", "--seq-len a,b", "whole numbers")
def _(w, t):
    return ["compare", w.session, "--seq-len", "a,b", "--report", t / "r"], t / "r"


@case("compare-split-abc", "--split x", "fractions")
def _(w, t):
    return ["compare", w.session, "--split", "x", "--report", t / "r"], t / "r"


@case("compare-bad-config", "c.toml", "cannot parse")
def _(w, t):
    (t / "c.toml").write_text("= nope")
    return ["compare", w.session, "--config", t / "c.toml", "--report", t / "r"], t / "r"


# --- the command line itself -----------------------------------------------------------
@case("no-command", "COMMAND", "required")
def _(w, t):
    return [], None


@case("unknown-command", "invalid choice", "'frobnicate'")
def _(w, t):
    return ["frobnicate"], None


# ----------------------------------------------------------------------------------------
# the check
# ----------------------------------------------------------------------------------------


def _hashes(paths: list[Path]) -> dict[Path, str]:
    out = {}
    for root in paths:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for p in files:
            out[p] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _make_writable(root: Path) -> None:
    for p in [root, *root.rglob("*")]:
        if not p.is_symlink():
            p.chmod(p.stat().st_mode | stat.S_IWUSR)


@pytest.mark.parametrize("c", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_clean_line(c: Case, world: World, tmp_path: Path) -> None:
    argv, out = c.setup(world, tmp_path)
    inputs = [world.root, tmp_path]
    before = _hashes(inputs)
    env = dict(os.environ, PYTHONWARNINGS="ignore", HF_MODULES_CACHE=str(tmp_path / "hf"))
    proc = subprocess.run(
        [*EXE, *map(str, argv)], capture_output=True, text=True, env=env, timeout=300
    )
    try:
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert proc.returncode == 2, (proc.returncode, proc.stderr)
        assert "Traceback" not in proc.stderr, proc.stderr
        assert len(lines) == 1, proc.stderr
        assert lines[0].startswith("nwb-llmdecode: error: "), lines[0]
        assert "internal error" not in lines[0]
        for needle in c.needles:
            assert needle in lines[0], (needle, lines[0])
        if out is not None:
            assert not out.exists(), f"{out} was left behind"
        assert _hashes(inputs) == before, "an input file changed (or a file appeared)"
    finally:
        _make_writable(tmp_path)


def test_the_battery_is_large():
    assert len(CASES) >= 60
    assert len({c.id for c in CASES}) == len(CASES)
    commands = {c.id.split("-")[0] for c in CASES}
    for cmd in ("fit", "predict", "ablate", "inspect", "dandi", "synth", "convert", "compare"):
        assert cmd in commands, cmd
