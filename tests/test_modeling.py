"""The model on a tiny config: shapes, padding, gradients, save/load, and that it really learns."""

import math

import pytest
import torch

from conftest import TINY_MODEL, all_codes
from textdvae import TextDVAE, TextDVAEConfig
from textdvae.estimators import kl_to_uniform, log_prob_of_codes, sample_categorical
from textdvae.modeling import Dropout

PAIRS = [(e, d) for e in ("gru", "transformer") for d in ("gru", "transformer")]


def tiny(**kw) -> TextDVAEConfig:
    base = dict(TINY_MODEL, vocab_size=40)
    return TextDVAEConfig(**{**base, **kw})


def batch(B=5, T=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, 40, (B, T), generator=g)
    lengths = torch.tensor([T, T - 2, 3, T - 1, 2])[:B]
    mask = (torch.arange(T)[None] < lengths[:, None]).long()
    ids = ids.masked_fill(mask == 0, 0)
    ids[torch.arange(B), lengths - 1] = 2  # EOS last
    return ids, mask


@pytest.mark.parametrize("enc,dec", PAIRS)
@pytest.mark.parametrize("latent", ["categorical", "gaussian", "none"])
def test_shapes_and_backward(enc, dec, latent):
    torch.manual_seed(0)
    model = TextDVAE(tiny(encoder_type=enc, decoder_type=dec, latent=latent))
    ids, mask = batch()
    out = model(ids, mask, beta=0.5, free_bits=0.1, word_dropout=0.3, output_logits=True)
    assert out.rec.shape == (5,) and out.logits.shape == (5, 7, 40)
    assert torch.allclose(out.logits.exp().sum(-1), torch.ones(5, 7), atol=1e-5)
    if latent == "categorical":
        assert out.latent_logits.shape == (5, 3, 4) and out.codes.shape == (5, 3, 4)
        assert out.kl_per_latent.shape == (5, 3)
        assert torch.allclose(out.kl_per_latent, kl_to_uniform(out.latent_logits))
    elif latent == "gaussian":
        assert out.kl_per_latent.shape == (5, 32) and out.mu.shape == (5, 32)
    else:
        assert out.kl is None
    out.loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if p.requires_grad and "baseline" not in n]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    # rec is -sum log p over real tokens: it must match the full log-probabilities gathered at the targets
    model.eval()
    out = model(ids, mask, output_logits=True, codes=out.codes.detach() if latent != "none" else None)
    gathered = -(out.logits.gather(-1, ids.unsqueeze(-1)).squeeze(-1) * mask).sum(1)
    assert torch.allclose(gathered, out.rec, atol=1e-4)


@pytest.mark.parametrize("enc,dec", PAIRS)
def test_padding_does_not_change_the_loss(enc, dec):
    torch.manual_seed(0)
    model = TextDVAE(tiny(encoder_type=enc, decoder_type=dec)).eval()
    ids, mask = batch()
    padded_ids = torch.cat([ids, torch.zeros(5, 6, dtype=torch.long)], 1)
    padded_mask = torch.cat([mask, torch.zeros(5, 6, dtype=torch.long)], 1)
    a = model(ids, mask, generator=torch.Generator().manual_seed(1))
    b = model(padded_ids, padded_mask, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(a.latent_logits, b.latent_logits, atol=1e-5)
    assert torch.allclose(a.rec, b.rec, atol=1e-4) and torch.allclose(a.kl, b.kl, atol=1e-5)
    # and one sentence alone gives the same as inside the batch
    c = model(ids[2:3, :3], mask[2:3, :3], codes=a.codes[2:3])
    assert torch.allclose(c.rec, a.rec[2:3], atol=1e-4)


def test_free_bits_and_beta_enter_the_loss_as_documented():
    torch.manual_seed(0)
    model = TextDVAE(tiny()).eval()
    ids, mask = batch()
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    out = model(ids, mask, beta=0.3, free_bits=0.0, generator=g())
    assert torch.allclose(out.loss, out.rec.mean() + 0.3 * out.kl_per_latent.mean(0).sum(), atol=1e-5)
    floor = model(ids, mask, beta=1.0, free_bits=5.0, generator=g())  # every latent under the floor
    assert torch.allclose(floor.loss, floor.rec.mean() + 3 * 5.0, atol=1e-5)
    assert torch.allclose(floor.kl, out.kl)  # the reported KL is the true one


def test_eval_mode_uses_discrete_codes_for_every_estimator():
    ids, mask = batch()
    for est in ("gumbel", "gumbel_st", "reinmax", "reinforce"):
        model = TextDVAE(tiny(estimator=est)).eval()
        codes = model(ids, mask).codes
        assert set(codes.unique().tolist()) <= {0.0, 1.0} and torch.all(codes.sum(-1) == 1)


@pytest.mark.parametrize("enc,dec", PAIRS)
def test_save_and_load_give_identical_outputs(tmp_path, enc, dec):
    torch.manual_seed(0)
    model = TextDVAE(tiny(encoder_type=enc, decoder_type=dec, estimator="reinforce")).eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file() and not list(tmp_path.glob("*.bin"))
    loaded = TextDVAE.from_pretrained(tmp_path).eval()
    for (n1, p1), (n2, p2) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2), n1
    ids, mask = batch()
    a = model(ids, mask, generator=torch.Generator().manual_seed(0), output_logits=True)
    b = loaded(ids, mask, generator=torch.Generator().manual_seed(0), output_logits=True)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.latent_logits, b.latent_logits)


def test_auto_classes_return_textdvae(tmp_path):
    from transformers import AutoConfig, AutoModel

    TextDVAE(tiny()).save_pretrained(tmp_path)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), TextDVAEConfig)
    assert isinstance(AutoModel.from_pretrained(tmp_path), TextDVAE)


@pytest.mark.parametrize("div_value", [1.0, 4.0])
def test_adaptive_softmax_is_exact_and_tying_shares_weights(div_value):
    torch.manual_seed(0)
    ids, mask = batch()
    model = TextDVAE(tiny(adaptive_softmax_cutoffs=[10, 20], adaptive_softmax_div_value=div_value)).eval()
    widths = [tail[0].out_features for tail in model.adaptive.tail]  # each tail cluster's projection
    assert widths == [int(model.config.hidden_dim // div_value ** (i + 1)) for i in range(2)]
    out = model(ids, mask, output_logits=True)
    assert torch.allclose(out.logits.exp().sum(-1), torch.ones(5, 7), atol=1e-5)
    gathered = -(out.logits.gather(-1, ids.unsqueeze(-1)).squeeze(-1) * mask).sum(1)
    assert torch.allclose(gathered, out.rec, atol=1e-4)
    tied = TextDVAE(tiny(tie_embeddings=True))
    assert not any("lm_head" in n for n, _ in tied.named_parameters())
    with pytest.raises(ValueError, match="tie_embeddings"):
        tiny(tie_embeddings=True, adaptive_softmax_cutoffs=[10])
    with pytest.raises(ValueError, match="adaptive_softmax_div_value must be >= 1.*got 0.5"):
        tiny(adaptive_softmax_cutoffs=[10], adaptive_softmax_div_value=0.5)


@pytest.mark.parametrize("estimator,prior", [("gumbel", "uniform"), ("gumbel_st", "uniform"), ("reinmax", "uniform"),
                                             ("reinforce", "uniform"), ("gumbel_st", "autoregressive")])
def test_a_tiny_model_learns_to_reconstruct(estimator, prior):
    """4 sentences, 2 latents x 4 categories. Without the codes the decoder can do no better than log 4 nats per
    sentence (it cannot tell which sentence to write); a model that learned to use them gets far below that."""
    torch.manual_seed(0)
    model = TextDVAE(tiny(num_latents=2, num_categories=4, estimator=estimator, prior=prior))
    ids = torch.tensor([[5, 6, 7, 2], [8, 9, 10, 2], [11, 12, 13, 2], [14, 15, 16, 2]]).repeat(8, 1)  # 8 samples each
    mask = torch.ones_like(ids)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    tau = 1.0 if estimator == "reinmax" else 0.7
    first = None
    for step in range(200):  # KL annealing to beta = 0.5 and free bits (0.7 nats per latent: 1.4 >= log 4 in all)
        out = model(ids, mask, tau=tau, beta=0.5 * min(1.0, step / 100), free_bits=0.7)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        first = first if first is not None else out.rec.mean().item()
    model.eval()
    final = model(ids, mask, generator=torch.Generator().manual_seed(0))
    assert final.rec.mean().item() < 0.5 * math.log(4) < 0.05 * first
    assert final.kl.mean().item() > 0.8 * math.log(4)  # the codes carry the sentence's identity


@pytest.mark.parametrize("dec", ["gru", "transformer"])
def test_transformers_generate_matches_our_incremental_greedy_decoding(dec):
    """model.generate (GenerationMixin, codes as a keyword) gives the tokens our own decoder gives."""
    from textdvae.explore import beam_decode, greedy_decode

    torch.manual_seed(0)
    model = TextDVAE(tiny(decoder_type=dec)).eval()
    codes = torch.randint(0, 4, (5, 3))  # (B, N) indices are accepted as well as one-hot codes
    bos = torch.full((5, 1), model.config.bos_token_id)
    out = model.generate(input_ids=bos, codes=codes, max_new_tokens=8, do_sample=False,
                         eos_token_id=model.config.eos_token_id, pad_token_id=model.config.pad_token_id)
    ours = greedy_decode(model, model.condition(torch.nn.functional.one_hot(codes, 4).float()), 5, 8)
    for row, ref in zip(out[:, 1:].tolist(), ours):
        assert row[: len(ref)] == ref
    beams = model.generate(input_ids=bos, codes=codes, max_new_tokens=8, num_beams=3, num_return_sequences=2,
                           eos_token_id=model.config.eos_token_id, pad_token_id=model.config.pad_token_id)
    ours = beam_decode(model, model.condition(torch.nn.functional.one_hot(codes, 4).float()), 5, 8, num_beams=3,
                       num_return=2, length_penalty=1.0)  # transformers' default length penalty
    assert len(beams) == len(ours) == 10
    for row, ref in zip(beams[:, 1:].tolist(), ours):
        assert row[: len(ref)] == ref


def test_code_at_every_step_reaches_the_decoder_beyond_its_initial_state():
    """With the initial-state path cut, the code still changes -log p(x|z) only when it is fed at every step."""
    with pytest.raises(ValueError, match="code_at_every_step"):
        tiny(decoder_type="transformer", code_at_every_step=True)
    ids, mask = batch()
    codes = [torch.nn.functional.one_hot(torch.full((5, 3), k), 4).float() for k in (0, 3)]
    for every_step in (False, True):
        torch.manual_seed(0)
        model = TextDVAE(tiny(code_at_every_step=every_step)).eval()
        torch.nn.init.zeros_(model.decoder.cond_to_h0.weight)
        torch.nn.init.zeros_(model.decoder.cond_to_h0.bias)
        a, b = (model(ids, mask, codes=c).rec for c in codes)
        assert torch.allclose(a, b) != every_step


def test_weight_drop_masks_the_recurrent_weights_in_training_only():
    """DropConnect: in training the decoder runs with one dropped (and rescaled) copy of W_hh per batch, whose
    dropped entries get no gradient; in eval it is the plain GRU. No parameters are added, so checkpoints match."""
    for bad in (dict(weight_drop=1.0), dict(weight_drop=-0.1), dict(decoder_type="transformer", weight_drop=0.3)):
        with pytest.raises(ValueError, match="weight_drop"):
            tiny(**bad)
    ids, mask = batch()
    torch.manual_seed(0)
    dropped = TextDVAE(tiny(latent="none", weight_drop=0.5))
    plain = TextDVAE(tiny(latent="none"))
    plain.load_state_dict(dropped.state_dict())  # same keys: weight drop adds no parameters
    assert torch.equal(dropped.eval()(ids, mask).rec, plain.eval()(ids, mask).rec)
    torch.manual_seed(1)
    rec = dropped.train()(ids, mask).rec  # latent none, dropout 0: the weight mask is the only randomness
    torch.manual_seed(1)
    w = Dropout(0.5)(plain.decoder.rnn.weight_hh_l0.detach())  # the same draw as the model's DropConnect
    with torch.no_grad():
        plain.decoder.rnn.weight_hh_l0.copy_(w)
    assert torch.allclose(rec, plain.eval()(ids, mask).rec, atol=1e-5)
    assert not torch.allclose(rec, dropped.eval()(ids, mask).rec)
    rec.sum().backward()
    grad = dropped.decoder.rnn.weight_hh_l0.grad
    assert (grad[w == 0] == 0).all() and (grad[w != 0] != 0).float().mean() > 0.9


# ---- the learned prior (prior="autoregressive") ------------------------------------------------------------------


def ar_model(seed=0) -> TextDVAE:
    """A tiny model whose prior is far from uniform (random output layer instead of the zero start)."""
    torch.manual_seed(seed)
    model = TextDVAE(tiny(prior="autoregressive")).eval()
    with torch.no_grad():
        for p in model.bottleneck.code_prior.parameters():
            p.normal_(0.0, 1.0)
    return model


def test_autoregressive_prior_sees_only_earlier_latents_sums_to_one_and_samples_itself():
    model = ar_model()
    codes = all_codes(3, 4)
    assert TextDVAE(tiny(prior="autoregressive")).bottleneck.log_prior(codes).exp().allclose(torch.full((64,), 1 / 64))  # starts uniform
    # output i depends on the codes of latents j < i only
    x = codes[:1].clone().requires_grad_(True)
    logits = model.bottleneck.code_prior(x)  # (1, N, K)
    for i in range(3):
        (grad,) = torch.autograd.grad(logits[0, i].sum(), x, retain_graph=True)
        seen = grad.abs().sum(-1)[0]  # (N,)
        assert torch.all(seen[i:] == 0) and torch.all(seen[:i] > 0), (i, seen)
    # a normalised distribution over all K^N codes, far from uniform
    p = model.bottleneck.log_prior(codes).exp().detach()  # (64,)
    assert abs(p.sum().item() - 1) < 1e-5 and 0.5 * (p - 1 / 64).abs().sum() > 0.2
    # ancestral samples have its frequencies: total variation within sampling noise (<= 0.023 at n = 20,000)
    s = model.bottleneck.sample_prior(20_000, torch.Generator().manual_seed(0))  # (n, N)
    freq = torch.bincount(s[:, 0] * 16 + s[:, 1] * 4 + s[:, 2], minlength=64).float() / 20_000
    assert 0.5 * (freq - p).abs().sum() < 0.023


def test_learned_prior_kl_is_an_unbiased_one_sample_estimate_of_the_exact_kl():
    """sum_i KL(q_i || p(. | z_<i)) at z ~ q, averaged over samples, is KL(q(z|x) || p(z)) by enumeration."""
    model = ar_model()
    ids, mask = batch(B=1)
    q_logits, _ = model.posterior(ids, mask)  # (1, N, K)
    codes = all_codes(3, 4)
    log_q = log_prob_of_codes(q_logits.expand(64, -1, -1), codes)  # (64,)
    exact = (log_q.exp() * (log_q - model.bottleneck.log_prior(codes))).sum().item()
    assert abs(exact - kl_to_uniform(q_logits).sum().item()) > 0.3  # the learned prior changes the KL
    n = 100_000
    samples = sample_categorical(q_logits.expand(n, -1, -1), torch.Generator().manual_seed(0))  # (n, N, K)
    estimate = model.bottleneck.kl(q_logits.expand(n, -1, -1), samples).sum(1).detach().double()  # (n,)
    assert abs(estimate.mean().item() - exact) < 4 * estimate.std().item() / math.sqrt(n)


def test_learned_prior_enters_the_likelihood_bounds_and_survives_save_and_load(tmp_path):
    """Exact log p(x) (enumeration) >= ELBO, and the importance-sampled estimate converges to it."""
    from textdvae.evaluation import exact_log_likelihood, log_importance_weights

    model = ar_model()
    ids, mask = batch(B=2)
    with torch.no_grad():
        exact = exact_log_likelihood(model, ids, mask)  # (B,)
        q_logits, _ = model.posterior(ids, mask)
        logw = log_importance_weights(model, ids, mask, q_logits, 4000, torch.Generator().manual_seed(0))  # (B, S)
    iw = torch.logsumexp(logw, 1) - math.log(4000)
    # an untrained posterior is a poor proposal (the ELBO is ~28 nats below log p(x) here): within 0.2 nats at S = 4000
    assert torch.allclose(iw, exact, atol=0.2), (iw, exact)
    assert torch.all(logw.mean(1) < exact - 20)  # the ELBO (mean log weight) bounds log p(x) from below
    model.save_pretrained(tmp_path)
    loaded = TextDVAE.from_pretrained(tmp_path).eval()
    assert loaded.config.prior == "autoregressive"
    codes = all_codes(3, 4)
    assert torch.equal(model.bottleneck.log_prior(codes), loaded.bottleneck.log_prior(codes))


def test_tempered_proposal_weights_are_unbiased():
    """Importance weights p(x, z) / r(z) of samples from the tempered proposal r (logits / T) have mean p(x), the
    exact likelihood by enumeration, within Monte Carlo error; weighting the same samples by q instead is biased."""
    from textdvae.evaluation import exact_log_likelihood, log_importance_weights
    from textdvae.estimators import log_prob_of_codes

    model = ar_model()
    ids, mask = batch(B=2)
    S = 20_000
    with torch.no_grad():
        exact = exact_log_likelihood(model, ids, mask).double()  # (B,)
        q_logits = 2 * torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(1))  # (B, N, K) a sharp proposal
        for T in (2.0, 4.0):
            logw = log_importance_weights(model, ids, mask, q_logits, S, torch.Generator().manual_seed(0), T)
            ratio = (logw.double() - exact[:, None]).exp()  # (B, S) w / p(x): mean 1 for an unbiased weight
            assert torch.all((ratio.mean(1) - 1).abs() < 4 * ratio.std(1) / math.sqrt(S)), (T, ratio.mean(1))
        # the same kind of samples weighted by q instead of the proposal they were drawn from: biased
        codes = sample_categorical((q_logits / 2.0).repeat_interleave(S, 0), torch.Generator().manual_seed(0))
        log_joint = -model.reconstruction(ids.repeat_interleave(S, 0), mask.repeat_interleave(S, 0), codes) \
            + model.bottleneck.log_prior(codes)
        wrong = (log_joint - log_prob_of_codes(q_logits.repeat_interleave(S, 0), codes)).view(2, S).double()
        ratio = (wrong - exact[:, None]).exp()
        assert torch.all((ratio.mean(1) - 1).abs() > 4 * ratio.std(1) / math.sqrt(S)), ratio.mean(1)


def test_learned_prior_rejects_what_it_cannot_train():
    with pytest.raises(ValueError, match="model.prior='autoregressive' is a prior over categorical codes.*gaussian"):
        tiny(prior="autoregressive", latent="gaussian")
    with pytest.raises(ValueError, match="not supported with model.estimator=reinforce"):
        tiny(prior="autoregressive", estimator="reinforce")
    with pytest.raises(ValueError, match="model.prior='vamp' is not one of uniform, autoregressive"):
        tiny(prior="vamp")


def test_forward_refuses_keywords_it_does_not_take():
    """A misspelt keyword (free_bit for free_bits) must not be ignored; generate's bookkeeping keywords pass."""
    model = TextDVAE(tiny()).eval()
    ids, mask = batch()
    with pytest.raises(TypeError, match="'free_bit'"):
        model(ids, mask, free_bit=0.5)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    plain, flagged = model(ids, mask, generator=g()), model(ids, mask, generator=g(), return_dict=True, use_cache=False)
    assert torch.equal(plain.loss, flagged.loss)


def test_from_pretrained_refuses_weights_that_do_not_fit_and_reads_the_old_key_names(tmp_path):
    """Missing, unexpected or reshaped weights raise (transformers would warn and leave them random); a model saved
    before the bottleneck had its own module (keys code_embed, code_prior.*) loads, and re-saves with today's keys."""
    from safetensors.torch import load_file, save_file

    from textdvae.modeling import IncompatibleWeightsError

    torch.manual_seed(0)
    model = TextDVAE(tiny(prior="autoregressive")).eval()
    model.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    old = {k.removeprefix("bottleneck."): v for k, v in weights.items()}
    assert {"code_embed", "code_prior.out_bias"} <= set(old)
    save_file(old, tmp_path / "model.safetensors", metadata={"format": "pt"})
    loaded = TextDVAE.from_pretrained(tmp_path)
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())
    loaded.save_pretrained(tmp_path / "again")
    assert set(load_file(tmp_path / "again" / "model.safetensors")) == set(weights)
    for name, broken in [("missing keys: bottleneck.code_embed", {k: v for k, v in weights.items() if k != "bottleneck.code_embed"}),
                         ("unexpected keys: extra", {**weights, "extra": torch.zeros(2)}),
                         ("mismatched keys: lm_bias", {**weights, "lm_head.bias": torch.zeros(41)})]:
        save_file(broken, tmp_path / "model.safetensors", metadata={"format": "pt"})
        with pytest.raises(IncompatibleWeightsError, match=name.split(":")[0]):
            TextDVAE.from_pretrained(tmp_path)


def test_reinforce_baseline_starts_at_the_first_batch_mean_without_a_host_sync(monkeypatch):
    """The running mean takes the first batch's mean rec, then moves 1% per step, and never asks for .item()."""
    torch.manual_seed(0)
    model = TextDVAE(tiny(estimator="reinforce")).train()
    ids, mask = batch()

    def no_sync(self):
        raise AssertionError(".item() synchronises with the device at every step")

    monkeypatch.setattr(torch.Tensor, "item", no_sync)
    first = model(ids, mask, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(model.baseline_mean, first.rec.mean())
    second = model(ids, mask, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(model.baseline_mean, 0.99 * first.rec.mean() + 0.01 * second.rec.mean())
