"""Evaluation edge: the exact likelihood is only enumerated when the whole enumeration is affordable."""

import math

import pytest
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


def test_mi_au_and_code_perplexity_by_hand():
    """Two sentences, three latents of K = 2: one that tells them apart, one that ignores them, one in between."""
    from textdvae.evaluation import categorical_latent_stats

    probs = torch.tensor([[[1.0, 0.0], [0.5, 0.5], [0.9, 0.1]],    # sentence A: q(z_i | A) for i = 0, 1, 2
                          [[0.0, 1.0], [0.5, 0.5], [0.3, 0.7]]])   # sentence B
    stats = categorical_latent_stats(probs)

    def h(*p):
        return -sum(x * math.log(x) for x in p if x > 0)

    # MI_i = H(mean_x q_i) - mean_x H(q_i): latent 0 is a fair coin that the sentence decides, latent 1 a coin it
    # does not touch, latent 2 in between (aggregate [0.6, 0.4])
    mi = [math.log(2), 0.0, h(0.6, 0.4) - (h(0.9, 0.1) + h(0.3, 0.7)) / 2]
    assert stats["mi_per_latent"] == pytest.approx(mi, abs=1e-6) and stats["mi"] == pytest.approx(sum(mi), abs=1e-6)
    # AU: trace of Cov_x(q_i) = 0.25 + 0.25, 0, 0.09 + 0.09 (biased variance over the two sentences) against 0.01
    assert stats["au"] == 2
    # code perplexity: exp(entropy of how often each category is the mode): A and B pick 0 and 1 (latents 0 and 2);
    # latent 1's tie goes to category 0 both times
    assert stats["code_perplexity"] == pytest.approx([2.0, 1.0, 2.0])
    assert stats["code_usage"] == [[0.5, 0.5], [1.0, 0.0], [0.5, 0.5]]


def test_evaluate_reports_the_stats_of_every_sentences_posterior():
    """On a tiny model, evaluate's mi, au and code perplexity are those of the posteriors computed sentence by
    sentence (evaluate batches them by length and gathers them)."""
    tok = build_tokenizer(TokenizerConfig(kind="word"), ["a b c d e"] * 3)
    torch.manual_seed(0)
    model = TextDVAE(TextDVAEConfig(vocab_size=len(tok), embed_dim=16, hidden_dim=32, num_latents=3,
                                    num_categories=4)).eval()
    model.tokenizer = tok
    with torch.no_grad():
        model.to_posterior.weight.mul_(20)  # sharp posteriors that differ between sentences
    seqs = [[4, 5, 6, 2], [5, 6, 2], [7, 2], [8, 4, 4, 5, 2], [6, 6, 2], [4, 8, 2]]
    metrics = evaluate(model, seqs, tok, batch_size=4, iw_samples=2)
    with torch.no_grad():
        q = [model.posterior(torch.tensor([s]), torch.ones(1, len(s), dtype=torch.long))[0][0].softmax(-1).tolist()
             for s in seqs]  # [sentence][latent][category]
    n, N, K = len(seqs), 3, 4
    mi, au, perplexity = 0.0, 0, []
    for i in range(N):
        mean = [sum(q[s][i][k] for s in range(n)) / n for k in range(K)]
        mi += -sum(p * math.log(p) for p in mean) + sum(p * math.log(p) for s in range(n) for p in q[s][i]) / n
        au += sum(sum((q[s][i][k] - mean[k]) ** 2 for s in range(n)) / n for k in range(K)) > 0.01
        modes = [max(range(K), key=q[s][i].__getitem__) for s in range(n)]
        freq = [modes.count(k) / n for k in range(K)]
        perplexity.append(math.exp(-sum(f * math.log(f) for f in freq if f)))
    assert metrics["mi"] == pytest.approx(mi, abs=1e-5) and metrics["au"] == au
    assert metrics["code_perplexity"] == pytest.approx(perplexity, abs=1e-5)
    assert mi > 0.05 and au > 0 and max(perplexity) > 1  # a case where the three can be wrong


def test_each_process_pads_to_the_whole_batch_width():
    """The greedy reconstruction's length limit follows the batch width, so a process's rows must be padded to the
    width of the whole batch: otherwise rec_bleu would depend on the number of processes."""
    from textdvae.evaluation import iterate_batches

    seqs = [[5] * n + [2] for n in (1, 7, 2, 3)]  # one batch of 4, longest 8 tokens (row 1)
    single = list(iterate_batches(seqs, 4, pad_id=0))
    parts = [list(iterate_batches(seqs, 4, pad_id=0, rank=r, world=2)) for r in (0, 1)]
    assert [rows for rows, _ in single] == [[0, 2, 3, 1]]  # sorted by length
    assert [[rows for rows, _ in p] for p in parts] == [[[0, 3]], [[2, 1]]]
    assert {b["input_ids"].shape[1] for p in parts for _, b in p} == {single[0][1]["input_ids"].shape[1]} == {8}
    rank0 = parts[0][0][1]
    assert rank0["attention_mask"].sum(1).tolist() == [2, 4]  # rows 0 and 3, padding after their EOS
