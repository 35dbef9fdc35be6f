"""Backbones by name, train modes, input embeddings, the decoder and the baselines."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from nwb_llmdecode.config import FitConfig
from nwb_llmdecode.errors import BackboneError, ConfigError, MissingDependencyError
from nwb_llmdecode.models import (
    WORKING_NAMES,
    Decoder,
    LinearEmbedding,
    LSTMDecoder,
    PositionalEmbedding,
    ReservoirDecoder,
    RidgeDecoder,
    TemporalEmbedding,
    accepts_inputs_embeds,
    apply_train_mode,
    build_embedding,
    build_model,
    lag_candidates,
    load_backbone,
    lora_target_modules,
    resolve_backbone,
)
from nwb_llmdecode.models.backbones import _quantization_config
from nwb_llmdecode.windows import Block

# ----------------------------------------------------------------------------------------
# fixtures: tiny models saved to disk, so the hub-id code path runs offline
# ----------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory) -> Path:
    from transformers import GPT2Config, GPT2Model

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("tiny-gpt2")
    cfg = GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=64, vocab_size=50)
    GPT2Model(cfg).save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def tiny_vit_dir(tmp_path_factory) -> Path:
    """A model whose forward takes pixel_values, not inputs_embeds."""
    from transformers import ViTConfig, ViTModel

    d = tmp_path_factory.mktemp("tiny-vit")
    cfg = ViTConfig(
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        image_size=8,
        patch_size=4,
    )
    ViTModel(cfg).save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def minilm():
    return load_backbone("minilm")


# ----------------------------------------------------------------------------------------
# names and loading
# ----------------------------------------------------------------------------------------


def test_packaged_backbones_resolve_to_installed_files():
    src, kw = resolve_backbone("minilm")
    assert (Path(src) / "config.json").is_file() and kw == {}
    src, kw = resolve_backbone("smollm2")
    assert (Path(src) / kw["gguf_file"]).is_file()


def test_minilm_is_a_bidirectional_bert_with_sdpa(minilm):
    assert minilm.model_type == "bert"
    assert minilm.hidden_size == 384
    assert not minilm.causal
    assert minilm.model.config._attn_implementation == "sdpa"
    assert 20e6 < minilm.n_parameters < 25e6
    assert accepts_inputs_embeds(minilm.model)
    assert lora_target_modules(minilm.model, "bert") == ["query", "value"]


def test_random_init_has_same_architecture_and_fresh_weights(minilm):
    torch.manual_seed(0)
    rnd = load_backbone("minilm", init="random")
    assert rnd.init == "random" and rnd.hidden_size == minilm.hidden_size
    a = dict(minilm.model.named_parameters())
    b = dict(rnd.model.named_parameters())
    assert a.keys() == b.keys()
    name = "encoder.layer.0.attention.self.query.weight"
    assert a[name].shape == b[name].shape
    assert not torch.allclose(a[name], b[name])


def test_local_directory_loads_like_a_hub_id(tiny_gpt2_dir):
    bb = load_backbone(str(tiny_gpt2_dir))
    assert bb.model_type == "gpt2" and bb.causal and bb.hidden_size == 32
    assert lora_target_modules(bb.model, "gpt2") == ["c_attn"]
    rnd = load_backbone(str(tiny_gpt2_dir), init="random")
    assert rnd.hidden_size == 32


def test_decoder_models_are_causal_and_encoders_see_the_whole_window(tiny_gpt2_dir, minilm):
    torch.manual_seed(0)
    for bb, causal in ((load_backbone(str(tiny_gpt2_dir)), True), (minilm, False)):
        dec = Decoder(LinearEmbedding(6, bb.hidden_size), bb, 2).eval()
        x = torch.randn(2, 10, 6)
        x2 = x.clone()
        x2[:, 7:] += 5.0  # change only the last frames
        with torch.no_grad():
            y, y2 = dec(x), dec(x2)
        assert y.shape == (2, 10, 2) and y.dtype == torch.float32
        same_past = torch.allclose(y[:, :7], y2[:, :7], atol=1e-5)
        assert same_past == causal
        assert not torch.allclose(y[:, 7:], y2[:, 7:])


def test_unknown_backbone_is_one_line_listing_working_names(tmp_path):
    with pytest.raises(BackboneError) as e:
        load_backbone("not a backbone")
    msg = str(e.value)
    assert "\n" not in msg and "'not a backbone'" in msg
    for name in ("minilm", "smollm2", "ridge", "lstm", "reservoir", "HuggingFace model id"):
        assert name in msg
    assert WORKING_NAMES in msg
    with pytest.raises(BackboneError, match="no such directory"):
        load_backbone(str(tmp_path / "missing" / "model"))
    with pytest.raises(BackboneError, match=r"no config\.json"):
        load_backbone(str(tmp_path))
    with pytest.raises(BackboneError, match="is a baseline"):
        resolve_backbone("ridge")


def test_backbone_without_inputs_embeds_is_refused(tiny_vit_dir):
    with pytest.raises(BackboneError, match="does not accept inputs_embeds"):
        load_backbone(str(tiny_vit_dir))


_CUSTOM_CONFIG = """
from transformers import PretrainedConfig

class TinyCustomConfig(PretrainedConfig):
    model_type = "tiny-custom-llmdecode"

    def __init__(self, hidden_size=8, **kw):
        self.hidden_size = hidden_size
        super().__init__(**kw)
"""

_CUSTOM_MODEL = """
import torch
from transformers import PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput
from .configuration_tiny import TinyCustomConfig

class TinyCustomModel(PreTrainedModel):
    config_class = TinyCustomConfig

    def __init__(self, config):
        super().__init__(config)
        self.lin = torch.nn.Linear(config.hidden_size, config.hidden_size)
        self.post_init()

    def forward(self, inputs_embeds=None, attention_mask=None):
        return BaseModelOutput(last_hidden_state=self.lin(inputs_embeds))
"""


def test_remote_code_runs_only_when_trusted(tmp_path):
    d = tmp_path / "custom"
    d.mkdir()
    (d / "configuration_tiny.py").write_text(textwrap.dedent(_CUSTOM_CONFIG))
    (d / "modeling_tiny.py").write_text(textwrap.dedent(_CUSTOM_MODEL))
    (d / "config.json").write_text(
        json.dumps(
            {
                "model_type": "tiny-custom-llmdecode",
                "hidden_size": 8,
                "auto_map": {
                    "AutoConfig": "configuration_tiny.TinyCustomConfig",
                    "AutoModel": "modeling_tiny.TinyCustomModel",
                },
            }
        )
    )
    with pytest.raises(BackboneError, match="trust-remote-code"):
        load_backbone(str(d), init="random")
    bb = load_backbone(str(d), init="random", trust_remote_code=True)
    assert type(bb.model).__name__ == "TinyCustomModel" and bb.hidden_size == 8


def test_quantisation_needs_bitsandbytes_and_cuda():
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        with pytest.raises(MissingDependencyError, match="pip install"):
            _quantization_config("4bit")
    with pytest.raises(ConfigError, match="CUDA"):
        FitConfig(quantize="8bit", device="cpu", train_mode="lora")
    with pytest.raises(ConfigError, match="'full'"):
        FitConfig(quantize="4bit", train_mode="full")


# ----------------------------------------------------------------------------------------
# train modes
# ----------------------------------------------------------------------------------------


def _grads_after_backward(dec: Decoder) -> tuple[set[str], set[str]]:
    x = torch.randn(2, 6, dec.n_rois)
    dec(x).pow(2).mean().backward()
    with_grad = {n for n, p in dec.named_parameters() if p.grad is not None}
    trainable = {n for n, p in dec.named_parameters() if p.requires_grad}
    return with_grad, trainable


def test_frozen_backbone_passes_gradients_to_the_embedding():
    torch.manual_seed(0)
    bb = load_backbone("minilm")
    apply_train_mode(bb, "frozen")
    dec = Decoder(LinearEmbedding(5, bb.hidden_size), bb, 2, train_mode="frozen")
    with_grad, trainable = _grads_after_backward(dec)
    assert not any(n.startswith("backbone.") for n in trainable)
    assert {"embedding.proj.weight", "head.weight"} <= with_grad
    assert float(dec.embedding.proj.weight.grad.abs().sum()) > 0
    assert not any(n.startswith("backbone.") for n in with_grad)


def test_lora_trains_only_adapters_and_starts_as_the_frozen_model():
    torch.manual_seed(0)
    bb = load_backbone("minilm")
    dec_ref = Decoder(LinearEmbedding(5, bb.hidden_size), bb, 2).eval()
    x = torch.randn(2, 6, 5)
    with torch.no_grad():
        before = dec_ref(x)
    apply_train_mode(bb, "lora", lora_r=4, lora_alpha=8)
    dec = dec_ref  # same modules, adapters injected in place
    with torch.no_grad():
        after = dec(x)
    torch.testing.assert_close(before, after)  # LoRA B starts at zero
    dec.train()
    with_grad, trainable = _grads_after_backward(dec)
    backbone_trainable = {n for n in trainable if n.startswith("backbone.")}
    assert backbone_trainable and all("lora_" in n for n in backbone_trainable)
    assert any(".query." in n for n in backbone_trainable)
    assert any(".value." in n for n in backbone_trainable)
    assert not any(".key." in n for n in backbone_trainable)
    assert backbone_trainable <= with_grad
    state = dec.checkpoint_state_dict()
    assert any("lora_" in k for k in state)
    assert not any(k.startswith("backbone.") and "lora_" not in k for k in state)


def test_full_mode_trains_every_backbone_weight(tiny_gpt2_dir):
    bb = load_backbone(str(tiny_gpt2_dir))
    apply_train_mode(bb, "full")
    dec = Decoder(LinearEmbedding(5, bb.hidden_size), bb, 1, train_mode="full")
    _, trainable = _grads_after_backward(dec)
    assert {n for n, _ in dec.named_parameters()} == trainable
    assert any(k.startswith("backbone.") for k in dec.checkpoint_state_dict())


# ----------------------------------------------------------------------------------------
# embeddings and build_model
# ----------------------------------------------------------------------------------------


def test_embeddings():
    torch.manual_seed(0)
    lin = build_embedding("linear", n_rois=4, hidden_size=6, seq_len=5)
    pos = build_embedding("positional", n_rois=4, hidden_size=6, seq_len=5)
    assert type(lin) is LinearEmbedding and isinstance(pos, PositionalEmbedding)
    x = torch.zeros(1, 5, 4)
    out = pos(x)
    torch.testing.assert_close(out[0] - pos.proj.bias, pos.position)
    assert not torch.allclose(out[0, 0], out[0, 1])  # positions differ
    with pytest.raises(ConfigError, match="longer than"):
        pos(torch.zeros(1, 6, 4))
    with pytest.raises(ConfigError, match="'conv'"):
        build_embedding("conv", n_rois=4, hidden_size=6, seq_len=5)


def test_temporal_embedding_is_a_causal_convolution_over_frames():
    torch.manual_seed(0)
    emb = build_embedding("temporal", n_rois=4, hidden_size=6, seq_len=8, kernel=3)
    assert isinstance(emb, TemporalEmbedding) and len(emb.roi_weights()) == 3
    x = torch.randn(2, 8, 4)
    out = emb(x)
    # e(t) = b + sum_l W_l x(t - l), frames before the window counted as zero
    w = emb.roi_weights()
    for t in range(8):
        want = emb.proj.bias + sum(x[:, t - lag] @ w[lag].T for lag in range(3) if t - lag >= 0)
        torch.testing.assert_close(out[:, t], want)
    # causal: changing a frame changes only its own token and the next two
    x2 = x.clone()
    x2[:, 4] += 1.0
    changed = (emb(x2) - out).abs().sum(dim=(0, 2)) > 0
    assert changed.tolist() == [False] * 4 + [True] * 3 + [False]
    # kernel 1 is the linear embedding
    one = build_embedding("temporal", n_rois=4, hidden_size=6, seq_len=8, kernel=1)
    assert len(one.roi_weights()) == 1
    with pytest.raises(ConfigError, match="embedding_kernel"):
        FitConfig(embedding_kernel=0)


def test_default_model_uses_the_temporal_embedding_and_checkpoints_it():
    cfg = FitConfig(train_mode="frozen", embedding_kernel=4)
    assert FitConfig().embedding == "temporal"
    dec = build_model(cfg, n_rois=5, n_channels=2)
    assert isinstance(dec.embedding, TemporalEmbedding) and len(dec.embedding.lags) == 3
    lag_weights = {"embedding.proj.weight", "embedding.lags.0.weight", "embedding.lags.2.weight"}
    trained = {n for n, p in dec.named_parameters() if p.requires_grad}
    assert lag_weights <= trained
    # the frozen backbone is reloaded from its source; every lag's weights are checkpointed
    state = dec.checkpoint_state_dict()
    assert lag_weights <= set(state) and not any(k.startswith("backbone.") for k in state)


def test_build_model_dispatches_on_backbone_name():
    assert isinstance(
        build_model(FitConfig(backbone="ridge"), n_rois=3, n_channels=2), RidgeDecoder
    )
    assert isinstance(
        build_model(
            FitConfig(backbone="reservoir", reservoir={"size": 10}), n_rois=3, n_channels=2
        ),
        ReservoirDecoder,
    )
    assert isinstance(
        build_model(FitConfig(backbone="lstm", lstm={"hidden": 4}), n_rois=3, n_channels=2),
        LSTMDecoder,
    )
    calls = []
    dec = build_model(
        FitConfig(embedding="positional", train_mode="frozen"),
        n_rois=3,
        n_channels=2,
        progress=lambda *a: calls.append(a),
    )
    assert isinstance(dec, Decoder) and isinstance(dec.embedding, PositionalEmbedding)
    assert calls == [("load backbone", 0, 1), ("load backbone", 1, 1)]


# ----------------------------------------------------------------------------------------
# baselines
# ----------------------------------------------------------------------------------------


def _lagged_data(n_frames=400, n_rois=30, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n_frames, n_rois)).astype(np.float32)
    y = np.zeros((n_frames, 2), np.float32)
    y[2:, 0] = z[:-2, 3]  # ROI 3, two frames ago
    y[:, 1] = z[:, 7] - z[:, 11]
    y += 0.05 * rng.standard_normal(y.shape).astype(np.float32)
    blocks = [Block("train", 0, 260), Block("validation", 270, 320), Block("test", 330, 400)]
    return z, y, blocks


def test_ridge_recovers_planted_lagged_weights():
    z, y, blocks = _lagged_data()
    ridge = RidgeDecoder(30, 2, seq_len=6, alphas=(0.01, 0.1, 1.0, 10.0))
    info = ridge.fit(z, y, blocks)
    assert info["solver"] == "primal" and info["lags"] >= 3
    w = ridge.weights
    assert w is not None
    assert abs(w[2, 3, 0] - 1.0) < 0.1 and abs(w[0, 7, 1] - 1.0) < 0.1
    assert abs(w[0, 11, 1] + 1.0) < 0.1
    pred = ridge.predict(z, blocks[2:])
    t = blocks[2]
    r2 = 1 - np.sum((pred[t.start : t.stop] - y[t.start : t.stop]) ** 2) / np.sum(
        (y[t.start : t.stop] - y[t.start : t.stop].mean(0)) ** 2
    )
    assert r2 > 0.95
    assert np.isnan(pred[: t.start]).all()
    assert lag_candidates(20) == [1, 2, 3, 4, 6, 8, 12, 16, 20]


def test_ridge_dual_solver_equals_primal():
    z, y, blocks = _lagged_data(n_frames=400, n_rois=30)
    primal = RidgeDecoder(30, 2, seq_len=4, lags=4, alphas=(3.0,))
    primal.fit(z, y, blocks)
    # same problem with more features than training frames goes through the Gram matrix
    z_wide = np.concatenate([z, np.zeros((400, 60), np.float32)], axis=1)
    dual = RidgeDecoder(90, 2, seq_len=4, lags=4, alphas=(3.0,))
    assert dual.fit(z_wide, y, blocks)["solver"] == "dual"
    np.testing.assert_allclose(dual.weights[:, :30], primal.weights, atol=1e-4)
    np.testing.assert_allclose(dual.bias, primal.bias, atol=1e-4)
    # state dict round trip
    other = RidgeDecoder(90, 2, seq_len=4)
    other.load_state_dict(dual.state_dict())
    np.testing.assert_array_equal(other.predict(z_wide, blocks), dual.predict(z_wide, blocks))


def test_reservoir_is_an_echo_state_network():
    z, y, blocks = _lagged_data()
    res = ReservoirDecoder(30, 2, size=80, spectral_radius=0.8, seed=1)
    assert np.max(np.abs(np.linalg.eigvals(res.w_res.astype(np.float64)))) == pytest.approx(
        0.8, rel=1e-4
    )
    # fading memory: two different histories converge once the input is the same
    zz = np.zeros((200, 30), np.float32)
    h1 = res.states(np.concatenate([z[:20], zz]))
    h2 = res.states(np.concatenate([-z[:20], zz]))
    assert np.abs(h1[-1] - h2[-1]).max() < 1e-6 < np.abs(h1[20] - h2[20]).max()
    info = res.fit(z, y, blocks)
    assert info["alpha"] in res.alphas
    pred = res.predict(z, blocks)
    t = blocks[2]
    assert np.corrcoef(pred[t.start : t.stop, 1], y[t.start : t.stop, 1])[0, 1] > 0.5
    other = ReservoirDecoder(30, 2, size=80, seed=99)
    other.load_state_dict(res.state_dict())
    np.testing.assert_array_equal(other.predict(z, blocks), pred)


def test_lstm_is_causal_seq_to_seq():
    torch.manual_seed(0)
    m = LSTMDecoder(6, 2, hidden_size=8).eval()
    x = torch.randn(3, 10, 6)
    x2 = x.clone()
    x2[:, 6:] = 0
    with torch.no_grad():
        y, y2 = m(x), m(x2)
    assert y.shape == (3, 10, 2)
    torch.testing.assert_close(y[:, :6], y2[:, :6])
