"""Serving speed of a trained model: encode and greedy reconstruction of real sentences, against the plain batched path.

    python benchmarks/serving.py runs/ptb/gru_bf16/final [--batch 256] [--repeats 5] [--threads 2] [--readme]

Sentences are `--batch` random PTB test sentences (seeded), fresh ones for each repeat, the same for both paths.
Both paths run in this process, alternating, and the figures are medians over the repeats:
- `plain`: what `encode` and `decode` did before: the batch tokenized and padded to its longest sentence, one
  posterior pass; then greedy decoding of the most likely codes with the whole batch stepped until every sentence
  has ended (the step loop below, written out here as it was).
- `package`: `model.encode` (sentences of similar length encoded together, `explore.length_chunks`) and
  `model.decode` (a sentence leaves the decoding batch once it has ended).
- `package, bf16`: the same calls on the model in bf16 (`model.to(torch.bfloat16)`, or `from_pretrained(...,
  dtype=torch.bfloat16)`: weights and activations in bf16, AVX-512 BF16 on this CPU). Its codes and reconstructions
  are compared with fp32's: the share of latents whose most likely category is the same, and of sentences decoded
  word for word the same from their own codes.
Encode is sentences per second, tokenization included; decode is tokens written per second (EOS included), the
same sentences' reconstructions for both paths (checked equal). Rows to benchmarks/results/serving.json; with
`--readme`, the table to README.md between the serving-table markers.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from ptb import PTB, replace_between  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "serving.json"
MARKERS = ("<!-- serving-table: written by benchmarks/serving.py -->", "<!-- /serving-table -->")


@torch.no_grad()
def plain_encode(model, texts: list[str]) -> torch.Tensor:
    """One padded batch through the posterior -> most likely codes (B, N)."""
    from textdvae.explore import tokenize

    batch = tokenize(model, texts)
    logits, _ = model.posterior(batch["input_ids"], batch["attention_mask"])  # (B, N, K)
    return logits.argmax(-1)


@torch.no_grad()
def plain_greedy(model, codes: torch.Tensor, max_length: int = 64) -> list[list[int]]:
    """Greedy decoding with the whole batch stepped until its last sentence ends (ids up to and including EOS)."""
    from textdvae.explore import as_one_hot, greedy_next

    c = model.config
    state = model.decoder.start(model.condition(as_one_hot(model, codes)))
    tokens = torch.full((codes.size(0), 1), c.bos_token_id, dtype=torch.long)
    steps, done = [], torch.zeros(codes.size(0), dtype=torch.bool)
    for _ in range(max_length):
        h, state = model.decoder(model.embed_tokens(tokens), state)  # (B, 1, H)
        nxt = greedy_next(model, h[:, -1])  # (B,)
        steps.append(nxt)
        done |= nxt == c.eos_token_id
        if done.all():
            break
        tokens = nxt.unsqueeze(1)
    rows = torch.stack(steps, 1).tolist()
    return [row[:row.index(c.eos_token_id) + 1] if c.eos_token_id in row else row for row in rows]


def timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a trained categorical model's final/ folder (or Hub id)")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--readme", action="store_true", help="write the table into README.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from textdvae.cli import load_model
    from textdvae.explore import decode_ids

    model, _ = load_model(args.model)
    model_bf16 = load_model(args.model)[0].to(torch.bfloat16)
    test = [line.strip() for line in (PTB / "test.txt").read_text().splitlines() if line.strip()]
    rng = random.Random(0)
    paths = {  # path -> (texts -> most likely codes, codes -> token ids)
        "plain": (lambda t: plain_encode(model, t), lambda c: plain_greedy(model, c)),
        "package": (lambda t: model.encode(t)[0], lambda c: decode_ids(model, c)),
        "bf16": (lambda t: model_bf16.encode(t)[0], lambda c: decode_ids(model_bf16, c)),
    }
    for encode, _ in paths.values():  # warm-up
        encode(test[:args.batch])
    rates = {f"{path}_{part}": [] for part in ("encode", "decode") for path in paths}
    same_codes, same_text = [], []
    lengths = []
    for r in range(args.repeats):
        texts = rng.sample(test, args.batch)
        lengths.append(max(len(t.split()) for t in texts) / statistics.mean(len(t.split()) for t in texts))
        out = {}
        for path in list(paths) if r % 2 == 0 else list(paths)[::-1]:  # alternate which runs first
            encode, decode = paths[path]
            codes, t = timed(encode, texts)
            rates[f"{path}_encode"].append(len(texts) / t)
            ids, t = timed(decode, codes)
            rates[f"{path}_decode"].append(sum(map(len, ids)) / t)
            out[path] = codes, ids
        assert out["plain"][1] == out["package"][1], "the two paths reconstructed different sentences"
        same_codes.append((out["bf16"][0] == out["package"][0]).float().mean().item())
        same_text.append(sum(a == b for a, b in zip(out["bf16"][1], out["package"][1])) / len(out["package"][1]))
        print(f"repeat {r + 1}/{args.repeats}: " + ", ".join(f"{k} {v[-1]:,.0f}" for k, v in rates.items()), flush=True)
    med = {k: statistics.median(v) for k, v in rates.items()}
    result = {"model": args.model, "batch": args.batch, "repeats": args.repeats, "threads": args.threads,
              "longest_over_mean_words": statistics.median(lengths),
              **{f"{k}_per_s": round(v, 1) for k, v in med.items()},
              "encode_speedup": med["package_encode"] / med["plain_encode"],
              "decode_speedup": med["package_decode"] / med["plain_decode"],
              "bf16_encode_speedup": med["bf16_encode"] / med["plain_encode"],
              "bf16_decode_speedup": med["bf16_decode"] / med["plain_decode"],
              "bf16_same_codes": statistics.mean(same_codes), "bf16_same_reconstructions": statistics.mean(same_text)}
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    lines = ["", f"Command: `python benchmarks/serving.py {args.model} --batch {args.batch} --repeats {args.repeats} "
             f"--threads {args.threads} --readme` ({args.batch} random PTB test sentences per repeat; medians; "
             f"the longest sentence of a batch is {result['longest_over_mean_words']:.1f}x the mean).", "",
             "| path | encode sentences/s | greedy decode tokens/s |", "|---|---|---|",
             f"| plain: one padded batch, stepped until the last sentence ends | {med['plain_encode']:,.0f} | "
             f"{med['plain_decode']:,.0f} |",
             f"| package: length-grouped encode, ended sentences leave the batch | {med['package_encode']:,.0f} | "
             f"{med['package_decode']:,.0f} |",
             f"| package in bf16 (`model.to(torch.bfloat16)`) | {med['bf16_encode']:,.0f} | "
             f"{med['bf16_decode']:,.0f} |",
             f"| speedup of the package over plain | **{result['encode_speedup']:.2f}x** | "
             f"**{result['decode_speedup']:.2f}x** |",
             f"| speedup of the package in bf16 over plain | **{result['bf16_encode_speedup']:.2f}x** | "
             f"**{result['bf16_decode_speedup']:.2f}x** |", "",
             f"In bf16, {result['bf16_same_codes']:.1%} of the latents get the same most likely category as in fp32, "
             f"and {result['bf16_same_reconstructions']:.1%} of the sentences are decoded word for word as in fp32 "
             "(each from its own codes).", ""]
    print("\n".join(lines))
    if args.readme:
        replace_between(ROOT / "README.md", *MARKERS, lines)


if __name__ == "__main__":
    main()
