"""One CLI training run on a tiny slice of the bundled corpus (in this process, as a child would run it), then the
commands that read its output, some of them in real processes."""

import json
import math

import pytest
import torch

from textdvae.cli import main
from textdvae.recipe import RecipeError

from conftest import ROOT, TINY, cli, textdvae, textdvae_here

RUN = [*TINY, "train.max_steps=30", "train.eval_every=15", "train.save_every=15", "train.log_every=5"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    textdvae_here("train", "recipes/quickstart.yaml", f"output_dir={out}", *RUN, cache=out.parent / "run_cache")
    return out


def test_train_writes_the_documented_output_dir(run_dir):
    for name in ("config.yaml", "log.jsonl", "metrics.json", "checkpoints", "final", "training_curves.png",
                 "code_usage.png"):
        assert (run_dir / name).exists(), name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in ("elbo", "rec", "kl", "kl_per_latent", "nll", "nll_exact", "ppl", "mi", "active_latents", "au",
                "num_latents", "rec_token_acc", "rec_bleu", "num_processes"):
        assert key in metrics, key
    assert metrics["elbo"] < 0 and metrics["num_latents"] == 4 and metrics["num_processes"] == 1
    # K^N = 256 codes: the exact likelihood is computed and the importance-sampled estimate is close to it
    assert metrics["nll_exact"] <= -metrics["elbo"] + 1e-3
    assert abs(metrics["nll"] - metrics["nll_exact"]) < 0.1 * metrics["nll_exact"]
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r.get("split") == "eval"] == [15, 30]
    assert all(k in log[0] for k in ("loss", "rec", "kl", "beta", "tau", "lr"))


def test_final_folder_loads_with_its_tokenizer(run_dir):
    from transformers import AutoTokenizer

    from textdvae import TextDVAE

    model = TextDVAE.from_pretrained(run_dir / "final").eval()
    tok = AutoTokenizer.from_pretrained(run_dir / "final")
    assert model.config.vocab_size == len(tok) and model.config.num_latents == 4
    text = "the cat chased the fox ."
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text and tok.unk_token_id not in ids  # every word of the corpus is in the vocabulary
    codes, probs = model.encode([text])
    ids = torch.tensor([ids + [model.config.eos_token_id]])
    with torch.no_grad():
        logits, _ = model.posterior(ids, torch.ones_like(ids))  # (1, N, K) by hand from the saved tokenizer
    assert torch.allclose(probs, logits.softmax(-1)) and torch.equal(codes, logits.argmax(-1))


def test_python_dash_m_and_eval_json(run_dir, tmp_path):
    out = tmp_path / "m.json"
    proc = textdvae("eval", run_dir / "final", "--split", "validation", "--iw-samples", "4", "--json", out,
                    "--extra-metric", "no_such_metric_here", "--allow-metric-code")
    metrics = json.loads(out.read_text())
    assert metrics["n_sentences"] == 40 and metrics["split"] == "validation"
    # the documented relations between the reported numbers hold, and stdout shows the JSON's figures
    assert metrics["elbo"] == pytest.approx(-(metrics["rec"] + metrics["kl"]))
    assert metrics["kl"] == pytest.approx(sum(metrics["kl_per_latent"]), rel=1e-5)
    assert metrics["ppl"] == pytest.approx(math.exp(metrics["nll"] * 40 / metrics["n_tokens"]))
    assert metrics["nll_exact"] <= -metrics["elbo"] + 1e-4 and metrics["iw_samples"] == 4
    for key in ("elbo", "nll", "kl"):
        assert f"{key:<15} {metrics[key]:.4g}" in proc.stdout, key
    assert "no_such_metric_here" in proc.stderr and "skipped" in proc.stderr  # a clear message, and eval goes on
    assert (tmp_path / "m_code_usage.png").is_file()


def test_cli_user_errors_exit_nonzero_without_traceback(tmp_path, capsys):
    # a real process: the message, exit 2 and no traceback
    proc = textdvae("train", "recipes/quickstart.yaml", "train.max_stepz=3", check=False)
    assert proc.returncode == 2 and "did you mean train.max_steps" in proc.stderr and "Traceback" not in proc.stderr
    # --debug lets the exception out, with its traceback
    with pytest.raises(RecipeError, match="did you mean train.max_steps"):
        main(["--debug", "train", str(ROOT / "recipes/quickstart.yaml"), "train.max_stepz=3"])
    # the same handler in this process, for the other kinds of error
    code, _, err = cli(capsys, "train", tmp_path / "missing.yaml")
    assert code == 2 and "not found" in err and "Traceback" not in err
    code, _, err = cli(capsys, "eval", tmp_path / "no_model")
    assert code == 2 and "not found" in err and "Traceback" not in err


def test_readme_python_example_runs(run_dir):
    """The README's first Python block, run as written against the tiny model."""
    import re

    readme = (ROOT / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    assert "runs/quickstart/final" in code
    code = code.replace("runs/quickstart/final", str(run_dir / "final"))
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - the README is ours
    model, codes, probs = namespace["model"], namespace["codes"], namespace["probs"]
    assert torch.equal(codes, probs.argmax(-1)) and codes.shape == (1, 4)
    assert namespace["texts"] == model.decode(namespace["sampled"])  # greedy: the same texts again from the codes


def test_a_model_whose_weights_do_not_fit_is_refused(run_dir, tmp_path):
    """transformers only warns about missing keys and leaves them random; the CLI must refuse such a model."""
    import shutil

    from safetensors.torch import load_file, save_file

    from textdvae.cli import ModelLoadError, load_model

    broken = tmp_path / "renamed"
    shutil.copytree(run_dir / "final", broken)
    weights = load_file(str(broken / "model.safetensors"))
    key = next(k for k in weights if k.startswith("encoder."))
    weights["old_" + key] = weights.pop(key)
    save_file(weights, str(broken / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match="do not fit"):
        load_model(str(broken))
    model, _ = load_model(str(run_dir / "final"))  # the intact one loads
    assert model.config.num_latents == 4


def test_log_with_tensorboard_writes_the_logged_scalars_through_accelerate(run_dir):
    """train.log_with defaults to [tensorboard]: accelerate's TensorBoard tracker gets every number of log.jsonl."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # the [dev] extra has it

    assert (run_dir / "config.yaml").read_text().count("- tensorboard") == 1  # the resolved recipe names it
    events = EventAccumulator(str(run_dir / "textdvae")).Reload()
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    for tag, split in (("train/loss", None), ("train/kl", None), ("eval/elbo", "eval")):
        key = tag.split("/")[1]
        expected = [(r["step"], r[key]) for r in log if r.get("split") == split and key in r]
        assert len(expected) >= 2
        logged = [(e.step, e.value) for e in events.Scalars(tag)]
        assert [s for s, _ in logged] == [s for s, _ in expected]
        assert [v for _, v in logged] == pytest.approx([v for _, v in expected], rel=1e-6)  # float32 in the events
