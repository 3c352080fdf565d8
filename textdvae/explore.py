"""Decoding and exploring the code space: encode, decode, reconstruct, sample, interpolate, traverse.

Decoding is incremental: the GRU carries its state and the Transformer keeps a key/value cache, so each new token
costs one decoder step, not a re-run over the whole prefix (benchmarks/decode.py measures the difference).
Codes are given either as category indices (B, N) or as vectors on the simplex (B, N, K).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def _device(model) -> torch.device:
    return next(model.parameters()).device


def tokenize(model, texts: list[str], max_length: int | None = None) -> dict[str, Tensor]:
    """Texts -> right-padded ids ending with EOS, as in training. Empty texts are refused, long ones truncated."""
    from .data import collate

    if isinstance(texts, str):
        texts = [texts]
    for i, t in enumerate(texts):
        if not t or not t.strip():
            raise ValueError(f"text {i} is empty; give at least one word")
    limit = max_length or (model.config.max_position_embeddings if model.config.decoder_type == "transformer" else 512)
    tok = model.tokenizer
    ids = tok(list(texts), add_special_tokens=False)["input_ids"]
    seqs = [s[: limit - 1] + [model.config.eos_token_id] for s in ids]
    batch = collate(seqs, model.config.pad_token_id)
    return {k: v.to(_device(model)) for k, v in batch.items()}


def as_one_hot(model, codes: Tensor | list) -> Tensor:
    """(B, N) category indices or (B, N, K) simplex vectors -> (B, N, K) float."""
    codes = torch.as_tensor(codes, device=_device(model))
    K = model.config.num_categories
    if codes.dim() == 2:
        if codes.min() < 0 or codes.max() >= K:
            raise ValueError(f"codes must be category indices in [0, {K}), got values {codes.min().item()}..{codes.max().item()}")
        return F.one_hot(codes.long(), K).float()
    return codes.float()


@torch.no_grad()
def encode(model, texts: list[str]) -> tuple[Tensor, Tensor]:
    """-> most likely codes (B, N) and posterior probabilities q(z_i | x) (B, N, K)."""
    if model.config.latent != "categorical":
        raise ValueError(f"encode gives categorical codes; this model has latent={model.config.latent!r}")
    batch = tokenize(model, texts)
    logits, _ = model.posterior(batch["input_ids"], batch["attention_mask"])  # (B, N, K)
    probs = logits.softmax(-1)
    return probs.argmax(-1), probs


@torch.no_grad()
def decode(model, codes, strategy: str = "greedy", num_beams: int = 4, top_k: int = 0, top_p: float = 1.0,
           temperature: float = 1.0, num_return_sequences: int = 1, max_length: int = 64,
           generator: torch.Generator | None = None) -> list[str] | list[list[str]]:
    """Codes -> texts. strategy: greedy | beam (num_beams) | sample (temperature, top_k, top_p).
    With num_return_sequences > 1 each input gives a list of texts."""
    cond = model.condition(as_one_hot(model, codes)) if model.config.latent == "categorical" else codes
    B = cond.size(0) if cond is not None else 1
    R = num_return_sequences
    if strategy == "greedy" and R == 1:
        ids = greedy_decode(model, cond, B, max_length)
    elif strategy == "sample":
        cond = cond.repeat_interleave(R, 0) if cond is not None else None
        ids = sample_decode(model, cond, B * R, max_length, temperature, top_k, top_p, generator)
    elif strategy == "beam":
        if R > num_beams:
            raise ValueError(f"num_return_sequences={R} must be <= num_beams={num_beams}")
        ids = beam_decode(model, cond, B, max_length, num_beams, R)
    else:
        raise ValueError(f"strategy={strategy!r} is not one of greedy, beam, sample (greedy gives one sequence)")
    texts = model.tokenizer.batch_decode([_strip(s, model.config.eos_token_id) for s in ids], skip_special_tokens=True)
    return texts if R == 1 else [texts[i * R:(i + 1) * R] for i in range(B)]


@torch.no_grad()
def greedy_decode(model, cond: Tensor | None, batch_size: int, max_length: int) -> list[list[int]]:
    """Most likely next token at every step from conditioning vectors (B, M, D); ids up to and including EOS."""
    return _step_decode(model, cond, batch_size, max_length, lambda logp: logp.argmax(-1))


@torch.no_grad()
def sample_decode(model, cond: Tensor | None, batch_size: int, max_length: int, temperature: float = 1.0,
                  top_k: int = 0, top_p: float = 1.0, generator: torch.Generator | None = None) -> list[list[int]]:
    """Ancestral sampling with temperature, top-k and nucleus (top-p, Holtzman et al. 2020) truncation."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}; use strategy='greedy' for the argmax")

    def pick(logp: Tensor) -> Tensor:
        logits = logp / temperature  # (B, V)
        if top_k > 0:
            kth = logits.topk(min(top_k, logits.size(-1)), dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, -math.inf)
        if top_p < 1.0:
            sorted_logits, order = logits.sort(-1, descending=True)
            cum = sorted_logits.softmax(-1).cumsum(-1)
            drop = cum - sorted_logits.softmax(-1) > top_p  # keep the smallest set whose mass reaches top_p
            logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, -math.inf))
        return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(-1)

    return _step_decode(model, cond, batch_size, max_length, pick)


def _step_decode(model, cond, batch_size: int, max_length: int, pick) -> list[list[int]]:
    c = model.config
    dev = _device(model)
    state = model.decoder.start(cond, batch_size)
    tokens = torch.full((batch_size, 1), c.bos_token_id, dtype=torch.long, device=dev)  # (B, 1)
    steps, done = [], torch.zeros(batch_size, dtype=torch.bool, device=dev)
    for _ in range(max_length):
        h, state = model.decoder(model.embed_tokens(tokens), state)  # (B, 1, H): one step, state carried
        nxt = pick(model.token_log_probs(h[:, -1]))  # (B,)
        steps.append(nxt)
        done |= nxt == c.eos_token_id
        if done.all():
            break
        tokens = nxt.unsqueeze(1)
    out = torch.stack(steps, 1).tolist() if steps else [[] for _ in range(batch_size)]
    return [_cut(row, c.eos_token_id) for row in out]


def beam_decode(model, cond: Tensor | None, batch_size: int, max_length: int, num_beams: int,
                num_return: int = 1) -> list[list[int]]:
    """Beam search on summed log-probabilities; finished hypotheses are ranked by log-prob / length."""
    c = model.config
    dev, W = _device(model), num_beams
    cond = cond.repeat_interleave(W, 0) if cond is not None else None  # (B*W, M, D)
    state = model.decoder.start(cond, batch_size * W)
    tokens = torch.full((batch_size * W, 1), c.bos_token_id, dtype=torch.long, device=dev)
    scores = torch.full((batch_size, W), -math.inf, device=dev)
    scores[:, 0] = 0.0  # all beams start identical: keep one alive
    history = torch.empty(batch_size * W, 0, dtype=torch.long, device=dev)
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(batch_size)]
    for t in range(max_length):
        h, state = model.decoder(model.embed_tokens(tokens), state)
        logp = model.token_log_probs(h[:, -1])  # (B*W, V)
        V = logp.size(-1)
        total = (scores.view(-1, 1) + logp).view(batch_size, W * V)  # (B, W*V)
        top, idx = total.topk(2 * W, dim=-1)  # spare candidates replace the ones that finish
        beam, tok = idx // V, idx % V
        new_scores = torch.full((batch_size, W), -math.inf, device=dev)
        src = torch.zeros(batch_size, W, dtype=torch.long, device=dev)
        new_tok = torch.full((batch_size, W), c.eos_token_id, dtype=torch.long, device=dev)
        for b in range(batch_size):
            k = 0
            for score, bm, tk in zip(top[b].tolist(), beam[b].tolist(), tok[b].tolist()):
                if score == -math.inf:
                    break
                if tk == c.eos_token_id:
                    seq = history[b * W + bm].tolist() + [tk]
                    finished[b].append((score / len(seq), seq))
                elif k < W:
                    new_scores[b, k], src[b, k], new_tok[b, k] = score, bm, tk
                    k += 1
        flat_src = (src + torch.arange(batch_size, device=dev).unsqueeze(1) * W).view(-1)  # (B*W,)
        history = torch.cat([history[flat_src], new_tok.view(-1, 1)], dim=1)
        state = _reorder(state, flat_src)
        scores, tokens = new_scores, new_tok.view(-1, 1)
        if all(len(f) >= W for f in finished) or torch.isinf(scores).all():
            break
    results = []
    for b in range(batch_size):
        pool = finished[b] or [(scores[b, k].item() / max(1, history.size(1)), history[b * W + k].tolist()) for k in range(W)]
        pool.sort(key=lambda item: -item[0])
        results.extend(seq for _, seq in pool[:num_return])
    return results


def _reorder(state: dict, index: Tensor) -> dict:
    """Select rows of a decoder state after a beam step: GRU {"h": (L, B, H), "in": (B, 1, E)}, Transformer
    {"caches": [{"k", "v": (B, nh, L, hs)}], "t"}."""
    out = {}
    for key, value in state.items():
        if isinstance(value, Tensor):
            out[key] = value.index_select(1 if key == "h" else 0, index)
        elif isinstance(value, list):
            out[key] = [_reorder(v, index) for v in value]
        else:
            out[key] = value
    return out


@torch.no_grad()
def reconstruct(model, texts: list[str], **decode_kwargs) -> list[str]:
    """Encode to the most likely code and decode it (greedy unless told otherwise)."""
    codes, _ = encode(model, texts)
    return decode(model, codes, **decode_kwargs)


@torch.no_grad()
def sample(model, n: int, generator: torch.Generator | None = None, **decode_kwargs) -> tuple[list[str], Tensor]:
    """Codes from the uniform prior p(z) -> (texts, codes (n, N))."""
    N, K = model.config.num_latents, model.config.num_categories
    codes = torch.randint(0, K, (n, N), generator=generator, device="cpu").to(_device(model))
    return decode(model, codes, generator=generator, **decode_kwargs), codes


@torch.no_grad()
def sentence_log_likelihood(model, texts: list[str], codes: Tensor) -> Tensor:
    """log p(x | z) under the decoder, (B,) nats."""
    batch = tokenize(model, texts)
    return -model.reconstruction(batch["input_ids"], batch["attention_mask"], as_one_hot(model, codes))


@torch.no_grad()
def interpolate(model, a: str, b: str, method: str = "hamming", steps: int = 5, max_length: int = 64) -> list[dict]:
    """A path of sentences from A's reconstruction to B's.

    hamming: A's and B's codes differ in d latents; change them one at a time, each time picking the latent whose
        change gives the decoded sentence the highest log p(x | z) (a greedy path): d + 1 points.
    simplex: decode from soft codes (1 - t) q_A + t q_B, the posteriors mixed per latent, at `steps` values of t.
    Each point: {"step", "text", "codes", "repeated"} where repeated marks a text equal to the previous point's.
    """
    codes, probs = encode(model, [a, b])  # (2, N), (2, N, K)
    if method == "hamming":
        current, target = codes[0].clone(), codes[1]
        path = [current.clone()]
        remaining = [i for i in range(len(current)) if current[i] != target[i]]
        while remaining:
            candidates = []
            for i in remaining:
                trial = current.clone()
                trial[i] = target[i]
                candidates.append(trial)
            cand = torch.stack(candidates)  # (C, N)
            texts = decode(model, cand, max_length=max_length)
            score = sentence_log_likelihood(model, texts, cand)  # (C,)
            best = int(score.argmax())
            current = candidates[best]
            remaining.pop(best)
            path.append(current.clone())
        points = torch.stack(path)  # (d + 1, N)
        texts = decode(model, points, max_length=max_length)
    elif method == "simplex":
        if steps < 2:
            raise ValueError(f"steps must be >= 2 for a simplex path, got {steps}")
        t = torch.linspace(0, 1, steps, device=probs.device).view(-1, 1, 1)  # (S, 1, 1)
        soft = (1 - t) * probs[0] + t * probs[1]  # (S, N, K)
        texts = decode(model, soft, max_length=max_length)
        points = soft.argmax(-1)
    else:
        raise ValueError(f"method={method!r} is not one of hamming, simplex")
    return [{"step": i, "text": text, "codes": points[i].tolist(), "repeated": i > 0 and text == texts[i - 1]}
            for i, text in enumerate(texts)]


@torch.no_grad()
def traverse(model, text: str, latent: int, max_length: int = 64) -> list[dict]:
    """Decode the text's code with latent `latent` set to each of its K categories: [{"category", "text", "codes"}]."""
    N, K = model.config.num_latents, model.config.num_categories
    if not 0 <= latent < N:
        raise ValueError(f"latent={latent} is out of range: this model has latents 0..{N - 1}")
    codes, _ = encode(model, [text])
    grid = codes.repeat(K, 1)  # (K, N)
    grid[:, latent] = torch.arange(K, device=grid.device)
    texts = decode(model, grid, max_length=max_length)
    original = int(codes[0, latent])
    return [{"category": k, "text": texts[k], "codes": grid[k].tolist(), "original": k == original} for k in range(K)]


def _cut(ids: list[int], eos: int) -> list[int]:
    return ids[: ids.index(eos) + 1] if eos in ids else ids


def _strip(ids: list[int], eos: int) -> list[int]:
    return ids[: ids.index(eos)] if eos in ids else ids
