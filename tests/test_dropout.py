"""textdvae.modeling.Dropout (masks from 16-bit random integers) against the distribution it must draw, and the GRU
decoder's layer-by-layer path that applies it between layers, against nn.GRU."""

import math

import pytest
import torch

from textdvae.modeling import Dropout, GRUDecoder, TextDVAEConfig

N = 1 << 20


def test_drop_rate_scale_and_unbiasedness():
    torch.manual_seed(0)
    drop = Dropout(0.3)
    t = round(0.3 * 65536)  # 19,661: the rate is p rounded to a multiple of 2^-16
    out = drop(torch.ones(N))
    kept = out != 0
    rate = 1 - kept.float().mean().item()
    assert abs(rate - t / 65536) < 5 * math.sqrt(0.3 * 0.7 / N)
    assert torch.all(out[kept] == 65536 / (65536 - t))  # inverted dropout: kept values scaled by 1 / (1 - rate)
    assert abs(out.mean().item() - 1) < 5 * math.sqrt(0.3 / 0.7 / N)  # E[out] = x


def test_every_lane_of_the_random_words_is_uniform_and_neighbours_are_independent():
    """Each int64 gives four 16-bit integers: a generator that left a word's top bit at zero (random_() without the
    full range) would never drop the elements of one lane at p < 0.5."""
    torch.manual_seed(1)
    keep = (Dropout(0.3)(torch.ones(N)) != 0).float().view(-1, 4)  # (N / 4, 4): the four lanes of each word
    sigma = math.sqrt(0.3 * 0.7 / (N / 4))
    assert torch.all((1 - keep.mean(0) - 0.3).abs() < 5 * sigma), keep.mean(0)
    flat = keep.flatten() - keep.mean()
    corr = (flat[1:] * flat[:-1]).mean() / flat.var()
    assert abs(corr.item()) < 5 / math.sqrt(N)


def test_identity_when_off_gradient_and_seeding():
    x = torch.randn(64, 33, requires_grad=True)
    assert Dropout(0.0)(x) is x
    drop = Dropout(0.5)
    assert drop.eval()(x) is x
    drop.train()
    torch.manual_seed(3)
    out = drop(x)
    torch.manual_seed(3)
    assert torch.equal(out, drop(x))  # the global generator, as torch's dropout
    out.backward(torch.ones_like(out))
    assert torch.equal(x.grad, (out != 0).float() * 2.0)  # d out / d x = mask / (1 - p)
    with pytest.raises(ValueError, match="dropout probability must be in \\[0, 1\\), got 1.0"):
        Dropout(1.0)


def test_bf16_keeps_its_dtype_and_scales_in_fp32():
    torch.manual_seed(0)
    x = torch.randn(4096, dtype=torch.bfloat16)
    out = Dropout(0.3)(x)
    kept = out != 0
    assert out.dtype == torch.bfloat16
    scale = 65536 / (65536 - round(0.3 * 65536))
    assert torch.equal(out[kept], (x[kept].float() * scale).bfloat16())  # not x times a bf16-rounded scale


@pytest.mark.parametrize("with_state", [True, False])
def test_gru_decoder_runs_its_layers_one_by_one_as_nn_gru_does(with_state):
    """In training the decoder runs layer by layer to put its own dropout between them; with that dropout made the
    identity it is nn.GRU exactly (outputs and final states of every layer)."""
    torch.manual_seed(0)
    config = TextDVAEConfig(vocab_size=40, embed_dim=12, hidden_dim=16, decoder_layers=3, dropout=0.3)
    dec = GRUDecoder(config, cond_size=2).train()
    emb = torch.randn(5, 7, 12)
    state = dec.start(torch.randn(5, 2, 16)) if with_state else {"h": None, "in": None}
    dec.between.forward = lambda x: x  # the layer-by-layer path, with nothing dropped between layers
    out, new = dec(emb, state)
    ref_out, ref_h = dec.rnn(emb, state["h"])
    assert torch.allclose(out, ref_out, atol=1e-6) and torch.allclose(new["h"], ref_h, atol=1e-6)
    del dec.between.forward  # the real dropout between layers changes the top layer's output
    assert not torch.allclose(dec(emb, state)[0], ref_out, atol=1e-3)
