"""Penn Treebank along the rate-distortion curve: models held at a target KL (`train.target_rate`) side by side.

    python benchmarks/rate.py --rates 15 60                         # train, then collect
    python benchmarks/rate.py --collect --lm runs/ptb/lm/final       # rebuild rate.json, the tables and the figure
    python benchmarks/rate.py --collect --example 15                 # also the README's interpolation from that row

Each row is a real `textdvae train` run of a recipe on the local copy of PTB (../shared/data/ptb), ended by the
evaluation training ends with (test split: single-sample ELBO, IW NLL with the recipe's S, MI, active latents,
greedy-reconstruction BLEU and token accuracy). On top, how the code space reads between sentences: 200 random
pairs of test sentences (seeded), each Hamming-interpolated (`model.interpolate`), and the sentence at the middle
of each path scored by the language model (`--lm`, a `latent: none` model of the same data): its per-token NLL
(`interp_lm_nll`) beside the same on the test sentences (`test_lm_nll`), and the midpoints' mean length in tokens
(`interp_mean_length`, beside `test_mean_length`). Degenerate midpoints (short, generic, repeated) show as a low
NLL with a short length. Without `--lm` those columns stay empty.

The IW NLL's proposal is each model's posterior tempered by IW_TEMPERATURE (`train.iw_temperature`; the logits
divided by T, a wider proposal than the sharp trained encoder, which gives a tighter bound at the same S;
textdvae/evaluation.py). T was chosen on validation sentences (benchmarks/RESULTS.md, Rate, session 21). Runs
trained before that setting are scored again with `--rescore RATE ...` (`textdvae eval` on test with S = 500 and
that T, into OUT/rateR/test_iw.json), and a row takes its IW NLL from that file when it is there; the other columns
come from the training's own final evaluation.

Rows go to benchmarks/results/rate.json (one object per row), the table to benchmarks/RESULTS.md and README.md
(between markers), and the rate-distortion figure (x: KL, y: reconstruction, each point labelled with its IW NLL)
to benchmarks/results/rate_distortion.png.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ptb import ROOT, launch_recipe, replace_between  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "rate.json"
FIGURE = ROOT / "benchmarks" / "results" / "rate_distortion.png"
TABLE_MARKERS = ("<!-- rate-table: written by benchmarks/rate.py -->", "<!-- /rate-table -->")
EXAMPLE_MARKERS = ("<!-- rate-interpolation: written by benchmarks/rate.py -->", "<!-- /rate-interpolation -->")
EXAMPLE = ("the company said it expects to report a loss for the third quarter", "investors are worried about the dollar")
RATES = {  # target rate (nats) -> (recipe, extra overrides): N log K well above each target
    5: ("ptb_gru", ["train.target_rate=5", "train.free_bits=0", "train.mixed_precision=bf16"]),  # as ptb_gru_rate15
    15: ("ptb_gru_rate15", []),
    # 32 x 16 stopped at 19 nats with beta at its floor (3,000 steps); 32 x 64 read from the initial state, with
    # word dropout, was at 29 by step 1,000 (RESULTS.md, Rate, session 20)
    30: ("ptb_gru_rate60", ["train.target_rate=30", "model.code_at_every_step=false", "train.word_dropout=0.25",
                            "train.mixed_precision=bf16"]),
    60: ("ptb_gru_rate60", []),
}


IW_SAMPLES = 500  # the IW bound on test: tighter than the recipes' S = 100, and what the rows are compared at
IW_TEMPERATURE = 1.5  # the IW proposal: q(z|x) tempered (chosen on validation; RESULTS.md, Rate, session 21)


def train(rate: int, out_root: Path, threads: int, max_steps: int | None) -> Path:
    recipe, extra = RATES[rate]
    overrides = [*extra, f"train.iw_samples={IW_SAMPLES}", f"train.iw_temperature={IW_TEMPERATURE}",
                 *([f"train.max_steps={max_steps}"] if max_steps else [])]
    proc, out = launch_recipe(recipe, f"rate{rate}", out_root, threads, overrides)
    if proc.wait():
        raise SystemExit(f"rate {rate}: training failed, see {out / 'stdout.txt'}")
    return out


def rescore(out: Path, threads: int) -> Path:
    """The IW NLL of a finished run's model on test, with IW_SAMPLES samples from the IW_TEMPERATURE proposal, by
    `textdvae eval` (the run's own data section and evaluation batch size, seed 0) into OUT/test_iw.json."""
    import os
    import subprocess

    cfg = yaml.safe_load((out / "config.yaml").read_text())
    target = out / "test_iw.json"
    t0 = time.time()
    subprocess.run([sys.executable, "-m", "textdvae", "eval", str(out / "final"), "--split", "test",
                    "--iw-samples", str(IW_SAMPLES), "--iw-temperature", str(IW_TEMPERATURE),
                    "--batch-size", str(cfg["train"]["eval_batch_size"]), "--json", str(target), "--plot", ""],
                   check=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    print(f"{out.name}: rescored in {(time.time() - t0) / 60:.1f} min", flush=True)
    return target


def interpolation_stats(model_dir: Path, lm_dir: Path | None, pairs: int, seed: int = 0) -> dict:
    """Midpoints of Hamming interpolations between random test pairs, scored by the language model."""
    import torch

    from textdvae.cli import load_model

    model, _ = load_model(str(model_dir))
    test = [line.strip() for line in (ROOT.parent / "shared/data/ptb/test.txt").read_text().splitlines() if line.strip()]
    rng = random.Random(seed)
    chosen = [rng.sample(test, 2) for _ in range(pairs)]
    torch.manual_seed(seed)
    midpoints = []
    for a, b in chosen:
        path = model.interpolate(a, b, method="hamming")
        midpoints.append(path[len(path) // 2]["text"])
    stats = {"interp_pairs": pairs, "interp_mean_length": _mean_tokens(midpoints), "test_mean_length": _mean_tokens(test),
             "interp_examples": midpoints[:5], "interp_lm_nll": None, "test_lm_nll": None}
    if lm_dir is not None:
        lm, _ = load_model(str(lm_dir))
        stats["interp_lm_nll"] = _lm_nll_per_token(lm, midpoints)
        stats["test_lm_nll"] = _lm_nll_per_token(lm, test)
    return stats


def cached_interpolation_stats(out: Path, lm_dir: Path | None, pairs: int) -> dict:
    """`interpolation_stats` of the run in OUT, kept in OUT/interpolation.json and computed again only when the model,
    the language model or the number of pairs has changed (a few minutes a row on one core)."""
    path = out / "interpolation.json"
    key = {"model_mtime": (out / "final" / "model.safetensors").stat().st_mtime, "pairs": pairs,
           "lm": str(lm_dir.resolve()) if lm_dir else None,
           "lm_mtime": (lm_dir / "model.safetensors").stat().st_mtime if lm_dir else None}
    if path.is_file() and (saved := json.loads(path.read_text())).get("key") == key:
        return saved["stats"]
    t0 = time.time()
    stats = interpolation_stats(out / "final", lm_dir, pairs)
    print(f"{out.name}: interpolations in {time.time() - t0:.0f} s", flush=True)
    path.write_text(json.dumps({"key": key, "stats": stats}, indent=2) + "\n")
    return stats


def _mean_tokens(texts: list[str]) -> float:
    """Words + end-of-sentence, as the models count tokens."""
    return sum(len(t.split()) + 1 for t in texts) / len(texts)


def _lm_nll_per_token(lm, texts: list[str], batch_size: int = 256) -> float:
    """The LM's NLL per token (end-of-sentence included); a midpoint that decoded to the empty sentence is scored as
    end-of-sentence alone."""
    import torch

    from textdvae import explore

    total, tokens = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            batch = explore.tokenize(lm, texts[i:i + batch_size], allow_empty=True)
            rec = lm.reconstruction(batch["input_ids"], batch["attention_mask"], None)  # (B,) -log p(x), nats
            total += float(rec.sum())
            tokens += int(batch["attention_mask"].sum())
    return total / tokens


def row(out: Path, rate: int | None, stats: dict | None) -> dict:
    m = json.loads((out / "metrics.json").read_text())
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    betas = [r["beta"] for r in log if "beta" in r]
    latent = cfg["model"]["latent"] == "categorical"
    iw = json.loads((out / "test_iw.json").read_text()) if (out / "test_iw.json").is_file() else m
    r = {"target_rate": rate, "kl": m["kl"], "elbo": m["elbo"], "nll": iw["nll"], "iw_samples": iw["iw_samples"],
         "iw_temperature": iw.get("iw_temperature", 1.0),
         "rec": m["rec"], "mi": m["mi"], "active_latents": m["active_latents"], "num_latents": m["num_latents"],
         "num_categories": cfg["model"]["num_categories"] if latent else None,
         "rec_token_acc": m["rec_token_acc"], "rec_bleu": m["rec_bleu"], "steps": m["step"],
         "final_beta": betas[-1] if betas and rate is not None else None,
         "train_minutes": round(max(x.get("elapsed_s", 0) for x in log) / 60, 1),
         "recipe": f"recipes/{RATES[rate][0]}.yaml" if rate is not None else None,
         "overrides": RATES[rate][1] if rate is not None else None,
         "run": str(out.relative_to(ROOT)) if out.is_relative_to(ROOT) else str(out)}
    r.update(stats or {"interp_lm_nll": None, "test_lm_nll": None, "interp_mean_length": None})
    return r


def table(rows: list[dict]) -> list[str]:
    lines = ["| target | N x K | KL | -ELBO | IW NLL | S, T | rec | MI | active | BLEU | token acc | midpoint LM NLL "
             "(test) | midpoint length (test) | final beta | steps | minutes |", "|" + "---|" * 16]
    for r in rows:
        nk = f"{r['num_latents']} x {r['num_categories']}" if r["num_categories"] else "-"
        lm = (f"{r['interp_lm_nll']:.2f} ({r['test_lm_nll']:.2f})" if r.get("interp_lm_nll") is not None else "-")
        length = (f"{r['interp_mean_length']:.1f} ({r['test_mean_length']:.1f})"
                  if r.get("interp_mean_length") is not None else "-")
        beta = f"{r['final_beta']:.3f}" if r.get("final_beta") is not None else "-"
        iw = f"{r['iw_samples']}, {r.get('iw_temperature', 1.0):g}" if r["num_categories"] else "exact"  # LM: no code
        lines.append(f"| {r['target_rate'] if r['target_rate'] is not None else 'LM'} | {nk} | {r['kl']:.2f} | "
                     f"{-r['elbo']:.2f} | {r['nll']:.2f} | {iw} | {r['rec']:.2f} | {r['mi']:.2f} | "
                     f"{r['active_latents']}/{r['num_latents']} | {r['rec_bleu']:.1f} | {r['rec_token_acc']:.3f} | {lm} "
                     f"| {length} | {beta} | {r['steps']} | {r['train_minutes']} |")
    return lines


def plot(rows: list[dict]) -> None:
    from textdvae.plots import _pyplot

    plt = _pyplot("rate-distortion figure")
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for r in rows:
        ax.plot(r["kl"], r["rec"], "o" if r["target_rate"] is not None else "s", color="C0" if r["target_rate"] else "C1")
        name = "LM" if r["target_rate"] is None else f"target {r['target_rate']}"
        label = f"{name}: IW NLL {r['nll']:.2f}"
        ax.annotate(label, (r["kl"], r["rec"]), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.margins(x=0.3, y=0.15)  # room for the labels
    ax.set(xlabel="KL (rate), nats per sentence", ylabel="-log p(x | z) (distortion), nats per sentence",
           title="PTB test: rate against distortion")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(FIGURE, dpi=110)
    plt.close(fig)


def example(model_dir: Path) -> list[str]:
    """The README's interpolation, from the given row's model."""
    from textdvae.cli import load_model

    model, _ = load_model(str(model_dir))
    path = model.interpolate(*EXAMPLE, method="hamming")
    shown = model_dir.relative_to(ROOT) if model_dir.is_relative_to(ROOT) else model_dir
    lines = ["    textdvae interpolate " + str(shown) + " " + " ".join(f'"{s}"' for s in EXAMPLE),
             "", "| step | changed latent | text |", "|---|---|---|"]
    for i, point in enumerate(path):
        changed = "-" if i == 0 else str(next(j for j, (x, y) in enumerate(zip(path[i - 1]["codes"], point["codes"]))
                                             if x != y))
        text = "*(same as above)*" if point["repeated"] else point["text"].replace("<", "&lt;").replace(">", "&gt;")
        lines.append(f"| {i} | {changed} | {text} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", nargs="*", type=int, choices=list(RATES), default=[])
    parser.add_argument("--out", default="runs/rate", help="run folders: OUT/rateR")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-steps", type=int, help="override the recipes' step budget")
    parser.add_argument("--collect", action="store_true", help="rebuild the results from the finished runs in --out")
    parser.add_argument("--rescore", nargs="*", type=int, choices=list(RATES), default=[],
                        help="score these finished rows' IW NLL again with IW_TEMPERATURE (OUT/rateR/test_iw.json)")
    parser.add_argument("--lm", help="the language model's final/ folder, for the interpolation columns and the LM row")
    parser.add_argument("--pairs", type=int, default=200, help="test pairs interpolated per row")
    parser.add_argument("--example", type=int, help="write the README's interpolation example from this rate's model")
    args = parser.parse_args()
    out_root = ROOT / args.out
    for rate in args.rates:
        train(rate, out_root, args.threads, args.max_steps)
    for rate in args.rescore:
        rescore(out_root / f"rate{rate}", args.threads)
    rows = []
    for rate in sorted(RATES):
        out = out_root / f"rate{rate}"
        if not (out / "metrics.json").is_file():
            continue
        rows.append(row(out, rate, cached_interpolation_stats(out, Path(args.lm) if args.lm else None, args.pairs)))
    if args.lm:
        rows.append(row(Path(args.lm).parent, None, None))
    if not rows:
        raise SystemExit(f"no finished runs in {out_root}; train some with --rates")
    RESULTS.write_text(json.dumps(rows, indent=2) + "\n")
    lines = table(rows)
    command = ("python benchmarks/rate.py --collect" + (f" --out {args.out}" if args.out != "runs/rate" else "")
               + (f" --lm {args.lm}" if args.lm else ""))
    block = ["", f"Command: `{command}` (training: `python benchmarks/rate.py --rates ...`).", "", *lines, "",
             "MI is sum_i I(x; z_i), each latent's mutual information with the sentence, summed: it counts what several "
             "latents share once per latent, so it exceeds the KL when the learned prior models that sharing (the "
             "joint I(x; z) is at most the KL). S, T: the IW NLL's samples and its proposal's temperature (T = 1: "
             "the posterior itself); the language model's NLL is exact.", ""]
    replace_between(ROOT / "benchmarks" / "RESULTS.md", *TABLE_MARKERS, block)
    replace_between(ROOT / "README.md", *TABLE_MARKERS, block)
    plot(rows)
    if args.example is not None:
        replace_between(ROOT / "README.md", *EXAMPLE_MARKERS, ["", *example(out_root / f"rate{args.example}" / "final"), ""])
    print("\n".join(lines))


if __name__ == "__main__":
    main()
