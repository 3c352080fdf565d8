"""textdvae.prior_gap (the measurement of benchmarks/prior_gap.py): the KL of held-out codes under priors fitted to
the training posteriors."""

import math

import pytest
import torch

from textdvae import TextDVAE, TextDVAEConfig, prior_gap


def test_log_mixture_matches_enumeration():
    g = torch.Generator().manual_seed(0)
    M, N, K = 7, 3, 4
    log_q = torch.randn(M, N, K, generator=g).log_softmax(-1)
    codes = torch.randint(0, K, (5, N), generator=g)
    brute = torch.stack([torch.logsumexp(torch.stack([sum(log_q[m, i, c[i]] for i in range(N)) for m in range(M)]), 0)
                         - math.log(M) for c in codes])
    torch.testing.assert_close(prior_gap.log_mixture(codes, log_q, chunk=2), brute)


def seqs(n, vocab, g):
    return [torch.randint(4, vocab, (int(torch.randint(2, 9, (1,), generator=g)),), generator=g).tolist() + [2]
            for _ in range(n)]


def test_same_posterior_for_every_sentence_leaves_only_the_uniform_prior_to_pay():
    # An encoder that ignores x: every q(z|x) is the same q, so the aggregate posterior and the product of its
    # marginals are q itself and their KL is 0, while the uniform prior still costs N log K - sum_i H(q_i).
    torch.manual_seed(0)
    config = TextDVAEConfig(vocab_size=20, embed_dim=8, hidden_dim=8, num_latents=3, num_categories=4)
    model = TextDVAE(config).eval()
    with torch.no_grad():
        model.to_posterior.weight.zero_()
        model.to_posterior.bias.copy_(torch.randn(3 * 4) * 2)
    g = torch.Generator().manual_seed(1)
    res = prior_gap.prior_gap(model, seqs(30, 20, g), seqs(12, 20, g), samples=3, batch_size=5)
    q = model.to_posterior.bias.view(3, 4).log_softmax(-1)
    expected_uniform = 3 * math.log(4) + (q.exp() * q).sum().item()
    rows = {r["prior"]: r for r in res["rows"]}
    assert res["kl_uniform_exact"] == pytest.approx(expected_uniform, abs=1e-5)
    assert rows["marginals"]["kl"] == pytest.approx(0, abs=1e-5)
    assert rows["aggregate"]["kl"] == pytest.approx(0, abs=1e-5)
    assert rows["aggregate"]["saving"] == pytest.approx(rows["uniform"]["kl"], abs=1e-5) and rows["uniform"]["kl"] > 0.1
