"""Kill ``fit`` while it writes: the old state or the complete new one, never a mix.

``fit`` builds the checkpoint in a hidden temporary directory and the results file under a
hidden temporary name, publishes the checkpoint, then renames the results file into place
(see ``io/atomic.py``). These tests SIGKILL a real ``fit`` subprocess when each temporary
appears (derived output and ``--in-place``), check the invariants, and check that the next
run removes what the killed run left. SIGTERM must clean up at once, like Ctrl-C.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest

from nwb_llmdecode.checkpoint_meta import read_checkpoint_meta
from nwb_llmdecode.synthetic import make_session

EXE = [sys.executable, "-m", "nwb_llmdecode.cli"]
FIT = ["--backbone", "ridge", "--seq-len", "5", "-q"]


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("crash")
    return make_session(d / "s.nwb", frames=200, rois=16, planes=2, n_drivers=4, seed=0).path


def _start(*args: object) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.Popen(
        [*EXE, *map(str, args)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _run(*args: object) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run(
        [*EXE, *map(str, args)], capture_output=True, text=True, env=env, timeout=300
    )


def _signal_when(
    proc: subprocess.Popen[str], directory: Path, match, sig: int, timeout: float = 120.0
) -> bool:
    """Send ``sig`` as soon as a name in ``directory`` satisfies ``match``; True if it was
    sent before the process ended by itself."""
    t0 = time.monotonic()
    while proc.poll() is None and time.monotonic() - t0 < timeout:
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            names = []
        if any(match(n) for n in names):
            proc.send_signal(sig)
            proc.wait(timeout=60)
            return True
        time.sleep(0.002)
    proc.wait(timeout=60)
    return False


def _object_id(nwb: Path) -> str:
    with h5py.File(nwb, "r") as f:
        v = f["processing/llmdecode"].attrs["object_id"]
    return v.decode() if isinstance(v, bytes) else str(v)


def _assert_consistent(results: Path, ckpt: Path, *, results_has_module: bool) -> None:
    """Results visible => its checkpoint is complete and belongs to it; a checkpoint on its
    own is complete (it was published whole)."""
    if results_has_module:
        read_checkpoint_meta(ckpt)
        meta = json.loads((ckpt / "session.json").read_text())
        assert meta["results_object_id"] == _object_id(results)
    elif ckpt.exists():
        read_checkpoint_meta(ckpt)
        assert (ckpt / "session.json").is_file()


def _has_module(p: Path) -> bool:
    if not p.exists():
        return False
    with h5py.File(p, "r") as f:
        return "processing/llmdecode" in f


# what to wait for, by name, before the kill
POINTS = {
    "checkpoint-temporary": lambda n: n.startswith(".out_checkpoint.") and n.endswith(".partial"),
    "results-temporary": lambda n: n.startswith(".out.nwb.") and n.endswith(".partial.nwb"),
    "checkpoint-published": lambda n: n == "out_checkpoint",
}


@pytest.mark.parametrize("point", list(POINTS))
def test_sigkill_during_derived_write(session: Path, tmp_path: Path, point: str) -> None:
    src_sha = sha(session)
    out, ckpt = tmp_path / "out.nwb", tmp_path / "out_checkpoint"
    if point == "checkpoint-published":  # an earlier complete result, replaced with --overwrite
        assert _run("fit", session, *FIT, "--out", out).returncode == 0
        old_id = _object_id(out)
    proc = _start("fit", session, *FIT, "--out", out, "--overwrite")
    killed = _signal_when(proc, tmp_path, POINTS[point], signal.SIGKILL)
    assert sha(session) == src_sha
    if out.exists():  # the old result, or the complete new one
        _assert_consistent(out, ckpt, results_has_module=True)
        if point == "checkpoint-published" and _object_id(out) == old_id:
            # killed between the two renames: the new checkpoint is beside the old results;
            # the recorded object_id tells them apart, so ablate refuses the pair
            pass
    else:
        _assert_consistent(out, ckpt, results_has_module=False)
    left = [n for n in os.listdir(tmp_path) if n.startswith(".")]
    if killed and point != "checkpoint-published":
        assert left, "the kill came after the write finished"
    if point == "checkpoint-temporary":
        return  # the clean-up by the next run is checked after the other kills
    # the next run removes the dead run's temporaries and writes a consistent pair
    proc2 = _run("fit", session, *FIT, "--out", out, "--overwrite")
    assert proc2.returncode == 0, proc2.stderr
    assert [n for n in os.listdir(tmp_path) if n.startswith(".")] == []
    _assert_consistent(out, ckpt, results_has_module=True)
    assert sha(session) == src_sha


def test_overwrite_replaces_and_a_stale_checkpoint_is_refused(session: Path, tmp_path: Path):
    """``--overwrite`` replaces the whole old checkpoint directory; a checkpoint without
    results (what a kill between the two renames leaves on a first run, or a deleted
    results file) is refused before any training, and ``--overwrite`` replaces it."""
    out, ckpt = tmp_path / "out.nwb", tmp_path / "out_checkpoint"
    assert _run("fit", session, *FIT, "--out", out).returncode == 0
    (ckpt / "stray.txt").write_text("from the old run")
    first = _object_id(out)
    proc = _run("fit", session, *FIT, "--out", out, "--overwrite", "--seed", "3")
    assert proc.returncode == 0, proc.stderr
    assert _object_id(out) != first
    assert not (ckpt / "stray.txt").exists(), "the old checkpoint directory was kept"
    assert json.loads((ckpt / "config.json").read_text())["seed"] == 3
    _assert_consistent(out, ckpt, results_has_module=True)
    out.unlink()
    proc = _run("fit", session, *FIT, "--out", out)
    assert proc.returncode == 2, proc.stderr
    assert "without its results file" in proc.stderr and "--overwrite" in proc.stderr
    assert not out.exists()


@pytest.mark.parametrize("point", ["results-temporary", "checkpoint-temporary"])
def test_sigkill_during_in_place_write(session: Path, tmp_path: Path, point: str) -> None:
    src = tmp_path / "s.nwb"
    src.write_bytes(session.read_bytes())
    before = sha(src)
    ckpt = tmp_path / "s_checkpoint"
    match = {
        "results-temporary": lambda n: n.startswith(".s.nwb.") and n.endswith(".partial.nwb"),
        "checkpoint-temporary": lambda n: n.startswith(".s_checkpoint.") and n.endswith(".partial"),
    }[point]
    proc = _start("fit", src, *FIT, "--in-place")
    killed = _signal_when(proc, tmp_path, match, signal.SIGKILL)
    if _has_module(src):  # the complete new file
        _assert_consistent(src, ckpt, results_has_module=True)
    else:
        assert sha(src) == before, "the source changed without getting the results"
        _assert_consistent(src, ckpt, results_has_module=False)
    if killed:
        assert [n for n in os.listdir(tmp_path) if n.startswith(".")]
    if point == "checkpoint-temporary":
        return
    proc2 = _run("fit", src, *FIT, "--in-place", "--overwrite")
    assert proc2.returncode == 0, proc2.stderr
    assert [n for n in os.listdir(tmp_path) if n.startswith(".")] == []
    _assert_consistent(src, ckpt, results_has_module=True)


@pytest.mark.parametrize("in_place", [False, True], ids=["derived", "in-place"])
def test_sigterm_cleans_up_like_ctrl_c(session: Path, tmp_path: Path, in_place: bool) -> None:
    src = tmp_path / "s.nwb"
    src.write_bytes(session.read_bytes())
    before = sha(src)
    results = src if in_place else tmp_path / "out.nwb"
    args = ["--in-place"] if in_place else ["--out", results]
    prefix = f".{results.name}."
    proc = _start("fit", src, *FIT, *args)
    sent = _signal_when(
        proc,
        tmp_path,
        lambda n: n.startswith(prefix) and n.endswith(".partial.nwb"),
        signal.SIGTERM,
    )
    stderr = proc.stderr.read() if proc.stderr else ""
    assert sent, "fit ended before its results temporary appeared"
    assert "Traceback" not in stderr, stderr
    # nothing of ours is left behind at once, without waiting for a next run
    assert [n for n in os.listdir(tmp_path) if n.startswith(".")] == []
    ckpt = tmp_path / f"{results.stem}_checkpoint"
    if proc.returncode == 143:
        assert stderr.strip().splitlines()[-1] == "nwb-llmdecode: terminated", stderr
    else:  # the signal came after the last rename
        assert proc.returncode == 0, stderr
    if _has_module(results):
        _assert_consistent(results, ckpt, results_has_module=True)
    else:
        assert sha(src) == before
        assert in_place or not results.exists()
        _assert_consistent(results, ckpt, results_has_module=False)


def test_checkpoint_is_published_before_the_results(session: Path, tmp_path: Path, monkeypatch):
    """The order that makes a kill safe, checked deterministically in process."""
    import nwb_llmdecode.pipeline as pl
    from nwb_llmdecode.config import FitConfig

    out = tmp_path / "out.nwb"
    results_visible_at_publish = []
    real = pl.publish_dir

    def spy(tmp: Path, final: Path) -> None:
        results_visible_at_publish.append(out.exists())
        real(tmp, final)

    monkeypatch.setattr(pl, "publish_dir", spy)
    pl.fit(session, config=FitConfig(backbone="ridge", seq_len=5), out=out)
    assert results_visible_at_publish == [False]
    _assert_consistent(out, tmp_path / "out_checkpoint", results_has_module=True)


def test_interrupt_at_the_publish_leaves_nothing(session: Path, tmp_path: Path, monkeypatch):
    """Ctrl-C (or SIGTERM) just as the checkpoint would be published: no results, no
    checkpoint, no temporaries."""
    import nwb_llmdecode.pipeline as pl
    from nwb_llmdecode.config import FitConfig

    def interrupted(tmp: Path, final: Path) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(pl, "publish_dir", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pl.fit(session, config=FitConfig(backbone="ridge", seq_len=5), out=tmp_path / "o.nwb")
    assert os.listdir(tmp_path) == []
