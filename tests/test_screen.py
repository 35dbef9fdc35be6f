"""The ROI screen (engine/screen.py): which ROIs the default decoder's trained parts see.

The lever's effect on decoding (default against ``screen=False``) is checked on the
acceptance sessions of tests/test_lab_decoders.py; here: the restricted input projection,
the screen's choice on a session with a few drivers among many ROIs, and how the choice is
wired into the decoder, its record and its checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from nwb_llmdecode import load_session
from nwb_llmdecode.config import FitConfig
from nwb_llmdecode.engine import fit_arrays, load_checkpoint, predict_arrays, save_checkpoint
from nwb_llmdecode.engine.result import Normalization
from nwb_llmdecode.engine.screen import candidate_counts, screen_rois
from nwb_llmdecode.errors import ConfigError
from nwb_llmdecode.models.embeddings import (
    LinearEmbedding,
    PositionalEmbedding,
    TemporalEmbedding,
)
from nwb_llmdecode.synthetic import make_session
from nwb_llmdecode.windows import split_blocks
from tiny_models import bert_dir

EMBEDDINGS = {
    "linear": lambda: LinearEmbedding(10, 6),
    "temporal": lambda: TemporalEmbedding(10, 6, kernel=3),
    "positional": lambda: PositionalEmbedding(10, 6, max_len=5),
}


@pytest.mark.parametrize("kind", list(EMBEDDINGS))
def test_a_restricted_projection_sees_only_its_rois_and_keeps_them_in_its_state(kind: str):
    torch.manual_seed(0)
    emb = EMBEDDINGS[kind]()
    before = [w.detach().clone() for w in emb.roi_weights()]
    emb.restrict([7, 2])
    keep = torch.tensor([2, 7])
    other = torch.tensor([i for i in range(10) if i not in (2, 7)])
    for w0, w in zip(before, emb.roi_weights(), strict=True):
        assert torch.count_nonzero(w[:, other]) == 0
        # rescaled to a 2-input projection's initial scale
        torch.testing.assert_close(w[:, keep], w0[:, keep] * np.sqrt(10 / 2))
    assert emb.roi_mask.tolist() == [1.0 if i in (2, 7) else 0.0 for i in range(10)]
    assert torch.count_nonzero(emb.roi_sq_norms()[other]) == 0
    # the other ROIs change nothing, and get no gradient, input or weight
    x = torch.randn(3, 5, 10, requires_grad=True)
    y = x.detach().clone()
    y[..., other] = torch.randn(3, 5, len(other)) * 100
    assert torch.equal(emb(x), emb(y))
    emb(x).square().sum().backward()
    assert torch.count_nonzero(x.grad[..., other]) == 0
    assert torch.count_nonzero(x.grad[..., keep]) > 0
    for w in emb.roi_weights():
        assert torch.count_nonzero(w.grad[:, other]) == 0
    # the mask is part of the state: a freshly built projection takes it on loading
    fresh = EMBEDDINGS[kind]()
    assert fresh.roi_mask is None
    fresh.load_state_dict(emb.state_dict())
    assert torch.equal(fresh.roi_mask, emb.roi_mask)
    assert torch.equal(fresh(y), emb(y))
    # and a state without a mask (every ROI, as before the screen) still loads
    plain = EMBEDDINGS[kind]()
    plain.load_state_dict(EMBEDDINGS[kind]().state_dict())
    assert plain.roi_mask is None


def test_restrict_refuses_rois_the_projection_does_not_have():
    with pytest.raises(ConfigError, match="cannot restrict a projection of 4 ROIs"):
        LinearEmbedding(4, 3).restrict([1, 4])
    with pytest.raises(ConfigError, match="cannot restrict"):
        LinearEmbedding(4, 3).restrict([])


def test_candidate_counts_and_their_option():
    assert candidate_counts(40) == [8, 16, 32]
    assert candidate_counts(5000)[-1] == 1024
    assert candidate_counts(100, [50, 10, 50, 200]) == [10, 50]
    assert FitConfig(screen_rois=[16, 4]).screen_rois == (16, 4)
    for bad in ([], [0], ["8"], 8, [True]):
        with pytest.raises(ConfigError, match="screen_rois"):
            FitConfig(screen_rois=bad)


@pytest.fixture(scope="module")
def many_rois(tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """600 frames x 120 ROIs, 4 planted drivers among ROIs that share population factors."""
    path = tmp_path_factory.mktemp("screen") / "s.nwb"
    truth = make_session(
        path,
        frames=600,
        rois=120,
        planes=2,
        n_drivers=4,
        readout="bouts",
        population=1.0,
        spread_drivers=True,
        seed=21,
        summary_images=False,
        fluorescence=False,
    )
    ds = load_session(path)
    return ds["activity"].values, ds["behavior"].values, truth.driver_rois.tolist()


def test_the_screen_keeps_few_rois_with_the_drivers_among_them(many_rois):
    activity, behavior, drivers = many_rois
    config = FitConfig(seq_len=10)
    blocks = split_blocks(len(activity), seq_len=config.seq_len, fractions=config.split)
    norm = Normalization.from_block(activity, behavior, blocks[0])
    zt = torch.from_numpy(norm.activity(activity))
    yn = norm.behavior(behavior)
    screen = screen_rois(zt, yn, blocks, config, torch.device("cpu"))
    record = screen.record
    losses = record["screen_val_losses"]
    assert list(losses) == ["all", "8", "16", "32", "64"]
    # the count with the lowest validation loss, here fewer than all 120 ROIs
    assert record["screen_n_rois"] < 120
    assert losses[str(record["screen_n_rois"])] == min(losses.values())
    assert screen.rois is not None and record["screen_rois"] == screen.rois.tolist()
    assert set(drivers) <= set(screen.rois.tolist())
    # the chosen LSTM is the one fitted on exactly those ROIs
    mask = screen.lstm.embedding.roi_mask
    assert mask is not None and np.flatnonzero(mask.numpy()).tolist() == record["screen_rois"]


def test_the_default_decoder_is_trained_on_the_screened_rois_and_checkpoints_them(
    many_rois, tmp_path: Path
):
    activity, behavior, drivers = many_rois
    config = FitConfig(backbone=str(bert_dir(tmp_path / "bert")), seq_len=10, precision="fp32")
    res = fit_arrays(activity, behavior, config=config)
    chosen = res.extra["fit"]
    rois = chosen["screen_rois"]
    assert rois is not None and set(drivers) <= set(rois)
    model = res.model
    # the transformer and the LSTM part see the screened ROIs, ridge sees them all
    for part in (model.embedding, model.lstm.embedding):
        assert np.flatnonzero(part.roi_mask.numpy()).tolist() == rois
    assert model.base.weights.shape[1] == activity.shape[1]
    x = torch.randn(2, config.seq_len, activity.shape[1])
    y = x.clone()
    y[..., [i for i in range(activity.shape[1]) if i not in rois]] = 3.0
    with torch.no_grad():
        base = model.base
        model.base = None
        assert torch.equal(model(x), model(y))
        model.base = base
    # the choice travels with the checkpoint
    save_checkpoint(res, tmp_path / "ckpt")
    loaded = load_checkpoint(tmp_path / "ckpt")
    for part in (loaded.model.embedding, loaded.model.lstm.embedding):
        assert np.flatnonzero(part.roi_mask.numpy()).tolist() == rois
    np.testing.assert_allclose(
        predict_arrays(loaded, activity), predict_arrays(res, activity), rtol=1e-5, atol=1e-6
    )
    # off, the decoder sees every ROI and nothing is recorded
    off = fit_arrays(activity, behavior, config=config.replace(screen=False, epochs=2))
    assert off.model.embedding.roi_mask is None and "screen_rois" not in off.extra["fit"]
