"""Where the quick-start model's training step goes, and why the GRU does not get faster on this CPU.

    python benchmarks/gru_kernels.py [--threads 2] [--json benchmarks/results/gru_kernels.json]

Issue 27 asks the quick-start recipe (hidden 128, batch 64, sentences of ~10 tokens) to train 1.5x faster than the
reference of benchmarks/throughput.py (an LSTM VAE in batches of 32). This script measures, in one process:

* ``step``: the recipe's own training step (throughput.train_step, the Trainer's forward, backward, clipping and
  AdamW) at batch 32, 64, 128 and 256 on the bundled corpus, ms per step and target tokens/s, medians of rounds.
  The step time at batch 32 against 64 separates the per-step cost from the per-sentence one.
* ``matmul``: GFLOP/s of the GRU's own products at batch 64 (B x H @ H x 3H, and the backward's B x 3H @ 3H x H) in
  fp32 and bf16, beside the 2048^2 peak of each dtype.
* ``layer``: one recurrent layer at the recipe's shape (batch 64, 11 steps, 64 -> 128), forward + backward:
  ``nn.GRU`` (what the model runs in fp32; on CPU PyTorch computes it step by step with autograd), a hand-written GRU
  (``textdvae.modeling.GRULayer``, what bf16 training runs: no autograd graph inside, the weight gradients of all
  steps as one product), and ``nn.LSTM`` (the reference's layer, which PyTorch hands to oneDNN's fused RNN kernel).
  ``onednn_gru``: whether oneDNN's GRU is reachable (`aten::mkldnn_rnn_layer` with the GRU mode), and its error.
* ``profile``: the recipe's step under torch.profiler, the share of self CPU time in each of the top operators.
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
from throughput import load_sentences, matmul_peak, train_step  # noqa: E402

SHAPE = dict(batch=64, steps=11, inputs=64, hidden=128)  # the quick-start decoder's layer (mean length 9.7 + EOS)


def hand_gru(gru: torch.nn.GRU, x: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    """`gru(x, h0)[0]` for a one-layer batch-first GRU, through the package's hand-written layer
    (`textdvae.modeling.GRULayer`, which bf16 training uses; tests/test_precision.py checks it against nn.GRU in
    float64)."""
    from textdvae.modeling import GRULayer

    return GRULayer.apply(x.transpose(0, 1), h0[0], *gru._flat_weights).transpose(0, 1)


def timed(fn, rounds: int = 5, calls: int = 20) -> float:
    """Median over rounds of the mean seconds per call, after a warm-up."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - start) / calls)
    return statistics.median(times)


def quickstart_model(batch_size: int):
    from textdvae import recipe as recipe_lib
    from textdvae.data import collate, configure_model_for_tokenizer, encode, make_batches
    from textdvae.modeling import TextDVAE
    from textdvae.optim import build_optimizer
    from textdvae.tokenization import build_tokenizer

    torch.manual_seed(0)
    recipe = recipe_lib.load(ROOT / "recipes" / "quickstart.yaml")
    texts = load_sentences("quickstart")
    tok = build_tokenizer(recipe.tokenizer, texts)
    configure_model_for_tokenizer(recipe, tok)
    ids, _ = encode(tok, texts, recipe.data.max_length)
    model = TextDVAE(recipe.model)
    opt = build_optimizer(model, recipe.train)
    order = make_batches([len(s) for s in ids], batch_size, shuffle=True, seed=0)
    batches = [collate([ids[i] for i in b], recipe.model.pad_token_id) for b in order[:40]]
    return model, opt, batches, recipe.train


def measure_steps(batch_sizes: list[int]) -> list[dict]:
    rows = []
    for bs in batch_sizes:
        model, opt, batches, tc = quickstart_model(bs)
        tokens = statistics.mean(int(b["attention_mask"].sum()) for b in batches)
        it = iter(batches * 100)
        seconds = timed(lambda: train_step(model, opt, next(it), tc))
        rows.append({"batch_size": bs, "ms_per_step": round(seconds * 1e3, 2), "tokens_per_s": round(tokens / seconds)})
        print(f"step  batch {bs:4d}: {seconds * 1e3:6.2f} ms, {tokens / seconds:8,.0f} tokens/s", flush=True)
    return rows


def measure_matmuls() -> list[dict]:
    B, H = SHAPE["batch"], SHAPE["hidden"]
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        for m, k, n in ((B, H, 3 * H), (B, 3 * H, H)):
            a, b, bias = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype), torch.randn(n, dtype=dtype)
            seconds = timed(lambda: torch.addmm(bias, a, b), calls=200)
            rows.append({"dtype": str(dtype).split(".")[-1], "shape": [m, k, n],
                         "gflops": round(2 * m * k * n / seconds / 1e9, 1), "us": round(seconds * 1e6, 1)})
            print(f"matmul {rows[-1]['dtype']:9s} {m}x{k} @ {k}x{n}: {rows[-1]['gflops']:6.1f} GFLOP/s", flush=True)
    return rows


def measure_layers() -> dict:
    B, T, I, H = SHAPE["batch"], SHAPE["steps"], SHAPE["inputs"], SHAPE["hidden"]
    torch.manual_seed(0)
    gru, lstm = torch.nn.GRU(I, H, batch_first=True), torch.nn.LSTM(I, H, batch_first=True)
    x, h0 = torch.randn(B, T, I, requires_grad=True), torch.zeros(1, B, H)
    runs = {"nn.GRU": lambda: gru(x, h0)[0].sum().backward(),
            "GRULayer": lambda: hand_gru(gru, x, h0).sum().backward(),
            "nn.LSTM (oneDNN)": lambda: lstm(x)[0].sum().backward()}
    out = {}
    for name, fn in runs.items():
        out[name] = round(timed(fn, calls=30) * 1e3, 3)
        print(f"layer {name:17s}: {out[name]:.2f} ms forward + backward", flush=True)
    try:  # the GRU mode of the op that runs nn.LSTM on oneDNN (modes as cuDNN's: 3 = GRU)
        torch.ops.aten.mkldnn_rnn_layer(x.detach().transpose(0, 1), gru.weight_ih_l0, gru.weight_hh_l0,
                                        gru.bias_ih_l0, gru.bias_hh_l0, h0[0], h0[0], False, [], 3, H, 1, True,
                                        False, False, True)
        onednn = "ran"
    except RuntimeError as error:
        onednn = str(error).split("\n")[0][:200]
    print(f"oneDNN GRU through aten::mkldnn_rnn_layer: {onednn}", flush=True)
    return {"ms_forward_backward": out, "onednn_gru": onednn}


def measure_profile(top: int = 12) -> list[dict]:
    from torch.profiler import ProfilerActivity, profile

    model, opt, batches, tc = quickstart_model(64)
    for b in batches[:5]:
        train_step(model, opt, b, tc)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for b in batches[5:25]:
            train_step(model, opt, b, tc)
    events = [e for e in prof.key_averages() if e.key.startswith("aten::")]
    total = sum(e.self_cpu_time_total for e in prof.key_averages())
    rows = [{"op": e.key, "self_share": round(e.self_cpu_time_total / total, 3), "calls_per_step": e.count // 20}
            for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:top]]
    for r in rows:
        print(f"profile {r['op']:28s} {r['self_share']:6.1%} of self time, {r['calls_per_step']:4d} calls a step")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = {"threads": args.threads, "shape": SHAPE,
              "peak_gflops": {"float32": round(matmul_peak(), 1), "bfloat16": round(matmul_peak(dtype=torch.bfloat16), 1)}}
    print(f"peak: {result['peak_gflops']}", flush=True)
    result["matmul"] = measure_matmuls()
    result["layer"] = measure_layers()
    result["step"] = measure_steps([32, 64, 128, 256])
    result["profile"] = measure_profile()
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
