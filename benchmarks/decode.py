"""Greedy decoding speed: incremental (the GRU state / the Transformer's key-value cache carried from step to step,
what `model.decode` does) against re-running the decoder over the whole prefix at every step.

    python benchmarks/decode.py [--batch 256] [--steps 30] [--repeats 5] [--json PATH]

Random weights at the sizes of recipes/ptb_gru.yaml and ptb_transformer.yaml (vocabulary 10,000, embeddings and
hidden 256, N=16 latents of K=16 categories, the PTB code when this was measured (8 latents since); a 1-layer GRU decoder, a 2-block Transformer decoder with 4 heads and
FFN 1024), with their exact adaptive softmax (cutoffs 1000, 5000) and with a full softmax. Random weights rarely
emit EOS, so every row of the batch is decoded for --steps steps by both methods (checked: the incremental loop
never stops early): equal work; and the two must give the same tokens (checked).

The baseline is a fair one: at step t it runs `model.decoder_states` (the teacher-forcing pass: for the
Transformer the code prefix and t tokens, for the GRU t tokens) but applies the output layer to the last position
only; --all-logits adds the plain re-run that applies it to every position. Both use the same output computation
(`explore.greedy_next`). The methods are timed alternately in the same process, --repeats times each after a
warm-up; medians reported.

On a machine shared with other jobs, run it with OMP_NUM_THREADS=1: with more OpenMP threads than free cores,
threads wait on descheduled siblings at every parallel region and each small step can take 10-25x longer, which
buries both methods in noise (the load average is printed before and after).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from textdvae import TextDVAE, TextDVAEConfig  # noqa: E402
from textdvae.explore import greedy_decode, greedy_next  # noqa: E402

from machine import cpu_name  # noqa: E402


@torch.no_grad()
def naive_greedy(model, cond: torch.Tensor, batch_size: int, steps: int, all_logits: bool = False) -> list[list[int]]:
    """Greedy decoding that re-runs the decoder over the whole prefix at every step (no state, no cache); the
    output layer on the last position only, or (all_logits) on every position, as a plain forward pass does."""
    ids = torch.empty(batch_size, 0, dtype=torch.long)
    for _ in range(steps):
        # decoder_states predicts x_1..x_T from [BOS, x_1..x_{T-1}]: a placeholder last token yields the next one
        x = torch.cat([ids, torch.zeros(batch_size, 1, dtype=torch.long)], dim=1)  # (B, t + 1)
        h = model.decoder_states(x, cond)  # (B, t + 1, H)
        if all_logits:  # the output layer on every position, as a plain forward pass does
            nxt = greedy_next(model, h.reshape(-1, h.size(-1))).view(batch_size, -1)[:, -1]
        else:  # the same output computation as greedy_decode's
            nxt = greedy_next(model, h[:, -1])  # (B,)
        ids = torch.cat([ids, nxt.unsqueeze(1)], dim=1)
    return ids.tolist()


def build(decoder_type: str, head: str, args) -> TextDVAE:
    torch.manual_seed(0)
    cutoffs = [int(c) for c in args.cutoffs.split(",")] if head == "adaptive" else None
    layers = args.transformer_layers if decoder_type == "transformer" else args.gru_layers
    config = TextDVAEConfig(vocab_size=args.vocab, embed_dim=args.embed, hidden_dim=args.hidden, num_heads=4,
                            ffn_dim=4 * args.hidden, num_latents=args.latents, num_categories=args.categories,
                            encoder_type="gru", decoder_type=decoder_type, decoder_layers=layers,
                            adaptive_softmax_cutoffs=cutoffs, max_position_embeddings=max(96, args.steps + 1))
    return TextDVAE(config).eval()


def cut(rows: list[list[int]], eos: int) -> list[list[int]]:
    return [r[: r.index(eos) + 1] if eos in r else r for r in rows]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=256, help="codes decoded together")
    p.add_argument("--steps", type=int, default=30, help="tokens decoded per code")
    p.add_argument("--repeats", type=int, default=5, help="timed runs of each method (alternating); median reported")
    p.add_argument("--vocab", type=int, default=10000)
    p.add_argument("--embed", type=int, default=256)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--latents", type=int, default=16)
    p.add_argument("--categories", type=int, default=16)
    p.add_argument("--decoders", default="gru,transformer")
    p.add_argument("--gru-layers", type=int, default=1)
    p.add_argument("--transformer-layers", type=int, default=2)
    p.add_argument("--heads", default="adaptive,full", help="output layers: adaptive softmax, full softmax")
    p.add_argument("--cutoffs", default="1000,5000", help="adaptive softmax cutoffs")
    p.add_argument("--all-logits", action="store_true",
                   help="also time a full-prefix baseline that applies the output layer to every position")
    p.add_argument("--json", help="also write the rows to this JSON file")
    args = p.parse_args(argv)

    raw = argv if argv is not None else sys.argv[1:]
    env = " ".join(f"{k}={os.environ[k]}" for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ)
    command = (env + " " if env else "") + "python " + " ".join(shlex.quote(a) for a in ["benchmarks/decode.py", *raw])
    load_before = os.getloadavg()
    print(f"# {command}")
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs: {cpu_name()}")
    print(f"# load average before: {' '.join(f'{x:.2f}' for x in load_before)} (1, 5, 15 min)")
    print(f"# batch {args.batch} x {args.steps} tokens, vocab {args.vocab}, embed {args.embed}, hidden {args.hidden}, "
          f"N={args.latents} K={args.categories}, decoder layers: GRU {args.gru_layers}, Transformer "
          f"{args.transformer_layers}; adaptive cutoffs {args.cutoffs}; "
          f"{args.repeats} repeats (median)")
    print(flush=True)
    rows = []
    for decoder_type, head in [(d, h) for h in args.heads.split(",") for d in args.decoders.split(",")]:
        model = build(decoder_type, head, args)
        eos = model.config.eos_token_id
        g = torch.Generator().manual_seed(0)
        codes = torch.randint(0, args.categories, (args.batch, args.latents), generator=g)
        with torch.no_grad():
            cond = model.condition(F.one_hot(codes, args.categories).float())
        methods = {
            "incremental": lambda: greedy_decode(model, cond, args.batch, args.steps),
            "full prefix": lambda: naive_greedy(model, cond, args.batch, args.steps),
        }
        if args.all_logits:
            methods["full prefix, all logits"] = lambda: naive_greedy(model, cond, args.batch, args.steps, True)
        outputs = {name: cut(fn(), eos) for name, fn in methods.items()}  # warm-up, and the methods must agree
        same = all(out == outputs["incremental"] for out in outputs.values())
        for name, out in outputs.items():
            if out != outputs["incremental"]:
                diff = sum(a != b for a, b in zip(outputs["incremental"], out))
                print(f"WARNING: {decoder_type}: {diff} of {args.batch} sequences differ between incremental "
                      f"and {name}")
        assert any(eos not in r and len(r) == args.steps for r in outputs["incremental"]), "every sequence ended early"
        times = {name: [] for name in methods}
        for _ in range(args.repeats):
            for name, fn in methods.items():
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
        tokens = args.batch * args.steps
        med = {name: statistics.median(ts) for name, ts in times.items()}
        row = {"decoder": decoder_type, "softmax": head, "tokens": tokens,
               "incremental_s": med["incremental"], "full_prefix_s": med["full prefix"],
               "incremental_tok_s": tokens / med["incremental"], "full_prefix_tok_s": tokens / med["full prefix"],
               "speedup": med["full prefix"] / med["incremental"], "same_tokens": same, "times": times}
        if args.all_logits:
            row["full_prefix_all_logits_s"] = med["full prefix, all logits"]
            row["full_prefix_all_logits_tok_s"] = tokens / med["full prefix, all logits"]
            row["speedup_all_logits"] = med["full prefix, all logits"] / med["incremental"]
        rows.append(row)
        print(f"# {decoder_type} / {head} softmax done: speedup {row['speedup']:.1f}x"
              + (f", {row['speedup_all_logits']:.1f}x against all logits" if args.all_logits else ""), flush=True)
    print()
    extra = args.all_logits
    print(f"{'decoder':<12} {'softmax':<9} {'incremental tok/s':>17} {'full-prefix tok/s':>17} {'incr. s':>8} "
          f"{'full s':>8} {'speedup':>8}" + (f" {'all-logits tok/s':>16} {'speedup':>8}" if extra else "")
          + f" {'same tokens':>11}")
    for r in rows:
        print(f"{r['decoder']:<12} {r['softmax']:<9} {r['incremental_tok_s']:>17,.0f} {r['full_prefix_tok_s']:>17,.0f} "
              f"{r['incremental_s']:>8.3f} {r['full_prefix_s']:>8.3f} {r['speedup']:>7.1f}x"
              + (f" {r['full_prefix_all_logits_tok_s']:>16,.0f} {r['speedup_all_logits']:>7.1f}x" if extra else "")
              + f" {str(r['same_tokens']):>11}")
    print("# speedup: full-prefix time / incremental time (full prefix: the output layer on the last position only)")
    if extra:
        print("# all logits: the full-prefix re-run with the output layer on every position, as a plain forward does")
    load_after = os.getloadavg()
    print()
    print(f"# load average after: {' '.join(f'{x:.2f}' for x in load_after)}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "command": command, "torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": cpu_name(),
            "cpus": os.cpu_count(), "load_before": load_before, "load_after": load_after, "args": vars(args),
            "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
