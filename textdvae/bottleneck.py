"""The categorical bottleneck: posterior logits (B, N, K) -> codes, their KL to the prior, and conditioning vectors.

One drop-in ``nn.Module`` (as vector-quantize-pytorch's quantizers are) that owns everything between an encoder's
logits and a decoder's input:

    logits (B, N, K) -> estimator (Gumbel-Softmax, straight-through, ReinMax, REINFORCE) -> codes (B, N, K)
      -> KL(q(z | x) || p(z)) per latent (B, N), to a uniform or a learned autoregressive prior
      -> code embeddings (B, N, D): one table of K vectors per latent

It also gives log p(z) of codes and samples from p(z). In training mode the codes come from the configured
estimator; in eval mode they are an exact discrete sample, so bounds reported in eval are comparable across
estimators. With ``estimator="reinforce"`` the codes carry no gradient: the caller adds the score-function term
(`estimators.score_function_surrogate`), as `TextDVAE` does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .configuration import ESTIMATORS, PRIORS, check_choice
from .estimators import gumbel_softmax, kl_categorical, kl_to_uniform, log_prob_of_codes, reinmax, sample_categorical


@dataclass
class BottleneckOutput:
    """What `CategoricalBottleneck.forward` returns."""

    codes: Tensor  # (B, N, K) one-hot (straight-through, discrete) or relaxed (gumbel) codes
    kl_per_latent: Tensor  # (B, N) nats; exact for the uniform prior, one-sample given z_<i for a learned one
    embeddings: Tensor  # (B, N, D) the conditioning vectors for a decoder

    @property
    def kl(self) -> Tensor:  # (B,) KL(q(z | x) || p(z)), nats
        return self.kl_per_latent.sum(1)


class AutoregressivePrior(nn.Module):
    """p(z) = prod_i p(z_i | z_<i) over N latents of K categories: MADE (Germain et al. 2015, "MADE: Masked
    Autoencoder for Distribution Estimation", arXiv:1502.03509), an MLP whose weight masks let output i see only the
    inputs of latents before i, so one pass gives every conditional. Latent 0's output sees no input: its bias is
    the marginal p(z_0). The output layer starts at zero, so training starts from the uniform prior."""

    def __init__(self, num_latents: int, num_categories: int, hidden_dim: int):
        super().__init__()
        self.N, self.K = num_latents, num_categories
        self.hidden = nn.ModuleList([nn.Linear(self.N * self.K, hidden_dim), nn.Linear(hidden_dim, hidden_dim)])
        self.out_weight = nn.Parameter(torch.zeros(self.N * self.K, hidden_dim))
        self.out_bias = nn.Parameter(torch.zeros(self.N * self.K))

    def masks(self, device: torch.device) -> list[Tensor]:
        """MADE's degrees: input/output unit (i, k) has degree i; hidden unit h may see latents <= h mod (N - 1)."""
        d_io = torch.arange(self.N, device=device).repeat_interleave(self.K)  # (N*K,)
        d_h = torch.arange(self.hidden[0].out_features, device=device) % max(self.N - 1, 1)  # (H,)
        return [d_h[:, None] >= d_io[None], d_h[:, None] >= d_h[None], d_io[:, None] > d_h[None]]  # (out, in) each

    def forward(self, codes: Tensor) -> Tensor:
        """Codes (B, N, K), one-hot or relaxed -> logits (B, N, K) of p(z_i | z_<i)."""
        x = codes.flatten(1)  # (B, N*K)
        m_in, m_hid, m_out = self.masks(x.device)
        x = F.gelu(F.linear(x, self.hidden[0].weight * m_in, self.hidden[0].bias))  # (B, H)
        x = F.gelu(F.linear(x, self.hidden[1].weight * m_hid, self.hidden[1].bias))  # (B, H)
        return F.linear(x, self.out_weight * m_out, self.out_bias).view(-1, self.N, self.K)  # (B, N, K)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Ancestral sampling, latent by latent: n codes (n, N) of category indices."""
        dev = self.out_bias.device
        gen_dev = generator.device if generator is not None else dev  # draw where the generator lives
        codes = torch.zeros(n, self.N, self.K, device=dev)  # (n, N, K) one-hot, filled left to right
        for i in range(self.N):
            logits = self(codes)[:, i]  # (n, K) p(z_i | z_<i): later latents are not seen
            codes[:, i] = sample_categorical(logits.to(gen_dev), generator).to(dev)
        return codes.argmax(-1)


class CategoricalBottleneck(nn.Module):
    """N categorical latents of K categories between an encoder and a decoder.

        bottleneck = CategoricalBottleneck(num_latents=8, num_categories=16, dim=256)
        out = bottleneck(logits)       # logits (B, 8, 16) from your encoder
        out.embeddings                 # (B, 8, 256) for your decoder
        loss = reconstruction + beta * out.kl.mean()

    Args:
        num_latents: N latent variables.
        num_categories: K categories of each (>= 2).
        dim: width D of the code embeddings (and of the learned prior's hidden layers).
        estimator: gradient estimator in training mode: "gumbel" (relaxed Gumbel-Softmax, Jang et al. 2017),
            "gumbel_st" (straight-through), "reinmax" (Liu et al. 2023; tau >= 1) or "reinforce" (a discrete sample
            without gradient: the caller adds the score-function term).
        prior: "uniform" (p(z) = K^-N, exact KL) or "autoregressive" (a learned MADE prior, `AutoregressivePrior`).
        init_embeddings: draw the code embeddings from N(0, 1) now; False leaves them to the owning model's
            initialisation (TextDVAE does it last, so its random stream, and a seeded run's weights, stay as before).
    """

    def __init__(self, num_latents: int, num_categories: int, dim: int, estimator: str = "gumbel_st",
                 prior: str = "uniform", init_embeddings: bool = True):
        super().__init__()
        for key, value, allowed in (("estimator", estimator, ESTIMATORS), ("prior", prior, PRIORS)):
            check_choice(key, value, allowed)
        if num_categories < 2:
            raise ValueError(f"num_categories (K) must be >= 2, got {num_categories}: a latent with one category "
                             "carries no information")
        self.num_latents, self.num_categories, self.estimator = num_latents, num_categories, estimator
        self.code_embed = nn.Parameter(torch.empty(num_latents, num_categories, dim))  # (N, K, D) one table per latent
        self.code_prior = AutoregressivePrior(num_latents, num_categories, dim) if prior == "autoregressive" else None
        if init_embeddings:  # N(0, 1); a model that initialises its own weights (TextDVAE) passes False
            nn.init.normal_(self.code_embed)

    def forward(self, logits: Tensor, tau: float = 1.0, generator: torch.Generator | None = None) -> BottleneckOutput:
        """Posterior logits (B, N, K) -> codes, KL per latent and code embeddings; `tau` is the temperature of the
        relaxed estimators."""
        logits = logits.float()  # sampling and the KL in fp32, under bf16 autocast too
        codes = self.sample_codes(logits, tau, generator)  # (B, N, K)
        return BottleneckOutput(codes=codes, kl_per_latent=self.kl(logits, codes), embeddings=self.embed(codes))

    def sample_codes(self, logits: Tensor, tau: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
        """(B, N, K) logits -> (B, N, K) codes: the configured estimator in training, an exact discrete sample in
        eval (and for REINFORCE, whose gradient does not go through z)."""
        estimator = self.estimator if self.training else "discrete"
        if estimator == "gumbel":
            return gumbel_softmax(logits, tau, hard=False, generator=generator)
        if estimator == "gumbel_st":
            return gumbel_softmax(logits, tau, hard=True, generator=generator)
        if estimator == "reinmax":
            return reinmax(logits, tau, generator=generator)
        return sample_categorical(logits, generator=generator)

    def kl(self, logits: Tensor, codes: Tensor) -> Tensor:
        """KL term of each latent, (B, N, K) posterior logits and the codes sampled from them -> (B, N): exact
        log K - H(q(z_i | x)) for the uniform prior; KL(q(z_i | x) || p(z_i | z_<i)) at the sampled z_<i for a
        learned one (its sum over i is an unbiased estimate of KL(q(z | x) || p(z)), see kl_categorical)."""
        if self.code_prior is None:
            return kl_to_uniform(logits)
        return kl_categorical(logits.float(), self.code_prior(codes).float())

    def log_prior(self, codes: Tensor) -> Tensor:
        """log p(z) of one-hot codes (B, N, K) -> (B,)."""
        if self.code_prior is None:
            return codes.new_full(codes.shape[:1], -self.num_latents * math.log(self.num_categories))
        return log_prob_of_codes(self.code_prior(codes).float(), codes)

    def sample_prior(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n codes (n, N) of category indices drawn from p(z), on the module's device."""
        if self.code_prior is None:
            codes = torch.randint(0, self.num_categories, (n, self.num_latents), generator=generator,
                                  device=generator.device if generator is not None else "cpu")
            return codes.to(self.code_embed.device)
        return self.code_prior.sample(n, generator)

    def embed(self, codes: Tensor) -> Tensor:
        """Codes (B, N, K), one-hot or soft -> code embeddings (B, N, D): sum_k codes[b, n, k] * table_n[k]."""
        return torch.einsum("bnk,nkd->bnd", codes.to(self.code_embed.dtype), self.code_embed)  # (B, N, D)

