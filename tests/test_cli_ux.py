"""What a user sees on the command line (issue 17): progress in logs and on a terminal,
help with defaults, a closed pipe that is not an error."""

from __future__ import annotations

import argparse
import os
import re
import select
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nwb_llmdecode.synthetic import make_session

EXE = [sys.executable, "-m", "nwb_llmdecode.cli"]
ENV = dict(os.environ, PYTHONWARNINGS="ignore")
LSTM = ["--backbone", "lstm", "--epochs", "2", "--patience", "0", "--seq-len", "5"]


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("ux")
    return make_session(d / "s.nwb", frames=120, rois=10, planes=1, n_drivers=3, seed=0).path


def test_log_gets_one_line_per_epoch_and_salience_chunk(session: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.nwb"
    args = [*EXE, "fit", session, *LSTM, "--salience", "saliency", "--out", out]
    proc = subprocess.run(list(map(str, args)), capture_output=True, text=True, env=ENV)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    epoch = [ln for ln in lines if ln.startswith("nwb-llmdecode: epoch ")]
    assert len(epoch) == 2, proc.stderr
    pattern = (
        r"nwb-llmdecode: epoch {}/2: train loss [\d.]+, validation loss [\d.]+, validation R² "
        r"-?[\d.]+( \(best\))?, [\d.]+ s, ETA \d+ s"
    )
    for i, ln in enumerate(epoch, start=1):
        assert re.fullmatch(pattern.format(i), ln), ln
    chunks = [ln for ln in lines if ln.startswith("nwb-llmdecode: salience (saliency): chunk")]
    assert chunks and re.search(r"chunk 1/\d+ \(\d+ windows\), [\d.]+ s, ETA", chunks[0])
    assert "\r" not in proc.stderr  # no progress bars in a log
    # --quiet: none of it
    proc = subprocess.run(
        list(map(str, [*args, "--overwrite", "-q"])), capture_output=True, text=True, env=ENV
    )
    assert proc.returncode == 0, proc.stderr
    assert "epoch" not in proc.stderr and "chunk" not in proc.stderr


def test_terminal_gets_progress_bars_not_log_lines(session: Path, tmp_path: Path) -> None:
    import fcntl
    import struct
    import termios

    master, slave = os.openpty()
    # a terminal of 24 x 100 (a fresh pty has no size, and tqdm draws nothing at width 0)
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    args = [*EXE, "fit", session, *LSTM, "--salience", "none", "--out", tmp_path / "r.nwb"]
    proc = subprocess.Popen(list(map(str, args)), stdout=subprocess.DEVNULL, stderr=slave, env=ENV)
    os.close(slave)
    seen = b""
    while True:
        ready, _, _ = select.select([master], [], [], 120)
        if not ready:
            break
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    os.close(master)
    assert proc.wait(timeout=120) == 0, seen.decode(errors="replace")
    text = seen.decode(errors="replace")
    assert "epoch 1/2" in text and "\r" in text  # a tqdm bar
    assert "nwb-llmdecode: epoch" not in text


def test_every_option_has_help_and_says_its_default() -> None:
    from nwb_llmdecode.cli import build_parser

    parser = build_parser()

    def parsers(p: argparse.ArgumentParser):
        yield p
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                for sub in a.choices.values():
                    yield from parsers(sub)

    checked = 0
    for p in parsers(parser):
        for a in p._actions:
            skip = isinstance(a, argparse._HelpAction | argparse._VersionAction)
            if not a.option_strings or skip:
                continue
            name = f"{p.prog} {a.option_strings[-1]}"
            assert a.help and a.help.strip(), f"{name} has no help"
            flag = isinstance(a, argparse._StoreTrueAction)
            if not flag and p.prog != "nwb-llmdecode":
                text = p.formatter_class(p.prog)._get_help_string(a) or ""
                assert "default" in text or a.required, f"{name} does not say its default"
            checked += 1
    assert checked > 60


def test_fit_help_shows_the_fit_config_defaults() -> None:
    proc = subprocess.run([*EXE, "fit", "--help"], capture_output=True, text=True, env=ENV)
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())
    for option, default in [
        ("--epochs EPOCHS", "(default: 30)"),
        ("--batch-size BATCH_SIZE", "(default: 32)"),
        ("--lr LR", "(default: 0.003)"),
        ("--seed SEED", "(default: 0)"),
        ("--train-mode {frozen,lora,full}", "(default: full)"),
        ("--seq-len SEQ_LEN", "(default: 20)"),
        ("--backbone BACKBONE", "(default: minilm)"),
    ]:
        i = text.index(option, text.index("options:"))
        assert default in text[i : i + 200], (option, text[i : i + 200])


def test_inspect_into_a_closed_pipe_is_quiet(session: Path) -> None:
    """``nwb-llmdecode inspect x.nwb --json | head -1``: the reader goes away early."""
    r, w = os.pipe()
    os.close(r)  # every write gets EPIPE, deterministically
    try:
        for extra in (["--json"], []):
            proc = subprocess.run(
                [*EXE, "inspect", str(session), *extra],
                stdout=w,
                stderr=subprocess.PIPE,
                text=True,
                env=ENV,
            )
            assert proc.returncode == 0, proc.stderr
            assert proc.stderr == ""
    finally:
        os.close(w)


def test_integrated_gradients_progress_moves_with_the_work() -> None:
    """One report per batch of windows (all channels at once), so the bar moves with
    the work."""
    import torch

    from nwb_llmdecode.salience import compute_salience

    model = torch.nn.Linear(4, 3)
    calls: list[tuple[str, int, int]] = []
    x = np.random.default_rng(0).standard_normal((40, 4)).astype(np.float32)
    compute_salience(
        model,
        x,
        block=(0, 40),
        seq_len=5,
        batch_size=16,
        n_steps=4,
        progress=lambda stage, done, total: calls.append((stage, done, total)),
    )
    n_batches = int(np.ceil(36 / 16))
    # the batched implementation attributes all 3 channels of a batch in one pass: one
    # report per batch, counted in (batch, channel) units so the total is the same work
    assert [c[1] for c in calls] == [3 * b for b in range(n_batches + 1)]
    assert {c[2] for c in calls} == {n_batches * 3}
    assert {c[0] for c in calls} == {"salience (integrated-gradients)"}


def test_usage_errors_are_one_line() -> None:
    proc = subprocess.run(
        [*EXE, "fit", "x.nwb", "--seq-len", "abc"], capture_output=True, text=True, env=ENV
    )
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "nwb-llmdecode: error: fit: argument --seq-len: invalid int value: 'abc' "
        "(see nwb-llmdecode fit --help)"
    ]
