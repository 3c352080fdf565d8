"""How should the GRU decoder see the code? Initial state only, or also added to the input at every step?

    python benchmarks/conditioning.py [--steps 300] [--threads 2] [--json benchmarks/results/conditioning.json]

Three short PTB trainings with the real recipes and batching (recipes/ptb_gru.yaml, recipes/ptb_gru_lm.yaml on the
local copy in ../shared/data/ptb), run one after another, each followed by the validation pass training does:
  - `lm`: the decoder alone (no latent), the floor a latent should get under;
  - `h0`: the shipped decoder, the code sets the GRU's initial state (Bowman et al. 2016);
  - `h0+input`: `model.code_at_every_step=true`, the code's projection also added to every input embedding (as
    public text-VAE code concatenates z to every input).
The table gives validation -log p(x|z) ("rec"), KL and -ELBO in nats per sentence. A decoder that uses the code
well has rec below the language model's NLL; one that the code hurts has rec above it. The PTB recipe keeps the
default (`h0`); the quick-start recipe, whose codes are sharp and copied out word for word, sets every step.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PTB = ROOT.parent / "shared" / "data" / "ptb"
OFFLINE = ["data.path=text", "data.text_column=text", f"data.data_files.train={PTB / 'train.txt'}",
           f"data.data_files.validation={PTB / 'valid.txt'}"]


def run(variant: str, steps: int, out: Path) -> dict:
    from textdvae import recipe as recipe_lib
    from textdvae.training import Trainer

    name = "ptb_gru_lm" if variant == "lm" else "ptb_gru"
    extra = ["model.code_at_every_step=true"] if variant == "h0+input" else []
    extra += ["train.mixed_precision=no"]  # the rows were measured in fp32, before ptb_gru.yaml moved to bf16
    recipe = recipe_lib.load(ROOT / "recipes" / f"{name}.yaml",
                             OFFLINE + extra + [f"output_dir={out}", f"train.max_steps={steps}",
                                                f"train.eval_every={steps}", f"train.save_every={steps * 10}"])
    trainer = Trainer(recipe)
    trainer.setup()
    t0 = time.time()
    trainer._loop()  # the training loop alone: the validation pass at the last step is all this needs
    seconds = time.time() - t0
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    valid = [r for r in log if r.get("split") == "eval"][-1]
    return {"variant": variant, "rec": valid["rec"], "kl": valid["kl"], "neg_elbo": -valid["elbo"],
            "seconds_per_step": round(seconds / steps, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", nargs="+", default=["lm", "h0", "h0+input"])
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")
    import torch

    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for v in args.variants:
            rows.append(run(v, args.steps, Path(tmp) / v.replace("+", "_")))
            shutil.rmtree(Path(tmp) / v.replace("+", "_"), ignore_errors=True)
    print(f"PTB validation after {args.steps} steps (batch 128), {args.threads} threads, torch {torch.__version__}")
    print("| decoder conditioning | rec | KL | -ELBO | s/step |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['rec']:.2f} | {r['kl']:.2f} | {r['neg_elbo']:.2f} | {r['seconds_per_step']} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"steps": args.steps, "threads": args.threads, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
