"""textdvae.modeling.Dropout (masks from 16-bit random integers) against the distribution it must draw, the GRU
decoder's layer-by-layer path that applies it between layers, against nn.GRU, and the Transformer's attention, which
applies it to the attention probabilities in training on CPU, against scaled_dot_product_attention."""

import math

import pytest
import torch

from textdvae.modeling import Dropout, GRUDecoder, SelfAttention, TextDVAEConfig

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


def _attention(dropout: float) -> SelfAttention:
    torch.manual_seed(0)
    return SelfAttention(TextDVAEConfig(vocab_size=10, hidden_dim=32, num_heads=4, dropout=dropout)).train()


@pytest.mark.parametrize("causal", [False, True])
def test_attention_with_its_dropout_off_is_scaled_dot_product_attention(causal):
    ours, sdpa = _attention(0.3), _attention(0.0)  # the same weights; sdpa runs torch's kernel without dropout
    ours.attn_drop.eval()  # the mask off, the explicit path on (training with p > 0 on CPU)
    x = torch.randn(3, 7, 32)
    key_mask = None if causal else torch.arange(7) < torch.tensor([[7], [4], [1]])  # (3, 7) True = a real token
    torch.testing.assert_close(ours(x, key_mask, causal), sdpa(x, key_mask, causal), atol=1e-6, rtol=1e-5)


def test_attention_dropout_drops_probabilities_at_rate_p_and_the_output_uses_them():
    attn, seen = _attention(0.3), {}
    attn.attn_drop.register_forward_hook(lambda module, args, out: seen.update(probs=args[0], dropped=out))
    x = torch.randn(64, 24, 32)
    y = attn(x, None, True)
    probs, dropped = seen["probs"], seen["dropped"]  # (64, 4, 24, 24)
    torch.testing.assert_close(probs.sum(-1), torch.ones(64, 4, 24))  # rows of a softmax
    assert torch.all(probs.triu(diagonal=1) == 0)  # causal: no position attends to a later one
    live = probs > 0
    rate = (dropped[live] == 0).float().mean().item()
    assert abs(rate - 0.3) < 5 * math.sqrt(0.3 * 0.7 / live.sum().item())
    kept = dropped != 0
    torch.testing.assert_close(dropped[kept], probs[kept] * 65536 / (65536 - round(0.3 * 65536)))
    v = attn.qkv(x)[..., 64:].view(64, 24, 4, 8).transpose(1, 2)  # (64, 4, 24, 8)
    torch.testing.assert_close(y, attn.proj((dropped @ v).transpose(1, 2).reshape(64, 24, 32)))
