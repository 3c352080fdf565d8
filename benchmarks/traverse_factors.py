"""Do the latents line up with the bundled corpus's known factors, and does traversing one change its factor?

    python benchmarks/traverse_factors.py MODEL_DIR [--n 200] [--data data/test.jsonl] [--json PATH]

1. Every test sentence is encoded to its most likely code. For each factor of the grammar (data/generate.py) and
   each latent, the normalized mutual information NMI = I(z_i; f) / ((H(z_i) + H(f)) / 2) between the latent's
   most likely category and the factor's value (1: the latent determines the factor and vice versa, 0: independent).
   The table gives each factor's best latent.
2. For each factor, its best latent is traversed on the first n test sentences: the sentence's code with that
   latent set to each of the K categories, greedy-decoded. A decoded sentence is parsed back to its factors by
   looking it up in the whole factor grid (98,304 sentences); one that is not in the grid is ungrammatical.
   For every (sentence, category other than its own) pair, "changed" means the decoded sentence parses and the
   factor's value differs from that of the sentence decoded with the original category (or, when that one does not
   parse, from the input's); "only" means moreover that no other factor changed. Per traversal (one sentence, all K
   categories), "traversals changed" is the fraction whose K sentences show at least two values of the factor.
   The factor/latent pair with the highest NMI is the headline (marked *), and "traversals changed" its measure: a
   per-step rate cannot reach 100% for a factor with fewer values than K (a perfectly aligned latent whose K=8
   categories split a binary factor 4/4 changes it in 4 of 7 steps).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import shlex
import sys
import time
from collections import Counter
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import cpu_name  # noqa: E402


def load_grammar(path: Path = ROOT / "data" / "generate.py"):
    """The corpus generator as a module (data/ is not a package)."""
    spec = importlib.util.spec_from_file_location("textdvae_corpus_generate", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def factor_parser(grammar) -> dict[str, dict[str, str]]:
    """text -> {factor: value} over the whole factor grid (the generator checks the map is injective)."""
    return {grammar.realise(f): f for f in grammar.all_assignments()}


def entropy(counts: Counter) -> float:
    n = sum(counts.values())
    return -sum(c / n * math.log(c / n) for c in counts.values() if c)


def nmi(xs: list, ys: list) -> float:
    """Normalized mutual information with the arithmetic-mean normalization (sklearn's default)."""
    hx, hy = entropy(Counter(xs)), entropy(Counter(ys))
    mi = hx + hy - entropy(Counter(zip(xs, ys)))
    return 0.0 if hx + hy == 0 else max(0.0, 2 * mi / (hx + hy))


def nmi_table(codes: list[list[int]], records: list[dict], factors: list[str]) -> dict[str, list[float]]:
    """{factor: [NMI with latent 0, 1, ..]}."""
    N = len(codes[0])
    return {f: [nmi([c[i] for c in codes], [r[f] for r in records]) for i in range(N)] for f in factors}


@torch.no_grad()
def traversal_stats(model, records: list[dict], codes: torch.Tensor, factor: str, latent: int,
                    parse: dict[str, dict[str, str]], batch: int = 2048) -> dict:
    """Traverse `latent` on every record; how often the decoded sentence's `factor` changes (see the module doc)."""
    n, K = len(records), model.config.num_categories
    grid = codes.repeat_interleave(K, 0)  # (n*K, N): sentence j's rows are j*K .. j*K + K - 1
    grid[:, latent] = torch.arange(K).repeat(n)
    texts = []
    for start in range(0, grid.size(0), batch):
        texts += model.decode(grid[start:start + batch])
    changes = changed = only = traversals_changed = grammatical = parsed_changes = 0
    examples = []
    for j, record in enumerate(records):
        rows = texts[j * K:(j + 1) * K]
        parsed = [parse.get(t) for t in rows]
        grammatical += sum(p is not None for p in parsed)
        own = int(codes[j, latent])
        base = parsed[own] or {k: record[k] for k in parse_keys(parse)}
        values = {p[factor] for p in parsed if p is not None}
        traversals_changed += len(values) >= 2
        for k in range(K):
            if k == own:
                continue
            changes += 1
            p = parsed[k]
            parsed_changes += p is not None
            if p is not None and p[factor] != base[factor]:
                changed += 1
                only += all(p[g] == base[g] for g in base if g != factor)
        if len(examples) < 3:
            examples.append({"text": record["text"], "original_category": own, "decoded": rows})
    return {"factor": factor, "latent": latent, "n_sentences": n, "n_changes": changes,
            "changed": changed / changes, "changed_only_this_factor": only / changes,
            "changed_given_grammatical": changed / max(1, parsed_changes),
            "traversals_changed": traversals_changed / n, "grammatical": grammatical / (n * K), "examples": examples}


def parse_keys(parse: dict[str, dict[str, str]]) -> list[str]:
    return list(next(iter(parse.values())))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="a trained model folder (a run's final/) or a Hub repo id")
    p.add_argument("--n", type=int, default=200, help="test sentences to traverse")
    p.add_argument("--data", default=str(ROOT / "data" / "test.jsonl"), help="sentences with their factors (JSONL)")
    p.add_argument("--json", help="also write the results to this JSON file")
    args = p.parse_args(argv)

    from textdvae.cli import load_model

    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    print(f"# {command}")
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{cpu_name()}")
    t0 = time.perf_counter()
    model, tokenizer = load_model(args.model)
    model.tokenizer = tokenizer
    grammar = load_grammar()
    parse = factor_parser(grammar)
    factors = list(grammar.FACTORS)
    records = [json.loads(line) for line in Path(args.data).read_text(encoding="utf-8").splitlines() if line.strip()]
    codes = torch.cat([model.encode([r["text"] for r in records[i:i + 512]])[0] for i in range(0, len(records), 512)])
    table = nmi_table(codes.tolist(), records, factors)
    best = {f: max(range(len(v)), key=v.__getitem__) for f, v in table.items()}
    headline = max(factors, key=lambda f: table[f][best[f]])
    recon = model.decode(codes[: args.n])
    recon_exact = sum(t == r["text"] for t, r in zip(recon, records)) / len(recon)
    recon_grammatical = sum(t in parse for t in recon) / len(recon)

    rows = []
    for f in factors:
        stats = traversal_stats(model, records[: args.n], codes[: args.n], f, best[f], parse)
        rows.append({"nmi": table[f][best[f]], "headline": f == headline, **stats})

    K = model.config.num_categories
    print(f"# {len(records)} sentences of {args.data} encoded; {min(args.n, len(records))} traversed over K={K} "
          f"categories; reconstructions: {recon_exact:.1%} exact, {recon_grammatical:.1%} grammatical")
    print()
    print(f"{'factor':<10} {'values':>6} {'latent':>6} {'NMI':>6} {'2nd NMI':>7} {'changed':>8} {'only it':>8} "
          f"{'trav. changed':>13} {'grammatical':>11}")
    for r in rows:
        f = r["factor"]
        second = sorted(table[f])[-2] if len(table[f]) > 1 else float("nan")
        name = ("* " if r["headline"] else "") + f
        print(f"{name:<10} {len(grammar.FACTORS[f]):>6} {r['latent']:>6} {r['nmi']:>6.3f} "
              f"{second:>7.3f} {r['changed']:>8.1%} {r['changed_only_this_factor']:>8.1%} "
              f"{r['traversals_changed']:>13.1%} {r['grammatical']:>11.1%}")
    h = next(r for r in rows if r["headline"])
    print()
    print(f"headline: factor {h['factor']!r} / latent {h['latent']} (NMI {h['nmi']:.3f}): traversing the latent "
          f"changed the factor in {h['traversals_changed']:.1%} of {h['n_sentences']} traversals; "
          f"per step (one category "
          f"changed) in {h['changed']:.1%} of {h['n_changes']} ({h['changed_only_this_factor']:.1%} changed only this "
          f"factor); {h['grammatical']:.1%} of the decoded sentences are grammatical")
    ex = h["examples"][0]
    print(f"example: {ex['text']!r} (own category {ex['original_category']})")
    for k, t in enumerate(ex["decoded"]):
        print(f"  {'*' if k == ex['original_category'] else ' '} {k}: {t}")
    print(f"# {time.perf_counter() - t0:.1f} s")
    if args.json:
        out = {"command": command, "model": args.model, "n": args.n, "num_categories": K,
               "reconstruction_exact": recon_exact, "reconstruction_grammatical": recon_grammatical,
               "nmi": table, "rows": rows, "headline": {k: v for k, v in h.items() if k != "examples"}}
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
