"""Evaluation edge: the exact likelihood is only enumerated when the whole enumeration is affordable."""

import torch

from textdvae import TextDVAE, TextDVAEConfig
from textdvae.evaluation import evaluate
from textdvae.recipe import TokenizerConfig
from textdvae.tokenization import build_tokenizer


def test_exact_nll_is_skipped_with_a_message_when_too_costly(caplog):
    tok = build_tokenizer(TokenizerConfig(kind="word"), ["a b c d e"] * 3)
    torch.manual_seed(0)
    model = TextDVAE(TextDVAEConfig(vocab_size=len(tok), embed_dim=16, hidden_dim=32, num_latents=3,
                                    num_categories=4)).eval()
    model.tokenizer = tok
    seqs = [[4, 5, 6, 2], [5, 6, 2]] * 5  # 10 sentences x 4^3 = 640 decoder passes
    full = evaluate(model, seqs, tok, iw_samples=8)
    assert full["nll_exact"] <= -full["elbo"] + 1e-4  # log p(x) >= ELBO
    caplog.clear()
    gated = evaluate(model, seqs, tok, iw_samples=8, exact_budget=100)
    assert "nll_exact" not in gated
    assert "nll_exact skipped: 10 sentences x 64 codes" in caplog.text
