"""Decoding and exploring the code space: incremental decoding against a full re-run, beam search, top-k/top-p,
codes in every form, and interpolation / traversal / the CLI on a small model trained on the bundled corpus."""

import importlib.util
import io
import json
import math
import sys
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from conftest import ROOT, TINY_MODEL, all_codes, cli, train_small_quickstart
from textdvae import TextDVAE, TextDVAEConfig, explore
from textdvae.recipe import TokenizerConfig
from textdvae.tokenization import build_tokenizer

WORDS = "the cat dog bird fox chased helped watched will not a big small old quickly slowly .".split()


def tiny(decoder_type="gru", encoder_type="gru", eos_bias=0.0, seed=0, **kw) -> TextDVAE:
    """A random tiny model with a word tokenizer; eos_bias > 0 makes sentences end at varied lengths."""
    torch.manual_seed(seed)
    tokenizer = build_tokenizer(TokenizerConfig(kind="word"), [" ".join(WORDS)])
    base = dict(TINY_MODEL, vocab_size=len(tokenizer), decoder_type=decoder_type, encoder_type=encoder_type)
    model = TextDVAE(TextDVAEConfig(**{**base, **kw})).eval()
    with torch.no_grad():
        model.lm_head.bias[model.config.eos_token_id] += eos_bias
    model.tokenizer = tokenizer
    return model


def naive_greedy(model, codes, max_length):
    """Greedy decoding without state or cache: re-run the teacher-forcing decoder over the whole prefix each step."""
    cond = model.condition(explore.as_one_hot(model, codes))
    B = cond.size(0)
    ids = torch.empty(B, 0, dtype=torch.long)
    for _ in range(max_length):
        x = torch.cat([ids, torch.zeros(B, 1, dtype=torch.long)], 1)  # the last input is a placeholder
        h = model.decoder_states(x, cond)
        ids = torch.cat([ids, model.token_log_probs(h[:, -1]).argmax(-1, keepdim=True)], 1)
    eos = model.config.eos_token_id
    return [row[: row.index(eos) + 1] if eos in row else row for row in ids.tolist()]  # up to and including EOS


def every_code(model) -> torch.Tensor:
    """(K^N, N) every code of the model, as category indices."""
    return all_codes(model.config.num_latents, model.config.num_categories, one_hot=False)


# ---- incremental decoding ---------------------------------------------------------------------------------------


EOS_BIASES = [0.0, 0.25, 0.5, 0.75, 1.0]  # random models end sentences at varied lengths across these


@pytest.mark.parametrize("decoder_type", ["gru", "transformer"])
@torch.no_grad()
def test_incremental_greedy_equals_full_rerun(decoder_type):
    lengths = set()
    for eos_bias in EOS_BIASES:
        model = tiny(decoder_type, eos_bias=eos_bias)
        codes = every_code(model)  # 64 codes
        rows = []  # the batch size of every decoder step
        step = model.decoder.forward
        model.decoder.forward = lambda emb, state: (rows.append(emb.size(0)), step(emb, state))[1]
        fast = explore.greedy_decode(model, model.condition(explore.as_one_hot(model, codes)), len(codes), 20)
        del model.decoder.forward  # the naive decoder's calls are not counted
        assert fast == naive_greedy(model, codes, 20), eos_bias
        lengths |= {len(s) for s in fast}
        # an ended sentence leaves the batch: step t decodes exactly the sentences longer than t tokens
        assert rows == [sum(len(s) > t for s in fast) for t in range(len(rows))], eos_bias
    assert len(lengths) >= 3  # sentences of several lengths were compared, some cut at max_length


@pytest.mark.parametrize("decoder_type", ["gru", "transformer"])
@torch.no_grad()
def test_beam_keeps_state_aligned_and_one_beam_is_greedy(decoder_type):
    lengths = set()
    for eos_bias in EOS_BIASES:
        model = tiny(decoder_type, eos_bias=eos_bias)
        codes = every_code(model)[::4]  # 16 codes
        cond = model.condition(explore.as_one_hot(model, codes))
        greedy = explore.greedy_decode(model, cond, len(codes), 15)
        assert explore.beam_decode(model, cond, len(codes), 15, num_beams=1) == greedy
        assert model.decode(codes, strategy="beam", num_beams=1, max_length=15) == model.decode(codes, max_length=15)
        # each hypothesis's score must be its log-likelihood under a fresh teacher-forced pass: a state (GRU hidden
        # state, Transformer cache) reordered wrongly between steps would break this
        beams = explore.beam_decode(model, cond, len(codes), 15, num_beams=3, num_return=3, return_scores=True)
        ids, scores = [s for s, _ in beams], torch.tensor([lp for _, lp in beams])
        lengths |= {len(s) for s in ids}
        assert torch.allclose(scores, explore.ids_log_likelihood(model, ids, codes.repeat_interleave(3, 0)), atol=1e-4)
        best = scores.view(-1, 3)
        assert (best[:, :-1] >= best[:, 1:] - 1e-6).all()  # best first
        assert model.decode(codes, strategy="beam", num_beams=3, num_return_sequences=2, max_length=15)[0][0] == \
            model.tokenizer.decode(ids[0], skip_special_tokens=True)
    assert len(lengths) >= 3


class Markov(nn.Module):
    """A stand-in decoder: p(next token | last token) from a table, enough to construct beam-search cases."""

    def __init__(self, rows: dict[int, dict[int, float]], V: int = 6):
        super().__init__()
        table = torch.full((V, V), 1e-9)
        for a, row in rows.items():
            for b, p in row.items():
                table[a, b] = p
        self.register_buffer("logp", (table / table.sum(1, keepdim=True)).log())
        self.device = torch.device("cpu")
        self.config = SimpleNamespace(bos_token_id=1, eos_token_id=2, pad_token_id=0)
        outer = self

        class Decoder(nn.Module):
            def start(self, cond):
                return {}  # the last token is the whole state

            def forward(self, emb, state):
                return emb, state  # the "hidden state" is the last token itself

        self.decoder = Decoder()
        self.token_log_probs = lambda h: outer.logp[h]

    def embed_tokens(self, tokens):
        return tokens


def test_beam_search_finds_the_more_likely_sentence_greedy_misses():
    BOS, EOS, A, B, C = 1, 2, 3, 4, 5
    model = Markov({BOS: {A: 0.6, B: 0.4}, A: {C: 0.36, B: 0.34, EOS: 0.30}, B: {EOS: 1.0}, C: {EOS: 1.0}})
    greedy = explore.greedy_decode(model, None, 1, 10)
    assert greedy == [[A, C, EOS]]  # p = 0.6 * 0.36 = 0.216
    beams = explore.beam_decode(model, None, 1, 10, num_beams=2, num_return=2, return_scores=True)
    assert [s for s, _ in beams] == [[B, EOS], [A, C, EOS]]  # p = 0.4 beats 0.216
    assert beams[0][1] == pytest.approx(math.log(0.4), abs=1e-5)
    assert explore.beam_decode(model, None, 1, 10, num_beams=1) == greedy
    # a length penalty prefers the longer sentence when its per-token log-probability is higher
    model = Markov({BOS: {A: 0.5, EOS: 0.5}, A: {C: 0.9, EOS: 0.1}, C: {EOS: 0.95, A: 0.05}})
    assert explore.beam_decode(model, None, 1, 10, num_beams=2)[0] == [EOS]  # log 0.5 > log(0.5 * 0.9 * 0.95)
    assert explore.beam_decode(model, None, 1, 10, num_beams=2, length_penalty=1.0)[0] == [A, C, EOS]


# ---- sampling ---------------------------------------------------------------------------------------------------


def test_top_k_and_top_p_truncate_to_the_hand_computed_distribution():
    p = torch.tensor([[0.5, 0.2, 0.15, 0.1, 0.05]])
    logp = p.log()

    def dist(**kw):
        return explore.truncate_logits(logp, **kw).softmax(-1)[0]

    assert torch.allclose(dist(), p[0])
    assert torch.allclose(dist(top_k=2), torch.tensor([5 / 7, 2 / 7, 0, 0, 0]))
    assert torch.allclose(dist(top_p=0.75), torch.tensor([0.5, 0.2, 0.15, 0, 0]) / 0.85)  # 0.5+0.2 < 0.75
    assert torch.allclose(dist(top_p=0.6), torch.tensor([5 / 7, 2 / 7, 0, 0, 0]))
    assert torch.allclose(dist(top_p=0.3), torch.tensor([1.0, 0, 0, 0, 0]))  # the most likely token always stays
    # top-p measures mass after top-k: [.5, .2, .15] renormalised is [.588, .235, .176]; .588 + .235 >= .8
    assert torch.allclose(dist(top_k=3, top_p=0.8), torch.tensor([5 / 7, 2 / 7, 0, 0, 0]))
    assert torch.allclose(dist(temperature=2.0), p[0].sqrt() / p[0].sqrt().sum())
    for bad in ({"temperature": 0}, {"top_p": 0}, {"top_p": 1.5}, {"top_k": -1}):
        with pytest.raises(ValueError):
            explore.truncate_logits(logp, **bad)


def test_sampling_follows_the_truncated_distribution():
    BOS, EOS = 1, 2
    model = Markov({BOS: {3: 0.5, 4: 0.2, 5: 0.15, EOS: 0.1, 6: 0.05}, 3: {EOS: 1}, 4: {EOS: 1}, 5: {EOS: 1}}, V=7)
    g = torch.Generator().manual_seed(0)
    n = 20000
    first = torch.tensor([s[0] for s in explore.sample_decode(model, None, n, 3, top_p=0.75, generator=g)])
    freq = torch.stack([(first == t).float().mean() for t in (3, 4, 5, EOS)])
    assert torch.allclose(freq, torch.tensor([0.5, 0.2, 0.15, 0.0]) / 0.85, atol=0.015)
    first = torch.tensor([s[0] for s in explore.sample_decode(model, None, n, 3, top_k=1, generator=g)])
    assert (first == 3).all()


@torch.no_grad()
def test_sample_decode_with_num_return_sequences():
    model = tiny(eos_bias=1.0)
    codes = [[0, 1, 2], [3, 3, 3]]
    out = model.decode(codes, strategy="sample", num_return_sequences=4, top_k=5,
                       generator=torch.Generator().manual_seed(0))
    assert len(out) == 2 and all(len(texts) == 4 for texts in out)
    assert out == model.decode(codes, strategy="sample", num_return_sequences=4, top_k=5,
                               generator=torch.Generator().manual_seed(0))  # the generator fixes the draws
    # sampling from the single most likely token is greedy decoding, for every returned sequence
    greedy = model.decode(codes)
    assert model.decode(codes, strategy="sample", num_return_sequences=4, top_k=1) == [[t] * 4 for t in greedy]
    # prior samples: uniform codes drawn with the generator, decoded greedily
    texts, codes = model.sample(5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(codes, torch.randint(0, 4, (5, 3), generator=torch.Generator().manual_seed(0)))
    assert texts == model.decode(codes)
    with pytest.raises(ValueError, match="greedy"):
        model.decode([[0, 1, 2]], num_return_sequences=2)
    gaussian = tiny(latent="gaussian")
    texts, z = gaussian.sample(3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(z, torch.randn(3, 32, generator=torch.Generator().manual_seed(0)))  # z ~ N(0, I)
    assert texts == gaussian.decode(z)
    lm = tiny(latent="none", eos_bias=1.0)
    texts, nothing = lm.sample(2, strategy="sample", top_p=1e-6)  # the nucleus is the most likely token alone
    assert nothing is None and texts == lm.decode(None, batch_size=2)


# ---- codes and texts in every form ------------------------------------------------------------------------------


@pytest.mark.parametrize("decoder_type", ["gru", "transformer"])
@torch.no_grad()
def test_decode_takes_indices_one_hot_and_soft_codes(decoder_type):
    model = tiny(decoder_type)
    codes = every_code(model)[::7]
    texts = model.decode(codes)
    assert model.decode(codes.tolist()) == texts
    assert model.decode(torch.nn.functional.one_hot(codes, 4).float()) == texts
    assert model.decode(codes[0]) == texts[:1]  # a single code (N,)
    soft = torch.softmax(torch.randn(len(codes), 3, 4), -1)  # mixtures of the code embeddings
    ids = naive_greedy(model, soft, 20)  # decoded by re-running the decoder over the prefix, from the same mixture
    assert model.decode(soft, max_length=20) == explore.ids_to_texts(model.tokenizer, ids, model.config.eos_token_id)
    with pytest.raises(ValueError, match="category indices"):
        model.decode([[0, 1, 9]])
    with pytest.raises(ValueError, match="latents"):
        model.decode([[0, 1]])
    with pytest.raises(ValueError, match="shape"):
        model.decode(torch.rand(2, 3, 5))
    with pytest.raises(ValueError, match="strategy"):
        model.decode(codes, strategy="nucleus")


@torch.no_grad()
def test_large_batches_are_encoded_and_decoded_in_chunks_with_the_same_result(monkeypatch):
    model = tiny(eos_bias=0.25)
    codes = every_code(model)
    texts = ["the cat", "the dog .", "a big fox", "the old bird chased the fox slowly .", "fox"]
    whole = model.decode(codes), model.decode(codes[:9], strategy="beam", num_beams=3, num_return_sequences=2)
    encoded = model.encode(texts)
    alone = torch.cat([model.encode([t])[1] for t in texts])  # each text in a batch of its own, without padding
    assert torch.allclose(encoded[1], alone, atol=1e-6)
    monkeypatch.setattr(explore, "DECODE_ROWS", 7)
    monkeypatch.setattr(explore, "ENCODE_ROWS", 2)
    assert (model.decode(codes), model.decode(codes[:9], strategy="beam", num_beams=3, num_return_sequences=2)) == whole
    chunked = model.encode(texts)
    assert torch.equal(chunked[0], encoded[0]) and torch.allclose(chunked[1], encoded[1], atol=1e-6)
    # shortest first, at most 12 tokens (rows x longest) and 2 rows a batch; one row always fits
    assert explore.length_chunks([3, 3, 4, 9, 2], 12, 2) == [[4, 0], [1, 2], [3]]
    assert explore.length_chunks([3, 3, 4, 9, 2], 12, 512) == [[4, 0, 1], [2], [3]]
    assert explore.length_chunks([3, 3, 4, 9, 2], 100, 512) == [[4, 0, 1, 2, 3]]
    monkeypatch.setattr(explore, "ENCODE_TOKENS", 12)  # the texts' lengths 3, 4, 4, 9, 2 (EOS included): 3 batches
    chunked = model.encode(texts)
    assert torch.equal(chunked[0], encoded[0]) and torch.allclose(chunked[1], encoded[1], atol=1e-6)


def test_decoded_text_keeps_unk_and_drops_the_other_special_tokens():
    """PTB's <unk> stands for real words: decoding must show it, not glue its neighbours together."""
    tok = tiny().tokenizer
    the, cat, eos = tok.convert_tokens_to_ids("the"), tok.convert_tokens_to_ids("cat"), tok.eos_token_id
    ids = [[tok.bos_token_id, the, tok.unk_token_id, cat, eos, the, tok.pad_token_id], [the, tok.pad_token_id, cat]]
    assert explore.ids_to_texts(tok, ids, eos) == ["the <unk> cat", "the cat"]


@pytest.mark.parametrize("text", ["", "   "])
def test_empty_text_is_a_clear_error(text):
    model = tiny()
    with pytest.raises(ValueError, match="empty"):
        model.encode(["the cat", text])
    with pytest.raises(ValueError, match="empty"):
        model.reconstruct([text])


@pytest.mark.parametrize("decoder_type,encoder_type", [("transformer", "gru"), ("gru", "transformer")])
@torch.no_grad()
def test_long_text_is_truncated_and_decoding_stays_within_positions(decoder_type, encoder_type):
    model = tiny(decoder_type, encoder_type, max_position_embeddings=12)
    long = " ".join(WORDS * 20)  # 340 words
    batch = explore.tokenize(model, [long, "the cat"])
    assert batch["input_ids"].shape == (2, 12) and batch["input_ids"][0, -1] == model.config.eos_token_id
    codes, probs = model.encode([long])
    kept = " ".join(long.split()[:11])  # what the encoder read: 11 words and EOS
    assert [t.tolist() for t in model.encode([kept])] == [codes.tolist(), probs.tolist()]
    out = explore.decode_ids(model, codes, max_length=100)
    assert len(out[0]) <= (12 if decoder_type == "transformer" else 100)
    assert model.reconstruct([long], max_length=100) == model.decode(codes, max_length=100)


@torch.no_grad()
def test_traverse_and_interpolate_on_a_random_model():
    model = tiny(eos_bias=1.0)
    rows = model.traverse("the cat chased the fox .", latent=1)
    assert [r["category"] for r in rows] == [0, 1, 2, 3] and sum(r["original"] for r in rows) == 1
    assert all(r["codes"][0] == rows[0]["codes"][0] and r["codes"][2] == rows[0]["codes"][2] for r in rows)
    with pytest.raises(ValueError, match="out of range"):
        model.traverse("the cat", latent=3)
    with pytest.raises(ValueError, match="method"):
        model.interpolate("the cat", "the dog", method="linear")
    with pytest.raises(ValueError, match="steps"):
        model.interpolate("the cat", "the dog", method="simplex", steps=1)


# ---- one API for both latents: a Gaussian model is explored from its posterior mean ----------------------------


def test_gaussian_model_encodes_reconstructs_interpolates_and_traverses_from_the_posterior_mean():
    model = tiny(latent="gaussian", latent_dim=4, eos_bias=0.25)
    with torch.no_grad():
        model.z_to_cond.weight.mul_(20)  # a random decoder that listens to z
    a, b = "the cat chased the fox .", "the dog will not help a big bird slowly ."
    mu, sigma = model.encode([a, b])
    batch = explore.tokenize(model, [a, b])
    params, _ = model.posterior(batch["input_ids"], batch["attention_mask"])  # (2, Dz, 2): [mu, logvar]
    torch.testing.assert_close(mu, params[..., 0])
    torch.testing.assert_close(sigma, (0.5 * params[..., 1]).exp())
    recs = model.reconstruct([a, b])
    assert recs == model.decode(mu)
    assert len(set(recs)) == 2  # the two means decode differently: the test below can tell them apart
    path = model.interpolate(a, b, steps=4)  # the default method of a Gaussian model is "linear"
    assert [p["t"] for p in path] == pytest.approx([0, 1 / 3, 2 / 3, 1])
    assert path[0]["text"] == recs[0] and path[-1]["text"] == recs[1]
    torch.testing.assert_close(torch.tensor(path[0]["codes"]), mu[0], atol=1e-4, rtol=0)
    torch.testing.assert_close(torch.tensor(path[2]["codes"]), mu[0] / 3 + 2 * mu[1] / 3, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="not one of linear"):
        model.interpolate(a, b, method="hamming")
    rows = model.traverse(a, 2)
    values = [r["value"] for r in rows]
    assert len(rows) == 8 and values == sorted(values) and sum(r["original"] for r in rows) == 1
    own = next(r for r in rows if r["original"])
    assert own["text"] == recs[0] and own["value"] == pytest.approx(float(mu[0, 2]), abs=1e-4)
    for r in rows:  # only dimension 2 moves
        assert r["codes"][:2] + r["codes"][3:] == pytest.approx(mu[0, [0, 1, 3]].tolist(), abs=1e-4)
    assert [r["value"] for r in rows if not r["original"]] == [-3, -2, -1, 0, 1, 2, 3]
    assert [r["text"] for r in rows if not r["original"]] == model.decode(
        torch.stack([torch.cat([mu[0, :2], torch.tensor([float(v)]), mu[0, 3:]]) for v in range(-3, 4)]))
    with pytest.raises(ValueError, match="latents 0..3"):
        model.traverse(a, 4)


def test_the_command_line_explores_a_gaussian_model_as_the_python_api_does(capsys, tmp_path):
    model = tiny(latent="gaussian", latent_dim=4, eos_bias=0.25)
    with torch.no_grad():
        model.z_to_cond.weight.mul_(20)
    model.save_pretrained(tmp_path / "g")
    model.tokenizer.save_pretrained(tmp_path / "g")
    a, b = "the cat chased the fox .", "the dog will not help a big bird slowly ."
    mu, sigma = model.encode([a, b])
    code, out, err = cli(capsys, "encode", tmp_path / "g", a, b, "--json")
    rows = json.loads(out)
    assert code == 0, err
    torch.testing.assert_close(torch.tensor([r["z"] for r in rows]), mu, atol=1e-4, rtol=0)
    assert [r["std"] for r in rows] == pytest.approx(sigma.mean(1).tolist(), abs=1e-4)
    code, out, _ = cli(capsys, "reconstruct", tmp_path / "g", a, b, "--json")
    assert code == 0 and [r["reconstruction"] for r in json.loads(out)] == model.reconstruct([a, b])
    code, out, _ = cli(capsys, "interpolate", tmp_path / "g", a, b, "--steps", "4", "--json")
    path = json.loads(out)
    assert code == 0 and [p["text"] for p in path] == [p["text"] for p in model.interpolate(a, b, steps=4)]
    assert [p["t"] for p in path] == pytest.approx([0, 1 / 3, 2 / 3, 1]) and path[0]["z"] == pytest.approx(rows[0]["z"])
    code, out, _ = cli(capsys, "traverse", tmp_path / "g", a, "--latent", "1", "--values", "-1", "1", "--json")
    moved = json.loads(out)
    assert code == 0 and [r["text"] for r in moved] == [r["text"] for r in model.traverse(a, 1, values=[-1, 1])]
    code, out, _ = cli(capsys, "traverse", tmp_path / "g", a, "--latent", "1")  # the table: values, own starred
    assert code == 0 and out.splitlines()[0].split() == ["value", "mark", "text"] and out.count(" * ") == 1
    code, _, err = cli(capsys, "interpolate", tmp_path / "g", a, b, "--method", "hamming")
    assert code == 2 and "not one of linear" in err
    tiny().save_pretrained(tmp_path / "c")
    tiny().tokenizer.save_pretrained(tmp_path / "c")
    code, _, err = cli(capsys, "traverse", tmp_path / "c", a, "--latent", "1", "--values", "1")
    assert code == 2 and "drop --values" in err


def test_categorical_interpolation_still_defaults_to_hamming():
    model = tiny()
    a, b = "the cat chased the fox .", "the dog will not help a big bird slowly ."
    assert model.interpolate(a, b) == model.interpolate(a, b, method="hamming")
    with pytest.raises(ValueError, match="not one of hamming, simplex"):
        model.interpolate(a, b, method="linear")


# ---- a small model trained on the bundled corpus ----------------------------------------------------------------

PAIRS = [("the cat chased the fox .", "the dogs will not greet the old queen ."),
         ("the horses did not greet the small baker slowly .", "the farmer calls the small girl quietly ."),
         ("the king helps the boy .", "the birds will watch the big pilot quickly .")]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("quick")
    train_small_quickstart(out, max_train_samples=3000, max_steps=250)
    model = TextDVAE.from_pretrained(out / "final").eval()
    return SimpleNamespace(path=out / "final", model=model)


@pytest.mark.parametrize("a,b", PAIRS)
def test_hamming_path_runs_from_reconstruction_to_reconstruction(trained, a, b):
    model = trained.model
    (code_a, code_b), _ = model.encode([a, b])
    d = int((code_a != code_b).sum())
    path = model.interpolate(a, b, method="hamming")
    assert len(path) == d + 1 and [p["step"] for p in path] == list(range(d + 1))
    assert [path[0]["text"], path[-1]["text"]] == model.reconstruct([a, b])
    assert path[0]["codes"] == code_a.tolist() and path[-1]["codes"] == code_b.tolist()
    for prev, cur in zip(path, path[1:]):
        changed = [i for i, (x, y) in enumerate(zip(prev["codes"], cur["codes"])) if x != y]
        assert len(changed) == 1 and cur["codes"][changed[0]] == code_b[changed[0]]
        assert cur["repeated"] == (cur["text"] == prev["text"])  # repeats are marked, and kept
    assert not path[0]["repeated"]


def test_simplex_path_and_traverse_on_the_trained_model(trained):
    model = trained.model
    a, b = PAIRS[0]
    path = model.interpolate(a, b, method="simplex", steps=6)
    assert len(path) == 6 and [p["t"] for p in path] == pytest.approx([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    K = model.config.num_categories
    rows = model.traverse(a, latent=2)
    code, _ = model.encode([a])
    assert len(rows) == K and [r["original"] for r in rows] == [k == int(code[0, 2]) for k in range(K)]
    assert next(r for r in rows if r["original"])["text"] == model.reconstruct([a])[0]
    assert model.decode(code, strategy="beam", num_beams=1) == model.reconstruct([a])


def test_a_model_loaded_in_bf16_encodes_and_decodes_like_fp32(trained):
    """from_pretrained(..., dtype=torch.bfloat16) (the serving benchmark's fast encoder): bf16 weights, the whole API
    runs, and the codes and reconstructions are fp32's but for rare near-ties (a model whose bf16 path were broken,
    e.g. a posterior that went through an fp32-only kernel or lost its softmax, would fail)."""
    texts = [a for pair in PAIRS for a in pair]
    model16 = TextDVAE.from_pretrained(trained.path, dtype=torch.bfloat16).eval()
    assert {p.dtype for p in model16.parameters()} == {torch.bfloat16}
    codes32, probs32 = trained.model.encode(texts)
    codes16, probs16 = model16.encode(texts)
    assert probs16.dtype == torch.bfloat16 and torch.allclose(probs16.float().sum(-1), torch.ones(len(texts), 16),
                                                              atol=0.02)
    assert (codes16 == codes32).float().mean() >= 0.95
    assert (probs16.float() - probs32).abs().max() < 0.05
    same = sum(a == b for a, b in zip(model16.decode(codes32), trained.model.decode(codes32)))
    assert same >= len(texts) - 1


def test_cli_interpolate_and_reconstruct_json(trained, capsys):
    a, b = PAIRS[1]
    code, out, _ = cli(capsys, "interpolate", trained.path, a, b, "--json")
    path = json.loads(out)
    assert code == 0 and path and all({"step", "text", "codes"} <= set(p) for p in path)
    assert [p["text"] for p in path] == [p["text"] for p in trained.model.interpolate(a, b)]
    code, out, _ = cli(capsys, "reconstruct", trained.path, "--json", a, b)  # options may come between the texts
    rows = json.loads(out)
    assert code == 0 and [set(r) for r in rows] == [{"text", "codes", "reconstruction"}] * 2
    assert [r["reconstruction"] for r in rows] == trained.model.reconstruct([a, b])
    assert rows[0]["text"] == a and len(rows[0]["codes"]) == trained.model.config.num_latents


def test_cli_texts_from_file_and_stdin(trained, capsys, monkeypatch, tmp_path):
    texts = [PAIRS[0][0], PAIRS[2][0]]
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n\n", encoding="utf-8")
    _, out, _ = cli(capsys, "encode", trained.path, "--file", tmp_path / "in.txt", "--json")
    assert [r["text"] for r in json.loads(out)] == texts
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(texts) + "\n"))
    _, out, _ = cli(capsys, "reconstruct", trained.path, "--json")
    assert [r["text"] for r in json.loads(out)] == texts
    monkeypatch.setattr(sys, "stdin", io.StringIO(texts[1] + "\n"))
    _, out, _ = cli(capsys, "reconstruct", trained.path, texts[0], "-")
    assert out.splitlines()[0].split() == ["text", "codes", "reconstruction"] and len(out.splitlines()) == 3


def test_cli_user_errors(trained, capsys):
    code, _, err = cli(capsys, "traverse", trained.path, "the cat", "--latent", "99")
    assert code == 2 and "out of range" in err and "Traceback" not in err
    code, _, err = cli(capsys, "reconstruct", trained.path, "the cat", "")
    assert code == 2 and "empty" in err
    code, _, err = cli(capsys, "sample", trained.path, "--strategy", "sample", "--top-p", "2")
    assert code == 2 and "top_p" in err


def test_cli_sample_and_traverse_plot(trained, capsys, tmp_path):
    code, out, _ = cli(capsys, "sample", trained.path, "-n", "3", "--strategy", "sample", "--top-k", "5", "--json")
    texts, codes = trained.model.sample(3, generator=torch.Generator().manual_seed(0), strategy="sample", top_k=5)
    assert code == 0 and json.loads(out) == [{"codes": c, "text": t} for c, t in zip(codes.tolist(), texts)]
    pytest.importorskip("matplotlib")
    png = tmp_path / "traverse.png"
    code, out, _ = cli(capsys, "traverse", trained.path, PAIRS[0][0], "--latent", "0", "--plot", png)
    assert code == 0 and out.count("\n") == trained.model.config.num_categories + 1
    rows = trained.model.traverse(PAIRS[0][0], latent=0)
    assert [line.rstrip().endswith(r["text"]) for line, r in zip(out.splitlines()[1:], rows)] == [True] * len(rows)
    from matplotlib.image import imread

    image = imread(png)
    assert image.shape[0] > 200 and image.shape[1] > 400


FACTORS = ["subject", "number", "verb", "tense", "negation", "adjective", "object", "adverb"]


def test_cli_factors_json_and_plot_agree_with_the_traversal_benchmark(trained, capsys, tmp_path):
    out, png = tmp_path / "factors.json", tmp_path / "nmi.png"
    code, text, _ = cli(capsys, "factors", trained.path, ROOT / "data" / "test.jsonl", "--factors", *FACTORS,
                        "--max-samples", "300", "--json", out, "--plot", png)
    assert code == 0 and "exact reconstruction" in text
    result = json.loads(out.read_text())
    assert set(result["factors"]) == set(FACTORS)
    for f in result["factors"].values():
        assert set(f) == {"nmi", "best_latent", "mig", "sap", "probe_accuracy", "majority"}
    for key in ("dci_disentanglement", "dci_completeness", "dci_informativeness", "mig", "nmi_mean"):
        assert 0 <= result[key] <= 1
    records = [json.loads(line) for line in (ROOT / "data" / "test.jsonl").read_text().splitlines()[:300]]
    texts = [r["text"] for r in records]
    model = trained.model
    assert result["exact_reconstruction"] == sum(a == b for a, b in zip(model.reconstruct(texts), texts)) / 300
    # each factor's best latent and NMI, recomputed here from the codes by counting
    codes, _ = model.encode(texts)
    for f in FACTORS:
        labels = [r[f] for r in records]
        nmis = [_nmi_by_counting([c[i] for c in codes.tolist()], labels) for i in range(codes.shape[1])]
        assert result["factors"][f]["nmi"] == pytest.approx(max(nmis), abs=1e-9)
        assert nmis[result["factors"][f]["best_latent"]] == pytest.approx(max(nmis), abs=1e-9)
    if importlib.util.find_spec("matplotlib") is not None:
        assert png.stat().st_size > 1000


def test_cli_factors_on_a_gaussian_model_with_integer_labels_in_csv(capsys, tmp_path):
    model = tiny(latent="gaussian", latent_dim=4, eos_bias=0.25)
    model.save_pretrained(tmp_path / "g")
    model.tokenizer.save_pretrained(tmp_path / "g")
    rows = ["text,size,kind"] + [f"the {a} {n} .,{i % 3},{n}" for i, (a, n) in
                                enumerate((a, n) for a in ("big", "small", "old") for n in ("cat", "dog", "fox"))]
    (tmp_path / "d.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "g.json"
    code, _, err = cli(capsys, "factors", tmp_path / "g", tmp_path / "d.csv", "--factors", "size", "kind",
                       "--json", out)
    assert code == 0, err
    result = json.loads(out.read_text())
    assert result["latent"] == "gaussian" and result["n"] == 9 and len(result["nmi_matrix"]) == 4
    assert set(result["factors"]) == {"size", "kind"}
    code, _, err = cli(capsys, "factors", tmp_path / "g", tmp_path / "d.csv", "--factors", "colour")
    assert code == 2 and "no column 'colour'" in err and "size" in err
    (tmp_path / "d.txt").write_text("the big cat .\n")
    code, _, err = cli(capsys, "factors", tmp_path / "g", tmp_path / "d.txt", "--factors", "size")
    assert code == 2 and "not a .jsonl" in err
    code, _, err = cli(capsys, "factors", tmp_path / "g", tmp_path / "missing.jsonl", "--factors", "size")
    assert code == 2 and "matches no file" in err


def _nmi_by_counting(xs, ys) -> float:
    """I(X; Y) / ((H(X) + H(Y)) / 2) from the joint counts (0 when both sides are constant)."""
    from collections import Counter
    n = len(xs)
    joint, px, py = Counter(zip(xs, ys)), Counter(xs), Counter(ys)
    mi = sum(c / n * math.log(c * n / (px[x] * py[y])) for (x, y), c in joint.items())
    hx = -sum(c / n * math.log(c / n) for c in px.values())
    hy = -sum(c / n * math.log(c / n) for c in py.values())
    return 2 * mi / (hx + hy) if hx + hy > 0 else 0.0
