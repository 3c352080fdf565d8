"""The quick-start recipe as users run it: it must reconstruct held-out sentences, keep every latent active, and
give a latent whose traversal changes a known factor of the bundled corpus (issue: traversal changes the factor
"in most cases"; measured 79.5% on the committed recipe, the threshold here is 50%). About 2-3 minutes on 2 cores."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_recipe_learns_the_corpus_factors(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1"}
    subprocess.run([sys.executable, "-m", "textdvae", "train", "recipes/quickstart.yaml", f"output_dir={tmp_path}"],
                   cwd=ROOT, env=env, check=True, capture_output=True, timeout=900)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["rec_token_acc"] >= 0.95, metrics["rec_token_acc"]
    assert min(metrics["kl_per_latent"]) >= 0.1 and metrics["active_latents"] == metrics["num_latents"] == 16
    out = tmp_path / "factors.json"
    subprocess.run([sys.executable, "benchmarks/traverse_factors.py", str(tmp_path / "final"), "--n", "200",
                    "--json", str(out)], cwd=ROOT, env=env, check=True, capture_output=True, timeout=600)
    result = json.loads(out.read_text())
    assert result["reconstruction_grammatical"] >= 0.95
    headline = result["headline"]
    assert headline["traversals_changed"] > 0.5, headline
