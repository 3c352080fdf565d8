"""How much of a discrete model's KL is information, and how much is the shape of its uniform prior?

    python benchmarks/prior_gap.py runs/ptb/gru/final [--samples 4] [--fit-steps 3000] [--json benchmarks/results/ptb_prior_gap.json]

The data (train and test splits) come from the model's recipe.yaml with the local PTB files, as `textdvae eval`
reads them. The measurement, and what each row means, is `textdvae.prior_gap`: the test ELBO of the same encoder
and decoder under priors fitted to the training sentences' posteriors (uniform, the model's learned prior, the
product of the code marginals, and the aggregate posterior), which splits the uniform prior's KL into information,
uneven code use and dependence between the latents (Hoffman & Johnson 2016, "ELBO surgery").
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from ptb import load_trained  # noqa: E402  the local PTB files, as benchmarks/ptb.py trains on them

from textdvae.prior_gap import prior_gap  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a trained model's final/ folder (with its recipe.yaml)")
    parser.add_argument("--samples", type=int, default=4, help="codes drawn per test sentence")
    parser.add_argument("--fit-steps", type=int, default=0, help="also fit a MADE and a small code Transformer to the "
                        "training codes (this many Adam steps each) and score held-out codes under both")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # the fits' progress

    model, splits = load_trained(args.model)
    if model.config.latent != "categorical":
        sys.exit(f"prior_gap.py: {args.model} has latent={model.config.latent!r}; it measures categorical codes")
    res = prior_gap(model, splits["train"], splits["test"], samples=args.samples, fit_steps=args.fit_steps)
    res["model"] = args.model
    print(f"PTB test, {res['n_test']} sentences x {args.samples} codes; priors fitted on {res['n_train']} training "
          f"sentences; N={res['num_latents']} K={res['num_categories']}; -log p(x|z) {res['rec']:.2f}, "
          f"exact uniform KL {res['kl_uniform_exact']:.2f} (nats per sentence)")
    print("| prior | KL | -ELBO | saving |\n|---|---|---|---|")
    for r in res["rows"]:
        print(f"| {r['prior']} | {r['kl']:.2f} | {r['neg_elbo']:.2f} | {r['saving']:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
