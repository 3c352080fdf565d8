"""What the test files share: the tiny-model recipe overrides, the CLI in a subprocess or in this process, a private datasets cache,
the enumeration of every code of a small latent space, and the suite's one full-size training run (the quick-start
recipe), started in the background as soon as a selected test needs it."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]

# A TextDVAEConfig small enough to build and run in milliseconds (vocab_size is the caller's).
TINY_MODEL = dict(embed_dim=16, hidden_dim=32, num_heads=2, ffn_dim=64, num_latents=3, num_categories=4)

# The KL weight as a schedule with free bits (the quick-start recipe's objective before its rate dial), for the tests of
# the machinery: their tiny codes (4 latents x 4 categories, 5.5 nats at most) cannot hold the recipe's 13-nat rate,
# and the dial has its own tests (test_rate.py).
SCHEDULED_KL = ["train.target_rate=null", "train.free_bits=1.0", "train.beta_warmup_steps=1000"]

# Overrides of recipes/quickstart.yaml for a model and a data slice that train in seconds.
TINY = ["model.hidden_dim=32", "model.embed_dim=16", "model.num_latents=4", "model.num_categories=4",
        "data.max_train_samples=400", "data.max_eval_samples=40", "train.batch_size=32", "train.iw_samples=4",
        *SCHEDULED_KL]


def cli_env() -> dict[str, str]:
    """The environment of a `textdvae` subprocess: this checkout, no progress bars, and one thread, so that float
    reductions happen in the same order in every run (and "identical" can mean bitwise)."""
    return {**os.environ, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}


def textdvae(*args, check: bool = True, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run `python -m textdvae ARGS` from the repository root; with `check`, a non-zero exit fails with its output."""
    proc = subprocess.run([sys.executable, "-m", "textdvae", *map(str, args)], cwd=ROOT, env=cli_env(),
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def textdvae_here(*args, cache: Path) -> None:
    """`textdvae ARGS` in this process, as `textdvae(...)` runs it in a child (one thread, the repository root, a
    datasets cache of its own), without the child's start-up: its runs are bitwise those of a child. Fails on a
    non-zero exit."""
    import datasets

    from textdvae.cli import main

    threads, cwd, old_cache = torch.get_num_threads(), os.getcwd(), datasets.config.HF_DATASETS_CACHE
    torch.set_num_threads(1)
    os.chdir(ROOT)
    datasets.config.HF_DATASETS_CACHE = cache
    try:
        code = main([str(a) for a in args])
    finally:
        torch.set_num_threads(threads)
        os.chdir(cwd)
        datasets.config.HF_DATASETS_CACHE = old_cache
    assert code == 0, f"textdvae {' '.join(map(str, args))} exited {code}"


def cli(capsys, *argv) -> tuple[int, str, str]:
    """The command line's main in this process (what a subprocess would run, without its start-up): exit code, stdout,
    stderr."""
    from textdvae.cli import main

    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def one_thread(monkeypatch):
    """In-process training with the subprocesses' thread count (bitwise comparisons), in the repository root."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.chdir(ROOT)
    yield
    torch.set_num_threads(threads)


def train_small_quickstart(out: Path, max_train_samples: int, max_steps: int) -> Path:
    """A small quick-start model (width 64) that learns the corpus well enough to decode sentences: out/final."""
    import textdvae

    textdvae.train(str(ROOT / "recipes" / "quickstart.yaml"), [
        f"output_dir={out}", "model.hidden_dim=64", "model.embed_dim=32", f"data.max_train_samples={max_train_samples}",
        "data.max_eval_samples=50", f"train.max_steps={max_steps}", *SCHEDULED_KL, "train.free_bits=2.0",
        "train.iw_samples=2", "train.eval_every=1000", "train.save_every=1000"])
    return out / "final"


@pytest.fixture
def datasets_cache(tmp_path, monkeypatch):
    """A datasets cache of the test's own, so that no test reads another's (or the user's) cached splits."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")


def all_codes(N: int, K: int, one_hot: bool = True, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Every code of N latents with K categories in lexicographic order: one-hot (K^N, N, K), or indices (K^N, N)."""
    indices = torch.tensor(list(itertools.product(range(K), repeat=N)))  # (K^N, N)
    return F.one_hot(indices, K).to(dtype) if one_hot else indices


# The quick-start recipe at full size takes minutes on one thread. It starts when collection shows that a selected
# test needs it, and trains on one core while the rest of the suite runs on the other; `quickstart_run` waits for it.
_QUICKSTART: dict[str, object] = {}


@pytest.hookimpl(trylast=True)  # after -k / -m have deselected what will not run
def pytest_collection_modifyitems(session, config, items) -> None:
    if any("quickstart_run" in getattr(item, "fixturenames", ()) for item in items) and not _QUICKSTART:
        out = Path(tempfile.mkdtemp(prefix="textdvae-quickstart-"))
        log = open(out / "train.log", "w")  # noqa: SIM115 - closed in pytest_sessionfinish
        proc = subprocess.Popen([sys.executable, "-m", "textdvae", "train", "recipes/quickstart.yaml",
                                 f"output_dir={out / 'run'}"], cwd=ROOT, env=cli_env(), stdout=log,
                                stderr=subprocess.STDOUT)
        _QUICKSTART.update(proc=proc, out=out, log=log)


def pytest_sessionfinish(session, exitstatus) -> None:
    if _QUICKSTART:
        if _QUICKSTART["proc"].poll() is None:
            _QUICKSTART["proc"].kill()
            _QUICKSTART["proc"].wait()
        _QUICKSTART["log"].close()
        shutil.rmtree(_QUICKSTART["out"], ignore_errors=True)


@pytest.fixture(scope="session")
def quickstart_run() -> Path:
    """The output dir of `textdvae train recipes/quickstart.yaml` (one thread), once it has finished."""
    proc, out = _QUICKSTART["proc"], _QUICKSTART["out"]
    if proc.wait(timeout=1800) != 0:
        raise AssertionError(f"the quick-start run failed (exit {proc.returncode}):\n{(out / 'train.log').read_text()}")
    return out / "run"
