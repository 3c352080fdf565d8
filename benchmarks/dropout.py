"""Dropout on CPU: torch's `nn.Dropout` against `textdvae.modeling.Dropout`, side by side in one process.

    python benchmarks/dropout.py [--threads 2] [--steps 20] [--repeats 5] [--models ptb_gru ptb_transformer] [--json OUT]

* ``mask``: one dropout (p = 0.3) of a 128 x 24 x 256 activation, the PTB recipe's embedding and GRU output shape,
  forward and backward, in fp32 and bf16; ms per call, medians of rounds.
* ``step``: a PTB recipe's training step (throughput.train_step: forward, backward, clipping, AdamW) in fp32 and in
  bf16, the model's dropouts being torch's or ours, timed alternately on the same batches; target tokens/s, medians
  of rounds, and the ratio. ``--models``: the GRU headline (``ptb_gru``) and the Transformer (``ptb_transformer``,
  whose attention dropout is scaled_dot_product_attention's ``dropout_p`` or ours). Each round runs its batches once
  untimed before timing them both ways, in an order that alternates between rounds: oneDNN builds its kernels for a
  batch shape on first sight, which made whichever variant met the shapes second up to 1.5x faster.
Both dropouts are the same distribution up to the drop rate's rounding to a multiple of 2^-16 (tests/test_dropout.py);
only the random stream differs, so a seeded run is not bit for bit the same across the change.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from gru_kernels import timed  # noqa: E402
from machine import cpu_name  # noqa: E402
from throughput import recipe_data, train_step  # noqa: E402

from textdvae.modeling import Dropout, GRUDecoder, SelfAttention  # noqa: E402

SHAPE = (128, 24, 256)


def use_dropout(model: nn.Module, which: str, p: float) -> None:
    """Every dropout of `model` torch's (`which="torch"`: nn.Dropout modules, nn.GRU's own dropout between the
    decoder's layers and scaled_dot_product_attention's dropout_p, as the model ran before) or ours
    (`textdvae.modeling.Dropout`, the decoder layer by layer, the attention computed with it)."""
    make = nn.Dropout if which == "torch" else Dropout
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, (Dropout, nn.Dropout)) and name not in ("between", "attn_drop"):
                setattr(parent, name, make(child.p))
        if isinstance(parent, SelfAttention):  # no mask of ours: SDPA applies dropout_p itself
            parent.attn_drop = Dropout(0.0 if which == "torch" else parent.dropout)
        if isinstance(parent, GRUDecoder) and parent.layers > 1:
            parent.rnn.dropout = p if which == "torch" else 0.0
            parent.between = Dropout(0.0 if which == "torch" else p)


def measure_mask(rounds: int) -> list[dict]:
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(SHAPE, dtype=dtype, requires_grad=True)
        grad = torch.ones(SHAPE, dtype=dtype)
        ms = {}
        for label, module in (("torch", nn.Dropout(0.3)), ("ours", Dropout(0.3))):
            ms[label] = timed(lambda m=module: m(x).backward(grad), rounds) * 1e3
        rows.append({"dtype": str(dtype).removeprefix("torch."), "shape": list(SHAPE), "torch_ms": round(ms["torch"], 3),
                     "ours_ms": round(ms["ours"], 3), "speedup": round(ms["torch"] / ms["ours"], 2)})
    return rows


def measure_steps(name: str, steps: int, repeats: int) -> list[dict]:
    from textdvae.data import collate
    from textdvae.modeling import TextDVAE
    from textdvae.optim import build_optimizer

    recipe, ids, order = recipe_data(name)
    batches = [collate([ids[i] for i in b], recipe.model.pad_token_id) for b in order[: steps * repeats]]
    rows = []
    for bf16 in (False, True):
        torch.manual_seed(0)
        model = TextDVAE(recipe.model)
        opt = build_optimizer(model, recipe.train)
        rates: dict[str, list[float]] = {"torch": [], "ours": []}
        for r in range(repeats):
            chunk = batches[r * steps:(r + 1) * steps]
            for b in chunk:  # untimed: oneDNN's kernels for these shapes, the allocator's blocks
                train_step(model, opt, b, recipe.train, bf16)
            for label in ("torch", "ours") if r % 2 == 0 else ("ours", "torch"):
                use_dropout(model, label, recipe.model.dropout)
                t0, tokens = time.perf_counter(), 0
                for b in chunk:
                    tokens += train_step(model, opt, b, recipe.train, bf16)
                rates[label].append(tokens / (time.perf_counter() - t0))
        torch_rate, ours_rate = statistics.median(rates["torch"]), statistics.median(rates["ours"])
        rows.append({"model": name, "precision": "bf16" if bf16 else "fp32", "torch_tokens_per_s": round(torch_rate),
                     "ours_tokens_per_s": round(ours_rate), "speedup": round(ours_rate / torch_rate, 3),
                     "torch_rates": [round(x) for x in rates["torch"]], "ours_rates": [round(x) for x in rates["ours"]]})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20, help="training steps per timed round")
    parser.add_argument("--repeats", type=int, default=5, help="alternating rounds (medians are reported)")
    parser.add_argument("--models", nargs="+", default=["ptb_gru", "ptb_transformer"],
                        choices=["ptb_gru", "ptb_transformer"])
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    command = "python benchmarks/dropout.py " + " ".join(sys.argv[1:])
    out = {"command": command, "threads": args.threads, "cpu": cpu_name(), "mask": measure_mask(args.repeats),
           "step": [row for name in args.models for row in measure_steps(name, args.steps, args.repeats)]}
    print(json.dumps(out, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
