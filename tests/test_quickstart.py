"""The quick-start recipe as users run it: it reconstructs held-out sentences, holds its code at the recipe's rate
(train.target_rate) with every latent active, gives a latent whose traversal changes a known factor of the bundled
corpus (issue: traversal changes the factor "in most cases"; the threshold here is 50%), and gives exactly the
figures of the README's quick-start tables (written by benchmarks/quickstart.py from a run of the same recipe; CPU
training is deterministic at one thread). The run is the suite's one full-size training (about 2-3 minutes on one
core); conftest.py starts it in the background."""

import json
import subprocess
import sys

from conftest import ROOT, cli_env


def test_quickstart_recipe_learns_the_corpus_factors_and_gives_the_readme_figures(quickstart_run, tmp_path):
    metrics = json.loads((quickstart_run / "metrics.json").read_text())
    assert metrics["rec_token_acc"] >= 0.95, metrics["rec_token_acc"]
    assert min(metrics["kl_per_latent"]) >= 0.1 and metrics["active_latents"] == metrics["num_latents"] == 16
    assert abs(metrics["kl"] - 13.0) <= 1.3, metrics["kl"]  # the recipe's rate dial holds the test KL at 13 nats
    factors = tmp_path / "factors.json"
    subprocess.run([sys.executable, "benchmarks/traverse_factors.py", str(quickstart_run / "final"), "--n", "200",
                    "--json", str(factors)], cwd=ROOT, env=cli_env(), check=True, capture_output=True, timeout=600)
    result = json.loads(factors.read_text())
    assert result["reconstruction_grammatical"] >= 0.95
    assert result["headline"]["traversals_changed"] > 0.5, result["headline"]
    check = subprocess.run([sys.executable, "benchmarks/quickstart.py", str(quickstart_run), str(factors), "--check",
                            "README.md"], cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr
