"""The README's quick-start tables, written from a quick-start run so that they cannot drift from the code.

    OMP_NUM_THREADS=1 textdvae train recipes/quickstart.yaml
    python benchmarks/traverse_factors.py runs/quickstart/final --n 200 --json benchmarks/results/quickstart_factors.json
    python benchmarks/quickstart.py runs/quickstart benchmarks/results/quickstart_factors.json --write README.md

reads the run's ``metrics.json`` and the factor traversal's JSON and rewrites the blocks between the
``<!-- quickstart-table -->`` and ``<!-- quickstart-factors -->`` markers of README.md (``--check README.md``
instead exits 1, printing both versions, when the README's blocks are not what the run gives;
tests/test_quickstart.py runs it on the suite's own quick-start run). CPU training is deterministic for a given
thread count, so the same commands give the same tables; ``OMP_NUM_THREADS=1`` pins the count.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

BLOCKS = ("quickstart-table", "quickstart-factors")


def metrics_table(metrics: dict) -> list[str]:
    """The held-out test metrics of the run, as the README shows them."""
    return [
        "| metric | value |",
        "|---|---|",
        f"| greedy reconstruction token accuracy | {metrics['rec_token_acc']:.3f} |",
        f"| reconstruction BLEU | {metrics['rec_bleu']:.1f} |",
        f"| -ELBO / IW NLL (S = {metrics['iw_samples']}) | {-metrics['elbo']:.2f} / {metrics['nll']:.2f} nats |",
        f"| KL, MI | {metrics['kl']:.2f}, {metrics['mi']:.2f} nats |",
        f"| active latents (KL_i > 0.01; smallest KL_i {min(metrics['kl_per_latent']):.2f}) | "
        f"{metrics['active_latents']} / {metrics['num_latents']} |",
    ]


def factors_table(factors: dict, values: dict[str, int]) -> list[str]:
    """Each factor's best latent and what traversing it does, then the headline latent's traversal of one sentence."""
    lines = ["| factor | values | best latent | NMI | traversals that change the factor | decoded sentences grammatical |",
             "|---|---|---|---|---|---|"]
    for row in factors["rows"]:
        nmi = f"**{row['nmi']:.3f}**" if row["headline"] else f"{row['nmi']:.3f}"
        lines.append(f"| {row['factor']} | {values[row['factor']]} | {row['latent']} | {nmi} | "
                     f"{_percent(row['traversals_changed'])} | {_percent(row['grammatical'])} |")
    head = next(row for row in factors["rows"] if row["headline"])
    example = head["examples"][0]
    lines += ["", f"Traversing latent {head['latent']} ({head['factor']}) of `{example['text']}`, one line per distinct "
              "sentence (first category that gives it):", ""]
    seen: list[str] = []
    for k, text in enumerate(example["decoded"]):
        if text not in seen:
            seen.append(text)
            lines.append(f"    {k}: {text}")
    return lines


def _percent(x: float) -> str:
    return "100%" if x == 1 else f"{x:.1%}"


def render(run_dir: Path, factors_json: Path) -> dict[str, list[str]]:
    """Block name -> its lines, from a run folder (its metrics.json) and traverse_factors.py's JSON."""
    from traverse_factors import load_grammar

    metrics = json.loads((run_dir / "metrics.json").read_text())
    factors = json.loads(factors_json.read_text())
    values = {name: len(options) for name, options in load_grammar().FACTORS.items()}
    return {"quickstart-table": metrics_table(metrics), "quickstart-factors": factors_table(factors, values)}


def replace_blocks(text: str, blocks: dict[str, list[str]]) -> str:
    """Put each block between ``<!-- NAME: ... -->`` and ``<!-- /NAME -->``; a missing marker is an error."""
    for name, lines in blocks.items():
        start, end = f"<!-- {name}:", f"<!-- /{name} -->"
        if start not in text or end not in text:
            raise SystemExit(f"README has no {start} ... {end} block; add the two marker lines where the table goes")
        head = text.index("\n", text.index(start)) + 1
        text = text[:head] + "\n".join(lines) + "\n" + text[text.index(end):]
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path, help="a quick-start training run (its output_dir, holding metrics.json)")
    p.add_argument("factors_json", type=Path, help="the JSON of benchmarks/traverse_factors.py on the run's final/")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--write", type=Path, metavar="README", help="rewrite the blocks of this README")
    mode.add_argument("--check", type=Path, metavar="README", help="exit 1 if this README's blocks differ")
    args = p.parse_args(argv)
    blocks = render(args.run_dir, args.factors_json)
    if args.write:
        args.write.write_text(replace_blocks(args.write.read_text(), blocks))
    elif args.check:
        readme = args.check.read_text()
        if replace_blocks(readme, blocks) != readme:
            print(f"{args.check}'s quick-start blocks are not what {args.run_dir} gives; this run gives:\n")
            print("\n\n".join("\n".join(lines) for lines in blocks.values()))
            return 1
    else:
        print("\n\n".join("\n".join(lines) for lines in blocks.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
