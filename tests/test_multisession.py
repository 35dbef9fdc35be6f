"""One decoder across sessions and animals: synth --sessions, fit_sessions, adapt_session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from nwb_llmdecode.cli import main
from nwb_llmdecode.config import FitConfig
from nwb_llmdecode.engine.multi import SessionArrays, adapt_session, fit_sessions
from nwb_llmdecode.errors import DataError
from nwb_llmdecode.io.read import load_session
from nwb_llmdecode.synthetic import make_sessions

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory) -> Path:
    from transformers import GPT2Config, GPT2Model

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("tiny-gpt2")
    GPT2Model(
        GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=64, vocab_size=50)
    ).save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def animals(tmp_path_factory):
    d = tmp_path_factory.mktemp("animals")
    truths = make_sessions(d, 4, frames=500, rois=30, roi_step=10, n_drivers=4, planes=1)
    return truths


def _arrays(path: Path, key: str | None = None) -> SessionArrays:
    ds = load_session(path)
    return SessionArrays(
        key=key or Path(path).stem,
        activity=ds.activity.values.astype(np.float32),
        behavior=ds.behavior.values.astype(np.float32),
        series=[str(s) for s in ds.series.values],
        units=[str(u) for u in ds.unit.values],
        frame_rate=float(ds.attrs["frame_rate"]),
    )


def _cfg(backbone: Path, **kw) -> FitConfig:
    base = dict(
        backbone=str(backbone),
        init="pretrained",
        train_mode="full",
        seq_len=10,
        epochs=12,
        patience=0,
        eval_batch_size=256,
        lr=3e-3,
        backbone_lr=1e-3,
        train_stride=1,  # the epoch budget above was set for every window each epoch
    )
    return FitConfig(**{**base, **kw})


def test_synth_sessions_cli(tmp_path, capsys):
    rc = main(
        [
            "synth",
            str(tmp_path),
            "--sessions",
            "3",
            "--frames",
            "200",
            "--rois",
            "20",
            "--drivers",
            "3",
            "--readout",
            "interaction",
            "--planes",
            "1",
        ]
    )
    assert rc == 0
    files = sorted(tmp_path.glob("animal*.nwb"))
    assert [f.name for f in files] == ["animal0.nwb", "animal1.nwb", "animal2.nwb"]
    from pynwb import NWBHDF5IO

    subjects, counts = set(), set()
    for f in files:
        with NWBHDF5IO(str(f), "r") as io:
            nwb = io.read()
            subjects.add(nwb.subject.subject_id)
            counts.add(load_session(f).sizes["roi"])
            assert '"readout": "interaction"' in nwb.notes
    assert len(subjects) == 3 and len(counts) == 3


def test_fit_sessions_warms_the_learning_rate_up(animals, tiny_gpt2):
    """``FitConfig.lr_warmup`` holds for the multi-session trainer too: with a warm-up of a
    billion epochs the first epoch's steps are ~1e-9 of the learning rate and the weights
    stay at their initial values; without warm-up they move."""
    from nwb_llmdecode.models.multi import build_multi_model

    sessions = [_arrays(t.path) for t in animals[:2]]
    cfg = _cfg(tiny_gpt2, epochs=1)
    torch.manual_seed(cfg.seed)  # as fit_sessions does before building its model
    init = build_multi_model(
        cfg,
        n_rois={s.key: s.activity.shape[1] for s in sessions},
        heads={h[0]: h[1] for s in sessions for h in s.heads()},
        session_heads={s.key: [h[0] for h in s.heads()] for s in sessions},
        device=torch.device("cpu"),
    ).state_dict()
    frozen = fit_sessions(sessions, config=cfg.replace(lr_warmup=1e9)).model.state_dict()
    moved = fit_sessions(sessions, config=cfg.replace(lr_warmup=0.0)).model.state_dict()
    assert init.keys() == frozen.keys()
    for name, p in frozen.items():
        assert torch.allclose(init[name], p, atol=1e-6), name
    assert any(not torch.allclose(init[n], p, atol=1e-4) for n, p in moved.items())


def test_fit_sessions_applies_the_embedding_penalties(animals, tiny_gpt2):
    """The embedding penalties reach the multi-session trainer: each session's projection
    is penalised, and the group lasso (``embedding_group_l1``) concentrates it on the
    planted drivers of that session."""
    sessions = [_arrays(t.path) for t in animals[:2]]
    cfg = _cfg(tiny_gpt2, embedding_l2=0.0, embedding_group_l1=0.0)

    def shares(config: FitConfig) -> list[float]:
        model = fit_sessions(sessions, config=config).model
        out = []
        for s, truth in zip(sessions, animals, strict=False):
            norms = model.embeddings[s.key].roi_sq_norms().detach().sqrt()
            out.append(float(norms[truth.driver_rois].sum() / norms.sum()))
        return out

    plain, sparse = shares(cfg), shares(cfg.replace(embedding_group_l1=0.05))
    for p, q in zip(plain, sparse, strict=True):
        assert q > 1.4 * p, (plain, sparse)


def test_fit_sessions_decodes_and_adapt_changes_only_embedding(animals, tiny_gpt2):
    sessions = [_arrays(t.path) for t in animals[:3]]
    res = fit_sessions(sessions, config=_cfg(tiny_gpt2))
    assert set(res.sessions) == {"animal0", "animal1", "animal2"}
    assert list(res.model.heads) == ["tail_angles"]
    for key, r in res.sessions.items():
        r2 = float(np.nanmean(r.metric("r2", "test")))
        assert r2 > 0.5, (key, r2)
    assert res.pooled_metrics("test")["r2"] > 0.6

    before = {n: t.detach().clone() for n, t in res.model.state_dict().items()}
    new = _arrays(animals[3].path)
    ad = adapt_session(res.model, new, config=_cfg(tiny_gpt2, epochs=15, lr=1e-2))
    after = res.model.state_dict()
    for n, t in before.items():
        assert torch.equal(t, after[n]), f"{n} changed during adaptation"
    assert any(n.startswith("embeddings.animal3.") for n in after)
    assert float(np.nanmean(ad.sessions["animal3"].metric("r2", "test"))) > 0.4


def test_unit_and_rate_mismatch_refused(animals):
    a = _arrays(animals[0].path)
    b = _arrays(animals[1].path)
    b.units = ["degrees"] * len(b.units)
    with pytest.raises(DataError, match="one head per behaviour needs one unit") as e:
        fit_sessions([a, b], config=FitConfig(backbone="minilm", seq_len=10))
    assert "\n" not in str(e.value)
    c = _arrays(animals[1].path)
    c.frame_rate = 4.0
    with pytest.raises(DataError, match="different imaging rates"):
        fit_sessions([a, c], config=FitConfig(backbone="minilm", seq_len=10))


def test_cli_fit_many_and_adapt(animals, tiny_gpt2, tmp_path, capsys):
    from nwb_llmdecode.io.results import read_results
    from nwb_llmdecode.salience import salience_order

    paths = [str(t.path) for t in animals[:3]]
    common = [
        "--backbone",
        str(tiny_gpt2),
        "--seq-len",
        "10",
        "--epochs",
        "12",
        "--salience",
        "saliency",
    ]
    rc = main(["fit", *paths, "--out", str(tmp_path / "out"), *common])
    assert rc == 0
    files = sorted((tmp_path / "out").glob("*_desc-llmdecode.nwb"))
    assert len(files) == 3
    ckpt = tmp_path / "out" / "multisession_checkpoint"
    assert (ckpt / "multi.json").is_file() and (ckpt / "weights.pt").is_file()
    for f, truth in zip(files, animals[:3], strict=True):
        res = read_results(f)
        assert res.sizes["roi"] == truth.n_rois
        assert np.isfinite(res["predictions"].values).any()
    # salience on the easiest session finds planted drivers
    res0 = read_results(files[0])
    import json

    assert len(json.loads(res0.attrs["run"]["sessions"])) == 3
    values = np.asarray(res0["salience"].values)
    top = set(salience_order(values)[: 2 * len(animals[0].driver_rois)].tolist())
    assert len(top & set(animals[0].driver_rois.tolist())) >= 2

    out4 = tmp_path / "a3.nwb"
    rc = main(["adapt", str(ckpt), str(animals[3].path), "--out", str(out4), "--epochs", "10"])
    assert rc == 0 and out4.is_file()
    assert read_results(out4) is not None


def test_cli_unit_mismatch_exit2(animals, tmp_path, capsys):
    from nwb_llmdecode.synthetic import make_session

    odd = tmp_path / "odd.nwb"
    make_session(odd, frames=300, rois=20, n_drivers=3, planes=1, seed=9)
    import h5py

    with h5py.File(odd, "r+") as f:
        f["acquisition/tail_angles/data"].attrs["unit"] = "degrees"
    rc = main(
        [
            "fit",
            str(animals[0].path),
            str(odd),
            "--backbone",
            "minilm",
            "--out",
            str(tmp_path / "o"),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and "unit" in err, err


def test_compare_pooled_vs_single(animals, tiny_gpt2, tmp_path, capsys):
    import pandas as pd

    paths = [str(t.path) for t in animals[:3]]
    rep = tmp_path / "rep"
    rc = main(
        [
            "compare",
            *paths,
            "--protocol",
            "pooled-vs-single",
            "--seeds",
            "2",
            "--models",
            str(tiny_gpt2),
            "--seq-len",
            "10",
            "--epochs",
            "6",
            "--report",
            str(rep),
        ]
    )
    assert rc == 0
    res = pd.read_csv(rep / "results.csv")
    assert len(res) == 3 * 2 * 2
    assert set(res["protocol"]) == {"pooled", "single"}
    assert res["test_r2_mean"].notna().all()
    st = pd.read_csv(rep / "stats.csv")
    assert list(st["session"])[-1] == "all" and int(st["n"].iloc[-1]) == 6
    assert st["p"].between(0, 1).all() and st["effect_size"].between(-1, 1).all()
    assert (rep / "report.md").is_file()


def test_compare_grid_refuses_several_sources(animals, capsys):
    rc = main(["compare", str(animals[0].path), str(animals[1].path)])
    assert rc == 2
    assert "pooled-vs-single" in capsys.readouterr().err
