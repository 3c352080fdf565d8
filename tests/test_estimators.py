"""Checks of textdvae.estimators against exact enumeration of all K^N codes of a tiny problem.

Monte Carlo checks use fixed seeds and standard-error (SE) tolerances, so each is deterministic
yet its tolerance is one that a correct estimator passes with overwhelming probability.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F

from conftest import all_codes
from textdvae.estimators import (
    categorical_entropy,
    gaussian_kl,
    gaussian_sample,
    gumbel_softmax,
    kl_categorical,
    kl_to_uniform,
    leave_one_out_baseline,
    log_prob_of_codes,
    reinmax,
    sample_categorical,
    score_function_surrogate,
)

N, K = 2, 3
LOGITS = torch.tensor([[1.0, -0.5, 0.3], [-1.0, 0.8, 0.2]])
W = torch.tensor([[1.0, -2.0, 0.5], [0.3, 1.5, -1.0]])
A = torch.tensor([1.0, -1.0, 2.0])
C = torch.tensor([0.5, 1.5, -1.0])
# Chi-square critical value at p = 1e-3 for K - 1 = 2 degrees of freedom: the survival function is exp(-x / 2).
CHI2_CRITICAL_DF2 = -2 * math.log(1e-3)


def linear_f(z: torch.Tensor) -> torch.Tensor:
    """f(z) = sum_i <z_i, w_i>, (..., N, K) -> (...)."""
    return (z * W).sum(dim=(-2, -1))


def nonlinear_f(z: torch.Tensor) -> torch.Tensor:
    """Linear part plus a cross term (z_0 . a)(z_1 . c) and an offset of 10 so that E_q[f] is far from 0."""
    return linear_f(z) + (z[..., 0, :] @ A) * (z[..., 1, :] @ C) + 10.0


def code_probabilities(logits: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """q(code) = prod_i softmax(logits_i)[code_i], written without the module under test."""
    return (codes * torch.softmax(logits, dim=-1)).sum(-1).prod(-1)


def exact_gradient(f) -> torch.Tensor:
    """d/dlogits E_q[f(z)] by summing f over all K^N codes weighted by their probability, (N, K)."""
    logits = LOGITS.double().requires_grad_()
    codes = all_codes(N, K, dtype=torch.float64)
    expectation = (code_probabilities(logits, codes) * f(codes.float()).double()).sum()
    return torch.autograd.grad(expectation, logits)[0].float()


def batch_of_logits(batch: int) -> torch.Tensor:
    """LOGITS repeated to (B, N, K) as a leaf, so autograd returns one gradient per example."""
    return LOGITS.expand(batch, N, K).clone().requires_grad_()


def chi_square(one_hot: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """Pearson statistic of the category counts of one-hot samples (B, N, K) against probs (N, K), -> (N,)."""
    expected = probs * one_hot.shape[0]
    return ((one_hot.sum(0) - expected) ** 2 / expected).sum(-1)


def assert_exactly_one_hot(z: torch.Tensor) -> None:
    assert torch.equal(z, F.one_hot(z.argmax(-1), z.shape[-1]).to(z.dtype))


# --- entropy, KL, log-probability ------------------------------------------------------------------


def test_categorical_entropy_matches_definition_and_is_stable() -> None:
    probs = torch.softmax(LOGITS.double(), -1)
    torch.testing.assert_close(categorical_entropy(LOGITS.double()), -(probs * probs.log()).sum(-1))
    assert categorical_entropy(torch.zeros(4, K)).allclose(torch.full((4,), math.log(K)))
    # exp(1000) overflows and exp(-1000) underflows; a naive p * log p would give nan.
    extreme = categorical_entropy(torch.tensor([1000.0, 0.0, -1000.0]))
    assert torch.isfinite(extreme) and extreme.abs() < 1e-6


def test_kl_to_uniform_matches_enumeration_exactly() -> None:
    logits = LOGITS.double()
    codes = all_codes(N, K, dtype=torch.float64)
    q = code_probabilities(logits, codes)
    enumerated = (q * torch.log(q * K**N)).sum()
    torch.testing.assert_close(kl_to_uniform(logits).sum(), enumerated, atol=1e-12, rtol=0)
    probs = torch.softmax(logits, -1)
    torch.testing.assert_close(kl_to_uniform(logits), (probs * torch.log(probs * K)).sum(-1), atol=1e-12, rtol=0)
    assert kl_to_uniform(torch.zeros(K)).abs() < 1e-6


def test_kl_to_uniform_agrees_with_monte_carlo_within_4_se() -> None:
    batch = 200_000
    logits = LOGITS.expand(batch, N, K)
    codes = sample_categorical(logits, generator=torch.Generator().manual_seed(1))
    samples = log_prob_of_codes(logits, codes).double() + N * math.log(K)
    standard_error = samples.std() / math.sqrt(batch)
    assert (samples.mean() - kl_to_uniform(LOGITS).sum().double()).abs() < 4 * standard_error


def test_kl_categorical_matches_the_definition_and_reduces_to_kl_to_uniform() -> None:
    q, p = LOGITS.double(), W.double()
    pq, pp = torch.softmax(q, -1), torch.softmax(p, -1)
    torch.testing.assert_close(kl_categorical(q, p), (pq * torch.log(pq / pp)).sum(-1), atol=1e-12, rtol=0)
    torch.testing.assert_close(kl_categorical(q, torch.zeros_like(p)), kl_to_uniform(q), atol=1e-12, rtol=0)
    assert kl_categorical(q, q + 5.0).abs().max() < 1e-12  # logits are up to a constant
    assert torch.all(kl_categorical(q, p) > 0)


def test_log_prob_of_codes_matches_enumeration() -> None:
    codes = all_codes(N, K)
    log_q = log_prob_of_codes(LOGITS.expand(len(codes), N, K), codes)
    assert log_q.shape == (K**N,)
    torch.testing.assert_close(log_q.exp(), code_probabilities(LOGITS, codes))
    torch.testing.assert_close(log_q.exp().sum(), torch.tensor(1.0))


# --- exact categorical sampling --------------------------------------------------------------------


def test_sample_categorical_is_one_hot_with_softmax_frequencies_and_no_gradient() -> None:
    logits = LOGITS.expand(100_000, N, K).clone().requires_grad_()
    z = sample_categorical(logits, generator=torch.Generator().manual_seed(2))
    assert not z.requires_grad
    assert_exactly_one_hot(z)
    assert (chi_square(z, torch.softmax(LOGITS, -1)) < CHI2_CRITICAL_DF2).all()


def test_samplers_are_reproducible_with_a_generator() -> None:
    logits = LOGITS.expand(64, N, K)
    for draw in (
        lambda g: sample_categorical(logits, generator=g),
        lambda g: gumbel_softmax(logits, 0.5, generator=g),
        lambda g: reinmax(logits, 1.5, generator=g),
        lambda g: gaussian_sample(torch.zeros(64, 4), torch.zeros(64, 4), generator=g),
    ):
        first, again = (draw(torch.Generator().manual_seed(3)) for _ in range(2))
        assert torch.equal(first, again)
        assert not torch.equal(first, draw(torch.Generator().manual_seed(4)))


# --- Gumbel-softmax --------------------------------------------------------------------------------


def test_gumbel_softmax_is_softmax_of_logits_plus_gumbel_noise_on_the_simplex() -> None:
    logits = LOGITS.expand(1000, N, K)
    y = gumbel_softmax(logits, tau=0.7, generator=torch.Generator().manual_seed(5))
    u = torch.rand(logits.shape, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(y, torch.softmax((logits - torch.log(-torch.log(u))) / 0.7, -1))
    assert (y >= 0).all()
    torch.testing.assert_close(y.sum(-1), torch.ones(1000, N))


def test_gumbel_softmax_approaches_one_hot_as_tau_shrinks() -> None:
    logits = LOGITS.expand(20_000, N, K)
    distances = []
    for tau in (1.0, 0.3, 0.1, 0.01):
        # The same seed gives the same noise, so each relaxed sample tends to one_hot(argmax(logits + g)).
        y = gumbel_softmax(logits, tau, generator=torch.Generator().manual_seed(6))
        y_hard = F.one_hot(y.argmax(-1), K).float()
        distances.append((y - y_hard).abs().sum(-1).mean().item())
    assert distances == sorted(distances, reverse=True) and len(set(distances)) == len(distances)
    assert distances[-1] < 0.02


def test_gumbel_softmax_argmax_frequencies_match_softmax() -> None:
    y = gumbel_softmax(LOGITS.expand(100_000, N, K), tau=0.5, generator=torch.Generator().manual_seed(7))
    assert (chi_square(F.one_hot(y.argmax(-1), K).float(), torch.softmax(LOGITS, -1)) < CHI2_CRITICAL_DF2).all()


def test_gumbel_softmax_hard_is_one_hot_forward_with_the_relaxed_gradient() -> None:
    tau, batch = 0.5, 512
    upstream = torch.randn(batch, N, K, generator=torch.Generator().manual_seed(8))
    relaxed_logits, hard_logits = batch_of_logits(batch), batch_of_logits(batch)
    # The relaxed sample written out by hand with the noise that the same seed produces.
    u = torch.rand(batch, N, K, generator=torch.Generator().manual_seed(9))
    relaxed = torch.softmax((relaxed_logits - torch.log(-torch.log(u))) / tau, -1)
    hard = gumbel_softmax(hard_logits, tau, hard=True, generator=torch.Generator().manual_seed(9))
    assert_exactly_one_hot(hard)
    assert torch.equal(hard.argmax(-1), relaxed.argmax(-1))
    (relaxed * upstream).sum().backward()
    (hard * upstream).sum().backward()
    torch.testing.assert_close(hard_logits.grad, relaxed_logits.grad)
    assert hard_logits.grad.abs().sum() > 0


# --- ReinMax ---------------------------------------------------------------------------------------


def softmax_jvp(p: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(diag(p) - p p^T) v along the last axis: the softmax Jacobian applied to v."""
    return p * v - p * (p * v).sum(-1, keepdim=True)


def test_reinmax_forward_is_an_exact_one_hot_sample_of_the_untempered_softmax() -> None:
    # tau = 3 would visibly flatten the frequencies if D were drawn from softmax(logits / tau).
    d = reinmax(LOGITS.expand(100_000, N, K), tau=3.0, generator=torch.Generator().manual_seed(10))
    assert_exactly_one_hot(d)
    assert (chi_square(d, torch.softmax(LOGITS, -1)) < CHI2_CRITICAL_DF2).all()


def test_reinmax_gradient_matches_the_closed_form() -> None:
    # Expanding Algorithm 2 of Liu et al. 2023 by hand (as the authors' autograd.Function does):
    # grad = J(pi1) (2 g) - J(pi0) (g / 2), pi1 = (D + softmax(logits / tau)) / 2, g = dL/dD.
    tau, batch = 1.7, 256
    upstream = torch.randn(batch, N, K, generator=torch.Generator().manual_seed(11))
    logits = batch_of_logits(batch)
    d = reinmax(logits, tau, generator=torch.Generator().manual_seed(12))
    (d * upstream).sum().backward()
    pi0 = torch.softmax(LOGITS, -1)
    pi1 = (d.detach() + torch.softmax(LOGITS / tau, -1)) / 2
    expected = softmax_jvp(pi1, 2 * upstream) - softmax_jvp(pi0, upstream / 2)
    torch.testing.assert_close(logits.grad, expected, atol=1e-6, rtol=1e-5)


def test_reinmax_is_unbiased_for_a_linear_objective_at_tau_one() -> None:
    # For linear f the ReinMax gradient of latent i is a function of D_i alone, so its expectation is
    # the softmax-weighted sum of its K possible values: an exact check, free of Monte Carlo error.
    logits = batch_of_logits(2000)
    d = reinmax(logits, tau=1.0, generator=torch.Generator().manual_seed(13))
    linear_f(d).sum().backward()
    expectation = torch.zeros(N, K)
    for i, k in itertools.product(range(N), range(K)):
        rows = logits.grad[d[:, i].argmax(-1) == k, i]
        torch.testing.assert_close(rows, rows[:1].expand_as(rows))
        expectation[i] += torch.softmax(LOGITS, -1)[i, k] * rows[0]
    torch.testing.assert_close(expectation, exact_gradient(linear_f), atol=1e-5, rtol=1e-5)


def test_reinmax_beats_straight_through_gumbel_for_a_linear_objective_at_tau_one() -> None:
    batch, exact = 100_000, exact_gradient(linear_f)
    errors = {}
    for name, draw in (
        ("reinmax", lambda x, g: reinmax(x, 1.0, generator=g)),
        ("straight_through", lambda x, g: gumbel_softmax(x, 1.0, hard=True, generator=g)),
    ):
        logits = batch_of_logits(batch)
        linear_f(draw(logits, torch.Generator().manual_seed(14))).sum().backward()
        mean, standard_error = logits.grad.mean(0), logits.grad.std(0) / math.sqrt(batch)
        errors[name] = ((mean - exact).abs() / standard_error).max().item()
    # ReinMax is unbiased here (within 5 SE); straight-through Gumbel is off by hundreds of SE.
    assert errors["reinmax"] < 5
    assert errors["straight_through"] > 50


# --- score function --------------------------------------------------------------------------------


def score_function_gradients(baseline: torch.Tensor, batch: int, seed: int) -> torch.Tensor:
    """Per-example gradients (B, N, K) of the REINFORCE surrogate of nonlinear_f."""
    logits = batch_of_logits(batch)
    codes = sample_categorical(logits, generator=torch.Generator().manual_seed(seed))
    surrogate = score_function_surrogate(log_prob_of_codes(logits, codes), nonlinear_f(codes), baseline)
    surrogate.sum().backward()
    return logits.grad


def test_score_function_is_unbiased_and_a_baseline_reduces_its_variance() -> None:
    batch, exact = 100_000, exact_gradient(nonlinear_f)
    codes = all_codes(N, K)
    # A sample-independent baseline: the exact mean of f (about 10, far from 0).
    mean_f = (code_probabilities(LOGITS, codes) * nonlinear_f(codes)).sum()
    with_baseline = score_function_gradients(mean_f, batch, seed=15)
    without_baseline = score_function_gradients(torch.tensor(0.0), batch, seed=16)
    for grads in (with_baseline, without_baseline):
        standard_error = grads.std(0) / math.sqrt(batch)
        assert ((grads.mean(0) - exact).abs() < 5 * standard_error).all()
    assert without_baseline.var(0).sum() > 5 * with_baseline.var(0).sum()


def test_leave_one_out_baseline_is_unbiased_and_undoes_a_stale_prediction() -> None:
    """A per-sample prediction 50 above the true mean (a baseline that lags a falling reward): alone it leaves the
    gradient unbiased but noisy; corrected by the other samples' residuals it is as good as the exact mean."""
    batch, exact = 100_000, exact_gradient(nonlinear_f)
    mean_f = (code_probabilities(LOGITS, all_codes(N, K)) * nonlinear_f(all_codes(N, K))).sum()
    stale = torch.full((batch,), mean_f.item() + 50.0)
    grads = {}
    for name, seed in (("loo", 17), ("stale", 18), ("exact_mean", 19)):
        logits = batch_of_logits(batch)
        codes = sample_categorical(logits, generator=torch.Generator().manual_seed(seed))
        f = nonlinear_f(codes)
        baseline = {"loo": lambda: leave_one_out_baseline(f, stale), "stale": lambda: stale,
                    "exact_mean": lambda: mean_f.expand(batch)}[name]()
        score_function_surrogate(log_prob_of_codes(logits, codes), f, baseline).sum().backward()
        grads[name] = logits.grad
    standard_error = grads["loo"].std(0) / math.sqrt(batch)
    assert ((grads["loo"].mean(0) - exact).abs() < 5 * standard_error).all()
    assert grads["loo"].var(0).sum() < 1.1 * grads["exact_mean"].var(0).sum()
    assert grads["stale"].var(0).sum() > 5 * grads["loo"].var(0).sum()
    torch.testing.assert_close(leave_one_out_baseline(torch.tensor([1.0, 2.0, 6.0]), torch.zeros(3)),
                               torch.tensor([4.0, 3.5, 1.5]))


def test_score_function_surrogate_value_and_gradient_paths() -> None:
    log_q = torch.tensor([-1.0, -2.0], requires_grad=True)
    reward = torch.tensor([3.0, 0.5], requires_grad=True)
    baseline = torch.tensor(1.0, requires_grad=True)
    surrogate = score_function_surrogate(log_q, reward, baseline)
    torch.testing.assert_close(surrogate, torch.tensor([-2.0, 1.0]))
    surrogate.sum().backward()
    torch.testing.assert_close(log_q.grad, torch.tensor([2.0, -0.5]))
    # The reward and baseline are trained by their own losses, never through the surrogate.
    assert reward.grad is None and baseline.grad is None


# --- Gaussian --------------------------------------------------------------------------------------


def test_gaussian_kl_is_zero_at_the_prior_and_agrees_with_monte_carlo_within_4_se() -> None:
    assert torch.equal(gaussian_kl(torch.zeros(2, 3), torch.zeros(2, 3)), torch.zeros(2, 3))
    mu, logvar = torch.tensor([[0.5, -1.5, 0.0]]), torch.tensor([[0.2, -1.0, 1.3]])
    batch = 200_000
    z = gaussian_sample(mu.expand(batch, 3), logvar.expand(batch, 3), generator=torch.Generator().manual_seed(17))
    posterior = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
    samples = posterior.log_prob(z) - torch.distributions.Normal(0.0, 1.0).log_prob(z)
    standard_error = samples.std(0) / math.sqrt(batch)
    assert ((samples.mean(0) - gaussian_kl(mu, logvar)[0]).abs() < 4 * standard_error).all()


def test_gaussian_sample_has_the_right_moments_and_is_reparameterised() -> None:
    batch = 100_000
    mu = torch.tensor([0.5, -1.5, 0.0]).expand(batch, 3).clone().requires_grad_()
    logvar = torch.tensor([0.2, -1.0, 1.3]).expand(batch, 3).clone().requires_grad_()
    z = gaussian_sample(mu, logvar, generator=torch.Generator().manual_seed(18))
    std = torch.exp(0.5 * logvar[0].detach())
    assert ((z.mean(0) - mu[0]).abs() < 5 * std / math.sqrt(batch)).all()
    # The sample standard deviation of a Gaussian has a standard error of about std / sqrt(2 B).
    assert ((z.std(0) - std).abs() < 5 * std / math.sqrt(2 * batch)).all()
    z.sum().backward()
    torch.testing.assert_close(mu.grad, torch.ones_like(mu))
    torch.testing.assert_close(logvar.grad, 0.5 * (z - mu).detach())

