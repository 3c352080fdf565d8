"""What training pays in bf16 for row counts it has not seen: the output layer's rows in buckets or not, side by side.

    python benchmarks/shapes.py [--threads 2] [--steps 20] [--repeats 4] [--models ptb_gru ptb_transformer] [--json OUT]

On a CPU, bf16 products run in oneDNN, which builds a kernel for each new shape on first sight. A training step's
output layer (the adaptive softmax's head and tail clusters) runs on the batch's real tokens only, so its row counts
are new at almost every step; `modeling.rows_in_buckets` pads them to a multiple of `modeling.ROW_BUCKET` so that
the shapes recur. `benchmarks/throughput.py` runs each round's batches once untimed first, so it cannot see this
cost; here every timed step is on a batch the process has never seen, as in training.

* ``matmul``: one 256 x 4,000 bf16 product (a PTB tail cluster's) at a row count not seen before against the same
  product at a row count seen already; ms, medians.
* ``step``: a PTB recipe's bf16 training step (throughput.train_step) with ``ROW_BUCKET`` 128 (the package) against 1
  (no padding), alternating by round, each round on batches neither variant has seen; target tokens/s, medians of
  rounds, and the ratio. One warm-up round of each first (thread pools, allocator, the shapes that recur anyway).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from machine import cpu_name  # noqa: E402
from throughput import recipe_data, train_step  # noqa: E402

from textdvae import modeling  # noqa: E402


def measure_matmul(calls: int = 30) -> dict:
    torch.manual_seed(0)
    w = torch.randn(256, 4000, dtype=torch.bfloat16)

    def once(rows: int) -> float:
        x = torch.randn(rows, 256, dtype=torch.bfloat16)
        t = time.perf_counter()
        x @ w
        return (time.perf_counter() - t) * 1e3

    once(600)
    new = statistics.median(once(601 + i) for i in range(calls))
    seen = statistics.median(once(600) for _ in range(calls))
    return {"shape": "rows x 256 @ 256 x 4000, bf16", "new_rows_ms": round(new, 3), "seen_rows_ms": round(seen, 3),
            "ratio": round(new / seen, 2)}


def measure_steps(name: str, steps: int, repeats: int) -> dict:
    from textdvae.data import collate
    from textdvae.modeling import TextDVAE
    from textdvae.optim import build_optimizer

    torch.manual_seed(0)
    recipe, ids, order = recipe_data(name)
    cfg, tc = recipe.model, recipe.train
    model = TextDVAE(cfg).train()
    opt = build_optimizer(model, tc)
    chunks = [[collate([ids[i] for i in b], cfg.pad_token_id) for b in order[k * steps:(k + 1) * steps]]
              for k in range(2 * (repeats + 1))]  # every chunk is timed once, by one variant
    rates: dict[int, list[float]] = {1: [], modeling.ROW_BUCKET: []}
    for r in range(repeats + 1):
        variants = [modeling.ROW_BUCKET, 1] if r % 2 else [1, modeling.ROW_BUCKET]
        for j, bucket in enumerate(variants):
            modeling.ROW_BUCKET = bucket
            t, tokens = time.perf_counter(), 0
            for batch in chunks[2 * r + j]:
                tokens += train_step(model, opt, batch, tc, bf16=True)
            if r:  # round 0 warms up
                rates[bucket].append(tokens / (time.perf_counter() - t))
        modeling.ROW_BUCKET = max(rates)
    bucketed, plain = statistics.median(rates[max(rates)]), statistics.median(rates[1])
    return {"model": name, "precision": "bf16", "row_bucket": max(rates),
            "bucketed_tokens_per_s": round(bucketed), "unpadded_tokens_per_s": round(plain),
            "speedup": round(bucketed / plain, 3), "bucketed_rates": [round(x) for x in rates[max(rates)]],
            "unpadded_rates": [round(x) for x in rates[1]]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20, help="steps per timed round")
    parser.add_argument("--repeats", type=int, default=4, help="timed rounds per variant (medians)")
    parser.add_argument("--models", nargs="+", default=["ptb_gru", "ptb_transformer"],
                        choices=["ptb_gru", "ptb_transformer"])
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = {"command": "python benchmarks/shapes.py " + " ".join(sys.argv[1:]), "threads": args.threads,
              "cpu": cpu_name(), "matmul": measure_matmul(), "steps": []}
    print(result["matmul"], flush=True)
    for name in args.models:
        row = measure_steps(name, args.steps, args.repeats)
        print(row, flush=True)
        result["steps"].append(row)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
