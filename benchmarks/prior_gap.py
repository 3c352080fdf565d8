"""How much of a discrete model's KL is information, and how much is the shape of its uniform prior?

    python benchmarks/prior_gap.py runs/ptb/gru/final [--samples 4] [--json benchmarks/results/ptb_prior_gap.json]

The data (train and test splits) come from the model's recipe.yaml with the local PTB files, as `textdvae eval`
reads them; the measurement itself is `textdvae.prior_gap`. Averaged over sentences, the KL term of the ELBO splits as (Hoffman & Johnson 2016, "ELBO surgery")

    E_x KL(q(z|x) || p(z)) = I(x; z) + KL(q(z) || p(z)),   q(z) = E_x q(z|x), the aggregate posterior,

so a uniform prior pays, on top of the information the code carries, for how far the aggregate posterior is from
uniform. With factorised posteriors that distance has two parts: the per-latent marginals q(z_i) being uneven, and
the latents depending on each other across sentences (the total correlation of q(z)), which no factorised prior
can express. This script measures both on held-out sentences, with the trained encoder and decoder unchanged:
each row is the test ELBO of the same model under another prior fitted to the training sentences' posteriors,
  - `uniform`: p(z) = K^-N, the default model prior;
  - `learned`: the model's own autoregressive prior, for a model trained with `model.prior=autoregressive`;
  - `marginals`: the product of the training set's per-latent code frequencies, prod_i q(z_i);
  - `aggregate`: the mixture of every training sentence's posterior, (1/M) sum_m q(z|x_m) (Tomczak & Welling
    2018's VampPrior with all M training sentences as pseudo-inputs; the prior that minimises the training KL).
The codes are S draws from q(z|x) per test sentence, shared by all rows; log q(z|x) and log p(z) are exact for
each draw (the mixture by a log-sum-exp over the M training posteriors), -log p(x|z) one decoder pass. The figure
is therefore what a learned prior could take off the ELBO without retraining, and a ceiling for a parametric
(e.g. autoregressive) prior, which has to generalise from the training codes as the mixture does.
"""

from __future__ import annotations

import argparse
import json
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
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model, splits = load_trained(args.model)
    if model.config.latent != "categorical":
        sys.exit(f"prior_gap.py: {args.model} has latent={model.config.latent!r}; it measures categorical codes")
    res = prior_gap(model, splits["train"], splits["test"], samples=args.samples)
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
