"""Do the quick-start codes line up with the bundled corpus's 8 factors? One row per trained run, and the README table.

    python benchmarks/factors.py measure NAME RUN_DIR --command "textdvae train recipes/quickstart.yaml ..."
    python benchmarks/factors.py table [--readme README.md]

`measure` scores RUN_DIR/final on data/test.jsonl with `textdvae factors` (best-latent NMI per factor, MIG, SAP,
DCI, linear probes, exact reconstruction), traverses each factor's best latent on the first 200 test sentences,
reads -ELBO and KL from RUN_DIR/metrics.json and the training time from RUN_DIR/log.jsonl, and stores the row
(replacing one of the same NAME) in benchmarks/results/factors.json. `table` prints the rows and writes them into
the README between `<!-- factors-table -->` and `<!-- /factors-table -->`.

Traversal: for factor f, its best latent i is set to every other category k of each sentence's code and the code is
greedy-decoded. A step "changes the sentence" when the text differs from the one decoded with the sentence's own
category; it is "clean" when moreover the new text is a sentence of the grammar that differs from the own-category
one in factor f and in no other factor. `clean` is clean / sentence-changing steps, pooled over the 8 factors (the
issue's target: >= 80 %); `clean min` is the worst factor's rate.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

RESULTS = ROOT / "benchmarks" / "results" / "factors.json"
TEST = ROOT / "data" / "test.jsonl"
N_TRAVERSE = 200
MARK = ("<!-- factors-table: written by benchmarks/factors.py -->", "<!-- /factors-table -->")


@torch.no_grad()
def traversal_clean_rate(model, records: list[dict], codes: torch.Tensor, factor: str, latent: int,
                         parse: dict[str, dict[str, str]]) -> tuple[int, int]:
    """-> (clean steps, sentence-changing steps) of traversing `latent` on `records` (see the module doc)."""
    n, K = len(records), model.config.num_categories
    grid = codes.repeat_interleave(K, 0)  # (n*K, N): sentence j's rows are j*K .. j*K + K - 1
    grid[:, latent] = torch.arange(K).repeat(n)
    texts = model.decode(grid)
    clean = changing = 0
    for j in range(n):
        own = int(codes[j, latent])
        base_text = texts[j * K + own]
        base = parse.get(base_text) or {k: records[j][k] for k in next(iter(parse.values()))}
        for k in range(K):
            text = texts[j * K + k]
            if k == own or text == base_text:
                continue
            changing += 1
            p = parse.get(text)
            clean += p is not None and p[factor] != base[factor] and all(
                p[g] == base[g] for g in base if g != factor)
    return clean, changing


def measure(name: str, run_dir: Path, command: str) -> dict:
    from textdvae.cli import load_model, main as cli
    from traverse_factors import factor_parser, load_grammar

    grammar = load_grammar()
    factors = list(grammar.FACTORS)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "factors.json"
        if cli(["factors", str(run_dir / "final"), str(TEST), "--factors", *factors, "--json", str(out)]) != 0:
            raise SystemExit(f"textdvae factors failed on {run_dir}")
        scores = json.loads(out.read_text())
    model, tokenizer = load_model(str(run_dir / "final"))
    model.tokenizer = tokenizer
    records = [json.loads(line) for line in TEST.read_text(encoding="utf-8").splitlines()][:N_TRAVERSE]
    row = {"name": name, "command": command, "run_dir": str(run_dir), "latent": model.config.latent}
    if model.config.latent == "categorical":
        parse = factor_parser(grammar)
        codes, _ = model.encode([r["text"] for r in records])
        per_factor = {f: traversal_clean_rate(model, records, codes, f, scores["factors"][f]["best_latent"], parse)
                      for f in factors}
        row["traversal_clean"] = sum(c for c, _ in per_factor.values()) / max(1, sum(n for _, n in per_factor.values()))
        row["traversal_clean_min"] = min(c / max(1, n) for c, n in per_factor.values())
        row["traversal_clean_per_factor"] = {f: c / max(1, n) for f, (c, n) in per_factor.items()}
    metrics = json.loads((run_dir / "metrics.json").read_text())
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines() if line.strip()]
    row.update(elbo=metrics["elbo"], kl=metrics["kl"], minutes=max(r.get("elapsed_s", 0) for r in log) / 60,
               nmi=min(f["nmi"] for f in scores["factors"].values()),
               **{k: scores[k] for k in ("nmi_mean", "mig", "sap", "dci_disentanglement", "dci_completeness",
                                         "dci_informativeness", "exact_reconstruction")},
               per_factor=scores["factors"])
    row["nmi_min"] = row.pop("nmi")
    return row


def table(rows: list[dict]) -> str:
    head = ("| trial | latent | −ELBO | KL | mean NMI | min NMI | MIG | SAP | DCI D / C / I | exact rec. | traversal "
            "clean (min) | train min (shared CPU) |\n|---|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        clean = (f"{r['traversal_clean']:.0%} ({r['traversal_clean_min']:.0%})" if "traversal_clean" in r else "-")
        lines.append(f"| {r['name']} | {r['latent']} | {-r['elbo']:.2f} | {r['kl']:.2f} | {r['nmi_mean']:.2f} | "
                     f"{r['nmi_min']:.2f} | {r['mig']:.2f} | {r['sap']:.2f} | {r['dci_disentanglement']:.2f} / "
                     f"{r['dci_completeness']:.2f} / {r['dci_informativeness']:.2f} | "
                     f"{r['exact_reconstruction']:.1%} | {clean} | {r['minutes']:.1f} |")
    lines += seed_means(rows)
    lines.append("")
    lines.append("Commands:")
    lines.append("")
    lines += [f"- {r['name']}: `{r['command']}`" for r in rows]
    return "\n".join(lines)


SEED = re.compile(r"^(.*?)(?:, seed (\d+))?$")


def seed_means(rows: list[dict]) -> list[str]:
    """One line per trial run with several seeds (rows named `NAME` or `NAME, seed S`, the bare name being seed 0):
    the means over its seeds, since one run per setting cannot rank settings on alignment."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(SEED.match(r["name"]).group(1), []).append(r)
    keys = [("−ELBO", lambda r: -r["elbo"], ".2f"), ("mean NMI", lambda r: r["nmi_mean"], ".2f"),
            ("MIG", lambda r: r["mig"], ".2f"), ("exact rec.", lambda r: r["exact_reconstruction"], ".1%"),
            ("traversal clean", lambda r: r["traversal_clean"], ".0%")]
    lines = []
    for name, group in groups.items():
        if len(group) < 2 or any("traversal_clean" not in r for r in group):
            continue
        means = ", ".join(f"{label} {sum(map(get, group)) / len(group):{spec}}" for label, get, spec in keys)
        lines.append(f"- {name}, mean of {len(group)} seeds: {means}")
    return ["", "Means over seeds:", "", *lines] if lines else []


def write_readme(text: str, readme: Path) -> None:
    content = readme.read_text(encoding="utf-8")
    pattern = re.compile(re.escape(MARK[0]) + r".*?" + re.escape(MARK[1]), re.S)
    if not pattern.search(content):
        raise SystemExit(f"{readme} has no {MARK[0]} ... {MARK[1]} markers")
    readme.write_text(pattern.sub(lambda _: f"{MARK[0]}\n{text}\n{MARK[1]}", content), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="what", required=True)
    m = sub.add_parser("measure")
    m.add_argument("name")
    m.add_argument("run_dir", type=Path)
    m.add_argument("--command", required=True, help="the training command of the run, recorded with the row")
    t = sub.add_parser("table")
    t.add_argument("--readme", type=Path, help="also write the table into this README between the markers")
    args = p.parse_args(argv)
    rows = json.loads(RESULTS.read_text()) if RESULTS.exists() else []
    if args.what == "measure":
        row = measure(args.name, args.run_dir, args.command)
        rows = [r for r in rows if r["name"] != args.name] + [row]
        RESULTS.write_text(json.dumps(rows, indent=2) + "\n")
    text = table(rows)
    print(text)
    if args.what == "table" and args.readme:
        write_readme(text, args.readme)
    return 0


if __name__ == "__main__":
    sys.exit(main())
