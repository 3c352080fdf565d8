"""torch.compile against eager on CPU, for one recipe's training step (forward, backward, clipping, AdamW).

    python benchmarks/compile.py [quickstart|ptb_gru|...] [--rounds 4] [--steps 40]

The model, optimizer and sentences are those of `benchmarks/throughput.py` for the recipe. Batches are padded to
the recipe's `data.max_length` and only full batches are kept, so every step has one shape: `torch.compile(...,
dynamic=False)` then compiles once instead of once per length (with `dynamic=True` it does not trace: the Gumbel
noise's `torch.rand` gets a symbolic size, "SymIntArrayRef expected to contain only concrete integers", torch 2.13).
The first 20 steps of each (compilation included) are not timed; then eager and compiled alternate, `--rounds`
rounds of `--steps` steps, and the medians of target tokens per second are printed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import RECIPES, ROOT, load_sentences, train_step  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe", nargs="?", default="quickstart", choices=list(RECIPES))
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from textdvae import TextDVAE
    from textdvae import recipe as recipe_lib
    from textdvae.data import collate, configure_model_for_tokenizer, encode, make_batches
    from textdvae.optim import build_optimizer
    from textdvae.tokenization import build_tokenizer

    torch.manual_seed(0)
    recipe = recipe_lib.load(ROOT / RECIPES[args.recipe])
    texts = load_sentences(args.recipe)
    tok = build_tokenizer(recipe.tokenizer, texts)
    configure_model_for_tokenizer(recipe, tok)
    ids, _ = encode(tok, texts, recipe.data.max_length)
    cfg, tc = recipe.model, recipe.train
    plan = make_batches([len(s) for s in ids], tc.batch_size, shuffle=True, seed=0)
    needed = 20 + args.rounds * args.steps
    batches = [collate([ids[i] for i in b], cfg.pad_token_id, width=recipe.data.max_length)
               for b in plan if len(b) == tc.batch_size][:needed]
    if len(batches) < needed:
        raise SystemExit(f"{args.recipe}: {len(batches)} full batches, {needed} needed; lower --rounds or --steps")

    def run(model, opt, chunk) -> float:
        model.train()
        t0 = time.perf_counter()
        tokens = sum(train_step(model, opt, b, tc) for b in chunk)
        return tokens / (time.perf_counter() - t0)

    eager = TextDVAE(cfg)
    compiled_model = TextDVAE(cfg)
    compiled_model.load_state_dict(eager.state_dict())
    compiled = torch.compile(compiled_model, dynamic=False)
    paths = {"eager": (eager, build_optimizer(eager, tc)), "compiled": (compiled, build_optimizer(compiled_model, tc))}
    for name, (model, opt) in paths.items():
        t0 = time.perf_counter()
        run(model, opt, batches[:20])
        print(f"{name}: first 20 steps in {time.perf_counter() - t0:.1f} s", flush=True)
    rates = {name: [] for name in paths}
    for r in range(args.rounds):
        chunk = batches[20 + r * args.steps: 20 + (r + 1) * args.steps]
        for name in (list(paths) if r % 2 == 0 else list(paths)[::-1]):
            rates[name].append(run(*paths[name], chunk))
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:,.0f} tokens/s" for k, v in rates.items()), flush=True)
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f"{args.recipe}, {torch.get_num_threads()} threads: eager {med['eager']:,.0f} tokens/s, compiled "
          f"{med['compiled']:,.0f} tokens/s ({med['compiled'] / med['eager']:.2f}x)")


if __name__ == "__main__":
    main()
