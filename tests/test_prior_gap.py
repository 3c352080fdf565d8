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


@pytest.mark.parametrize("kind", ["made", "transformer"])
def test_a_fitted_autoregressive_prior_learns_dependence_between_latents(kind):
    # codes whose latent 1 copies latent 0 and latent 2 is uniform: entropy log 4 + 0 + log 4 nats; a product of
    # marginals would pay another log 4 for latent 1
    g = torch.Generator().manual_seed(0)
    N, K = 3, 4
    z0, z2 = torch.randint(0, K, (4000,), generator=g), torch.randint(0, K, (4000,), generator=g)
    codes = torch.stack([z0, z0, z2], 1)  # (4000, 3)
    prior = (prior_gap.AutoregressivePrior(N, K, 32) if kind == "made" else prior_gap.CodeTransformerPrior(N, K, dim=32))
    torch.manual_seed(0)
    prior = prior_gap.fit_code_prior(prior, codes[:3000], K, steps=300, batch_size=256, lr=1e-2)
    held_out = torch.nn.functional.one_hot(codes[3000:], K).float()
    with torch.no_grad():
        cross_entropy = -prior_gap.log_prob_of_codes(prior(held_out), held_out).mean().item()
    assert cross_entropy == pytest.approx(2 * math.log(K), abs=0.05)


def test_prior_gap_scores_held_out_codes_under_both_fitted_priors():
    # the encoder that ignores x (as above): q(z|x) = q for every sentence, so a prior fitted to the training codes
    # should find q and leave a KL near 0 on held-out sentences, where the uniform prior pays N log K - sum_i H(q_i)
    torch.manual_seed(0)
    model = TextDVAE(TextDVAEConfig(vocab_size=20, embed_dim=8, hidden_dim=8, num_latents=3, num_categories=4)).eval()
    with torch.no_grad():
        model.to_posterior.weight.zero_()
        model.to_posterior.bias.copy_(torch.randn(3 * 4))
    g = torch.Generator().manual_seed(1)
    res = prior_gap.prior_gap(model, seqs(200, 20, g), seqs(50, 20, g), samples=4, batch_size=64, fit_steps=400)
    rows = {r["prior"]: r for r in res["rows"]}
    assert res["fit_steps"] == 400 and rows["uniform"]["kl"] > 0.3
    for name in ("made_fitted", "transformer_fitted"):
        assert rows[name]["neg_elbo"] == pytest.approx(res["rec"] + rows[name]["kl"])
        assert abs(rows[name]["kl"]) < 0.05, (name, rows[name]["kl"], rows["uniform"]["kl"])
