"""Training throughput against the way public text-VAE code trains, and against this machine's matmul peak.

    python benchmarks/throughput.py [--json benchmarks/results/throughput.json] [--steps 20] [--repeats 3]
        [--precision recipe|fp32|bf16 ...] [--readme]

For each recipe (the PTB GRU and Transformer models, and the quick-start model) in one process:
- `train_tokens_per_s`: forward + backward + AdamW step of the real model on real sentences (Penn Treebank from
  ../shared/data/ptb, or the bundled corpus for the quick start) in the recipe's length-bucketed batches; target
  tokens counted (end-of-sentence included), padding not.
- `reference_train_tokens_per_s`: a reference written the way the best public text-VAE code does it (Bowman et al.
  2016; bohanli/vae-pretraining-encoder): an LSTM encoder, a Gaussian latent (32) concatenated to every decoder
  input, an LSTM decoder, the full-vocabulary softmax, batches of 32 sentences of one length (no padding), at the
  recipe's embedding and hidden sizes. Ours and the reference are timed alternately, `--repeats` rounds, medians;
  each round runs its batches once untimed first (oneDNN builds its kernels for each new batch shape, a cost
  training pays once per length, and for the output layer once per bucket of rows: benchmarks/shapes.py).
- `flops_per_token`: matrix-multiply FLOPs the model really does per target token, forward + backward (backward =
  2 x forward for every matmul: gradients for inputs and for weights), counted from shapes:
    GRU (3 gates) / LSTM (4 gates) layer:  2 * G * (I * H + H * H) per token and direction
    full softmax:                          2 * H * V
    adaptive softmax (Grave et al. 2017): 2 * H * (c_0 + n_clusters) for every token, plus for a token in tail
                                          cluster i: 2 * H * d_i + 2 * d_i * |cluster i|   (counted per batch)
    Transformer block:                     2 * (4 * D * D + 2 * D * F) per token + attention 2 * 2 * L * D
                                          (L = keys a query attends to; causal: the prefix it really sees)
    latent layers (once per sentence):     posterior 2 * P * N * K, code embeddings 2 * N * K * D, conditioning
  `achieved_gflops` = flops_per_token * tokens/s; `mfu` = that / `peak_gflops`, the median of 2048 x 2048 matmuls
  in the dtype the model runs in (fp32, or bf16 for a recipe with train.mixed_precision: bf16, or --precision bf16),
  measured in the same run beside the other dtype's (`peak_gflops_fp32`, `peak_gflops_bf16`). The reference is fp32.
- `encode_sentences_per_s` (posterior of batches of 256), `decode_tokens_per_s` (incremental greedy decoding of
  256 codes: positions computed per second, batch x steps run, so an untrained model's early end-of-sentence does
  not change the figure), `peak_rss_mb` (this process's peak resident memory after the model's runs; a fresh process per model).
- `epoch_minutes`: one PTB training epoch (929,582 target tokens, as training counts them) at `train_tokens_per_s`.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_name  # noqa: E402
from ptb import replace_between  # noqa: E402

PTB = ROOT.parent / "shared" / "data" / "ptb"
# words + one end-of-sentence per sentence (929,589), less the 7 tokens that max_length 80 cuts from the 4 longest
# sentences: the 929,582 the training run itself counts (metrics.json data.train.n_tokens)
PTB_EPOCH_TOKENS = 887_521 + 42_068 - 7
RECIPES = {"ptb_gru": "recipes/ptb_gru.yaml", "ptb_transformer": "recipes/ptb_transformer.yaml",
           "quickstart": "recipes/quickstart.yaml", "ptb_gru_lm": "recipes/ptb_gru_lm.yaml",
           "ptb_gru_gaussian": "recipes/ptb_gru_gaussian.yaml"}
DEFAULT_MODELS = ["ptb_gru", "ptb_transformer", "quickstart"]


# ---- the reference: how public text-VAE code trains ---------------------------------------------------------------

class ReferenceVAE(nn.Module):
    """LSTM encoder -> Gaussian z (32) -> z concatenated to every input of an LSTM decoder -> full softmax."""

    def __init__(self, vocab: int, embed: int, hidden: int, latent: int = 32):
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        self.enc = nn.LSTM(embed, hidden, batch_first=True)
        self.to_z = nn.Linear(hidden, 2 * latent)
        self.z_to_h = nn.Linear(latent, hidden)
        self.dec = nn.LSTM(embed + latent, hidden, batch_first=True)
        self.out = nn.Linear(hidden, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x (B, T+1): BOS ... EOS, one length per batch
        _, (h, _) = self.enc(self.embed(x[:, 1:]))
        mu, logvar = self.to_z(h[-1]).chunk(2, -1)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()  # (B, Z)
        inp = self.embed(x[:, :-1])  # (B, T, E)
        inp = torch.cat([inp, z.unsqueeze(1).expand(-1, inp.size(1), -1)], -1)
        c0 = self.z_to_h(z).unsqueeze(0)
        out, _ = self.dec(inp, (torch.tanh(c0), c0))
        rec = F.cross_entropy(self.out(out).reshape(-1, self.out.out_features), x[:, 1:].reshape(-1), reduction="sum")
        kl = 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1).sum()
        return (rec + kl) / x.size(0)


def reference_flops_per_token(vocab: int, embed: int, hidden: int, latent: int = 32) -> float:
    lstm = 2 * 4 * (embed * hidden + hidden * hidden) + 2 * 4 * ((embed + latent) * hidden + hidden * hidden)
    return 3 * (lstm + 2 * hidden * vocab)


# ---- FLOPs of our model -------------------------------------------------------------------------------------------

def model_flops(config, batch: dict[str, torch.Tensor]) -> float:
    """Forward + backward matmul FLOPs of one training batch of TextDVAE (see the module docstring)."""
    c = config
    mask = batch["attention_mask"]
    lengths = mask.sum(1)
    n_tok, n_sent = int(lengths.sum()), mask.size(0)
    E, H, V = c.embed_dim, c.hidden_dim, c.vocab_size
    fwd = 0.0
    gates = 3

    def rnn(inp: int, layers: int, directions: int) -> float:
        total, size = 0.0, inp
        for _ in range(layers):  # one stack per direction (see GRUEncoder)
            total += directions * 2 * gates * (size * H + H * H)
            size = H
        return total * n_tok

    def transformer(layers: int, prefix: int, causal: bool) -> float:
        proj = (2 * E * H if E != H else 0) * n_tok
        block = 2 * (4 * H * H + 2 * H * c.ffn_dim) * n_tok
        keys = sum(((prefix + t + 1) if causal else int(length)) for length in lengths.tolist() for t in range(int(length)))
        return proj + layers * (block + 2 * 2 * H * keys)

    latent = c.latent
    if latent != "none":
        directions = 2 if c.encoder_bidirectional else 1
        fwd += rnn(E, c.encoder_layers, directions) if c.encoder_type == "gru" else transformer(c.encoder_layers, 0, False)
        pooled = directions * H if c.encoder_type == "gru" else H
        if latent == "categorical":
            M = c.num_latents
            fwd += n_sent * (2 * pooled * M * c.num_categories + 2 * M * c.num_categories * H)
        else:
            M = 1
            fwd += n_sent * (2 * pooled * 2 * c.latent_dim + 2 * c.latent_dim * H)
        if c.decoder_type == "gru":
            fwd += n_sent * (2 * M * H * c.decoder_layers * H + 2 * M * H * E)
    else:
        M = 0
    fwd += rnn(E, c.decoder_layers, 1) if c.decoder_type == "gru" else transformer(c.decoder_layers, M, True)
    if c.decoder_type == "transformer" and M:
        fwd += n_sent * c.decoder_layers * 2 * (4 * H * H + 2 * H * c.ffn_dim) * M  # the code prefix positions
    targets = batch["input_ids"][mask.bool()]
    if c.adaptive_softmax_cutoffs:
        cutoffs = list(c.adaptive_softmax_cutoffs) + [V]
        fwd += n_tok * 2 * H * (cutoffs[0] + len(cutoffs) - 1)
        for i in range(len(cutoffs) - 1):
            d = int(H // (4.0 ** (i + 1)))
            in_cluster = int(((targets >= cutoffs[i]) & (targets < cutoffs[i + 1])).sum())
            fwd += in_cluster * (2 * H * d + 2 * d * (cutoffs[i + 1] - cutoffs[i]))
    else:
        fwd += n_tok * (2 * H * E if c.tie_embeddings and E != H else 0) + n_tok * 2 * (E if c.tie_embeddings else H) * V
    return 3 * fwd


# ---- measurement --------------------------------------------------------------------------------------------------

def matmul_peak(n: int = 2048, repeats: int = 7, dtype: torch.dtype = torch.float32) -> float:
    """GFLOP/s of an n x n matrix product in `dtype` (bf16: this CPU's AVX-512 BF16 or AMX kernels), median."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * n ** 3 / statistics.median(times) / 1e9


def load_sentences(name: str) -> list[str]:
    if name.startswith("ptb"):
        if not PTB.is_dir():
            raise SystemExit(f"Penn Treebank not found at {PTB}; the PTB rows need ../shared/data/ptb")
        return [line.strip() for line in (PTB / "train.txt").read_text().splitlines() if line.strip()]
    return [json.loads(line)["text"] for line in (ROOT / "data/train.jsonl").read_text().splitlines()]


def recipe_data(name: str):
    """A recipe of RECIPES with its tokenizer built on its training sentences -> (recipe, token ids of every
    sentence, the recipe's length-bucketed batch order of the first epoch: lists of sentence indices)."""
    from textdvae import recipe as recipe_lib
    from textdvae.data import configure_model_for_tokenizer, encode, make_batches
    from textdvae.tokenization import build_tokenizer

    recipe = recipe_lib.load(ROOT / RECIPES[name])
    texts = load_sentences(name)
    tok = build_tokenizer(recipe.tokenizer, texts)
    configure_model_for_tokenizer(recipe, tok)
    ids, _ = encode(tok, texts, recipe.data.max_length)
    return recipe, ids, make_batches([len(s) for s in ids], recipe.train.batch_size, shuffle=True, seed=0)


def run_model(name: str, steps: int, repeats: int, precision: str, queue) -> None:
    from textdvae.data import collate
    from textdvae.explore import greedy_decode
    from textdvae.modeling import TextDVAE
    from textdvae.optim import build_optimizer

    torch.manual_seed(0)
    recipe, ids, order = recipe_data(name)
    cfg, tc = recipe.model, recipe.train
    bf16 = (tc.mixed_precision if precision == "recipe" else precision) == "bf16"  # ours runs in this dtype
    model = TextDVAE(cfg)
    opt = build_optimizer(model, tc)  # the optimizer training uses
    batches = [collate([ids[i] for i in b], cfg.pad_token_id) for b in order[: steps * (repeats + 1)]]
    # reference batches: 32 sentences of one length
    by_len: dict[int, list[list[int]]] = {}
    for s in ids:
        by_len.setdefault(len(s), []).append(s)
    ref_batches = []
    for length, group in sorted(by_len.items()):
        for i in range(0, len(group) - 31, 32):
            ref_batches.append(torch.tensor([[cfg.bos_token_id] + s for s in group[i:i + 32]]))
    g = torch.Generator().manual_seed(0)
    ref_batches = [ref_batches[i] for i in torch.randperm(len(ref_batches), generator=g).tolist()][: steps * (repeats + 1)]
    ref = ReferenceVAE(cfg.vocab_size, cfg.embed_dim, cfg.hidden_dim)
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=tc.lr)

    def ours(chunk) -> tuple[float, int, float]:
        model.train()
        flops = sum(model_flops(cfg, b) for b in chunk)  # counted outside the timed loop
        tokens, t0 = 0, time.perf_counter()
        for b in chunk:
            tokens += train_step(model, opt, b, tc, bf16)
        return time.perf_counter() - t0, tokens, flops

    def reference(chunk) -> tuple[float, int]:
        tokens, t0 = 0, time.perf_counter()
        for x in chunk:
            loss = ref(x)
            ref_opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(ref.parameters(), tc.grad_clip)
            ref_opt.step()
            tokens += x[:, 1:].numel()
        return time.perf_counter() - t0, tokens

    ours(batches[:2]), reference(ref_batches[:2])  # warm-up: allocator, thread pools
    peak, peak_bf16 = [matmul_peak()], [matmul_peak(dtype=torch.bfloat16)]
    ours_rates, ref_rates, gflops = [], [], []
    for r in range(repeats):
        chunk, ref_chunk = batches[(r + 1) * steps:(r + 2) * steps], ref_batches[(r + 1) * steps:(r + 2) * steps]
        ours(chunk), reference(ref_chunk)  # untimed: oneDNN builds its kernels for each batch shape on first sight
        t, n, f = ours(chunk)
        ours_rates.append(n / t)
        gflops.append(f / t / 1e9)
        t, n = reference(ref_chunk)
        ref_rates.append(n / t)
        peak.append(matmul_peak())
        peak_bf16.append(matmul_peak(dtype=torch.bfloat16))
    rss_train = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # encode and decode
    model.eval()
    enc_batch = collate(ids[:256], cfg.pad_token_id)
    with torch.no_grad():
        model.posterior(enc_batch["input_ids"], enc_batch["attention_mask"]) if cfg.latent != "none" else None
        t0 = time.perf_counter()
        reps = 3
        for _ in range(reps):
            if cfg.latent != "none":
                model.posterior(enc_batch["input_ids"], enc_batch["attention_mask"])
        enc_rate = 256 * reps / (time.perf_counter() - t0) if cfg.latent != "none" else None
        if cfg.latent == "categorical":
            cond = model.condition(F.one_hot(torch.randint(0, cfg.num_categories, (256, cfg.num_latents)),
                                             cfg.num_categories).float())
        else:
            cond = model.condition(torch.randn(256, cfg.latent_dim)) if cfg.latent == "gaussian" else None
        t0 = time.perf_counter()
        out = greedy_decode(model, cond, 256, 30)
        dec_rate = 256 * max(len(s) for s in out) / (time.perf_counter() - t0)  # the loop ran max(len) steps
    train_rate, ref_rate = statistics.median(ours_rates), statistics.median(ref_rates)
    peak_fp32, peak_bf16 = statistics.median(peak), statistics.median(peak_bf16)
    peak_gflops = peak_bf16 if bf16 else peak_fp32  # MFU against the peak of the dtype the model runs in
    achieved = statistics.median(gflops)
    queue.put({
        "model": name, "encoder_type": cfg.encoder_type, "decoder_type": cfg.decoder_type, "hidden_dim": cfg.hidden_dim,
        "embed_dim": cfg.embed_dim, "vocab_size": cfg.vocab_size, "batch_size": tc.batch_size,
        "adaptive_softmax_cutoffs": cfg.adaptive_softmax_cutoffs,
        "params": sum(p.numel() for p in model.parameters()),
        "train_tokens_per_s": round(train_rate, 1), "reference_train_tokens_per_s": round(ref_rate, 1),
        "speedup": round(train_rate / ref_rate, 3),
        "flops_per_token": round(achieved * 1e9 / train_rate), "achieved_gflops": round(achieved, 2),
        "precision": "bf16" if bf16 else "fp32", "peak_gflops": round(peak_gflops, 2),
        "peak_gflops_fp32": round(peak_fp32, 2), "peak_gflops_bf16": round(peak_bf16, 2),
        "mfu": round(achieved / peak_gflops, 3),
        "reference_flops_per_token": reference_flops_per_token(cfg.vocab_size, cfg.embed_dim, cfg.hidden_dim),
        "reference_mfu": round(ref_rate * reference_flops_per_token(cfg.vocab_size, cfg.embed_dim, cfg.hidden_dim) / 1e9
                               / peak_fp32, 3),  # the reference runs in fp32
        "encode_sentences_per_s": round(enc_rate, 1) if enc_rate else None, "decode_tokens_per_s": round(dec_rate, 1),
        "peak_rss_mb": round(rss_train, 1), "epoch_minutes": round(PTB_EPOCH_TOKENS / train_rate / 60, 2),
        "ours_rates": [round(x) for x in ours_rates], "reference_rates": [round(x) for x in ref_rates],
    })


def train_step(model, opt, batch: dict, tc, bf16: bool = False) -> int:
    """One training step as the Trainer takes it (forward under bf16 autocast when asked, as Trainer._autocast does;
    backward, clipping, the optimizer); returns the batch's target tokens."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = model(batch["input_ids"], batch["attention_mask"], tau=1.0, beta=1.0, free_bits=tc.free_bits)
    opt.zero_grad(set_to_none=True)
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
    opt.step()
    return int(batch["attention_mask"].sum())


MARKERS = ("<!-- throughput-table: written by benchmarks/throughput.py -->", "<!-- /throughput-table -->")


def readme_table(rows: list[dict], command: str) -> list[str]:
    head = ("| model | precision | train tokens/s | reference tokens/s | speedup | FLOPs/token | GFLOP/s | peak GFLOP/s "
            "(its dtype) | MFU | reference MFU | encode sent./s | decode tokens/s | peak RSS MB | PTB epoch min |")
    out = [f"Command: `{command}` ({torch.get_num_threads()} thread{'s' if torch.get_num_threads() > 1 else ''}).", "", head, "|" + "---|" * head.count(" | ")
           + "---|"]
    for r in rows:
        enc = f"{r['encode_sentences_per_s']:,.0f}" if r["encode_sentences_per_s"] else "-"
        out.append(f"| {r['model']} | {r['precision']} | {r['train_tokens_per_s']:,.0f} | "
                   f"{r['reference_train_tokens_per_s']:,.0f} | **{r['speedup']:.2f}x** | "
                   f"{r['flops_per_token'] / 1e6:.3g}M | {r['achieved_gflops']:.1f} | {r['peak_gflops']:.1f} | "
                   f"**{r['mfu']:.2f}** | {r['reference_mfu']:.2f} | {enc} | {r['decode_tokens_per_s']:,.0f} | "
                   f"{r['peak_rss_mb']:,.0f} | {r['epoch_minutes']:.2f} |")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--steps", type=int, default=20, help="training steps per timed round")
    parser.add_argument("--repeats", type=int, default=3, help="alternating rounds (medians are reported)")
    parser.add_argument("--models", nargs="*", default=DEFAULT_MODELS, choices=list(RECIPES),
                        help="the baselines ptb_gru_lm and ptb_gru_gaussian are measured on request")
    parser.add_argument("--precision", nargs="+", default=["recipe"], choices=["recipe", "fp32", "bf16"],
                        help="ours in the recipe's train.mixed_precision (default), or each of these: a row per "
                             "model and precision (the reference is always fp32)")
    parser.add_argument("--readme", action="store_true", help="write the table to README.md between its markers")
    args = parser.parse_args()
    command = "python benchmarks/throughput.py " + " ".join(sys.argv[1:])
    print(f"# {command}\n# torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"{cpu_name()}, load average {os.getloadavg()[0]:.2f}")
    ctx = mp.get_context("spawn")
    rows = []
    for name in args.models:  # a fresh process per model, so peak RSS is the model's own
        for precision in args.precision:
            queue = ctx.Queue()
            proc = ctx.Process(target=run_model, args=(name, args.steps, args.repeats, precision, queue))
            proc.start()
            rows.append(queue.get())
            proc.join()
    table = readme_table(rows, command)
    print("\n".join(table))
    if args.readme:
        replace_between(ROOT / "README.md", *MARKERS, ["", *table, ""])
    if args.json:
        top = next((r for r in rows if r["model"] == "ptb_gru"), rows[0])
        keys = ["train_tokens_per_s", "reference_train_tokens_per_s", "speedup", "mfu", "peak_gflops",
                "encode_sentences_per_s", "decode_tokens_per_s", "peak_rss_mb"]
        out = {**{k: top[k] for k in keys}, "command": command, "threads": torch.get_num_threads(),
               "load_average": os.getloadavg()[0], "cpu": cpu_name(), "models": rows}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
