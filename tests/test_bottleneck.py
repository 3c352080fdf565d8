"""CategoricalBottleneck on its own: codes, KL, embeddings and the prior by hand, and the README's drop-in example."""

import math
import re

import pytest
import torch

from conftest import ROOT, all_codes
from textdvae import CategoricalBottleneck, TextDVAE, TextDVAEConfig


def test_codes_kl_and_embeddings_by_hand():
    torch.manual_seed(0)
    bottleneck = CategoricalBottleneck(num_latents=3, num_categories=4, dim=5)  # straight-through Gumbel
    logits = torch.randn(2, 3, 4, requires_grad=True)
    out = bottleneck(logits, tau=0.5, generator=torch.Generator().manual_seed(1))
    picked = out.codes.argmax(-1)  # (2, 3)
    assert torch.equal(out.codes, torch.nn.functional.one_hot(picked, 4).float())  # one-hot forward
    # the embedding of latent n is row picked[b, n] of latent n's own table
    expected = torch.stack([torch.stack([bottleneck.code_embed[n, picked[b, n]] for n in range(3)]) for b in range(2)])
    assert torch.allclose(out.embeddings, expected)
    # KL to the uniform prior: log K - H(q_n), written out
    q = logits.softmax(-1)
    kl = math.log(4) + (q * q.log()).sum(-1)
    assert torch.allclose(out.kl_per_latent, kl, atol=1e-6) and torch.allclose(out.kl, kl.sum(1), atol=1e-6)
    out.embeddings.sum().backward()  # the straight-through gradient reaches the logits
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    # in eval mode an exact discrete sample (no gradient path), whatever the estimator
    bottleneck.eval()
    assert not bottleneck(logits.detach()).codes.requires_grad
    assert torch.allclose(bottleneck.log_prior(all_codes(3, 4)), torch.full((64,), -3 * math.log(4)))


def test_learned_prior_is_a_distribution_and_starts_uniform():
    torch.manual_seed(0)
    bottleneck = CategoricalBottleneck(3, 4, 8, prior="autoregressive")
    codes = all_codes(3, 4)
    assert torch.allclose(bottleneck.log_prior(codes).exp(), torch.full((64,), 1 / 64))  # output layer starts at 0
    with torch.no_grad():
        for p in bottleneck.code_prior.parameters():
            p.normal_()
    p = bottleneck.log_prior(codes).exp()
    assert abs(p.sum().item() - 1) < 1e-5 and p.max() > 3 / 64  # normalised, and no longer uniform
    samples = bottleneck.sample_prior(5, torch.Generator().manual_seed(0))
    assert samples.shape == (5, 3) and samples.min() >= 0 and samples.max() < 4


def test_bad_settings_name_the_value():
    with pytest.raises(ValueError, match="estimator='gumbel-st' is not one of gumbel, gumbel_st, reinmax, reinforce"):
        CategoricalBottleneck(3, 4, 8, estimator="gumbel-st")
    with pytest.raises(ValueError, match="num_categories"):
        CategoricalBottleneck(3, 1, 8)


def test_textdvae_composes_the_bottleneck():
    torch.manual_seed(0)
    model = TextDVAE(TextDVAEConfig(vocab_size=20, embed_dim=8, hidden_dim=16, num_latents=3, num_categories=4))
    assert isinstance(model.bottleneck, CategoricalBottleneck) and model.bottleneck.code_embed.shape == (3, 4, 16)
    ids = torch.tensor([[5, 6, 7, 2]])
    out = model(ids, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(out.kl_per_latent, model.bottleneck.kl(out.latent_logits, out.codes))
    assert TextDVAE(TextDVAEConfig(vocab_size=20, latent="gaussian")).bottleneck is None


def test_readme_bottleneck_example_runs():
    """The README's drop-in example, run as written."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### The bottleneck in your own model"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - the README is ours
    out, encoder = namespace["out"], namespace["encoder"]
    assert out.codes.shape == (4, 8, 16) and torch.equal(out.codes.sum(-1), torch.ones(4, 8))
    assert out.embeddings.shape == (4, 8, 64) and encoder.weight.grad.abs().sum() > 0  # trained through the codes
