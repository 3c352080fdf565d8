"""How far the reported test -ELBO moves with the codes the evaluation happens to sample.

    python benchmarks/elbo_spread.py runs/ptb/gru/final [MORE_MODELS ...] [--seeds 8] [--json PATH]

`textdvae eval` reports the ELBO with one code z ~ q(z|x) per sentence (seed 0), an unbiased estimate. This script
repeats that pass with evaluation seeds 0 .. S-1 and prints, per model, the mean -ELBO over the seeds, its standard
deviation across seeds (the spread of the single-sample figure) and the standard error of the mean. For a model
with a learned prior the KL is itself a one-sample estimate (each latent's term given the sampled latents before
it), so the KL moves with the seed as well. The data come from each model's recipe.yaml with the local PTB files.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ptb import load_trained  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", help="trained models' final/ folders (with their recipe.yaml)")
    parser.add_argument("--seeds", type=int, default=8, help="evaluation seeds 0 .. S-1")
    parser.add_argument("--split", default="test")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from textdvae.evaluation import elbo_pass, iterate_batches

    rows = []
    for path in args.models:
        model, splits = load_trained(path)
        seqs = splits[args.split]
        passes = [elbo_pass(model, iterate_batches(seqs, 256, model.config.pad_token_id), seed=s)
                  for s in range(args.seeds)]
        neg = [-p["elbo"] for p in passes]
        rows.append({"model": path, "split": args.split, "seeds": args.seeds, "neg_elbo_per_seed": neg,
                     "kl_per_seed": [p["kl"] for p in passes], "neg_elbo_mean": statistics.fmean(neg),
                     "neg_elbo_sd": statistics.stdev(neg) if len(neg) > 1 else 0.0,
                     "kl_mean": statistics.fmean(p["kl"] for p in passes)})
        rows[-1]["neg_elbo_se"] = rows[-1]["neg_elbo_sd"] / math.sqrt(args.seeds)
    print(f"PTB {args.split}, {args.seeds} evaluation seeds, one code per sentence per seed (nats per sentence)")
    print("| model | -ELBO seed 0 | mean | sd over seeds | s.e. of mean | KL mean |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['neg_elbo_per_seed'][0]:.2f} | {r['neg_elbo_mean']:.3f} | {r['neg_elbo_sd']:.3f} | "
              f"{r['neg_elbo_se']:.3f} | {r['kl_mean']:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
