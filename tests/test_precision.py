"""train.mixed_precision: bf16 on CPU: the matrix products (and the GRU) run in bf16 under autocast while the loss
terms, the KL, the softmax normalisers, the master weights and the optimizer state stay fp32, and evaluation is
exact fp32.

The adaptive softmax's target log-probabilities against torch's own module (same values in fp32, fp32 under
autocast); a forward under autocast against the fp32 one; a tiny bf16 training run whose weights and optimizer
state are fp32, which learns, and whose logged validation equals an fp32 evaluation of the same weights.
"""

import json

import pytest
import torch
from torch import nn

from textdvae import TextDVAE, TextDVAEConfig
from textdvae import recipe as recipe_lib
from textdvae.evaluation import elbo_pass
from textdvae.modeling import adaptive_target_log_probs
from textdvae import training
from textdvae.training import Trainer, cpu_lacks_bf16

from conftest import ROOT, TINY, TINY_MODEL

RECIPE = ROOT / "recipes" / "quickstart.yaml"


def test_adaptive_target_log_probs_match_torch_and_stay_fp32_under_autocast():
    torch.manual_seed(0)
    adaptive = nn.AdaptiveLogSoftmaxWithLoss(16, 50, [10, 30], div_value=2.0)
    h = torch.randn(200, 16)
    targets = torch.randint(0, 50, (200,))
    targets[:3] = torch.tensor([0, 10, 49])  # the shortlist and both clusters, at their edges
    ours = adaptive_target_log_probs(adaptive, h, targets)
    assert torch.equal(ours, adaptive(h, targets).output)  # the same operations, the same bits
    full = adaptive.log_prob(h)  # (200, 50): every word, normalised
    torch.testing.assert_close(ours, full.gather(1, targets[:, None]).squeeze(1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = adaptive_target_log_probs(adaptive, h, targets)
        assert adaptive.head(h).dtype == torch.bfloat16  # the projections did run in bf16
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, ours, atol=0.05, rtol=0.02)  # bf16 inputs: 8 bits of mantissa


@pytest.mark.parametrize("kw", [dict(), dict(prior="autoregressive", adaptive_softmax_cutoffs=[8, 16]),
                                dict(latent="gaussian", latent_dim=4)])
def test_a_forward_under_bf16_autocast_keeps_its_loss_terms_in_fp32(kw):
    torch.manual_seed(0)
    model = TextDVAE(TextDVAEConfig(**{**TINY_MODEL, "vocab_size": 40, **kw})).train()
    ids = torch.randint(3, 40, (8, 12))
    mask = torch.ones_like(ids)
    outs = []
    for enabled in (False, True):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
            outs.append(model(ids, mask, generator=torch.Generator().manual_seed(1)))
    fp32, bf16 = outs
    for name in ("loss", "rec", "kl", "kl_per_latent"):
        assert getattr(bf16, name).dtype == torch.float32, name
    assert bf16.rec.mean().item() == pytest.approx(fp32.rec.mean().item(), rel=0.01)
    assert bf16.kl.mean().item() == pytest.approx(fp32.kl.mean().item(), rel=0.05, abs=0.02)


def test_a_bf16_run_learns_with_fp32_weights_and_evaluates_in_fp32(tmp_path, one_thread, monkeypatch, caplog):
    out = tmp_path / "bf16"
    monkeypatch.setattr(training, "cpu_lacks_bf16", lambda: True)  # as on a CPU without AVX-512 BF16 or AMX
    trainer = Trainer(recipe_lib.load(RECIPE, [f"output_dir={out}", *TINY, "train.mixed_precision=bf16",
                                               "train.max_steps=120", "train.eval_every=60", "train.save_every=200",
                                               "train.log_every=10"]))
    assert "no bf16 matrix instructions" in caplog.text and "train.mixed_precision=no" in caplog.text
    trainer.train()
    model = trainer.unwrapped
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights
    state = trainer.optimizer.state_dict()["state"]
    assert state and all(v.dtype == torch.float32 for s in state.values() for k, v in s.items() if k != "step")
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    evals = [r for r in log if r.get("split") == "eval"]
    assert evals[-1]["rec"] < evals[0]["rec"] - 5  # it learns
    # the logged validation pass is fp32: the same weights, loaded into a fresh model (no wrapper of any kind),
    # give the same numbers
    fresh = TextDVAE.from_pretrained(out / "final").eval()
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))
    metrics = elbo_pass(fresh, trainer.eval_batches("eval"), trainer.accelerator, seed=trainer.cfg.seed)
    assert metrics["rec"] == evals[-1]["rec"] and metrics["kl"] == evals[-1]["kl"]


def test_the_grus_run_in_bf16_end_to_end_under_autocast_and_exactly_as_nn_gru_outside_it():
    """`modeling.run_gru`: outside autocast it is nn.GRU itself (same outputs and states, bit for bit); under bf16
    autocast the inputs, states and weights are bf16 (no per-step casts), close to fp32, and the gradients reach
    the fp32 weights."""
    from textdvae.modeling import run_gru

    torch.manual_seed(0)
    gru = nn.GRU(12, 16, 2, batch_first=True)
    x, h0 = torch.randn(5, 7, 12), torch.randn(2, 5, 16)
    out, h = run_gru(gru, x, h0)
    ref_out, ref_h = gru(x, h0)
    assert torch.equal(out, ref_out) and torch.equal(h, ref_h)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low_out, low_h = run_gru(gru, x, h0)
    assert low_out.dtype == low_h.dtype == torch.bfloat16
    torch.testing.assert_close(low_out.float(), ref_out, atol=0.04, rtol=0.02)  # bf16: 8 bits of mantissa
    low_out.float().square().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in gru.parameters())
    ref_grads = torch.autograd.grad(ref_out.square().sum(), list(gru.parameters()))
    for p, g in zip(gru.parameters(), ref_grads):
        assert torch.nn.functional.cosine_similarity(p.grad.flatten(), g.flatten(), dim=0) > 0.99
    # in the model: the encoder's and the decoder's states are bf16 under autocast, fp32 outside it
    model = TextDVAE(TextDVAEConfig(**{**TINY_MODEL, "vocab_size": 40})).train()
    ids = torch.randint(3, 40, (4, 9))
    mask = torch.ones_like(ids)
    for enabled, dtype in ((False, torch.float32), (True, torch.bfloat16)):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
            params, pooled = model.posterior(ids, mask)
            cond = model.condition(torch.nn.functional.one_hot(params.argmax(-1), params.size(-1)).float())
            assert pooled.dtype == model.decoder_states(ids, cond).dtype == dtype


def test_the_hand_written_gru_layer_equals_nn_gru_with_every_gradient():
    """`modeling.GRULayer` (the bf16 training path's GRU) against nn.GRU in float64, so that the comparison tests
    its algebra, not rounding: outputs, and the gradients of the inputs, the initial state and all four weights,
    with a loss that reads every step's output and the final state (the decoder's and the encoder's uses)."""
    from textdvae.modeling import GRULayer

    torch.manual_seed(0)
    gru = nn.GRU(5, 7, batch_first=True).double()
    x = torch.randn(3, 6, 5, dtype=torch.double, requires_grad=True)
    h0 = torch.randn(1, 3, 7, dtype=torch.double, requires_grad=True)
    weights = torch.randn(3, 6, 7, dtype=torch.double)
    wrt = [x, h0, *gru.parameters()]

    def loss(out):  # out (B, T, H): every step, and the last one again
        return (out * weights).sum() + out[:, -1].square().sum()

    ref_out = gru(x, h0)[0]
    ref = torch.autograd.grad(loss(ref_out), wrt)
    out = GRULayer.apply(x.transpose(0, 1), h0[0], *gru._flat_weights).transpose(0, 1)
    got = torch.autograd.grad(loss(out), wrt)
    torch.testing.assert_close(out, ref_out, rtol=1e-12, atol=1e-12)
    for g, r in zip(got, ref):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)

    # two layers in one graph: the second's backward runs first and hands its input gradient to the first, whose
    # backward reuses the same scratch buffer (grown for a longer sentence first, so that it is not a fresh one)
    GRULayer.apply(torch.randn(11, 3, 5, dtype=torch.double, requires_grad=True), h0[0],
                   *gru._flat_weights).sum().backward()
    gru2 = nn.GRU(5, 7, 2, batch_first=True).double()
    h0 = torch.randn(2, 3, 7, dtype=torch.double, requires_grad=True)
    wrt = [x, h0, *gru2.parameters()]
    ref_out = gru2(x, h0)[0]
    ref = torch.autograd.grad(loss(ref_out), wrt)
    w = gru2._flat_weights
    out = GRULayer.apply(GRULayer.apply(x.transpose(0, 1), h0[0], *w[:4]), h0[1], *w[4:]).transpose(0, 1)
    got = torch.autograd.grad(loss(out), wrt)
    torch.testing.assert_close(out, ref_out, rtol=1e-12, atol=1e-12)
    for g, r in zip(got, ref):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)


def test_cpu_lacks_bf16_reads_the_flags_and_says_false_when_it_cannot_tell(tmp_path):
    """The warning for bf16 on a CPU that would emulate it: True only when the flags are there and name neither
    avx512_bf16 nor amx_bf16."""
    cases = {"flags\t\t: fpu sse2 avx2 avx512f avx512bw\n": True,
             "flags\t\t: fpu avx2 avx512f avx512_bf16\n": False,
             "flags\t\t: fpu avx2 amx_tile amx_bf16\n": False,
             "processor\t: 0\nFeatures\t: fp asimd bf16\n": False}  # no x86 flags line (an ARM machine): unknown
    for i, (text, lacks) in enumerate(cases.items()):
        path = tmp_path / f"cpuinfo{i}"
        path.write_text(text)
        assert cpu_lacks_bf16(str(path)) is lacks, text
    assert cpu_lacks_bf16(str(tmp_path / "missing")) is False


def test_rows_in_buckets_is_the_layer_on_padded_rows_with_the_padding_cut_off():
    """The output layer's products under CPU bf16 autocast see row counts in multiples of a bucket (so that oneDNN
    reuses its kernels): the values and gradients are the layer's own, and the layer really saw the padded shape."""
    from textdvae.modeling import rows_in_buckets

    torch.manual_seed(0)
    layer = nn.Sequential(nn.Linear(6, 3, bias=False), nn.Linear(3, 11, bias=False)).double()  # an adaptive tail
    seen = []
    layer.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[0]))
    x = torch.randn(5, 6, dtype=torch.double, requires_grad=True)
    out = rows_in_buckets(layer, x, 4)
    assert seen == [8] and out.shape == (5, 11)
    ref = layer(x)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    g = torch.randn(5, 11, dtype=torch.double)
    got = torch.autograd.grad((out * g).sum(), [x, *layer.parameters()])
    want = torch.autograd.grad((ref * g).sum(), [x, *layer.parameters()])
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert rows_in_buckets(layer, x[:4], 4).shape == (4, 11) and seen[-1] == 4  # a full bucket is not padded
