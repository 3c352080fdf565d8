"""Data-parallel training: the quickstart recipe on 2 CPU processes (gloo), through accelerate launch. The torchrun
side (a categorical run, its metrics gathered over processes, per-process RNG streams) is checked on the streamed
2-process run of tests/test_streaming.py, which also resumes it after SIGKILL.

Every process builds the same global batch and takes rows rank::world of it; DDP averages the gradients. So with no
randomness in the objective (model.latent=none; dropout and word dropout are 0 in the quickstart recipe) 2 processes
compute the same global-mean gradient as 1 process, and the weights can differ only by float rounding: the mean of
two 16-row means instead of one 32-row mean, summed in another order by the all-reduce. Measured after 20 steps: at
most 6e-8 (weights up to ~3.4). The tolerance is 1e-5: 100x that, and far below the gap a run that did not average
gradients would show (each step would follow half the batch; Adam moves every weight by up to lr ~3e-4 a step).
"""

import json
import socket
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from textdvae import cli

from conftest import ROOT, SCHEDULED_KL, cli_env
RECIPE = "recipes/quickstart.yaml"
RUN = ["model.hidden_dim=32", "model.embed_dim=16", "data.max_train_samples=400", "data.max_eval_samples=41",
       "train.batch_size=32", "train.iw_samples=4", "train.max_steps=20", "train.eval_every=10", "train.save_every=10",
       "train.log_every=5", "train.eval_batch_size=21", *SCHEDULED_KL]
TOLERANCE = 1e-5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(launcher: list[str], *args) -> subprocess.CompletedProcess:
    # ACCELERATE_USE_CPU=1: 2 processes on gloo even where a GPU is present; one thread each on this small machine
    env = {**cli_env(), "ACCELERATE_USE_CPU": "1"}
    proc = subprocess.run([sys.executable, "-m", *launcher, "-m", "textdvae", "train", RECIPE, *map(str, args)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def log_steps(run_dir: Path) -> list[int]:
    return [r["step"] for r in map(json.loads, (run_dir / "log.jsonl").read_text().splitlines()) if "loss" in r]


def test_accelerate_launch_two_processes_match_one_process(tmp_path, monkeypatch):
    run = [*RUN, "model.latent=none"]
    one, two = tmp_path / "one", tmp_path / "two"
    monkeypatch.chdir(ROOT)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert cli.main(["train", RECIPE, f"output_dir={one}", *run]) == 0
    finally:
        torch.set_num_threads(threads)
    proc = launch(["accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--main_process_port",
                   str(free_port())], f"output_dir={two}", *run)

    m1, m2 = metrics(one), metrics(two)
    assert m1["num_processes"] == 1 and m2["num_processes"] == 2 and m2["replicas_in_sync"] is True
    assert m1["n_sentences"] == m2["n_sentences"] == 41  # every test sentence once, though ranks held 21 and 20
    assert abs(m2["elbo"] - m1["elbo"]) < 1e-4 * abs(m1["elbo"])
    a, b = load_file(str(one / "final" / "model.safetensors")), load_file(str(two / "final" / "model.safetensors"))
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < TOLERANCE, f"2-process weights differ from 1-process ones by {worst}"
    # logging, checkpoints and the final report happen once, in the main process
    assert log_steps(two) == [5, 10, 15, 20] and proc.stdout.count("metrics on test") == 1
