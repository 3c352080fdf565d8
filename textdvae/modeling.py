"""TextDVAE: a sentence -> N categorical latent variables of K categories -> the sentence again.

    tokens (B, T) -> encoder (GRU | Transformer) -> pooled (B, P) -> latent logits (B, N, K)
      -> CategoricalBottleneck (bottleneck.py): estimator -> codes (B, N, K), KL to the prior, code embeddings (B, N, D)
      -> autoregressive decoder (GRU | Transformer) -> log p(x | z)

The objective is the ELBO (Kingma & Welling 2014; for categorical latents with a uniform prior see Jeffares &
Liu 2025, "An Introduction to Discrete Variational Autoencoders"):
    log p(x) >= E_q[log p(x | z)] - KL(q(z | x) || p(z)),   KL = sum_i (log K - H(q(z_i | x))) exactly.
With ``prior="autoregressive"`` p(z) = prod_i p(z_i | z_<i) is learned too (a MADE over the codes) and the KL is
sum_i KL(q(z_i | x) || p(z_i | z_<i)) at one sample z ~ q: each term exact, the sum an unbiased estimate.
Baselines share the same code: ``latent="gaussian"`` (Bowman et al. 2016) and ``latent="none"`` (a language model).

Letters: B batch, T tokens, N latent variables, K categories, D model width, E embedding width, V vocabulary,
M conditioning vectors (N for categorical codes, 1 for a Gaussian latent, 0 without a latent), H hidden (= D).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import GenerationConfig, GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from . import explore
from .bottleneck import AutoregressivePrior, CategoricalBottleneck
from .configuration import TextDVAEConfig
from .estimators import gaussian_kl, gaussian_sample, leave_one_out_baseline, log_prob_of_codes, score_function_surrogate
from .hub import generation_config_dict
from .schedules import free_bits as free_bits_objective


# State-dict keys of models saved before the bottleneck had its own module (regex -> today's key).
LEGACY_KEYS = {r"^code_embed$": "bottleneck.code_embed", r"^code_prior\.": "bottleneck.code_prior."}


class IncompatibleWeightsError(ValueError):
    """Saved weights that do not fit the model built from their config (missing, unexpected or reshaped)."""


# Keywords transformers' `generate` passes to forward besides the inputs: bookkeeping that changes nothing here.
GENERATE_FLAGS = frozenset({"return_dict", "use_cache", "output_attentions", "output_hidden_states", "cache_position",
                            "past_key_values"})


@dataclass
class TextDVAEOutput(ModelOutput):
    """What `TextDVAE.forward` returns. Nats throughout; per-sentence terms are summed over tokens incl. EOS."""

    loss: Tensor | None = None  # () the training objective: mean_B rec + beta * free_bits(KL_i) (+ REINFORCE terms)
    rec: Tensor | None = None  # (B,) -log p(x | z), nats per sentence
    kl: Tensor | None = None  # (B,) KL(q(z | x) || p(z)), nats per sentence (one-sample estimate if p is learned)
    kl_per_latent: Tensor | None = None  # (B, N) categorical, or (B, Dz) Gaussian dimensions
    logits: Tensor | None = None  # (B, T, V) next-token log-probabilities; only with output_logits=True
    latent_logits: Tensor | None = None  # (B, N, K) posterior logits of q(z | x) (categorical)
    codes: Tensor | None = None  # (B, N, K) the code fed to the decoder (one-hot or relaxed); (B, Dz) Gaussian z
    mu: Tensor | None = None  # (B, Dz) Gaussian posterior mean
    logvar: Tensor | None = None  # (B, Dz) Gaussian posterior log-variance
    n_tokens: Tensor | None = None  # (B,) predicted tokens per sentence (EOS included)


# ----------------------------------------------------------------------------------------------------------------
# Dropout


class Dropout(nn.Module):
    """Inverted dropout (Srivastava et al. 2014) whose mask comes from 16-bit random integers, four from each random
    int64: an element is dropped when its integer falls in the lowest t = round(p * 2^16) of the 2^16 values, and the
    kept ones are scaled by 2^16 / (2^16 - t), so E[output] = input exactly and the drop rate is p to within 2^-17.
    On CPU, torch's own dropout draws every mask element with a serial `bernoulli_`, about 9 ns an element: 7.3 ms
    for one 128 x 24 x 256 activation of the PTB recipe, 8 % of its bf16 training step; this one, backward included,
    takes a quarter of torch's time and makes that step 1.14x faster (`python benchmarks/dropout.py`). Elsewhere
    (GPUs) torch's fused dropout is used as it is."""

    LEVELS = 1 << 16

    def __init__(self, p: float):
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p, self.threshold = p, round(p * self.LEVELS)  # drop when the integer (offset to 0 .. 2^16 - 1) is < t

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.threshold == 0:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, True)
        n = x.numel()
        words = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(1 << 63), None)  # uniform over all 64 bits
        ints = words.view(torch.int16)[:n].view(x.shape)  # 4 uniform int16 per word, any byte order
        keep = ints >= self.threshold - (self.LEVELS >> 1)  # P = (2^16 - t) / 2^16
        return x * keep * (self.LEVELS / (self.LEVELS - self.threshold))

    def extra_repr(self) -> str:
        return f"p={self.p}"


# ----------------------------------------------------------------------------------------------------------------
# Transformer building blocks (pre-LN, Xiong et al. 2020), shared by the encoder and the decoder


class SelfAttention(nn.Module):
    def __init__(self, config: TextDVAEConfig):
        super().__init__()
        self.n_head = config.num_heads
        self.qkv = nn.Linear(config.hidden_dim, 3 * config.hidden_dim)
        self.proj = nn.Linear(config.hidden_dim, config.hidden_dim)
        self.dropout = config.dropout
        self.attn_drop = Dropout(config.dropout)  # the attention probabilities' dropout, drawn by us on CPU

    def forward(self, x: Tensor, key_mask: Tensor | None = None, causal: bool = False, cache: dict | None = None) -> Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(x).split(D, dim=2)
        q, k, v = (t.view(B, T, self.n_head, D // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        if cache is not None:  # incremental decoding: keys/values of earlier positions are kept, not recomputed
            if "k" in cache:
                k, v = torch.cat([cache["k"], k], dim=2), torch.cat([cache["v"], v], dim=2)  # (B, nh, L+T, hs)
            cache["k"], cache["v"] = k, v
        mask = key_mask[:, None, None, :] if key_mask is not None else None  # (B, 1, 1, T) True = attend
        Tq, Tk = q.size(2), k.size(2)
        is_causal = causal and Tq > 1 and Tq == Tk
        if causal and Tq > 1 and Tq != Tk:  # new positions after a cached prefix: query i sees keys <= Tk - Tq + i
            mask = torch.ones(Tq, Tk, dtype=torch.bool, device=x.device).tril(diagonal=Tk - Tq)  # (Tq, Tk)
        if self.training and self.attn_drop.threshold and q.device.type == "cpu":
            y = self._attend_with_dropout(q, k, v, mask, is_causal)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal,
                                               dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(B, T, D))  # (B, T, D)

    def _attend_with_dropout(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, is_causal: bool) -> Tensor:
        """softmax(q k^T / sqrt(hs)) v with `Dropout` on the probabilities (Vaswani et al. 2017): what
        scaled_dot_product_attention computes with dropout_p, whose CPU kernel draws the mask with a serial
        `bernoulli_` (6.5 % of the Transformer recipe's bf16 step). q (B, nh, Tq, hs), k and v (B, nh, Tk, hs)."""
        scores = (q @ k.transpose(-2, -1)) * q.size(-1) ** -0.5  # (B, nh, Tq, Tk)
        if is_causal:
            mask = torch.ones(q.size(2), k.size(2), dtype=torch.bool, device=q.device).tril()  # (Tq, Tk)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        return self.attn_drop(scores.softmax(-1)) @ v  # (B, nh, Tq, hs)


class Block(nn.Module):
    def __init__(self, config: TextDVAEConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.hidden_dim)
        self.attn = SelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.hidden_dim)
        self.mlp = nn.Sequential(nn.Linear(config.hidden_dim, config.ffn_dim), nn.GELU(),
                                 nn.Linear(config.ffn_dim, config.hidden_dim), Dropout(config.dropout))

    def forward(self, x: Tensor, key_mask: Tensor | None = None, causal: bool = False, cache: dict | None = None) -> Tensor:
        x = x + self.attn(self.ln_1(x), key_mask, causal, cache)
        return x + self.mlp(self.ln_2(x))


class TransformerStack(nn.Module):
    """Token embeddings (shared, width E) -> D, learned positions, pre-LN blocks, final LayerNorm."""

    def __init__(self, config: TextDVAEConfig, num_layers: int):
        super().__init__()
        self.in_proj = nn.Linear(config.embed_dim, config.hidden_dim) if config.embed_dim != config.hidden_dim else nn.Identity()
        self.pos = nn.Embedding(config.max_position_embeddings, config.hidden_dim)
        self.drop = Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(num_layers))
        self.ln_f = nn.LayerNorm(config.hidden_dim)

    def embed(self, emb: Tensor, start: int = 0) -> Tensor:
        T = emb.size(1)
        if start + T > self.pos.num_embeddings:
            raise ValueError(f"sequence of {start + T} tokens exceeds max_position_embeddings={self.pos.num_embeddings}")
        positions = torch.arange(start, start + T, device=emb.device)
        return self.drop(self.in_proj(emb) + self.pos(positions))  # (B, T, D)


# ----------------------------------------------------------------------------------------------------------------
# Recurrent layers in bf16 under CPU autocast

def rnn_dtype(x: Tensor) -> torch.dtype:
    """The dtype a GRU runs in: bf16 end to end (inputs, states, weights) under CPU bf16 autocast, else x's own.
    Autocast leaves `aten::gru` alone and casts inside it: every step's fp32 state to bf16 for the product and the
    product back to fp32 for the gates, copies that took 11 % of the PTB recipe's bf16 step. Autocast itself runs
    oneDNN's LSTM in bf16 end to end (`mkldnn_rnn_layer` is on its bf16 list), as it runs cuDNN's RNNs in fp16; this
    does the same for the GRU. Weights and their gradients stay fp32 (the casts are differentiable). The step and the
    PTB bound it gives: benchmarks/RESULTS.md, Performance, session 26."""
    return torch.bfloat16 if cpu_bf16_autocast(x) else x.dtype


def cpu_bf16_autocast(x: Tensor) -> bool:
    """Whether x's products run under CPU bf16 autocast (train.mixed_precision: bf16 on a CPU)."""
    return x.device.type == "cpu" and torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


class GRULayer(torch.autograd.Function):
    """One GRU layer (PyTorch's gates r, z, n; Cho et al. 2014) with a hand-written backward, for bf16 training on
    CPU. There `torch.gru` runs step by step under autograd: about 20 small ops a step in the backward, and every
    step's weight gradient as its own product, summed in bf16. Here the backward takes 2 small ops and one product a
    step, and the input and weight gradients of all steps are one product each (accumulated in fp32 in the matmul).

    Forward, per step:  gh = h W_hh^T + b_hh;  [r, z] = sigmoid(gi_rz + gh_rz);  n = tanh(gi_n + r * gh_n);
                        h' = (1 - z) n + z h = lerp(n, h, z),    with gi = x W_ih^T + b_ih for all steps at once.
    Backward, from dh_t = dL/dh_t in total (the output's gradient plus what flows back from step t + 1):
        c_n = (1 - z)(1 - n^2);   [a_r, a_z, a_n] = dh [c_n gh_n r (1 - r), (h_prev - n) z (1 - z), c_n]
        dgh = [a_r, a_z, a_n r] = dh * coef   (coef for all steps at once, before the loop)
        dh_{t-1} = grad_out_{t-1} + dh_t z + dgh W_hh;   then dW_ih = a^T x, dW_hh = dgh^T h_prev.
    x: (T, B, I) time-major, h0: (B, H) -> outputs (T, B, H). Equal to nn.GRU in float64 (tests/test_precision.py).
    The backward's scratch (about 9 T B H values) lives in `_scratch`, reused from call to call: fresh buffers of
    that size cost a page fault every 4 KB on first write, which took a tenth of the PTB recipe's bf16 step
    (benchmarks/RESULTS.md, Performance, session 29). It stays allocated at the largest size met, for the life of the
    thread: 47 MB for the PTB recipe's longest batch (T = 80, B = 128, H = 256)."""

    @staticmethod
    def forward(ctx, x, h0, w_ih, w_hh, b_ih, b_hh):
        T, B, _ = x.shape
        H = w_hh.shape[1]
        gi = torch.addmm(b_ih, x.reshape(T * B, -1), w_ih.t()).view(T, B, 3 * H)  # (T, B, 3H) all steps at once
        gh = x.new_empty(T, B, 3 * H)
        hs = x.new_empty(T + 1, B, H)  # h_0 .. h_T
        hs[0] = h0
        rz, n = x.new_empty(T, B, 2 * H), x.new_empty(T, B, H)
        for t in range(T):
            torch.addmm(b_hh, hs[t], w_hh.t(), out=gh[t])  # (B, 3H)
            torch.sigmoid(gi[t, :, :2 * H] + gh[t, :, :2 * H], out=rz[t])
            torch.tanh(torch.addcmul(gi[t, :, 2 * H:], rz[t, :, :H], gh[t, :, 2 * H:]), out=n[t])
            torch.lerp(n[t], hs[t], rz[t, :, H:], out=hs[t + 1])
        ctx.save_for_backward(x, w_ih, w_hh, hs, rz, n, gh)
        return hs[1:]

    @staticmethod
    def backward(ctx, grad_out):  # grad_out (T, B, H)
        x, w_ih, w_hh, hs, rz, n, gh = ctx.saved_tensors
        T, B, H = n.shape
        r, z = rz[..., :H], rz[..., H:]
        S = T * B * H
        scratch = _scratch(9 * S, x.dtype)
        coef, dgh = (scratch[i * 3 * S:(i + 1) * 3 * S].view(T, B, 3, H) for i in range(2))  # per gate: r, z, n
        dhs, c_n, tmp = (scratch[(6 + i) * S:(7 + i) * S].view(T, B, H) for i in range(3))
        one = x.new_ones(())
        torch.mul(n, n, out=c_n)
        torch.sub(one, c_n, out=c_n)
        c_n.mul_(torch.sub(one, z, out=tmp))  # (1 - z)(1 - n^2)
        torch.sub(hs[:-1], n, out=coef[:, :, 1]).mul_(tmp.mul_(z))  # (h_prev - n) z (1 - z), 1 - z formed once
        torch.sub(one, r, out=tmp).mul_(r).mul_(gh[..., 2 * H:])
        torch.mul(c_n, tmp, out=coef[:, :, 0])  # c_n gh_n r (1 - r)
        torch.mul(c_n, r, out=coef[:, :, 2])
        dhs[T - 1] = grad_out[T - 1]
        for t in range(T - 1, -1, -1):
            if t < T - 1:  # dh_t = grad_out_t + dh_{t+1} z_{t+1} + dgh_{t+1} W_hh
                torch.addmm(torch.addcmul(grad_out[t], dhs[t + 1], z[t + 1]), dgh[t + 1].view(B, 3 * H), w_hh,
                            out=dhs[t])
            torch.mul(dhs[t].unsqueeze(1), coef[t], out=dgh[t])  # (B, 3, H)
        dh0 = torch.addmm(dhs[0] * z[0], dgh[0].view(B, 3 * H), w_hh)
        da = coef  # coef is spent: a = [a_r, a_z, a_n] goes in its place
        da.copy_(dgh)
        torch.mul(dhs, c_n, out=da[:, :, 2])
        flat_a, flat_h = da.view(T * B, 3 * H), dgh.view(T * B, 3 * H)
        dx = (flat_a @ w_ih).view_as(x) if ctx.needs_input_grad[0] else None
        # (x^T a)^T: oneDNN runs the product with its long dimension inside faster than a^T x (1.1 against 1.6 ms)
        return (dx, dh0, (x.reshape(T * B, -1).t() @ flat_a).t(), (hs[:-1].reshape(T * B, H).t() @ flat_h).t(),
                flat_a.sum(0), flat_h.sum(0))


_SCRATCH = threading.local()


def _scratch(numel: int, dtype: torch.dtype) -> Tensor:
    """A flat CPU buffer of at least `numel` values, this thread's own, kept (and grown) between calls."""
    buffers = _SCRATCH.__dict__.setdefault("by_dtype", {})
    buf = buffers.get(dtype)
    if buf is None or buf.numel() < numel:
        buf = buffers[dtype] = torch.empty(numel, dtype=dtype)
    return buf


def run_gru(gru: nn.GRU, x: Tensor, h0: Tensor | None, params: list[Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """`gru` (batch first, one direction) over x (B, T, E) from h0 (L, B, H) or zeros, in `rnn_dtype(x)`; `params`
    replaces its flat weights (DropConnect, one layer of several). -> outputs (B, T, H), final states (L, B, H).
    Training in bf16 on CPU goes through `GRULayer` (one layer at a time; its speed: benchmarks/RESULTS.md,
    Performance, session 28); everything else through `torch.gru`, the kernel nn.GRU calls."""
    dtype = rnn_dtype(x)
    params = gru._flat_weights if params is None else params
    layers = len(params) // 4
    if h0 is None:
        h0 = x.new_zeros(layers, x.size(0), gru.hidden_size, dtype=dtype)
    params = [p.to(dtype) for p in params]
    x, h0 = x.to(dtype), h0.to(dtype)
    if dtype == torch.bfloat16 and torch.is_grad_enabled() and (layers == 1 or not (gru.training and gru.dropout)):
        finals = []
        x = x.transpose(0, 1)  # (T, B, E)
        for i in range(layers):
            x = GRULayer.apply(x, h0[i], *params[4 * i:4 * i + 4])  # (T, B, H)
            finals.append(x[-1])
        return x.transpose(0, 1), torch.stack(finals)
    return torch.gru(x, h0, params, True, layers, gru.dropout, gru.training, False, True)


# ----------------------------------------------------------------------------------------------------------------
# Encoders: tokens -> one pooled vector per sentence


class GRUEncoder(nn.Module):
    """Bidirectional GRU (one stack per direction) whose final states ignore padding. Packed sequences would do that too, but on CPU they fall
    off the fused (oneDNN) GRU kernel onto a per-step loop several times slower; instead the backward direction
    runs forward over each sentence reversed within its own length, and both read their state at the last real
    token. Right padding then never reaches a state that is used."""

    def __init__(self, config: TextDVAEConfig):
        super().__init__()
        dropout = config.dropout if config.encoder_layers > 1 else 0.0
        self.fwd = nn.GRU(config.embed_dim, config.hidden_dim, config.encoder_layers, batch_first=True, dropout=dropout)
        self.bwd = None
        if config.encoder_bidirectional:
            self.bwd = nn.GRU(config.embed_dim, config.hidden_dim, config.encoder_layers, batch_first=True, dropout=dropout)
        self.out_dim = (2 if config.encoder_bidirectional else 1) * config.hidden_dim

    def forward(self, emb: Tensor, mask: Tensor) -> Tensor:
        B, T, E = emb.shape
        lengths = mask.sum(1)  # (B,)
        last = (lengths - 1).view(B, 1, 1).expand(B, 1, self.fwd.hidden_size)  # (B, 1, H) index of the last token
        h_fwd = run_gru(self.fwd, emb, None)[0].gather(1, last).squeeze(1)  # (B, H) state after x_1..x_n
        if self.bwd is None:
            return h_fwd
        pos = torch.arange(T, device=emb.device).expand(B, T)
        rev = torch.where(pos < lengths[:, None], lengths[:, None] - 1 - pos, pos)  # (B, T) reverse real tokens only
        emb_rev = emb.gather(1, rev.unsqueeze(-1).expand(B, T, E))  # (B, T, E)
        h_bwd = run_gru(self.bwd, emb_rev, None)[0].gather(1, last).squeeze(1)  # (B, H) after x_n..x_1
        return torch.cat([h_fwd, h_bwd], dim=-1)  # (B, 2H)


class TransformerEncoder(nn.Module):
    def __init__(self, config: TextDVAEConfig):
        super().__init__()
        self.stack = TransformerStack(config, config.encoder_layers)
        self.out_dim = config.hidden_dim

    def forward(self, emb: Tensor, mask: Tensor) -> Tensor:
        x = self.stack.embed(emb)  # (B, T, D)
        keep = mask.bool()
        for block in self.stack.blocks:
            x = block(x, key_mask=keep)
        x = self.stack.ln_f(x)
        m = mask.unsqueeze(-1).to(x.dtype)  # (B, T, 1)
        return (x * m).sum(1) / m.sum(1)  # (B, D) mean over real tokens only


# ----------------------------------------------------------------------------------------------------------------
# Decoders: conditioning vectors (B, M, D) + shifted tokens -> hidden states; `start`/`step` decode incrementally


class GRUDecoder(nn.Module):
    """The code sets the initial state (Bowman et al. 2016) and, with `code_at_every_step`, is also added to every
    input embedding; adding W_z z is the same function class as concatenating z, computed once per sentence. Which
    is better depends on how sharp the code is: see `TextDVAEConfig.code_at_every_step` for the measurements."""

    def __init__(self, config: TextDVAEConfig, cond_size: int):
        super().__init__()
        self.layers, self.H, self.weight_drop = config.decoder_layers, config.hidden_dim, config.weight_drop
        # dropout between layers is ours (`Dropout`, applied by `forward`), not nn.GRU's, which draws it on CPU
        # with the slow bernoulli_; the module and its weights are the same either way
        self.rnn = nn.GRU(config.embed_dim, config.hidden_dim, config.decoder_layers, batch_first=True)
        self.between = Dropout(config.dropout if config.decoder_layers > 1 else 0.0)
        self.hh_drop = Dropout(config.weight_drop)  # DropConnect's mask over W_hh
        self.cond_to_h0 = self.cond_to_in = None
        if cond_size:
            self.cond_to_h0 = nn.Linear(cond_size * config.hidden_dim, config.decoder_layers * config.hidden_dim)
            if config.code_at_every_step:
                self.cond_to_in = nn.Linear(cond_size * config.hidden_dim, config.embed_dim)

    def start(self, cond: Tensor | None) -> dict:
        if self.cond_to_h0 is None:
            return {"h": None, "in": None}
        c = cond.flatten(1)  # (B, M * D)
        h0 = torch.tanh(self.cond_to_h0(c)).view(-1, self.layers, self.H).transpose(0, 1).contiguous()  # (L, B, H)
        return {"h": h0, "in": None if self.cond_to_in is None else self.cond_to_in(c).unsqueeze(1)}  # in: (B, 1, E)

    def forward(self, emb: Tensor, state: dict) -> tuple[Tensor, dict]:
        x = emb if state["in"] is None else emb + state["in"]  # (B, T, E)
        flat = list(self.rnn._flat_weights)  # [W_ih, W_hh, b_ih, b_hh] per layer
        if self.training and self.weight_drop > 0:  # DropConnect on W_hh, one mask per batch (Merity et al. 2018)
            for i in range(self.layers):
                flat[4 * i + 1] = self.hh_drop(flat[4 * i + 1])
        if not (self.training and self.between.p):
            out, h = run_gru(self.rnn, x, state["h"], flat)  # (B, T, H), (L, B, H)
            return out, {"h": h, "in": state["in"]}
        h0 = state["h"]  # (L, B, H) or None (zeros)
        finals = []
        for i in range(self.layers):  # one layer at a time (the kernel nn.GRU runs), our dropout between them
            x, h_i = run_gru(self.rnn, x, None if h0 is None else h0[i:i + 1], flat[4 * i:4 * i + 4])  # (B, T, H), (1, B, H)
            finals.append(h_i)
            if i < self.layers - 1:
                x = self.between(x)
        return x, {"h": torch.cat(finals), "in": state["in"]}


class TransformerDecoder(nn.Module):
    """The M conditioning vectors are a prefix that every token attends to (causal self-attention over [codes; tokens])."""

    def __init__(self, config: TextDVAEConfig):
        super().__init__()
        self.stack = TransformerStack(config, config.decoder_layers)

    def start(self, cond: Tensor | None) -> dict:
        caches = [{} for _ in self.stack.blocks]
        if cond is not None:  # run the prefix once and keep its keys/values
            x = cond
            for block, cache in zip(self.stack.blocks, caches):
                x = block(x, causal=True, cache=cache)
        return {"caches": caches, "t": 0}

    def forward(self, emb: Tensor, state: dict) -> tuple[Tensor, dict]:
        x = self.stack.embed(emb, start=state["t"])  # (B, T, D)
        caches = [dict(c) for c in state["caches"]]  # a forward pass must not grow the caller's cache
        for block, cache in zip(self.stack.blocks, caches):
            x = block(x, causal=True, cache=cache)
        return self.stack.ln_f(x), {"caches": caches, "t": state["t"] + emb.size(1)}


# ----------------------------------------------------------------------------------------------------------------


class TextDVAEPreTrainedModel(PreTrainedModel):
    config_class = TextDVAEConfig
    base_model_prefix = "textdvae"
    main_input_name = "input_ids"

    def _init_weights(self, module: nn.Module) -> None:
        # PyTorch's own initialisations: at these widths (D ~ 32..512) GPT-2's N(0, 0.02) starts far too quiet
        if isinstance(module, nn.Linear):
            bound = 1.0 / math.sqrt(module.in_features)  # = kaiming_uniform(a=sqrt(5)), nn.Linear's default
            init.uniform_(module.weight, -bound, bound)
            if module.bias is not None:
                init.uniform_(module.bias, -bound, bound)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=1.0)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, nn.GRU):  # PyTorch's own GRU initialisation, U(-1/sqrt(H), 1/sqrt(H))
            bound = 1.0 / math.sqrt(module.hidden_size)
            for param in module.parameters():
                init.uniform_(param, -bound, bound)
        elif isinstance(module, AutoregressivePrior):  # start from the uniform prior (see the class)
            init.zeros_(module.out_weight)
            init.zeros_(module.out_bias)
        elif isinstance(module, TextDVAE) and module.baseline_mean is not None:
            init.zeros_(module.baseline_mean)


def adaptive_target_log_probs(adaptive: nn.AdaptiveLogSoftmaxWithLoss, h: Tensor, targets: Tensor) -> Tensor:
    """log p(target | h) under an adaptive softmax (Grave et al. 2017, https://arxiv.org/abs/1609.04309): (n, H),
    (n,) -> (n,) in fp32. The head scores the shortlist and one entry per tail cluster; a word in cluster i gets
    log p(cluster i) + log p(word | cluster i). The projections may run in bf16 (autocast); both log-softmax
    normalisers run in fp32. The same values as `adaptive(h, targets).output` in fp32."""
    cutoffs = [0, *adaptive.cutoffs]  # shortlist, then each cluster's first index, then the vocabulary size
    head_index = targets.clone()  # (n,) the head entry that scores each target: itself, or its cluster's
    out = torch.zeros(targets.shape, dtype=torch.float32, device=h.device)
    bucket = ROW_BUCKET if cpu_bf16_autocast(h) else 1
    for i in range(1, len(cutoffs) - 1):
        rows = ((targets >= cutoffs[i]) & (targets < cutoffs[i + 1])).nonzero().squeeze(1)  # (m,)
        if rows.numel() == 0:
            continue
        head_index[rows] = adaptive.shortlist_size + i - 1
        local = F.log_softmax(rows_in_buckets(adaptive.tail[i - 1], h[rows], bucket).float(), dim=1)  # (m, cluster)
        out[rows] = local.gather(1, (targets[rows] - cutoffs[i]).unsqueeze(1)).squeeze(1)
    head = F.log_softmax(rows_in_buckets(adaptive.head, h, bucket).float(), dim=1)  # (n, shortlist + clusters)
    return out + head.gather(1, head_index.unsqueeze(1)).squeeze(1)


# Row count the output layer's products are padded to a multiple of under CPU bf16 autocast (see rows_in_buckets).
ROW_BUCKET = 128


def rows_in_buckets(layer: nn.Module, x: Tensor, bucket: int) -> Tensor:
    """`layer(x)` for x (m, H), with x's rows padded by zeros to a multiple of `bucket` and the padding cut off again
    -> (m, out). oneDNN, which runs CPU bf16 products, builds a kernel for each new shape (7.7 ms against a 1.2 ms
    product for 600 x 256 @ 256 x 4,000, one thread), and the output layer sees a new row count at every step (the
    batch's real tokens, and how many fall in each tail cluster); in buckets the shapes recur and are built once."""
    m = x.size(0)
    pad = -m % bucket
    if pad == 0:
        return layer(x)
    return layer(F.pad(x, (0, 0, 0, pad)))[:m]


class TextDVAE(TextDVAEPreTrainedModel, GenerationMixin):
    def __init__(self, config: TextDVAEConfig):
        super().__init__(config)
        c = config
        self.embed_tokens = nn.Embedding(c.vocab_size, c.embed_dim)
        self.drop = Dropout(c.dropout)
        # encoder -> posterior parameters
        self.encoder = None
        if c.latent != "none":
            self.encoder = GRUEncoder(c) if c.encoder_type == "gru" else TransformerEncoder(c)
            out = c.num_latents * c.num_categories if c.latent == "categorical" else 2 * c.latent_dim
            self.to_posterior = nn.Linear(self.encoder.out_dim, out)
        # latent -> M conditioning vectors of width D
        self.bottleneck = None  # categorical: estimator, KL to the prior, code embeddings (N, K, D)
        self.baseline = None
        self.register_buffer("baseline_mean", torch.zeros(()) if c.estimator == "reinforce" else None)
        if c.latent == "categorical":
            self.bottleneck = CategoricalBottleneck(c.num_latents, c.num_categories, c.hidden_dim, c.estimator, c.prior,
                                                    init_embeddings=False)
            if c.estimator == "reinforce":  # running mean + learned input-dependent correction (Mnih & Gregor 2014)
                self.baseline = nn.Linear(self.encoder.out_dim, 1)
        elif c.latent == "gaussian":
            self.z_to_cond = nn.Linear(c.latent_dim, c.hidden_dim)
        cond_size = {"categorical": c.num_latents, "gaussian": 1, "none": 0}[c.latent]
        self.decoder = GRUDecoder(c, cond_size) if c.decoder_type == "gru" else TransformerDecoder(c)
        # output layer: full softmax (optionally tied to the embeddings) or an exact adaptive softmax
        self.adaptive = self.out_proj = self.lm_head = None
        if c.adaptive_softmax_cutoffs:
            self.adaptive = nn.AdaptiveLogSoftmaxWithLoss(c.hidden_dim, c.vocab_size, list(c.adaptive_softmax_cutoffs),
                                                          div_value=float(c.adaptive_softmax_div_value))
        elif c.tie_embeddings:
            self.out_proj = nn.Linear(c.hidden_dim, c.embed_dim) if c.hidden_dim != c.embed_dim else nn.Identity()
            self.lm_bias = nn.Parameter(torch.zeros(c.vocab_size))
        else:
            self.lm_head = nn.Linear(c.hidden_dim, c.vocab_size)
        self.post_init()
        if self.bottleneck is not None:  # N(0, 1), drawn after every other weight as it was before the bottleneck
            with torch.no_grad():  # became a module of its own, so a seeded run starts from the same weights
                self.bottleneck.code_embed.normal_()
        if self.generation_config is not None:  # the one generation config, shipped as generation_config.json
            self.generation_config = GenerationConfig(**generation_config_dict(c.to_dict()))

    # ---- pieces that forward composes; evaluation and exploration reuse them -------------------------------------

    def posterior(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
        """-> (posterior parameters, pooled encoder state): latent logits (B, N, K), or (B, Dz, 2) [mu, logvar]."""
        pooled = self.encoder(self.drop(self.embed_tokens(input_ids)), attention_mask)  # (B, P)
        params = self.to_posterior(pooled)
        if self.config.latent == "categorical":
            return params.view(-1, self.config.num_latents, self.config.num_categories), pooled  # (B, N, K)
        return params.view(-1, 2, self.config.latent_dim).transpose(1, 2), pooled  # (B, Dz, 2)

    def condition(self, codes: Tensor | None) -> Tensor | None:
        """Codes (B, N, K) one-hot or soft -> (B, N, D) code embeddings; Gaussian z (B, Dz) -> (B, 1, D)."""
        if codes is None:
            return None
        if self.config.latent == "categorical":
            return self.bottleneck.embed(codes)  # (B, N, D)
        return self.z_to_cond(codes).unsqueeze(1)  # (B, 1, D)

    def decoder_states(self, input_ids: Tensor, cond: Tensor | None, word_dropout: float = 0.0,
                       generator: torch.Generator | None = None) -> Tensor:
        """Teacher forcing: decoder input is [BOS, x_1 .. x_{T-1}]; returns hidden states (B, T, H) predicting x_1..x_T."""
        bos = torch.full_like(input_ids[:, :1], self.config.bos_token_id)
        dec_in = torch.cat([bos, input_ids[:, :-1]], dim=1)  # (B, T)
        if word_dropout > 0:  # Bowman et al. 2016: hide words from the decoder so it must use the latent
            drop = torch.rand(dec_in.shape, device=dec_in.device, generator=generator) < word_dropout
            drop[:, 0] = False
            dec_in = dec_in.masked_fill(drop, self.unk_id)
        state = self.decoder.start(cond)
        h, _ = self.decoder(self.drop(self.embed_tokens(dec_in)), state)
        return self.drop(h)

    def token_log_probs(self, h: Tensor) -> Tensor:
        """Hidden states (..., H) -> log-probabilities over the vocabulary (..., V), exact for every head."""
        if self.adaptive is not None:
            return self.adaptive.log_prob(h.reshape(-1, h.size(-1)).float()).view(*h.shape[:-1], -1)
        return F.log_softmax(self._logits(h).float(), dim=-1)

    def target_log_probs(self, h: Tensor, targets: Tensor, mask: Tensor) -> Tensor:
        """log p(x_t | x_<t, z) at real positions only: (B, T, H), (B, T) -> (B, T), zero at padding.
        The output layer dominates the FLOPs, so padding positions never reach it."""
        flat = mask.bool()
        h_real, y_real = h[flat], targets[flat]  # (n, H), (n,)
        if self.adaptive is not None:
            lp = adaptive_target_log_probs(self.adaptive, h_real, y_real)  # (n,) exact (Grave et al. 2017)
        else:  # the normaliser in fp32 even when the head's matmul ran in bf16 (train.mixed_precision)
            lp = -F.cross_entropy(self._logits(h_real).float(), y_real, reduction="none")  # (n,)
        out = torch.zeros(targets.shape, dtype=lp.dtype, device=lp.device)
        out[flat] = lp
        return out

    def _logits(self, h: Tensor) -> Tensor:
        """Hidden states (..., H) -> unnormalised scores (..., V) of the full softmax (untied or tied head)."""
        if self.lm_head is not None:
            return self.lm_head(h)
        return F.linear(self.out_proj(h), self.embed_tokens.weight, self.lm_bias)

    def reconstruction(self, input_ids: Tensor, attention_mask: Tensor, codes: Tensor | None, **kwargs) -> Tensor:
        """-log p(x | z) in nats per sentence, (B,)."""
        h = self.decoder_states(input_ids, self.condition(codes), **kwargs)
        return -self.target_log_probs(h, input_ids, attention_mask).sum(1)

    @property
    def unk_id(self) -> int:
        c = self.config
        return c.unk_token_id if c.unk_token_id is not None else c.pad_token_id

    # ---- the model ------------------------------------------------------------------------------------------------

    def forward(self, input_ids: Tensor | None = None, attention_mask: Tensor | None = None, *, tau: float = 1.0,
                beta: float = 1.0, free_bits: float = 0.0, word_dropout: float = 0.0, codes: Tensor | None = None,
                generator: torch.Generator | None = None, output_logits: bool = False,
                decoder_input_ids: Tensor | None = None, **generate_flags) -> TextDVAEOutput:
        """input_ids (B, T): token ids ending with EOS, right-padded; attention_mask (B, T): 1 for real tokens.
        `codes` (B, N, K) skips the encoder and decodes from the given codes (then kl is None).
        `decoder_input_ids` (B, T) with `codes`: the next-token log-probabilities after each prefix position, as
        transformers' `generate` asks for them (see prepare_inputs_for_generation); `generate_flags` are the
        bookkeeping keywords generate passes along (return_dict, use_cache, ...), which change nothing here. Any
        other keyword (a misspelt `free_bit=0.5`) raises a TypeError rather than being silently ignored."""
        unknown = sorted(set(generate_flags) - GENERATE_FLAGS)
        if unknown:
            raise TypeError(f"TextDVAE.forward() got unexpected keyword argument(s) {', '.join(map(repr, unknown))}; "
                            "it takes input_ids, attention_mask, tau, beta, free_bits, word_dropout, codes, generator, "
                            "output_logits and decoder_input_ids")
        c = self.config
        if decoder_input_ids is not None:
            h, _ = self.decoder(self.embed_tokens(decoder_input_ids), self.decoder.start(self.condition(codes)))
            return TextDVAEOutput(logits=self.token_log_probs(h))  # (B, T, V)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        n_tokens = attention_mask.sum(1)  # (B,)
        latent_logits = mu = logvar = kl_per_latent = pooled = None
        cond = self.condition(codes)  # (B, M, D) from given codes; else set once the encoder has sampled them
        # 1. encode and sample
        if c.latent != "none" and codes is None:
            params, pooled = self.posterior(input_ids, attention_mask)
            params = params.float()  # the KL, the sampling and the estimators in fp32, under bf16 autocast too
            if c.latent == "categorical":
                latent_logits = params  # (B, N, K)
                z = self.bottleneck(latent_logits, tau, generator)  # codes (B, N, K), KL (B, N), embeddings (B, N, D)
                codes, kl_per_latent, cond = z.codes, z.kl_per_latent, z.embeddings
            else:
                mu, logvar = params.unbind(-1)  # (B, Dz) each
                codes = gaussian_sample(mu, logvar, generator=generator)  # (B, Dz)
                kl_per_latent = gaussian_kl(mu, logvar)  # (B, Dz)
                cond = self.condition(codes)  # (B, 1, D)
        # 2. decode with teacher forcing
        h = self.decoder_states(input_ids, cond, word_dropout if self.training else 0.0, generator)
        rec = -self.target_log_probs(h, input_ids, attention_mask).sum(1)  # (B,) nats per sentence
        kl = kl_per_latent.sum(1) if kl_per_latent is not None else None  # (B,)
        # 3. the objective: reconstruction + beta * KL with free bits on each latent's batch-mean KL
        loss = rec.mean()
        if kl_per_latent is not None:
            loss = loss + beta * free_bits_objective(kl_per_latent.mean(0), free_bits)
        if c.latent == "categorical" and c.estimator == "reinforce" and self.training and latent_logits is not None:
            loss = loss + self._reinforce_terms(latent_logits, codes, rec, pooled)
        logits = self.token_log_probs(h) if output_logits else None
        return TextDVAEOutput(loss=loss, rec=rec, kl=kl, kl_per_latent=kl_per_latent, logits=logits,
                              latent_logits=latent_logits, codes=codes, mu=mu, logvar=logvar, n_tokens=n_tokens)

    def prepare_inputs_for_generation(self, input_ids: Tensor, codes: Tensor | None = None, **kwargs) -> dict:
        """`model.generate(input_ids=BOS (B, 1), codes=(B, N, K) one-hot, ...)`: each step re-runs the decoder over
        the prefix (use_cache is off). Our own `decode` is the incremental, faster path; generate is here for its
        strategies (beam search, top-p, constraints) with the code as a keyword argument."""
        if codes is not None and codes.dim() == 2:
            codes = F.one_hot(codes.long(), self.config.num_categories).float()
        return {"decoder_input_ids": input_ids, "codes": codes}

    def _reinforce_terms(self, latent_logits: Tensor, codes: Tensor, rec: Tensor, pooled: Tensor) -> Tensor:
        """Score-function gradient of E_q[rec] for the encoder (the decoder already gets rec's own gradient), with
        baseline b_i = c(x_i) + the batch's mean of rec_j - c(x_j) over the other sentences j, where c(x) = running
        mean of rec + a learned correction from the encoder state (trained by Huber loss). b_i does not depend on
        z_i, so the estimator stays unbiased. With c alone the baseline lagged the falling rec and the posterior
        collapsed onto one code (PTB at 400 steps, the figures in benchmarks/RESULTS.md)."""
        with torch.no_grad():  # exponential running mean: puts the prediction at the right scale from step one
            # the mean starts at exactly 0 (a saved model's is never 0): weight 1 then, 0.01 after; no host sync
            first = self.baseline_mean == 0
            self.baseline_mean.lerp_(rec.mean(), torch.where(first, 1.0, 0.01).to(rec.dtype))
        prediction = self.baseline_mean + self.baseline(pooled.detach()).squeeze(-1)  # (B,) c(x)
        baseline = leave_one_out_baseline(rec, prediction)  # (B,)
        log_q = log_prob_of_codes(latent_logits, codes)  # (B,)
        terms = score_function_surrogate(log_q, rec, baseline).mean() + F.smooth_l1_loss(prediction, rec.detach())
        return terms - terms.detach()  # gradients only: the loss value stays rec + beta * KL, as for every estimator

    # ---- exploring the code space (textdvae/explore.py has the details) --------------------------------------------

    @property
    def tokenizer(self):
        """The tokenizer saved beside the model (loaded on first use, from the same folder or Hub repo and
        revision as the model); assign one to use another."""
        if getattr(self, "_tokenizer", None) is None:
            from transformers import AutoTokenizer
            source = self.config._name_or_path
            if not source:
                raise ValueError("this model has no tokenizer: it was not loaded with from_pretrained(); assign one "
                                 "with `model.tokenizer = tokenizer`")
            self._tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False,
                                                            **getattr(self, "_tokenizer_kwargs", {}))
        return self._tokenizer

    @tokenizer.setter
    def tokenizer(self, value) -> None:
        self._tokenizer = value

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """`PreTrainedModel.from_pretrained` (a folder or a Hub repo id), strict: a weight that is missing,
        unexpected or of the wrong shape raises `IncompatibleWeightsError` (transformers would only warn and leave
        it random). Models saved before the bottleneck had its own module load too (`LEGACY_KEYS`). Also remembers
        the Hub arguments (revision, token, cache_dir, ...) so that `model.tokenizer` comes from the same revision."""
        want_info = kwargs.pop("output_loading_info", False)
        kwargs.setdefault("key_mapping", LEGACY_KEYS)
        kwargs["ignore_mismatched_sizes"] = True  # reshaped weights come back in `info` and are refused below
        model, info = super().from_pretrained(pretrained_model_name_or_path, *args, output_loading_info=True, **kwargs)
        model._weight_conversions = None  # save_pretrained would revert the mapping: always save today's keys
        bad = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
        if bad:
            details = "; ".join(f"{k.replace('_', ' ')}: {', '.join(map(str, list(v)[:4]))}{' ...' if len(v) > 4 else ''}"
                                for k, v in bad.items())
            raise IncompatibleWeightsError(f"the weights of {str(pretrained_model_name_or_path)!r} do not fit this "
                                           f"version of textdvae ({details}); load it with the textdvae version that "
                                           "saved it, or re-train")
        keys = ("revision", "token", "cache_dir", "local_files_only", "subfolder", "force_download", "proxies")
        model._tokenizer_kwargs = {k: kwargs[k] for k in keys if kwargs.get(k) is not None}
        return (model, info) if want_info else model

    def push_to_hub(self, repo_id: str, *, private: bool | None = None, revision: str | None = None,
                    commit_message: str | None = None, token: str | None = None, metrics: dict | None = None,
                    recipe: dict | None = None) -> str:
        """Push the model to the Hugging Face Hub in ONE commit: safetensors weights, config.json, the tokenizer,
        generation_config.json and a model card (README.md, made by `textdvae.hub.make_model_card`; `metrics` and
        `recipe` go into it). The token comes from `token`, else HF_TOKEN or the saved login. `revision` is a
        branch, created from main if needed. Returns the commit URL; raises `textdvae.hub.HubError` on failure."""
        import tempfile
        from pathlib import Path

        from .hub import HubError, push_to_hub

        try:
            tokenizer = self.tokenizer
        except Exception as err:  # noqa: BLE001 - any failure to find the tokenizer means we cannot push
            raise HubError(f"cannot push {repo_id}: the model's tokenizer is unavailable ({err}); assign it with "
                           "`model.tokenizer = tokenizer` and push again") from err
        with tempfile.TemporaryDirectory(prefix="textdvae-push-") as tmp:
            folder = Path(tmp) / "model"
            self.save_pretrained(folder)  # weights, config.json, generation_config.json
            tokenizer.save_pretrained(folder)
            return push_to_hub(folder, repo_id, private=bool(private), revision=revision, metrics=metrics,
                               recipe=recipe, commit_message=commit_message,
                               token=token if isinstance(token, str) else None)

    def encode(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        """Texts -> most likely codes (B, N) and posterior probabilities (B, N, K); a Gaussian model: posterior means
        and standard deviations (B, Dz)."""
        return explore.encode(self, texts)

    def decode(self, codes, **kwargs) -> list[str]:
        """Codes (B, N) or soft codes (B, N, K) -> texts; see explore.decode for strategies."""
        return explore.decode(self, codes, **kwargs)

    def reconstruct(self, texts: list[str], **kwargs) -> list[str]:
        return explore.reconstruct(self, texts, **kwargs)

    def sample(self, n: int, **kwargs) -> tuple[list[str], Tensor]:
        """n sentences from codes drawn from the prior -> (texts, codes (n, N)); see explore.sample."""
        return explore.sample(self, n, **kwargs)

    def interpolate(self, a: str, b: str, method: str | None = None, steps: int = 5, **kwargs) -> list[dict]:
        """A path of sentences from A's reconstruction to B's: [{"step", "text", "codes", "repeated"}];
        method "hamming" (one latent at a time, the default) or "simplex" (`steps` mixtures of the posteriors);
        a Gaussian model: "linear" (`steps` mixtures of the posterior means)."""
        return explore.interpolate(self, a, b, method=method, steps=steps, **kwargs)

    def traverse(self, text: str, latent: int, **kwargs) -> list[dict]:
        """The text decoded with latent `latent` set to each category: [{"category", "text", "codes", "original"}]."""
        return explore.traverse(self, text, latent, **kwargs)

