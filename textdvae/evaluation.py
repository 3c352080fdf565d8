"""What the text-VAE literature reports, computed exactly where it can be.

Nats per sentence throughout (sums over tokens, end-of-sentence included). With a word-level tokenizer a token
is a word (plus EOS), so `ppl` is the word-level perplexity that PTB papers report.

- `elbo`, `rec`, `kl`, `kl_per_latent`: one discrete sample z ~ q(z|x) per sentence, whatever the training
  estimator, so every model is scored on the same bound. The KL is exact for a uniform prior; for a learned
  autoregressive prior each latent's term is exact given the sampled latents before it (an unbiased estimate).
- `nll`: -log p(x) by importance sampling with q as proposal (Burda et al. 2016, arXiv:1509.00519), S samples.
  With `iw_temperature` T != 1 the proposal is q tempered, r(z|x) proportional to q(z|x)^(1/T) (logits / T; for a
  Gaussian, the standard deviation times T): any proposal that covers the posterior gives an estimate of log p(x)
  that is a lower bound in expectation and converges to it as S grows, and a proposal a little wider than a sharp
  encoder's q has fewer samples with tiny weights, so the bound is tighter at the same S (Burda et al. 2016, sec. 5;
  the same argument as defensive importance sampling, Hesterberg 1995).
- `nll_exact`: -log p(x) = -logsumexp_z [log p(x|z) + log p(z)] over all K^N codes, when K^N <= `exact_limit` and
  the whole enumeration (sentences x K^N decoder passes) stays within `exact_budget`; otherwise it is skipped
  with a message (65,536 codes over PTB's 3,761 test sentences would be 246M passes).
- `mi`: I(x; z) under the aggregate posterior. Categorical: sum_i [H(E_x q(z_i|x)) - E_x H(q(z_i|x))]. Because
  q factorises given x and H(z) <= sum_i H(z_i), this sum is an upper bound on the joint I(x; z); each term is at
  most log K. Gaussian: He et al. 2019's Monte Carlo estimator (arXiv:1901.05534).
- `au`: active units, He et al. 2019's covariance test Cov_x(E_q[z_u]) > 0.01; for a categorical latent E_q[z_i]
  is its probability vector and we use the trace of its covariance. `active_latents`: latents with KL_i > 0.01.
- `code_perplexity`: exp(entropy of how often each category is the argmax code), per latent (1 = unused latent,
  K = uniform use).
- `rec_token_acc`, `rec_bleu`: greedy reconstruction from the most likely code, compared position by position
  with the input (EOS included), and sacrebleu's corpus BLEU of the decoded texts.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from . import data as data_lib
from .estimators import categorical_entropy, gaussian_sample, log_prob_of_codes, sample_categorical

logger = logging.getLogger(__name__)

ACTIVE_THRESHOLD = 0.01  # nats (KL_i) and variance (AU), as in He et al. 2019


def iterate_batches(seqs, batch_size: int, pad_id: int, rank: int = 0,
                    world: int = 1) -> Iterator[tuple[list[int], dict[str, Tensor]]]:
    """Length-sorted batches (little padding) of this process's rows; yields (indices, collated batch). Each process
    pads its rows to the width of the whole batch, so what depends on the width (the greedy reconstruction's length
    limit) does not depend on the number of processes.

    ``seqs``: a :class:`textdvae.data.TokenSplit` (its rows are fetched from Arrow one batch at a time) or a list of
    token-id lists."""
    arrow = isinstance(seqs, data_lib.TokenSplit)
    lengths = seqs.lengths if arrow else np.asarray([len(s) for s in seqs], dtype=np.int64)
    plan = data_lib.batch_plan(lengths, batch_size, shuffle=False)
    for k in range(len(plan)):
        batch = plan[k]
        rows = batch[rank::world].tolist()
        if rows:
            yield rows, data_lib.collate(seqs.rows(rows) if arrow else [seqs[i] for i in rows], pad_id,
                                         width=int(lengths[batch].max()))


def _reduce(accelerator, values: dict[str, Tensor]) -> dict[str, Tensor]:
    if accelerator is None or accelerator.num_processes == 1:
        return values
    return {k: accelerator.reduce(v.to(accelerator.device), reduction="sum").cpu() for k, v in values.items()}


@torch.no_grad()
def elbo_pass(model, batches, accelerator=None, seed: int = 0) -> dict:
    """Single-sample ELBO terms over a split (the quick validation used during training)."""
    model.eval()
    dev = model.device
    gen = torch.Generator(device=dev).manual_seed(seed)
    n_lat = _num_latent_dims(model.config)
    sums = {"rec": torch.zeros(()), "kl": torch.zeros(()), "kl_i": torch.zeros(max(n_lat, 1)),
            "n": torch.zeros(()), "tokens": torch.zeros(())}
    for _, batch in batches:
        out = model(batch["input_ids"].to(dev), batch["attention_mask"].to(dev), generator=gen)
        sums["rec"] += out.rec.sum().cpu()
        sums["n"] += out.rec.numel()
        sums["tokens"] += out.n_tokens.sum().cpu()
        if out.kl is not None:
            sums["kl"] += out.kl.sum().cpu()
            sums["kl_i"] += out.kl_per_latent.sum(0).cpu()
    sums = _reduce(accelerator, sums)
    n = sums["n"].item()
    rec, kl = sums["rec"].item() / n, sums["kl"].item() / n
    kl_i = (sums["kl_i"] / n).tolist() if n_lat else []
    return {"elbo": -(rec + kl), "rec": rec, "kl": kl, "kl_per_latent": kl_i,
            "active_latents": sum(k > ACTIVE_THRESHOLD for k in kl_i), "num_latents": n_lat,
            "ppl_elbo": math.exp((rec + kl) * n / sums["tokens"].item()), "n_sentences": int(n),
            "n_tokens": int(sums["tokens"].item())}


def _num_latent_dims(config) -> int:
    return {"categorical": config.num_latents, "gaussian": config.latent_dim, "none": 0}[config.latent]


def log_importance_weights(model, input_ids: Tensor, mask: Tensor, params: Tensor, samples: int,
                           generator: torch.Generator, temperature: float = 1.0) -> Tensor:
    """log p(x|z_s) + log p(z_s) - log r(z_s|x) for S samples z_s ~ r(z|x): (B, S) (Burda et al. 2016), where the
    proposal r is the posterior q(z|x) tempered by ``temperature`` (1: q itself; see the module docstring)."""
    B = input_ids.size(0)
    ids = input_ids.repeat_interleave(samples, 0)  # (B*S, T)
    m = mask.repeat_interleave(samples, 0)
    if model.config.latent == "categorical":
        logits = params.repeat_interleave(samples, 0) / temperature  # (B*S, N, K) the proposal's
        codes = sample_categorical(logits, generator)  # (B*S, N, K)
        log_prior = model.bottleneck.log_prior(codes)  # (B*S,)
        log_q = log_prob_of_codes(logits, codes)  # (B*S,)
    else:
        mu, logvar = (t.repeat_interleave(samples, 0) for t in params.unbind(-1))  # (B*S, Dz)
        logvar = logvar + 2 * math.log(temperature)  # the proposal's: std x T
        codes = gaussian_sample(mu, logvar, generator)  # (B*S, Dz)
        log_prior = _normal_log_density(codes, torch.zeros_like(mu), torch.zeros_like(logvar))
        log_q = _normal_log_density(codes, mu, logvar)
    log_px_z = -model.reconstruction(ids, m, codes)  # (B*S,)
    return (log_px_z + log_prior - log_q).view(B, samples)


def _normal_log_density(z: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    return (-0.5 * (math.log(2 * math.pi) + logvar + (z - mu) ** 2 / logvar.exp())).sum(-1)  # (B,)


def exact_log_likelihood(model, input_ids: Tensor, mask: Tensor, chunk: int = 4096) -> Tensor:
    """log p(x) = logsumexp over all K^N codes of log p(x|z) + log p(z), for each sentence: (B,)."""
    N, K = model.config.num_latents, model.config.num_categories
    dev = input_ids.device
    total = K ** N
    per_sentence = []
    for b in range(input_ids.size(0)):
        parts = []
        for start in range(0, total, chunk):
            idx = torch.arange(start, min(total, start + chunk), device=dev)  # code index -> digits base K
            digits = torch.stack([(idx // K ** (N - 1 - i)) % K for i in range(N)], dim=1)  # (C, N)
            codes = F.one_hot(digits, K).float()  # (C, N, K)
            C = codes.size(0)
            log_px_z = -model.reconstruction(input_ids[b:b + 1].expand(C, -1), mask[b:b + 1].expand(C, -1), codes)
            parts.append(log_px_z + model.bottleneck.log_prior(codes))  # (C,)
        per_sentence.append(torch.logsumexp(torch.cat(parts), 0))
    return torch.stack(per_sentence)


@torch.no_grad()
def evaluate(model, seqs: list[list[int]], tokenizer, accelerator=None, batch_size: int = 128, iw_samples: int = 100,
             seed: int = 0, iw_temperature: float = 1.0, exact_limit: int = 65536, exact_budget: int = 20_000_000,
             max_decode_length: int | None = None,
             extra_metrics: list[str] | None = None) -> dict:
    """Every metric of the module docstring over one split of encoded sentences (ids ending with EOS), plus any
    `evaluate` metrics named in `extra_metrics` scored on the greedy reconstructions."""
    import sacrebleu

    from .explore import greedy_decode, strip_eos

    model.eval()
    dev = model.device
    cfg = model.config
    if not (iw_temperature > 0 and math.isfinite(iw_temperature)):
        raise ValueError(f"iw_temperature must be a positive number, got {iw_temperature}; 1 samples from q(z|x)")
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    gen = torch.Generator(device=dev).manual_seed(seed)
    metrics = elbo_pass(model, iterate_batches(seqs, batch_size, cfg.pad_token_id, rank, world), accelerator, seed)
    exact = cfg.latent == "categorical" and cfg.num_categories ** cfg.num_latents <= exact_limit
    if exact and cfg.num_categories ** cfg.num_latents * len(seqs) > exact_budget:
        exact = False
        logger.warning(f"nll_exact skipped: {len(seqs)} sentences x {cfg.num_categories ** cfg.num_latents} codes is "
                       f"more than {exact_budget:,} decoder passes; evaluate fewer sentences to get it")
    sums = {"nll": torch.zeros(()), "nll_exact": torch.zeros(()), "correct": torch.zeros(()), "ref_tokens": torch.zeros(())}
    posteriors, mus, logvars, hyps, refs = [], [], [], [], []
    iw_batch = max(1, batch_size // max(1, iw_samples // 8))  # B*S decoder rows per pass stay bounded
    for rows, batch in iterate_batches(seqs, iw_batch, cfg.pad_token_id, rank, world):
        ids, mask = batch["input_ids"].to(dev), batch["attention_mask"].to(dev)
        if cfg.latent == "none":
            sums["nll"] += model.reconstruction(ids, mask, None).sum().cpu()
            cond = None
        else:
            params, _ = model.posterior(ids, mask)
            logw = log_importance_weights(model, ids, mask, params, iw_samples, gen, iw_temperature)  # (B, S)
            sums["nll"] -= (torch.logsumexp(logw, 1) - math.log(iw_samples)).sum().cpu()
            if cfg.latent == "categorical":
                probs = params.softmax(-1)  # (B, N, K)
                posteriors.append(probs.cpu())
                mode = F.one_hot(params.argmax(-1), cfg.num_categories).float()  # (B, N, K) most likely code
                cond = model.condition(mode)
                if exact:
                    sums["nll_exact"] -= exact_log_likelihood(model, ids, mask).sum().cpu()
            else:
                mu, logvar = params.unbind(-1)
                mus.append(mu.cpu())
                logvars.append(logvar.cpu())
                cond = model.condition(mu)  # the posterior mean
        limit = max_decode_length or ids.size(1) + 5
        out = greedy_decode(model, cond, ids.size(0), limit)
        for i, hyp in enumerate(out):
            ref = seqs[rows[i]]
            sums["correct"] += sum(int(j < len(hyp) and hyp[j] == tok) for j, tok in enumerate(ref))
            sums["ref_tokens"] += len(ref)
            hyps.append(strip_eos(hyp, cfg.eos_token_id))
            refs.append(strip_eos(ref, cfg.eos_token_id))
    sums = _reduce(accelerator, sums)
    n, n_tok = metrics["n_sentences"], metrics["n_tokens"]
    metrics["nll"] = sums["nll"].item() / n
    metrics["ppl"] = math.exp(sums["nll"].item() / n_tok)
    if exact:
        metrics["nll_exact"] = sums["nll_exact"].item() / n
        metrics["ppl_exact"] = math.exp(sums["nll_exact"].item() / n_tok)
    metrics["rec_token_acc"] = sums["correct"].item() / sums["ref_tokens"].item()
    hyp_text, ref_text = _decoded_texts(tokenizer, hyps, refs, accelerator)
    metrics["rec_bleu"] = sacrebleu.corpus_bleu(hyp_text, [ref_text], force=True).score  # tokenised text on purpose
    if extra_metrics:
        metrics.update(extra_metric_scores(extra_metrics, hyp_text, ref_text))
    metrics["iw_samples"] = iw_samples
    metrics["iw_temperature"] = iw_temperature
    if cfg.latent == "categorical":
        probs = _gather(accelerator, _cat(posteriors, cfg.num_latents, cfg.num_categories))
        metrics.update(categorical_latent_stats(probs))
    elif cfg.latent == "gaussian":
        metrics.update(gaussian_latent_stats(_gather(accelerator, _cat(mus, cfg.latent_dim)),
                                             _gather(accelerator, _cat(logvars, cfg.latent_dim)), gen))
    else:
        metrics.update(mi=0.0, au=0)
    return metrics


def categorical_latent_stats(probs: Tensor) -> dict:
    """probs (n, N, K) posterior probability vectors over a split -> mi, au, code usage."""
    aggregate = probs.mean(0)  # (N, K) aggregate posterior of each latent
    mi_i = categorical_entropy(aggregate.clamp_min(1e-12).log()) - categorical_entropy(probs.clamp_min(1e-12).log()).mean(0)
    cov_trace = probs.var(0, unbiased=False).sum(-1)  # (N,) trace of Cov_x(E_q[z_i])
    usage = F.one_hot(probs.argmax(-1), probs.size(-1)).float().mean(0)  # (N, K) how often each code is the mode
    return {"mi": mi_i.sum().item(), "mi_per_latent": mi_i.tolist(), "au": int((cov_trace > ACTIVE_THRESHOLD).sum()),
            "code_perplexity": categorical_entropy(usage.clamp_min(1e-12).log()).exp().tolist(),
            "code_usage": usage.tolist()}


def gaussian_latent_stats(mu: Tensor, logvar: Tensor, gen: torch.Generator) -> dict:
    """He et al. 2019: MI by Monte Carlo under the aggregate posterior; AU by Var_x(mu_d) > 0.01."""
    n, dz = mu.shape
    neg_entropy = (-0.5 * dz * math.log(2 * math.pi) - 0.5 * (1 + logvar).sum(-1)).mean()
    z = gaussian_sample(mu, logvar, gen)  # (n, Dz)
    log_density = torch.stack([_normal_log_density(z[i:i + 1].expand(n, -1), mu, logvar) for i in range(n)])  # (n, n)
    log_agg = torch.logsumexp(log_density, 1) - math.log(n)
    return {"mi": (neg_entropy - log_agg.mean()).item(), "au": int((mu.var(0, unbiased=False) > ACTIVE_THRESHOLD).sum())}


def _gather(accelerator, t: Tensor) -> Tensor:
    """Every process's rows, in rank order. The processes hold different numbers of rows (rows rank::world of each
    batch), and a collective gather needs equal shapes: pad each to the largest count, gather, cut the padding off."""
    if accelerator is None or accelerator.num_processes == 1:
        return t
    dev = accelerator.device
    sizes = accelerator.gather(torch.tensor([t.size(0)], device=dev)).cpu().tolist()
    width = max(sizes)
    padded = t.new_zeros((width, *t.shape[1:]))
    padded[: t.size(0)] = t
    gathered = accelerator.gather(padded.to(dev)).cpu()
    return torch.cat([gathered[i * width: i * width + n] for i, n in enumerate(sizes)])


def _cat(parts: list[Tensor], *row_shape: int) -> Tensor:
    """torch.cat that allows a process with no rows (a split smaller than the number of processes)."""
    return torch.cat(parts) if parts else torch.zeros((0, *row_shape))


def _decoded_texts(tokenizer, hyps: list[list[int]], refs: list[list[int]], accelerator=None) -> tuple[list[str], list[str]]:
    if accelerator is not None and accelerator.num_processes > 1:
        from accelerate.utils import gather_object
        hyps, refs = gather_object(hyps), gather_object(refs)
    return tokenizer.batch_decode(hyps, skip_special_tokens=True), tokenizer.batch_decode(refs, skip_special_tokens=True)


def extra_metric_scores(names: list[str], hyps: list[str], refs: list[str]) -> dict[str, float]:
    """Scores of Hugging Face `evaluate` metrics (by name or local path) on the greedy reconstructions. `evaluate`
    fetches metric scripts from the Hub, so offline a metric that is not cached or local is skipped with a message."""
    try:
        import evaluate as hf_evaluate
    except ImportError:
        logger.warning(f"extra metrics {', '.join(names)} skipped: pip install 'textdvae[metrics]' (evaluate)")
        return {}
    scores: dict[str, float] = {}
    for name in names:
        try:
            metric = hf_evaluate.load(name)
        except Exception as err:  # evaluate raises network, file and import errors of many kinds here
            logger.warning(f"extra metric {name!r} skipped: it could not be loaded ({type(err).__name__}: {err})")
            continue
        result = metric.compute(predictions=hyps, references=refs)
        scores.update({f"{Path(name).stem}_{k}": float(v) for k, v in result.items() if isinstance(v, (int, float))})
    return scores


def format_metrics(metrics: dict) -> str:
    """The headline metrics as an aligned text block (what `textdvae train` and `textdvae eval` print)."""
    keys = ("elbo", "rec", "kl", "nll", "nll_exact", "ppl", "mi", "active_latents", "au", "rec_token_acc", "rec_bleu")
    rows = [f"  {k:<15} {metrics[k]:.4g}" if isinstance(metrics.get(k), float) else f"  {k:<15} {metrics.get(k)}"
            for k in keys if k in metrics]
    return f"metrics on {metrics.get('split', '?')}:\n" + "\n".join(rows)
