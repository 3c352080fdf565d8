"""Where bf16 pays on this CPU: each part of a training step, forward + backward, in fp32 and under bf16 autocast.

    python benchmarks/precision.py [--json benchmarks/results/precision.json] [--repeats 7]

At the PTB recipes' sizes (batch 128 sentences of 26 tokens: 3,328 target tokens; width 256; 10,002 words):
the matrix-product peak (2048 x 2048), the embedding lookup, the GRU encoder (1 layer, both directions) and decoder
(2 layers), both through `modeling.run_gru` as the model runs them, the exact adaptive softmax (cutoffs 1,000 and 5,000), a full 10k softmax, one causal Transformer block
(4 heads, FFN 1,024, fused attention), and the whole PTB GRU training step (AdamW included). fp32 and bf16 are timed
alternately, `--repeats` rounds, medians; `speedup` = fp32 time / bf16 time, so the ratio holds on a noisy machine.
The table goes to README.md between the precision markers (with the command and thread count) and the rows to
--json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from ptb import replace_between  # noqa: E402

from textdvae import TextDVAE, TextDVAEConfig  # noqa: E402
from textdvae.modeling import Block, adaptive_target_log_probs, run_gru  # noqa: E402

MARKERS = ("<!-- precision-table: written by benchmarks/precision.py -->", "<!-- /precision-table -->")
B, T, H, V = 128, 26, 256, 10002


def parts() -> dict[str, callable]:
    """name -> a function that runs one forward + backward (and returns nothing)."""
    torch.manual_seed(0)
    ids = (torch.rand(B, T).pow(4) * (V - 3)).long() + 3  # Zipf-like: most tokens in the shortlist, as in PTB
    x = torch.randn(B, T, H, requires_grad=True)
    flat = torch.randn(B * T, H, requires_grad=True)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    embed = nn.Embedding(V, H)
    enc_fwd, enc_bwd = nn.GRU(H, H, batch_first=True), nn.GRU(H, H, batch_first=True)  # as GRUEncoder runs them
    dec = nn.GRU(H, H, num_layers=2, batch_first=True)
    adaptive = nn.AdaptiveLogSoftmaxWithLoss(H, V, [1000, 5000], div_value=4.0)
    full = nn.Linear(H, V)
    block = Block(TextDVAEConfig(vocab_size=V, embed_dim=H, hidden_dim=H, num_heads=4, ffn_dim=1024, dropout=0.0))
    model = TextDVAE(TextDVAEConfig(vocab_size=V, embed_dim=H, hidden_dim=H, num_latents=8, num_categories=16,
                                    prior="autoregressive", dropout=0.3, decoder_layers=2,
                                    adaptive_softmax_cutoffs=[1000, 5000]))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    mask = torch.ones(B, T, dtype=torch.long)

    def step():
        out = model(ids, mask, tau=0.8, beta=1.0)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return {
        "matmul 2048 x 2048 (forward only)": lambda: a @ b,
        "embedding lookup": lambda: embed(ids).sum().backward(),
        "GRU encoder, 1 layer x 2 directions": lambda: sum(run_gru(g, x, None)[0].float().sum()
                                                          for g in (enc_fwd, enc_bwd)).backward(),
        "GRU decoder, 2 layers": lambda: run_gru(dec, x, None)[0].float().sum().backward(),
        "adaptive softmax (1,000 / 5,000)": lambda: adaptive_target_log_probs(adaptive, flat, ids.flatten()).sum().backward(),
        "full softmax (10,002)": lambda: F.cross_entropy(full(flat).float(), ids.flatten()).backward(),
        "Transformer block, causal, fused attention": lambda: block(x, causal=True).float().sum().backward(),
        "PTB GRU training step (ptb_gru.yaml)": step,
    }


def timed(fn, bf16: bool, inner: int) -> float:
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        t = time.perf_counter()
        for _ in range(inner):
            fn()
        return (time.perf_counter() - t) / inner


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", help="write the rows here")
    parser.add_argument("--repeats", type=int, default=7, help="alternating fp32 / bf16 rounds (medians)")
    parser.add_argument("--no-readme", action="store_true", help="do not write the README table")
    args = parser.parse_args()
    command = "python benchmarks/precision.py " + " ".join(sys.argv[1:])
    threads = torch.get_num_threads()
    print(f"# {command}\n# torch {torch.__version__}, {threads} threads, load average {os.getloadavg()[0]:.2f}", flush=True)
    rows = []
    for name, fn in parts().items():
        inner = 3 if "step" in name else 10
        timed(fn, False, 2), timed(fn, True, 2)  # warm-up: oneDNN picks its kernels per dtype
        fp32, bf16 = [], []
        for _ in range(args.repeats):
            fp32.append(timed(fn, False, inner))
            bf16.append(timed(fn, True, inner))
        row = {"part": name, "fp32_ms": round(1e3 * statistics.median(fp32), 2),
               "bf16_ms": round(1e3 * statistics.median(bf16), 2)}
        row["speedup"] = round(row["fp32_ms"] / row["bf16_ms"], 2)
        if name.startswith("matmul"):
            row["gflops_fp32"] = round(2 * 2048 ** 3 / row["fp32_ms"] / 1e6, 1)
            row["gflops_bf16"] = round(2 * 2048 ** 3 / row["bf16_ms"] / 1e6, 1)
        rows.append(row)
        print(row, flush=True)
    table = [f"Command: `{command}` ({threads} thread{'s' if threads > 1 else ''}, fp32 and bf16 alternating, medians of {args.repeats}).", "",
             "| part (forward + backward) | fp32 ms | bf16 ms | bf16 speedup |", "|---|---|---|---|"]
    for r in rows:
        extra = f" ({r['gflops_fp32']:.0f} / {r['gflops_bf16']:.0f} GFLOP/s)" if "gflops_fp32" in r else ""
        table.append(f"| {r['part']}{extra} | {r['fp32_ms']:.2f} | {r['bf16_ms']:.2f} | **{r['speedup']:.2f}x** |")
    print("\n".join(table))
    if not args.no_readme:
        replace_between(ROOT / "README.md", *MARKERS, ["", *table, ""])
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"command": command, "threads": threads, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
