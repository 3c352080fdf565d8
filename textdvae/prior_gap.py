"""Prior gap ("ELBO surgery"): the KL of held-out codes under priors fitted to the training posteriors.

Averaged over sentences, the KL term of the ELBO splits as (Hoffman & Johnson 2016, "ELBO surgery")

    E_x KL(q(z|x) || p(z)) = I(x; z) + KL(q(z) || p(z)),   q(z) = E_x q(z|x), the aggregate posterior,

so a uniform prior pays, on top of the information the code carries, for how far the aggregate posterior is from
uniform. With factorised posteriors that distance has two parts: the per-latent marginals q(z_i) being uneven, and
the latents depending on each other across sentences (the total correlation of q(z)), which no factorised prior
can express. `prior_gap` measures both on held-out sentences, with the trained encoder and decoder unchanged:
each row is the test ELBO of the same model under another prior fitted to the training sentences' posteriors,
  - `uniform`: p(z) = K^-N, the default model prior;
  - `learned`: the model's own autoregressive prior, for a model trained with `model.prior=autoregressive`;
  - `marginals`: the product of the training set's per-latent code frequencies, prod_i q(z_i);
  - `aggregate`: the mixture of every training sentence's posterior, (1/M) sum_m q(z|x_m) (Tomczak & Welling
    2018's VampPrior with all M training sentences as pseudo-inputs; the prior that minimises the training KL);
  - `made_fitted` and `transformer_fitted` (with `fit_steps` > 0): the two autoregressive priors a high-rate code
    could use, each fitted by maximum likelihood to codes drawn from the training posteriors with the same budget:
    a MADE as the model's own (`bottleneck.AutoregressivePrior`, Germain et al. 2015) and a small causal
    Transformer over the N codes (`CodeTransformerPrior`). Which generalises better to held-out codes is which
    prior keeps up with the code.
The codes are S draws from q(z|x) per test sentence, shared by all rows; log q(z|x) and log p(z) are exact for
each draw (the mixture by a log-sum-exp over the M training posteriors), -log p(x|z) one decoder pass. The figure
is therefore what a learned prior could take off the ELBO without retraining, and a ceiling for a parametric
(e.g. autoregressive) prior, which has to generalise from the training codes as the mixture does.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import nn

from .bottleneck import AutoregressivePrior
from .estimators import log_prob_of_codes
from .evaluation import iterate_batches

logger = logging.getLogger(__name__)


@torch.no_grad()
def posterior_log_probs(model, seqs: list[list[int]], batch_size: int = 256) -> torch.Tensor:
    """Token-id sequences -> log q(z_i = k | x), (M, N, K), rows in the order of `seqs`."""
    out = torch.empty(len(seqs), model.config.num_latents, model.config.num_categories)
    for rows, batch in iterate_batches(seqs, batch_size, model.config.pad_token_id):
        logits, _ = model.posterior(batch["input_ids"], batch["attention_mask"])  # (b, N, K)
        out[rows] = logits.log_softmax(-1)
    return out


def log_mixture(codes: torch.Tensor, log_q: torch.Tensor, chunk: int = 512) -> torch.Tensor:
    """log (1/M) sum_m prod_i q(z_i | x_m) for each code row: codes (S, N) ints, log_q (M, N, K) -> (S,).
    One-hot codes times the flattened log-posteriors give sum_i log q(z_i | x_m) for all m in one matmul."""
    M, N, K = log_q.shape
    flat = log_q.reshape(M, N * K).T.contiguous()  # (N K, M)
    out = []
    for start in range(0, codes.size(0), chunk):
        one_hot = torch.nn.functional.one_hot(codes[start:start + chunk], K).reshape(-1, N * K).to(flat.dtype)
        out.append(torch.logsumexp(one_hot @ flat, dim=1) - math.log(M))  # (s,)
    return torch.cat(out)


class CodeTransformerPrior(nn.Module):
    """p(z) = prod_i p(z_i | z_<i) by a small causal Transformer over the N codes (pre-LN blocks, fused attention):
    position i reads a start vector and the embeddings of z_<i and predicts z_i. The alternative to MADE that
    `prior_gap` measures at high rate."""

    def __init__(self, num_latents: int, num_categories: int, dim: int = 128, layers: int = 2, heads: int = 4):
        super().__init__()
        self.embed = nn.Linear(num_categories, dim, bias=False)  # one-hot or soft codes -> (B, N, dim)
        self.start = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, num_latents, dim) * 0.02)
        block = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.out = nn.Linear(dim, num_categories)
        self.register_buffer("causal", nn.Transformer.generate_square_subsequent_mask(num_latents), persistent=False)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes (B, N, K) -> logits (B, N, K) of p(z_i | z_<i)."""
        x = self.embed(codes)  # (B, N, dim)
        x = torch.cat([self.start.expand(x.size(0), 1, -1), x[:, :-1]], 1) + self.pos  # shifted right by one
        return self.out(self.blocks(x, mask=self.causal, is_causal=True))


def fit_code_prior(prior: nn.Module, codes: torch.Tensor, num_categories: int, steps: int, batch_size: int = 512,
                   lr: float = 1e-2, seed: int = 0) -> nn.Module:
    """Maximum likelihood of an autoregressive prior (logits (B, N, K) from one-hot codes) on codes (M, N): Adam,
    `steps` minibatches drawn with replacement, the learning rate decayed to 0 (cosine)."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(prior.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    prior.train()
    report = max(1, steps // 10)
    for step in range(1, steps + 1):
        one_hot = F.one_hot(codes[torch.randint(0, codes.size(0), (batch_size,), generator=gen)], num_categories).float()
        loss = -log_prob_of_codes(prior(one_hot), one_hot).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % report == 0:
            logger.info("fitting %s: step %d of %d, training code NLL %.3f nats", type(prior).__name__, step, steps,
                        loss.item())
    return prior.eval()


def fitted_priors(log_q_train: torch.Tensor, steps: int, samples: int, seed: int, hidden: int) -> dict:
    """MADE and the code Transformer, each fitted to `samples` codes per training sentence drawn from its posterior."""
    M, N, K = log_q_train.shape
    gen = torch.Generator().manual_seed(seed)
    codes = torch.multinomial(log_q_train.exp().reshape(-1, K), samples, replacement=True, generator=gen)  # (M N, S)
    codes = codes.view(M, N, samples).permute(0, 2, 1).reshape(-1, N)  # (M S, N)
    torch.manual_seed(seed)
    with torch.enable_grad():
        # about equal sizes: MADE as wide as the model's (its hidden width), the Transformer half as wide, 2 blocks
        return {"made_fitted": fit_code_prior(AutoregressivePrior(N, K, hidden), codes, K, steps, seed=seed),
                "transformer_fitted": fit_code_prior(CodeTransformerPrior(N, K, dim=max(16, hidden // 2)), codes, K,
                                                     steps, seed=seed)}


@torch.no_grad()
def prior_gap(model, train: list[list[int]], test: list[list[int]], samples: int = 4, seed: int = 0,
              batch_size: int = 256, fit_steps: int = 0) -> dict:
    N, K = model.config.num_latents, model.config.num_categories
    log_q_train = posterior_log_probs(model, train, batch_size)  # (M, N, K)
    log_marg = log_q_train.exp().mean(0).log()  # (N, K) training code frequencies, log q(z_i)
    fitted = fitted_priors(log_q_train, fit_steps, samples, seed, model.config.hidden_dim) if fit_steps > 0 else {}
    gen = torch.Generator().manual_seed(seed)
    priors = ["uniform", *(["learned"] if model.bottleneck.code_prior is not None else []), "marginals", "aggregate",
              *fitted]
    sums = {"rec": 0.0, "log_q": 0.0, "n": 0, **{p: 0.0 for p in priors}}
    kl_exact = 0.0
    for _, batch in iterate_batches(test, batch_size, model.config.pad_token_id):
        ids, mask = batch["input_ids"], batch["attention_mask"]
        logits, _ = model.posterior(ids, mask)
        log_q = logits.log_softmax(-1)  # (b, N, K)
        kl_exact += (N * math.log(K) + (log_q.exp() * log_q).sum((1, 2))).sum().item()  # N log K - sum_i H_i
        for _ in range(samples):
            codes = torch.multinomial(log_q.exp().reshape(-1, K), 1, generator=gen).view(-1, N)  # (b, N)
            one_hot = torch.nn.functional.one_hot(codes, K).to(log_q.dtype)  # (b, N, K)
            sums["rec"] += model.reconstruction(ids, mask, one_hot).sum().item()
            lq = (one_hot * log_q).sum((1, 2))  # (b,) log q(z | x)
            sums["log_q"] += lq.sum().item()
            sums["uniform"] += (lq + N * math.log(K)).sum().item()
            if "learned" in sums:
                sums["learned"] += (lq - model.bottleneck.log_prior(one_hot)).sum().item()
            sums["marginals"] += (lq - (one_hot * log_marg).sum((1, 2))).sum().item()
            sums["aggregate"] += (lq - log_mixture(codes, log_q_train)).sum().item()
            for name, prior in fitted.items():
                sums[name] += (lq - log_prob_of_codes(prior(one_hot), one_hot)).sum().item()
            sums["n"] += codes.size(0)
    n = sums["n"]
    rec = sums["rec"] / n
    rows = [{"prior": p, "kl": sums[p] / n, "neg_elbo": rec + sums[p] / n} for p in priors]
    for r in rows:
        r["saving"] = rows[0]["neg_elbo"] - r["neg_elbo"]
    return {"rec": rec, "kl_uniform_exact": kl_exact / (n / samples), "samples": samples, "fit_steps": fit_steps,
            "n_test": len(test),
            "n_train": len(train), "num_latents": N, "num_categories": K, "rows": rows}
