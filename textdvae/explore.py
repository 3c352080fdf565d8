"""Decoding and exploring the code space: encode, decode, reconstruct, sample, interpolate, traverse.

Decoding is incremental: the GRU carries its state and the Transformer keeps a key/value cache, so each new token
costs one decoder step, not a re-run over the whole prefix (benchmarks/decode.py measures the difference).
Codes are given either as category indices (B, N) or as vectors on the simplex (B, N, K); a Gaussian model takes
z (B, Dz), a model without a latent takes None.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

GRU_MAX_TOKENS = 512  # tokens kept of a text (EOS included) when no Transformer bounds the length
ENCODE_ROWS = 512  # texts encoded together, at most
ENCODE_TOKENS = 2048  # rows x padded length of one encoder batch: texts of similar length are encoded together;
# measured on PTB (benchmarks/serving.py): 1,024 to 2,048 is fastest, larger batches fall out of cache
DECODE_ROWS = 1024  # sequences decoded together (beams and returned sequences counted)


def max_tokens(model) -> int:
    """The longest token sequence (EOS included) the encoder and the decoder can take."""
    c = model.config
    return c.max_position_embeddings if "transformer" in (c.encoder_type, c.decoder_type) else GRU_MAX_TOKENS


def tokenize(model, texts: list[str], max_length: int | None = None, allow_empty: bool = False) -> dict[str, Tensor]:
    """Texts -> right-padded ids ending with EOS, as in training. Empty texts are refused (or, `allow_empty`, the
    sentence of EOS alone: what a language model scores for a decoder that ended at once), long ones truncated to
    `max_length` tokens (EOS included; default: what the model's positions allow)."""
    return _batch(model, token_ids(model, texts, max_length, allow_empty))


def token_ids(model, texts: list[str], max_length: int | None = None, allow_empty: bool = False) -> list[list[int]]:
    """Like `tokenize`, but unpadded id lists."""
    from .data import clip_characters, with_eos

    texts = list(texts) if allow_empty else _check_texts(texts)
    limit = min(max_length or max_tokens(model), max_tokens(model))
    ids = model.tokenizer(clip_characters(list(texts), limit), add_special_tokens=False)["input_ids"]
    return [with_eos(s, limit, model.config.eos_token_id) for s in ids]


def _batch(model, seqs: list[list[int]]) -> dict[str, Tensor]:
    from .data import collate

    return {k: v.to(model.device) for k, v in collate(seqs, model.config.pad_token_id).items()}


def length_chunks(lengths: list[int], max_tokens: int, max_rows: int) -> list[list[int]]:
    """Indices grouped by length for batched inference: shortest first, each group at most `max_rows` rows and
    rows x its longest length at most `max_tokens` (one row always fits). A batch of mixed lengths then pays little
    for padding: in a random batch of 256 PTB sentences the longest is 2.4 to 2.6 times the mean."""
    chunks: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lengths.__getitem__):
        if chunks and len(chunks[-1]) < max_rows and (len(chunks[-1]) + 1) * lengths[i] <= max_tokens:
            chunks[-1].append(i)
        else:
            chunks.append([i])
    return chunks


def _check_texts(texts) -> list[str]:
    texts = [texts] if isinstance(texts, str) else list(texts)
    if not texts:
        raise ValueError("no texts given")
    for i, t in enumerate(texts):
        if not isinstance(t, str) or not t.strip():
            raise ValueError(f"text {i} is empty ({t!r}); give at least one word")
    return texts


def as_one_hot(model, codes: Tensor | list) -> Tensor:
    """(B, N) category indices, or (B, N, K) vectors on the simplex -> (B, N, K) float; a single code (N,) is a
    batch of one."""
    N, K = model.config.num_latents, model.config.num_categories
    codes = torch.as_tensor(codes, device=model.device)
    if codes.dim() == 1:
        codes = codes.unsqueeze(0)
    if codes.dim() == 2:
        if codes.is_floating_point() and not torch.equal(codes, codes.round()):
            raise ValueError("codes (B, N) must be category indices; give soft codes as (B, N, K)")
        if codes.size(1) != N:
            raise ValueError(f"codes have {codes.size(1)} latents, this model has N={N}")
        if codes.numel() and (codes.min() < 0 or codes.max() >= K):
            raise ValueError(f"codes must be category indices in [0, {K}), got values "
                             f"{int(codes.min())}..{int(codes.max())}")
        return F.one_hot(codes.long(), K).float()
    if codes.dim() != 3 or codes.shape[1:] != (N, K):
        raise ValueError(f"codes must be (B, N={N}) indices or (B, N={N}, K={K}) vectors, "
                         f"got shape {tuple(codes.shape)}")
    return codes.float()


def conditioning(model, codes) -> Tensor | None:
    """Whatever codes the model's latent takes -> the decoder's conditioning vectors (B, M, D), or None."""
    latent = model.config.latent
    if codes is None and latent != "none":
        raise ValueError(f"a model with latent={latent!r} decodes from codes; none given")
    if latent == "categorical":
        return model.condition(as_one_hot(model, codes))
    if latent == "gaussian":
        z = torch.as_tensor(codes, device=model.device, dtype=torch.float)
        z = z.unsqueeze(0) if z.dim() == 1 else z
        if z.dim() != 2 or z.size(1) != model.config.latent_dim:
            raise ValueError(f"a Gaussian model decodes z of shape (B, {model.config.latent_dim}), "
                             f"got {tuple(z.shape)}")
        return model.condition(z)
    return None


@torch.no_grad()
def encode(model, texts: list[str]) -> tuple[Tensor, Tensor]:
    """Categorical: -> most likely codes (B, N) and posterior probabilities q(z_i | x) (B, N, K).
    Gaussian: -> posterior means (B, Dz), the code a Gaussian model is decoded from here, and standard deviations
    (B, Dz)."""
    if model.config.latent == "none":
        raise ValueError("this model has no latent (latent='none'): there is nothing to encode")
    seqs = token_ids(model, texts)  # refuses empty texts before encoding any
    chunks = length_chunks([len(s) for s in seqs], ENCODE_TOKENS, ENCODE_ROWS)
    parts = []
    for rows in chunks:
        batch = _batch(model, [seqs[i] for i in rows])
        params, _ = model.posterior(batch["input_ids"], batch["attention_mask"])  # (b, N, K) or (b, Dz, 2)
        parts.append(params.softmax(-1) if model.config.latent == "categorical" else params)
    order = torch.tensor([i for rows in chunks for i in rows], device=parts[0].device)
    out = torch.cat(parts)[order.argsort()]  # back in the order given
    if model.config.latent == "gaussian":
        mu, logvar = out.unbind(-1)  # (B, Dz) each
        return mu, (0.5 * logvar).exp()
    return out.argmax(-1), out  # (B, N), (B, N, K)


@torch.no_grad()
def decode(model, codes, strategy: str = "greedy", num_beams: int = 4, top_k: int = 0, top_p: float = 1.0,
           temperature: float = 1.0, num_return_sequences: int = 1, max_length: int = 64,
           generator: torch.Generator | None = None, batch_size: int | None = None,
           length_penalty: float = 0.0) -> list[str] | list[list[str]]:
    """Codes -> texts. strategy: greedy | beam (num_beams, length_penalty) | sample (temperature, top_k, top_p).
    With num_return_sequences > 1 each input gives a list of texts. A model without a latent takes codes=None and
    `batch_size` sentences."""
    ids = decode_ids(model, codes, strategy, num_beams, top_k, top_p, temperature, num_return_sequences, max_length,
                     generator, batch_size, length_penalty)
    texts = ids_to_texts(model.tokenizer, ids, model.config.eos_token_id)
    R = num_return_sequences
    return texts if R == 1 else [texts[i:i + R] for i in range(0, len(texts), R)]


@torch.no_grad()
def decode_ids(model, codes, strategy: str = "greedy", num_beams: int = 4, top_k: int = 0, top_p: float = 1.0,
               temperature: float = 1.0, num_return_sequences: int = 1, max_length: int = 64,
               generator: torch.Generator | None = None, batch_size: int | None = None,
               length_penalty: float = 0.0) -> list[list[int]]:
    """Like `decode`, but token ids up to and including EOS (no EOS when `max_length` cut the sentence short);
    the R sequences of each input are consecutive."""
    cond = conditioning(model, codes)
    B = cond.size(0) if cond is not None else (batch_size or 1)
    R = num_return_sequences
    if R < 1:
        raise ValueError(f"num_return_sequences must be >= 1, got {R}")
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    if model.config.decoder_type == "transformer":  # positions 0 .. max_length - 1 must exist
        max_length = min(max_length, model.config.max_position_embeddings)
    if strategy == "greedy" and R != 1:
        raise ValueError("greedy decoding gives one sequence per code; use strategy='beam' or 'sample' for more")
    if strategy == "sample":
        truncate_logits(torch.zeros(1, 2), temperature, top_k, top_p)  # refuse bad settings before decoding
    if strategy == "beam" and not 1 <= R <= num_beams:
        raise ValueError(f"num_return_sequences={R} must be between 1 and num_beams={num_beams}")
    if strategy not in ("greedy", "sample", "beam"):
        raise ValueError(f"strategy={strategy!r} is not one of greedy, beam, sample")
    rows = max(1, DECODE_ROWS // (R * (num_beams if strategy == "beam" else 1)))  # inputs per chunk
    out = []
    for start in range(0, B, rows):  # chunks bound the memory of the (rows, V) output at every step
        n = min(rows, B - start)
        c = cond[start:start + n] if cond is not None else None
        if strategy == "greedy":
            out += greedy_decode(model, c, n, max_length)
        elif strategy == "sample":
            c = c.repeat_interleave(R, 0) if c is not None else None
            out += sample_decode(model, c, n * R, max_length, temperature, top_k, top_p, generator)
        else:
            out += beam_decode(model, c, n, max_length, num_beams, R, length_penalty)
    return out


@torch.no_grad()
def greedy_decode(model, cond: Tensor | None, batch_size: int, max_length: int) -> list[list[int]]:
    """Most likely next token at every step from conditioning vectors (B, M, D); ids up to and including EOS."""
    return _step_decode(model, cond, batch_size, max_length, lambda h: greedy_next(model, h))


def greedy_next(model, h: Tensor) -> Tensor:
    """Hidden states (B, H) -> the most likely next tokens (B,), without normalizing: the argmax of a full softmax's
    logits (the normalization costs a fifth of a greedy step at V = 10k and changes no argmax), or an adaptive
    softmax's own `predict`, which skips the tail clusters where the head already decides."""
    if getattr(model, "adaptive", None) is not None:
        return model.adaptive.predict(h)
    if hasattr(model, "_logits"):
        return model._logits(h).argmax(-1)
    return model.token_log_probs(h).argmax(-1)


def truncate_logits(logp: Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """Next-token log-probabilities (B, V) -> logits of the sampling distribution: divided by the temperature, then
    only the top_k most likely tokens kept (0: all), then only the smallest set of most likely tokens whose
    probability (after top-k) reaches top_p (nucleus sampling, Holtzman et al. 2020; the most likely token is always
    kept). Dropped tokens get -inf."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}; use strategy='greedy' for the argmax")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0 keeps every token), got {top_k}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    logits = logp / temperature  # (B, V)
    if 0 < top_k < logits.size(-1):
        kth = logits.topk(top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, -math.inf)
    if top_p < 1.0:
        sorted_logits, order = logits.sort(-1, descending=True)
        probs = sorted_logits.softmax(-1)
        before = probs.cumsum(-1) - probs  # mass of the more likely tokens
        drop = before >= top_p
        drop[:, 0] = False
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, -math.inf))
    return logits


@torch.no_grad()
def sample_decode(model, cond: Tensor | None, batch_size: int, max_length: int, temperature: float = 1.0,
                  top_k: int = 0, top_p: float = 1.0, generator: torch.Generator | None = None) -> list[list[int]]:
    """Ancestral sampling with temperature, top-k and nucleus (top-p) truncation (see `truncate_logits`)."""
    truncate_logits(torch.zeros(1, 2), temperature, top_k, top_p)  # refuse bad settings before decoding

    def pick(h: Tensor) -> Tensor:
        probs = truncate_logits(model.token_log_probs(h), temperature, top_k, top_p).softmax(-1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)

    return _step_decode(model, cond, batch_size, max_length, pick)


def _step_decode(model, cond, batch_size: int, max_length: int, pick) -> list[list[int]]:
    """One decoder step per token, the state carried; pick(hidden states (b, H)) -> next ids (b,). A sentence leaves
    the batch once it has ended (its state rows are dropped), so each step costs the sentences still being written,
    not the whole batch until the longest one ends."""
    c = model.config
    dev = model.device
    state = model.decoder.start(cond)
    tokens = torch.full((batch_size, 1), c.bos_token_id, dtype=torch.long, device=dev)  # (b, 1)
    alive = torch.arange(batch_size, device=dev)  # (b,) the batch rows still being decoded
    steps = []  # (rows, their next ids) per step
    for _ in range(max_length):
        h, state = model.decoder(model.embed_tokens(tokens), state)  # (b, 1, H): one step, state carried
        nxt = pick(h[:, -1])  # (b,)
        steps.append((alive, nxt))
        going = nxt != c.eos_token_id
        if not going.all():
            if not going.any():
                break
            keep = going.nonzero().squeeze(1)
            alive, nxt, state = alive[keep], nxt[keep], _reorder(state, keep)
        tokens = nxt.unsqueeze(1)
    out: list[list[int]] = [[] for _ in range(batch_size)]
    for rows, ids in steps:
        for row, token in zip(rows.tolist(), ids.tolist()):
            out[row].append(token)
    return out


@torch.no_grad()
def beam_decode(model, cond: Tensor | None, batch_size: int, max_length: int, num_beams: int,
                num_return: int = 1, length_penalty: float = 0.0,
                return_scores: bool = False) -> list[list[int]] | list[tuple[list[int], float]]:
    """Beam search on summed log-probabilities; finished hypotheses are ranked by log-prob / length**length_penalty
    (EOS counted), as in transformers. The default 0 looks for the most likely sentence; > 0 favours longer ones
    (transformers' default is 1).

    At each step the 2W best continuations are taken; those ending in EOS within the best W become finished
    hypotheses and the best W others go on. A sentence is done when it has W finished hypotheses and no running beam
    can beat the worst of them: exactly with length_penalty=0 (a running score only falls), and with transformers'
    heuristic otherwise (the running beam's score as if it ended at the next step). With W = 1 and
    length_penalty=0 this is greedy decoding. -> num_return sequences per input, best first, consecutive; with
    return_scores, (sequence, summed log-probability) pairs."""
    c = model.config
    dev, W = model.device, num_beams
    if W < 1:
        raise ValueError(f"num_beams must be >= 1, got {W}")
    cond = cond.repeat_interleave(W, 0) if cond is not None else None  # (B*W, M, D)
    state = model.decoder.start(cond)
    tokens = torch.full((batch_size * W, 1), c.bos_token_id, dtype=torch.long, device=dev)
    scores = torch.full((batch_size, W), -math.inf, device=dev)
    scores[:, 0] = 0.0  # all beams start identical: keep one alive
    history = torch.empty(batch_size * W, 0, dtype=torch.long, device=dev)
    finished: list[list[tuple[float, list[int], float]]] = [[] for _ in range(batch_size)]  # (rank score, ids, log p)
    done = [False] * batch_size
    offsets = torch.arange(batch_size, device=dev).unsqueeze(1) * W  # (B, 1)
    for t in range(max_length):
        h, state = model.decoder(model.embed_tokens(tokens), state)
        logp = model.token_log_probs(h[:, -1])  # (B*W, V)
        V = logp.size(-1)
        total = (scores.view(-1, 1) + logp).view(batch_size, W * V)  # (B, W*V)
        top, idx = total.topk(min(2 * W, W * V), dim=-1)  # spare candidates replace the ones that finish
        beam, tok = idx // V, idx % V
        new_scores = torch.full((batch_size, W), -math.inf, device=dev)
        src = torch.zeros(batch_size, W, dtype=torch.long, device=dev)
        new_tok = torch.full((batch_size, W), c.eos_token_id, dtype=torch.long, device=dev)
        length = t + 1  # tokens of a hypothesis that ends now, EOS included
        for b in range(batch_size):
            if done[b]:
                continue
            k = 0
            for rank, (score, bm, tk) in enumerate(zip(top[b].tolist(), beam[b].tolist(), tok[b].tolist())):
                if score == -math.inf or k == W:
                    break
                if tk == c.eos_token_id:
                    if rank < W:  # an EOS outside the best W would not have been kept by a beam of W
                        seq = history[b * W + bm].tolist() + [tk]
                        finished[b].append((score / length ** length_penalty, seq, score))
                else:
                    new_scores[b, k], src[b, k], new_tok[b, k] = score, bm, tk
                    k += 1
            finished[b].sort(key=lambda item: -item[0])
            del finished[b][W:]
            best_running = new_scores[b, 0].item()
            bound = best_running / (length + 1) ** length_penalty if length_penalty > 0 else best_running
            if len(finished[b]) == W and finished[b][-1][0] >= bound:
                done[b] = True
        if all(done):
            break
        flat_src = (src + offsets).view(-1)  # (B*W,)
        history = torch.cat([history[flat_src], new_tok.view(-1, 1)], dim=1)
        state = _reorder(state, flat_src)
        scores, tokens = new_scores, new_tok.view(-1, 1)
    results = []
    for b in range(batch_size):
        pool = list(finished[b])
        if not done[b]:  # max_length reached: running beams compete as they are, without EOS
            n = max(1, history.size(1))
            pool += [(scores[b, k].item() / n ** length_penalty, history[b * W + k].tolist(), scores[b, k].item())
                     for k in range(W) if scores[b, k] > -math.inf]
        pool.sort(key=lambda item: -item[0])
        pool += [pool[0]] * (num_return - len(pool))  # fewer distinct hypotheses than asked: repeat the best
        results.extend((seq, logp) if return_scores else seq for _, seq, logp in pool[:num_return])
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
        elif isinstance(value, dict):
            out[key] = _reorder(value, index)
        else:
            out[key] = value
    return out


@torch.no_grad()
def reconstruct(model, texts: list[str], **decode_kwargs) -> list[str]:
    """Encode to the most likely code (a Gaussian model: the posterior mean) and decode it (greedy unless told
    otherwise)."""
    codes, _ = encode(model, texts)
    return decode(model, codes, **decode_kwargs)


@torch.no_grad()
def sample(model, n: int, generator: torch.Generator | None = None, **decode_kwargs) -> tuple[list[str], Tensor | None]:
    """n codes from the prior p(z) (uniform or the learned autoregressive prior; N(0, I) for a Gaussian model)
    -> (texts, codes (n, N) or z (n, Dz); None without a latent)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    c = model.config
    if c.latent == "categorical":
        codes = model.bottleneck.sample_prior(n, generator)
    elif c.latent == "gaussian":
        codes = torch.randn(n, c.latent_dim, generator=generator, device="cpu")
    else:
        codes = None
    if codes is not None:
        codes = codes.to(model.device)
    return decode(model, codes, generator=generator, batch_size=n, **decode_kwargs), codes


@torch.no_grad()
def ids_log_likelihood(model, ids: list[list[int]], codes) -> Tensor:
    """log p(x | z) under the decoder of token-id sequences (as `decode_ids` gives them), (B,) nats."""
    from .data import collate

    batch = collate([s or [model.config.eos_token_id] for s in ids], model.config.pad_token_id)
    input_ids, mask = batch["input_ids"].to(model.device), batch["attention_mask"].to(model.device)
    return -model.reconstruction(input_ids, mask, as_one_hot(model, codes))


@torch.no_grad()
def interpolate(model, a: str, b: str, method: str | None = None, steps: int = 5, max_length: int = 64) -> list[dict]:
    """A path of sentences from A's reconstruction to B's (greedy decoding). method: hamming (the default) or
    simplex for a categorical model, linear (the only one) for a Gaussian model.

    hamming: A's and B's codes differ in d latents; change them one at a time, each time picking the latent whose
        change gives the decoded sentence the highest log p(x | z) (a greedy path): d + 1 points, the first A's
        reconstruction and the last B's.
    simplex: decode from soft codes (1 - t) q_A + t q_B, the posteriors mixed per latent, at `steps` values of t;
        "codes" is the most likely category of each latent of the mixture, "t" the mixing weight.
    linear: decode from the posterior means (1 - t) mu_A + t mu_B at `steps` values of t; "codes" is the mean.
    Each point: {"step", "text", "codes", "repeated"}, where repeated marks a text equal to the previous point's
    (kept, not dropped).
    """
    gaussian = model.config.latent == "gaussian"
    allowed = ("linear",) if gaussian else ("hamming", "simplex")
    method = method or allowed[0]
    if method not in allowed:
        raise ValueError(f"method={method!r} is not one of {', '.join(allowed)} for a model with "
                         f"latent={model.config.latent!r}")
    if method != "hamming" and steps < 2:
        raise ValueError(f"steps must be >= 2 for a {method} path, got {steps}")
    codes, probs = encode(model, [a, b])  # (2, N), (2, N, K); Gaussian: means (2, Dz)
    extra = None
    if method == "linear":
        t = torch.linspace(0, 1, steps, device=codes.device).view(-1, 1)  # (S, 1)
        points = (1 - t) * codes[0] + t * codes[1]  # (S, Dz)
        texts = decode(model, points, max_length=max_length)
        points = points.round(decimals=4)
        extra = [round(float(x), 6) for x in t.flatten()]
    elif method == "hamming":
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
            if len(candidates) == 1:
                best = 0
            else:
                ids = decode_ids(model, cand, max_length=max_length)
                best = int(ids_log_likelihood(model, ids, cand).argmax())
            current = candidates[best]
            remaining.pop(best)
            path.append(current.clone())
        points = torch.stack(path)  # (d + 1, N)
        texts = decode(model, points, max_length=max_length)
    else:
        t = torch.linspace(0, 1, steps, device=probs.device).view(-1, 1, 1)  # (S, 1, 1)
        soft = (1 - t) * probs[0] + t * probs[1]  # (S, N, K)
        texts = decode(model, soft, max_length=max_length)
        points = soft.argmax(-1)
        extra = [round(float(x), 6) for x in t.flatten()]
    out = []
    for i, text in enumerate(texts):
        point = {"step": i, "text": text, "codes": points[i].tolist(), "repeated": i > 0 and text == texts[i - 1]}
        if extra is not None:
            point["t"] = extra[i]
        out.append(point)
    return out


@torch.no_grad()
def traverse(model, text: str, latent: int, max_length: int = 64, values: list[float] | None = None) -> list[dict]:
    """Decode the text's code with latent `latent` set to each of its K categories:
    [{"category", "text", "codes", "original"}], original marking the text's own category.
    A Gaussian model: the posterior mean with dimension `latent` set to each of `values` (default -3, -2, .., 3
    prior standard deviations) and, marked original, to its own value: [{"value", "text", "codes", "original"}]
    in increasing value."""
    gaussian = model.config.latent == "gaussian"
    N = model.config.latent_dim if gaussian else model.config.num_latents
    if isinstance(latent, bool) or not isinstance(latent, int) or not 0 <= latent < N:
        raise ValueError(f"latent={latent!r} is out of range: this model has latents 0..{N - 1}")
    codes, _ = encode(model, [text])  # (1, N); Gaussian: (1, Dz)
    if not gaussian:
        K = model.config.num_categories
        grid = codes.repeat(K, 1)  # (K, N)
        grid[:, latent] = torch.arange(K, device=grid.device)
        texts = decode(model, grid, max_length=max_length)
        original = int(codes[0, latent])
        return [{"category": k, "text": texts[k], "codes": grid[k].tolist(), "original": k == original}
                for k in range(K)]
    own = float(codes[0, latent])
    grid_values = sorted([(float(v), False) for v in (range(-3, 4) if values is None else values)] + [(own, True)])
    grid = codes.repeat(len(grid_values), 1)  # (S, Dz)
    grid[:, latent] = torch.tensor([v for v, _ in grid_values], device=grid.device)
    texts = decode(model, grid, max_length=max_length)
    return [{"value": round(v, 4), "text": texts[i], "codes": [round(x, 4) for x in grid[i].tolist()],
             "original": is_own} for i, (v, is_own) in enumerate(grid_values)]


def ids_to_texts(tokenizer, ids: list[list[int]], eos: int) -> list[str]:
    """Decoded ids -> texts, cut at the first EOS. Special tokens are dropped except <unk>: in a corpus such as PTB it
    stands for real (rare) words, and dropping it would silently glue the words around it together."""
    unk = tokenizer.unk_token_id
    drop = set(tokenizer.all_special_ids) - {unk}
    return tokenizer.batch_decode([[t for t in strip_eos(s, eos) if t not in drop] for s in ids],
                                  skip_special_tokens=False)


def strip_eos(ids: list[int], eos: int) -> list[int]:
    """Token ids up to (not including) the first EOS."""
    return ids[: ids.index(eos)] if eos in ids else ids
