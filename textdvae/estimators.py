"""Gradient estimators and closed-form divergences for discrete (and Gaussian) latents.

Shape letters: B batch, N categorical latents, K categories per latent, Dz Gaussian dimensions.
All KL and entropy values are in nats.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def categorical_entropy(logits: Tensor) -> Tensor:
    """Entropy H(softmax(logits)) of each categorical, (..., K) -> (...), in nats.

    Uses log_softmax so that very large or very negative logits stay finite, as in the tutorial
    of Jeffares & Liu 2025, "An Introduction to Discrete Variational Autoencoders"
    (https://arxiv.org/abs/2505.10344).
    """
    log_q = torch.log_softmax(logits, dim=-1)
    return -(log_q.exp() * log_q).sum(dim=-1)


def kl_to_uniform(logits: Tensor) -> Tensor:
    """Exact KL(q || Uniform(K)) = log K - H(q) of each categorical, (..., K) -> (...), in nats.

    Closed form from Jeffares & Liu 2025, "An Introduction to Discrete Variational Autoencoders"
    (https://arxiv.org/abs/2505.10344).
    """
    return math.log(logits.shape[-1]) - categorical_entropy(logits)


def kl_categorical(q_logits: Tensor, p_logits: Tensor) -> Tensor:
    """Exact KL(q || p) = sum_k q_k (log q_k - log p_k) of each pair of categoricals, (..., K), (..., K) -> (...).

    With a factorised posterior q(z | x) = prod_i q(z_i | x) and an autoregressive prior p(z) = prod_i p(z_i | z_<i),
    the chain rule for relative entropy (Cover & Thomas 2006, Thm 2.5.3) gives
        KL(q(z | x) || p(z)) = sum_i E_{q(z_<i | x)} KL(q(z_i | x) || p(z_i | z_<i)),
    so this function at p's conditionals given one sample z_<i ~ q is an unbiased estimate of latent i's term.
    """
    log_q = torch.log_softmax(q_logits, dim=-1)
    return (log_q.exp() * (log_q - torch.log_softmax(p_logits, dim=-1))).sum(dim=-1)


def _gumbel_noise(like: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard Gumbel noise with the shape, dtype and device of `like`: -log(-log(u)), u ~ U(0, 1)."""
    u = torch.rand(like.shape, generator=generator, device=like.device, dtype=like.dtype)
    # u = 0 or u = 1 makes the noise infinite; torch.rand can return 1.0 in half precision on CUDA
    # (pytorch/pytorch#96947), so clamp both ends.
    u = u.clamp(torch.finfo(like.dtype).tiny, 1.0 - torch.finfo(like.dtype).eps)
    return -torch.log(-torch.log(u))


def sample_categorical(logits: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Exact one-hot sample from softmax(logits) by Gumbel-max, (..., K) -> (..., K), no gradient.

    Gumbel-max: argmax(logits + g) ~ Categorical(softmax(logits)) (Jang et al. 2017,
    https://arxiv.org/abs/1611.01144; Maddison et al. 2017, https://arxiv.org/abs/1611.00712).
    """
    with torch.no_grad():
        index = (logits + _gumbel_noise(logits, generator)).argmax(dim=-1)
        return F.one_hot(index, logits.shape[-1]).to(logits.dtype)


def gumbel_softmax(
    logits: Tensor, tau: float, hard: bool = False, generator: torch.Generator | None = None
) -> Tensor:
    """Gumbel-softmax sample softmax((logits + g) / tau), (B, N, K) -> (B, N, K).

    Jang et al. 2017 (https://arxiv.org/abs/1611.01144); Maddison et al. 2017
    (https://arxiv.org/abs/1611.00712). With hard=True the forward value is
    one_hot(argmax(logits + g)) and the gradient is that of the relaxed sample (straight-through).
    """
    y_soft = torch.softmax((logits + _gumbel_noise(logits, generator)) / tau, dim=-1)
    if not hard:
        return y_soft
    y_hard = F.one_hot(y_soft.argmax(dim=-1), logits.shape[-1]).to(y_soft.dtype)
    # Straight-through: the added term is exactly 0 in the forward pass, so the value is the exact one-hot,
    # while its gradient is that of the relaxed sample.
    return y_hard + (y_soft - y_soft.detach())


def reinmax(logits: Tensor, tau: float, generator: torch.Generator | None = None) -> Tensor:
    """ReinMax straight-through sample, (B, N, K) -> (B, N, K); forward value is an exact one-hot D.

    Algorithm 2 of Liu et al. 2023, "Bridging Discrete and Backpropagation: Straight-Through and
    Beyond" (NeurIPS, https://arxiv.org/abs/2304.08612). D ~ softmax(logits) (not tempered); tau
    only shapes the gradient. The caller validates tau >= 1, as the paper recommends.
    """
    pi0 = torch.softmax(logits, dim=-1)
    d = sample_categorical(logits, generator)
    pi1 = (d + torch.softmax(logits / tau, dim=-1)) / 2
    # Same value, but the gradient now flows through the softmax Jacobian evaluated at pi1: the
    # midpoint slope that Heun's method needs for second-order accuracy.
    pi1 = torch.softmax((torch.log(pi1) - logits).detach() + logits, dim=-1)
    pi2 = 2 * pi1 - 0.5 * pi0
    # The added term is exactly 0 in the forward pass (value D) and carries pi2's gradient.
    return d + (pi2 - pi2.detach())


def log_prob_of_codes(logits: Tensor, codes: Tensor) -> Tensor:
    """log q(z | x) = sum_i log q(z_i | x) of one-hot codes, logits and codes (B, N, K) -> (B,).

    The factorised posterior of a discrete VAE (Jeffares & Liu 2025,
    https://arxiv.org/abs/2505.10344).
    """
    return (codes * torch.log_softmax(logits, dim=-1)).sum(dim=(-2, -1))


def score_function_surrogate(log_q: Tensor, reward: Tensor, baseline: Tensor) -> Tensor:
    """Per-example REINFORCE surrogate (reward - baseline).detach() * log_q, all (B,) -> (B,).

    Score-function estimator (Williams 1992, https://doi.org/10.1007/BF00992696) with a baseline, as in
    Jeffares & Liu 2025 (https://arxiv.org/abs/2505.10344). log_q is sum_i log q(z_i | x) at the sampled
    codes and reward is a quantity to minimise. The gradient of the surrogate is an unbiased estimate
    of grad E_q[reward] when the baseline does not depend on the sample.
    """
    # Detached so that the surrogate sends gradient only through log_q, never into the reward's or
    # the baseline's own parameters (those are trained by their own losses).
    return (reward - baseline).detach() * log_q


def leave_one_out_baseline(reward: Tensor, prediction: Tensor) -> Tensor:
    """Baseline b_i = prediction_i + mean_{j != i} (reward_j - prediction_j), (B,), (B,) -> (B,), detached.

    The other samples' mean reward as a baseline (Kool et al. 2019, "Buy 4 REINFORCE samples, get a baseline for
    free!", https://openreview.net/forum?id=r1lgTGL5DE); here the other samples are other sentences, so each reward
    is first offset by a per-sentence prediction (a learned b(x)). b_i does not depend on sample i (the samples are
    independent), so the score-function gradient stays unbiased. The batch term follows the falling reconstruction
    at once, where a running mean lags: a lagging baseline makes reward - baseline negative for most samples, which
    reinforces whatever was sampled until the posterior collapses onto one code.
    """
    prediction = prediction.detach()
    if reward.numel() < 2:
        return prediction
    residual = reward.detach() - prediction  # (B,)
    return prediction + (residual.sum() - residual) / (reward.numel() - 1)


def gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """Per-dimension KL(N(mu, exp(logvar)) || N(0, 1)), (B, Dz) -> (B, Dz), in nats.

    Closed form from Kingma & Welling 2014, Appendix B (https://arxiv.org/abs/1312.6114).
    """
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)


def gaussian_sample(mu: Tensor, logvar: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Reparameterised sample mu + exp(logvar / 2) * eps, eps ~ N(0, I), (B, Dz) -> (B, Dz).

    Kingma & Welling 2014 (https://arxiv.org/abs/1312.6114).
    """
    eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
    return mu + torch.exp(0.5 * logvar) * eps
