"""TextDVAEConfig: the architecture of a text VAE, and nothing else (it is what goes to the Hub).

Training settings (learning rate, KL and temperature schedules, free bits, word dropout) live in the recipe's
``train`` section; data and tokenizer settings in ``data`` / ``tokenizer``.
"""

from __future__ import annotations

import dataclasses

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

ENCODER_TYPES = ("gru", "transformer")
DECODER_TYPES = ("gru", "transformer")
LATENT_TYPES = ("categorical", "gaussian", "none")
ESTIMATORS = ("gumbel", "gumbel_st", "reinmax", "reinforce")
PRIORS = ("uniform", "autoregressive")


@strict
class TextDVAEConfig(PreTrainedConfig):
    r"""
    Args:
        vocab_size (`int`, defaults to 1000): size V of the token vocabulary (set from the tokenizer by `train`).
        embed_dim (`int`, defaults to 256): width of the token embeddings.
        hidden_dim (`int`, defaults to 256): width D of the encoder/decoder states and of the code embeddings.
        encoder_type (`str`, defaults to `"gru"`): `"gru"` (bidirectional) or `"transformer"` (pre-LN, masked mean pool).
        decoder_type (`str`, defaults to `"gru"`): `"gru"` or `"transformer"` (pre-LN, causal, codes as a prefix).
        encoder_layers (`int`, defaults to 1): layers of the encoder.
        encoder_bidirectional (`bool`, defaults to `True`): GRU encoder reads both directions; `False` halves the
            encoder's cost (it reads left to right and the final state summarises the sentence).
        decoder_layers (`int`, defaults to 1): layers of the decoder.
        code_at_every_step (`bool`, defaults to `False`): GRU decoder only. `False`: the code sets the initial state
            (Bowman et al. 2016). `True`: its projection is also added to every input embedding. Every step helps
            when the code is sharp and must be copied out word for word (the quick-start corpus, whose recipe sets
            it); it hurts when the posterior is near uniform and the sampled code is mostly noise (PTB). The
            measurements (`benchmarks/conditioning.py`): benchmarks/RESULTS.md.
        num_heads (`int`, defaults to 4): attention heads (Transformer only); must divide `hidden_dim`.
        ffn_dim (`int`, defaults to 1024): inner width of the Transformer feed-forward blocks.
        dropout (`float`, defaults to 0.0): dropout on embeddings and between layers (`modeling.Dropout`: on CPU its
            masks come from 16-bit random integers, so the rate is this value rounded to a multiple of 2^-16).
        weight_drop (`float`, defaults to 0.0): DropConnect on the GRU decoder's recurrent (hidden-to-hidden) weights,
            one mask per training batch (Merity et al. 2018, "Regularizing and Optimizing LSTM Language Models"):
            regularises the recurrence itself, which dropout on inputs and outputs leaves alone.
        max_position_embeddings (`int`, defaults to 256): longest sequence (tokens) a Transformer can take.
        latent (`str`, defaults to `"categorical"`): `"categorical"` (N × K codes), `"gaussian"` (a continuous VAE,
            Bowman et al. 2016, the baseline) or `"none"` (the decoder alone: a language model, the other baseline).
        num_latents (`int`, defaults to 8): number N of categorical latent variables.
        num_categories (`int`, defaults to 16): categories K of each latent variable (≥ 2).
        latent_dim (`int`, defaults to 32): dimensions of the Gaussian latent (`latent="gaussian"` only).
        estimator (`str`, defaults to `"gumbel_st"`): gradient estimator for the categorical codes: `"gumbel"`
            (relaxed Gumbel-Softmax), `"gumbel_st"` (straight-through), `"reinmax"` (Liu et al. 2023; τ ≥ 1), or
            `"reinforce"` (score function with a learned baseline).
        prior (`str`, defaults to `"uniform"`): the prior p(z) over categorical codes. `"uniform"`: p(z) = K^-N, and
            the KL is exact, N log K - sum_i H(q(z_i | x)) (Jeffares & Liu 2025). `"autoregressive"`: a learned
            p(z) = prod_i p(z_i | z_<i), a masked MLP (MADE, Germain et al. 2015) of width `hidden_dim` trained
            with the rest of the model; it can put its mass where the codes actually fall (a uniform prior pays
            for uneven code use and for dependence between latents), and each latent's KL term is then exact given
            one sample of the latents before it (see `estimators.kl_categorical`). Not with `"reinforce"`.
        tie_embeddings (`bool`, defaults to `False`): share the decoder's output matrix with the token embeddings.
        adaptive_softmax_cutoffs (`list[int]`, *optional*): token-id cutoffs of an adaptive softmax (Grave et al.
            2017): exact probabilities at a fraction of the cost for large vocabularies whose ids are sorted by
            frequency. `None` uses the full softmax.
        adaptive_softmax_div_value (`float`, defaults to 4.0): each tail cluster of the adaptive softmax projects the
            hidden state to `hidden_dim / div_value**i` dimensions (cluster i = 1, 2, ...); 1.0 keeps the full width
            for rare words, larger values trade their accuracy for speed.
    """

    model_type = "textdvae"

    vocab_size: int = 1000
    embed_dim: int = 256
    hidden_dim: int = 256
    encoder_type: str = "gru"
    decoder_type: str = "gru"
    encoder_layers: int = 1
    encoder_bidirectional: bool = True
    decoder_layers: int = 1
    code_at_every_step: bool = False
    num_heads: int = 4
    ffn_dim: int = 1024
    dropout: float | int = 0.0
    weight_drop: float | int = 0.0
    max_position_embeddings: int = 256
    latent: str = "categorical"
    num_latents: int = 8
    num_categories: int = 16
    latent_dim: int = 32
    estimator: str = "gumbel_st"
    prior: str = "uniform"
    tie_embeddings: bool = False
    adaptive_softmax_cutoffs: list[int] | None = None
    adaptive_softmax_div_value: float | int = 4.0
    pad_token_id: int | None = 0
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2
    unk_token_id: int | None = 3
    tie_word_embeddings: bool = False  # transformers' own tying is not used: see `tie_embeddings`

    def __post_init__(self, **kwargs):
        check_choice("model.encoder_type", self.encoder_type, ENCODER_TYPES)
        check_choice("model.decoder_type", self.decoder_type, DECODER_TYPES)
        check_choice("model.latent", self.latent, LATENT_TYPES)
        check_choice("model.estimator", self.estimator, ESTIMATORS)
        check_choice("model.prior", self.prior, PRIORS)
        if self.prior != "uniform" and self.latent != "categorical":
            raise ValueError(f"model.prior={self.prior!r} is a prior over categorical codes, but model.latent="
                             f"{self.latent!r}; set model.latent=categorical or drop model.prior")
        if self.prior != "uniform" and self.estimator == "reinforce":
            raise ValueError(f"model.prior={self.prior!r} is not supported with model.estimator=reinforce: the KL to "
                             "a learned prior depends on the sampled codes, which the score-function surrogate does "
                             "not differentiate; use gumbel, gumbel_st or reinmax, or model.prior=uniform")
        for key in ("vocab_size", "embed_dim", "hidden_dim", "encoder_layers", "decoder_layers", "num_heads", "ffn_dim",
                    "max_position_embeddings", "num_latents", "latent_dim"):
            if getattr(self, key) < 1:
                raise ValueError(f"model.{key} must be >= 1, got {getattr(self, key)}")
        if self.num_categories < 2:
            raise ValueError(f"model.num_categories (K) must be >= 2, got {self.num_categories}: "
                             "a latent with one category carries no information")
        if self.code_at_every_step and self.decoder_type != "gru":
            raise ValueError("model.code_at_every_step is a GRU decoder option (a Transformer decoder attends to the "
                             "codes as a prefix at every step already); set model.decoder_type=gru or drop it")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if not 0 <= self.weight_drop < 1:
            raise ValueError(f"model.weight_drop must be in [0, 1), got {self.weight_drop}")
        if self.weight_drop and self.decoder_type != "gru":
            raise ValueError(f"model.weight_drop={self.weight_drop} drops the GRU decoder's recurrent weights; "
                             "set model.decoder_type=gru or model.weight_drop=0")
        if "transformer" in (self.encoder_type, self.decoder_type) and self.hidden_dim % self.num_heads:
            raise ValueError(f"model.num_heads={self.num_heads} must divide model.hidden_dim={self.hidden_dim}")
        cutoffs = self.adaptive_softmax_cutoffs
        if cutoffs is not None and (list(cutoffs) != sorted(set(cutoffs)) or cutoffs[0] < 1 or cutoffs[-1] >= self.vocab_size):
            raise ValueError(f"model.adaptive_softmax_cutoffs={cutoffs} must increase strictly within (0, vocab_size="
                             f"{self.vocab_size}); e.g. [2000, 6000] for a 10k vocabulary")
        if not self.adaptive_softmax_div_value >= 1:
            raise ValueError(f"model.adaptive_softmax_div_value must be >= 1 (1 keeps every tail cluster at the full "
                             f"hidden width), got {self.adaptive_softmax_div_value}")
        if cutoffs is not None and self.tie_embeddings:
            raise ValueError("model.tie_embeddings works with the full softmax only; drop model.adaptive_softmax_cutoffs "
                             "or set model.tie_embeddings=false")
        super().__post_init__(**kwargs)

    @classmethod
    def architecture_keys(cls) -> list[str]:
        """The keys a recipe's ``model`` section may set (token ids come from the tokenizer)."""
        base = {f.name for f in dataclasses.fields(PreTrainedConfig)}
        own = [f.name for f in dataclasses.fields(cls) if f.name not in base]
        return [k for k in own if not k.endswith("token_id") and k != "tie_word_embeddings"]


def check_choice(key: str, value, allowed: tuple[str, ...], error: type[ValueError] = ValueError) -> None:
    """A setting that must be one of `allowed`: raise `error` naming the key, the bad value and the allowed ones."""
    if value not in allowed:
        raise error(f"{key}={value!r} is not one of {', '.join(allowed)}")
