"""How data preparation and training scale with the corpus: peak memory, time to the first step, throughput.

    python benchmarks/data_scale.py --sizes 100000 1000000            # measure, then write the JSON and the table
    python benchmarks/data_scale.py --sizes 100000 --baseline /work/main  # also the same runs on another checkout
    python benchmarks/data_scale.py --collect                          # rewrite the README table from the JSON

Corpora: the local PTB training split (../shared/data/ptb/train.txt) repeated to N sentences, written under
--workdir (runs/data_scale by default, never into the repository); validation and test are PTB's own. Each row is
a child process (`--child`) that builds `textdvae.training.Trainer` for recipes/ptb_gru_lm.yaml on that corpus
(one datasets cache per corpus) and trains --steps steps:

* ``cold``: an empty datasets cache (load, clean, train the tokenizer, tokenize); ``warm``: the same again, cache
  filled. Time to the first step = Trainer construction (all data preparation) + setup + the first step.
* tokenization throughput: training-split sentences per second of `data.encode_split` (cold rows only).
* steps/s over the steps after the first (from log.jsonl's elapsed_s); the warm row then swaps the training split
  for Python lists of the same ids (the in-memory representation the data module used before) and trains the same
  steps again: ``steps/s in memory``, up to IN_MEMORY_MAX sentences (10M sentences as lists would take about 9 GB
  and minutes to build: the comparison is the same at 1M).
* peak RSS: the child's own high-water mark (VmHWM) before that swap, so the in-memory copy is not counted; peak
  anonymous: the largest RssAnon sampled; anonymous when prepared: RssAnon once the Trainer is built, before any
  step (what the prepared data holds); largest batch: the most padded tokens of a batch the steps drew (the
  activations' share of the peak depends on it, so runs of the same recipe differ by the batches they draw).
* ``--prime``: before the steps, one forward and backward at the largest shape a batch can take (``batch_size``
  rows of ``max_length`` tokens, PTB's validation sentences run together), gradients then dropped and the random
  state restored. A full run meets its longest batch sooner or later; a run of a few hundred steps meets whichever
  its first pools hold, so without this the peaks of two corpora differ by the batches they happened to draw.
* ``--streaming``: a ``data.streaming=true`` row (cache ``none``): the training split read as a stream in windows of
  ``data.shuffle_buffer`` sentences, its tokenizer trained on the stream's first ``tokenizer.train_samples``.

With ``--baseline DIR`` the cold row also runs with DIR on PYTHONPATH (e.g. a checkout from before the Arrow data
path): its peak RSS is the figure to compare. Times come from a shared, busy machine (one core shared by several
jobs): read them as rough; the RSS figures do not depend on the load.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# the local PTB copy: beside the checkout (../shared/data/ptb), else the machine's shared folder
PTB = next((p for p in (ROOT.parent / "shared" / "data" / "ptb", Path("/work/shared/data/ptb")) if p.is_dir()),
           ROOT.parent / "shared" / "data" / "ptb")
RESULTS = ROOT / "benchmarks" / "results" / "data_scale.json"
MARKERS = ("<!-- data-scale: written by benchmarks/data_scale.py -->", "<!-- /data-scale -->")
RECIPE = ROOT / "recipes" / "ptb_gru_lm.yaml"
IN_MEMORY_MAX = 1_000_000  # the largest corpus the warm row also trains from Python lists


def write_corpus(folder: Path, n: int) -> Path:
    """PTB's training sentences repeated (and cut) to n lines, in folder/train.txt (kept when already there)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "train.txt"
    if path.is_file():
        return path
    lines = (PTB / "train.txt").read_text(encoding="utf-8").splitlines(keepends=True)
    tmp = folder / ".train.txt.tmp"
    with tmp.open("w", encoding="utf-8") as file:
        written = 0
        while written < n:
            chunk = lines[:n - written]
            file.writelines(chunk)
            written += len(chunk)
    tmp.replace(path)
    return path


def overrides(train: Path, output_dir: Path, steps: int, streaming: bool = False, seed: int = 0) -> list[str]:
    return [*(["data.streaming=true"] if streaming else []), f"output_dir={output_dir}", f"train.seed={seed}",
            "data.path=text",
            "data.text_column=text", f"data.data_files.train={train}",
            f"data.data_files.validation={PTB / 'valid.txt'}", f"data.data_files.test={PTB / 'test.txt'}",
            "data.max_eval_samples=256", f"train.max_steps={steps}", "train.log_every=1", f"train.eval_every={steps}",
            f"train.save_every={steps}", "train.warmup_steps=0", "train.log_with=[]"]


def status_mb(key: str) -> float:
    """A memory figure of this process from /proc/self/status (VmHWM, RssAnon, RssFile), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {key} in /proc/self/status")


class AnonPeak:
    """The largest RssAnon seen, sampled every `every` seconds in a thread: the kernel keeps a high-water mark of the
    whole RSS only (VmHWM), which also counts the pages of memory-mapped files (page cache, which the kernel can
    drop), so the memory the process itself holds needs its own peak."""

    def __init__(self, every: float = 0.01):
        import threading
        self.peak, self._stop = 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every,), daemon=True)
        self._thread.start()

    def _run(self, every: float) -> None:
        while not self._stop.wait(every):
            self.peak = max(self.peak, status_mb("RssAnon"))

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return max(self.peak, status_mb("RssAnon"))


def step_times(output_dir: Path) -> list[float]:
    records = [json.loads(line) for line in (output_dir / "log.jsonl").read_text().splitlines()]
    return [r["elapsed_s"] for r in records if "elapsed_s" in r]


def child(args) -> None:
    """One measured run, in its own process; prints a JSON object on the last line of stdout."""
    from textdvae import data as data_lib
    from textdvae import recipe as recipe_lib
    from textdvae.training import Trainer

    result: dict = {}
    anon = AnonPeak()
    encode_split = getattr(data_lib, "encode_split", None)
    if encode_split is not None:  # time tokenization alone (absent in checkouts from before the Arrow data path)
        spent = {"s": 0.0, "train_sentences": 0}

        def timed(tokenizer, texts, *a, **k):
            start = time.perf_counter()
            out = encode_split(tokenizer, texts, *a, **k)
            spent["s"] += time.perf_counter() - start
            return out
        data_lib.encode_split = timed
    # the padded size (rows x longest) of each batch collated: the first --steps are the training steps' (the
    # evaluation's come after them), whose largest sets the activations' share of the peak
    sizes: list[int] = []
    collate = data_lib.collate

    def measured_collate(sequences, *a, **k):
        batch = collate(sequences, *a, **k)
        sizes.append(batch["input_ids"].numel())
        return batch
    data_lib.collate = measured_collate
    output_dir = Path(args.output_dir)
    shutil.rmtree(output_dir, ignore_errors=True)
    recipe = recipe_lib.load(RECIPE, overrides(Path(args.train), output_dir, args.steps, args.streaming, args.seed))
    start = time.perf_counter()
    trainer = Trainer(recipe)
    result["prepare_s"] = time.perf_counter() - start
    result["prepared_anon_mb"] = status_mb("RssAnon")  # what the prepared data (and the model) hold before any step
    trainer.setup()
    setup_s = time.perf_counter() - start
    if args.prime:
        result["primed_tokens"] = prime(trainer, recipe)
        sizes.clear()  # the primed batch went through collate too: keep the training steps' own
    trainer._loop_with_signal_handlers()
    elapsed = step_times(output_dir)
    result["first_step_s"] = setup_s + elapsed[0]
    result["steps_per_s"] = (len(elapsed) - 1) / (elapsed[-1] - elapsed[0])
    result["peak_rss_mb"] = status_mb("VmHWM")
    result["peak_anon_mb"] = anon.stop()
    result["file_rss_mb"] = status_mb("RssFile")  # pages of mapped files (the Arrow caches, the libraries) at the end
    result["largest_batch_tokens"] = max(sizes[:args.steps] + [result.get("primed_tokens", 0)])
    stream = getattr(trainer, "stream", None)
    result["n_train"] = stream.counts["n_sentences"] if stream is not None else len(trainer.lengths)
    if encode_split is not None:
        result["tokenize_s"] = spent["s"]
    if args.in_memory:  # the same ids as Python lists, the same steps again
        split = trainer.data.splits["train"]
        trainer.data.splits["train"] = ListSplit(split.rows(range(len(split))))
        (output_dir / "log.jsonl").unlink()
        trainer.step, trainer.batches_seen, trainer.log_lines, trainer.elapsed = 0, 0, 0, 0.0
        trainer._loop_with_signal_handlers()
        elapsed = step_times(output_dir)
        result["steps_per_s_in_memory"] = (len(elapsed) - 1) / (elapsed[-1] - elapsed[0])
    print(json.dumps(result))


def prime(trainer, recipe) -> int:
    """One forward and backward of the trainer's model on a batch of the largest shape training can draw
    (batch_size x max_length: `data.with_eos` keeps at most max_length tokens, end-of-sentence included), made of
    the validation split's sentences run together (the same for every corpus size); the gradients are dropped and
    the random state restored, so the steps after it are those of an unprimed run. Returns the batch's tokens."""
    import torch

    from textdvae import data as data_lib
    rows, width = recipe.train.batch_size, recipe.data.max_length
    split = trainer.data.splits["eval"]  # PTB's validation split: the same for every corpus size and data path
    ids = [token for sentence in split.rows(range(len(split))) for token in sentence]  # one read, run together
    stream = ids * -(-rows * width // len(ids))  # repeated until it fills the batch
    batch = data_lib.collate([stream[r * width:(r + 1) * width] for r in range(rows)], recipe.model.pad_token_id)
    with torch.random.fork_rng():
        trainer.model.train()
        with trainer._autocast():
            out = trainer.model(batch["input_ids"], batch["attention_mask"], tau=1.0, beta=1.0,
                                free_bits=recipe.train.free_bits)
        out.loss.backward()
    trainer.model.zero_grad(set_to_none=True)
    return batch["input_ids"].numel()


class ListSplit(list):
    """Token ids as a Python list of lists, with the row access the trainer uses."""

    def rows(self, indices):
        return [self[int(i)] for i in indices]


def run_child(train: Path, output_dir: Path, cache: Path, steps: int, *, in_memory: bool = False,
              streaming: bool = False, prime: bool = False, seed: int = 0, pythonpath: Path = ROOT) -> dict:
    env = {**os.environ, "PYTHONPATH": str(pythonpath), "HF_DATASETS_CACHE": str(cache), "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}
    command = [sys.executable, str(Path(__file__).resolve()), "--child", "--train", str(train), "--output-dir",
               str(output_dir), "--steps", str(steps)] + (["--in-memory"] if in_memory else []) + \
        (["--streaming"] if streaming else []) + (["--prime"] if prime else []) + ["--seed", str(seed)]
    start = time.perf_counter()
    proc = subprocess.Popen(command, env=env, cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"child failed ({proc.returncode}): {' '.join(command)}\n{stderr[-3000:]}")
    result = json.loads(stdout.strip().splitlines()[-1])
    result["wall_s"] = wall
    return result


def repeated(runs: int, run) -> dict:
    """`run(i)` for i < runs, run i training with train.seed = i (so the runs draw different batches, in different
    orders: the peak depends on them through the allocator, by a few percent); the first run's result with the
    memory figures, the times to the first step and steps/s replaced by their medians over the runs, and each run's
    peak and time to the first step kept as `peak_rss_mb_runs` and `first_step_s_runs`."""
    results = [run(i) for i in range(runs)]
    merged = dict(results[0])
    for key in ("peak_rss_mb", "peak_anon_mb", "prepared_anon_mb", "steps_per_s", "prepare_s", "first_step_s"):
        merged[key] = statistics.median(r[key] for r in results)
    merged["runs"], merged["peak_rss_mb_runs"] = runs, [r["peak_rss_mb"] for r in results]
    merged["first_step_s_runs"] = [r["first_step_s"] for r in results]
    return merged


def measure(args) -> list[dict]:
    rows = []
    for n in args.sizes:
        folder = Path(args.workdir) / f"ptb_{n}"
        train = write_corpus(folder, n)
        cache = folder / "hf_cache"
        if "cold" in args.caches:
            shutil.rmtree(cache, ignore_errors=True)
        for mode in args.caches:
            in_memory = mode == "warm" and n <= IN_MEMORY_MAX
            runs = 1 if mode == "cold" else args.repeats  # a cold row fills the cache: once
            result = repeated(runs, lambda i: run_child(train, folder / "run", cache, args.steps,
                                                        in_memory=in_memory and i == 0, prime=args.prime, seed=i))
            rows.append({"sentences": n, "code": "arrow", "cache": mode, "steps": args.steps, "primed": args.prime,
                         **result})
            print(json.dumps(rows[-1]), flush=True)
        if args.streaming:  # the training split read as a stream: nothing cached, nothing tokenized ahead
            result = repeated(args.repeats, lambda i: run_child(train, folder / "run_stream", cache, args.steps,
                                                                streaming=True, prime=args.prime, seed=i))
            rows.append({"sentences": n, "code": "streaming", "cache": "none", "steps": args.steps,
                         "primed": args.prime, **result})
            print(json.dumps(rows[-1]), flush=True)
        if args.baseline:
            base_cache = folder / "hf_cache_baseline"
            shutil.rmtree(base_cache, ignore_errors=True)
            result = run_child(train, folder / "run_baseline", base_cache, args.steps, pythonpath=Path(args.baseline))
            rows.append({"sentences": n, "code": f"lists ({args.baseline})", "cache": "cold", "steps": args.steps,
                         **result})
            print(json.dumps(rows[-1]), flush=True)
            shutil.rmtree(base_cache, ignore_errors=True)
    return rows


def table(rows: list[dict]) -> list[str]:
    lines = ["| sentences | data path | cache | peak RSS | peak anonymous | anonymous when prepared | largest batch | "
             "prepare | first step | tokenize | steps | steps/s | steps/s in memory |",
             "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        cold = r.get("tokenize_s", 0) > 1 and r["cache"] == "cold"
        tokenize = f"{r['n_train'] / r['tokenize_s']:,.0f} sent/s" if cold else ""
        in_memory = f"{r['steps_per_s_in_memory']:.2f}" if "steps_per_s_in_memory" in r else ""
        anon = f"{r['peak_anon_mb'] / 1024:.2f} GB" if "peak_anon_mb" in r else ""
        prepared = f"{r['prepared_anon_mb'] / 1024:.2f} GB" if "prepared_anon_mb" in r else ""
        largest = f"{r['largest_batch_tokens']:,} tokens" if "largest_batch_tokens" in r else ""
        lines.append(f"| {r['sentences']:,} | {r['code']} | {r['cache']} | {r['peak_rss_mb'] / 1024:.2f} GB | {anon} | "
                     f"{prepared} | {largest} | "
                     f"{r['prepare_s']:.1f} s | {r['first_step_s']:.1f} s | {tokenize} | {r['steps']} | {r['steps_per_s']:.2f} | "
                     f"{in_memory} |")
    return lines


def spread(big: dict, small: dict) -> str:
    """The range of the runs' peaks of two repeated rows, or nothing for rows measured once."""
    if any(len(r.get("first_step_s_runs", [])) < 2 for r in (big, small)):  # measured once, or before runs had seeds
        return ""
    span = lambda r: f"{min(r['peak_rss_mb_runs']) / 1024:.2f} .. {max(r['peak_rss_mb_runs']) / 1024:.2f} GB"  # noqa: E731
    return (f" Over the map-style runs (train.seed 0 .. {len(big['peak_rss_mb_runs']) - 1}): {span(big)} at "
            f"{big['sentences']:,} sentences, {span(small)} at {small['sentences']:,}.")


def summary(rows: list[dict]) -> list[str]:
    """The issue's checks, from the rows of the largest corpus measured with every figure and the 1M rows."""
    def get(n, code, cache):
        return next((r for r in rows if (r["sentences"], r["code"], r["cache"]) == (n, code, cache)), None)

    sizes = sorted({r["sentences"] for r in rows if "peak_anon_mb" in r})
    if len(sizes) < 2:
        return []
    small, big = sizes[0], sizes[-1]
    gb = lambda mb: f"{mb / 1024:.2f} GB"  # noqa: E731
    lines = []
    warm, warm_small = get(big, "arrow", "warm"), get(small, "arrow", "warm")
    cold = get(big, "arrow", "cold")
    stream, stream_small = get(big, "streaming", "none"), get(small, "streaming", "none")
    if warm and warm_small and stream and stream_small:
        lines.append(f"- Peak RSS at {big:,} sentences: {gb(warm['peak_rss_mb'])} map-style with a warm cache "
                     f"({gb(warm_small['peak_rss_mb'])} at {small:,}: "
                     f"{warm['peak_rss_mb'] / warm_small['peak_rss_mb'] - 1:+.0%}), {gb(stream['peak_rss_mb'])} "
                     f"streaming ({gb(stream_small['peak_rss_mb'])}: "
                     f"{stream['peak_rss_mb'] / stream_small['peak_rss_mb'] - 1:+.0%}).{spread(warm, warm_small)} The memory the process holds: "
                     f"{gb(warm['peak_anon_mb'])} map-style ({gb(warm_small['peak_anon_mb'])} at {small:,}), {gb(stream['peak_anon_mb'])} streaming "
                     f"({gb(stream_small['peak_anon_mb'])}). Pages of mapped files at the end of the map-style run: "
                     f"{gb(warm['file_rss_mb'])} ({gb(warm_small['file_rss_mb'])} at {small:,}).")
        if "prepared_anon_mb" in warm and "prepared_anon_mb" in warm_small and warm.get("primed"):
            grow = (warm["prepared_anon_mb"] - warm_small["prepared_anon_mb"]) * 2**20 / (big - small)
            lines.append(f"- What the prepared data holds grows by {grow:.1f} bytes a sentence (anonymous memory before "
                         f"the first step: {gb(warm['prepared_anon_mb'])} at {big:,}, "
                         f"{gb(warm_small['prepared_anon_mb'])} at {small:,}). The rest of the peak is the steps' "
                         f"activations, the same batch shapes at both sizes (every run primed at "
                         f"{warm['largest_batch_tokens']:,} padded tokens), and what the allocator keeps of them.")
        elif "prepared_anon_mb" in warm and "prepared_anon_mb" in warm_small:
            grow = (warm["prepared_anon_mb"] - warm_small["prepared_anon_mb"]) * 2**20 / (big - small)
            lines.append(f"- What the prepared data holds grows by {grow:.1f} bytes a sentence (anonymous memory before "
                         f"the first step: {gb(warm['prepared_anon_mb'])} at {big:,}, "
                         f"{gb(warm_small['prepared_anon_mb'])} at {small:,}). The rest of the peak is the steps' "
                         f"activations, set by the largest batch a run draws ({warm['largest_batch_tokens']:,} and "
                         f"{warm_small['largest_batch_tokens']:,} padded tokens), not by the corpus.")
    if warm and cold:
        lines.append(f"- A warm-cache run at {big:,} sentences reaches its first step in {warm['first_step_s']:.1f} s, "
                     f"1/{cold['prepare_s'] / warm['first_step_s']:.0f} of the cold run's "
                     f"{cold['prepare_s']:.0f} s of preparation.")
    reference = warm_small.get("steps_per_s_in_memory") if warm_small else None
    if stream and reference:
        lines.append(f"- Streaming trains at {stream['steps_per_s']:.2f} steps/s at {big:,} sentences against "
                     f"{reference:.2f} in memory ({small:,} sentences as Python lists): "
                     f"{stream['steps_per_s'] / reference:.0%}.")
    return ["", *lines] if lines else []


def write_readme(rows: list[dict]) -> None:
    from ptb import replace_between  # noqa: E402  (benchmarks/ptb.py)
    lines = ["recipes/ptb_gru_lm.yaml on PTB's training sentences repeated to N, one process, "
             "OMP_NUM_THREADS=1; `python benchmarks/data_scale.py` (rows in benchmarks/results/data_scale.json). "
             "Peak RSS is the training process's high-water mark (VmHWM) before the in-memory comparison; it counts "
             "the pages of the memory-mapped Arrow files that the process has touched, which are page cache (the "
             "kernel drops them under memory pressure; pyarrow asks it to read each record batch ahead when a file is "
             "opened, and every row a batch reads then maps the cached pages around it; textdvae unmaps them once it has "
             "read its rows, `textdvae.data.release_mapped_pages`). Peak anonymous is the "
             "memory the process itself holds (RssAnon, sampled every 10 ms): the figure that decides whether a "
             "corpus fits. Anonymous when prepared: RssAnon once the trainer is built (data prepared, model made), "
             "before any step: what the data holds. Largest batch: the most padded tokens (rows x longest sentence) "
             "of the batches the run's steps drew, which sets the activations' share of the peak; with `--prime` "
             "(the `primed` rows) each run first takes one step at the largest shape a batch can have (batch size x "
             "max_length), so that share is the same whatever a short run happens to draw. Rows run with "
             "`--repeats R` give the medians of R runs with train.seed 0 .. R-1 (each draws its own batches in its "
             "own order, and the peak moves with them by a few percent) for the memory figures, the times and "
             "steps/s; each run's peak RSS is in the JSON and the range in the summary. `lists` rows: the data path before the Arrow change (every sentence a Python str, every "
             "tokenized one a list of ints), run with `--baseline`. `streaming`: the first window of "
             "`data.shuffle_buffer` (50,000) sentences is all those steps read. Rows without a peak-anonymous figure "
             "(100,000 sentences and the `lists` rows) were measured before it was recorded, on a machine whose one "
             "free core was shared with other jobs (load ~10): read their times as rough.",
             "", *table(rows), *summary(rows)]
    replace_between(ROOT / "README.md", *MARKERS, lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--workdir", default=str(ROOT / "runs" / "data_scale"))
    parser.add_argument("--caches", nargs="*", default=["cold", "warm"], choices=["cold", "warm"],
                        help="the map-style rows to measure (the warm one needs the cold one before it)")
    parser.add_argument("--streaming", action="store_true", help="also a data.streaming=true row per size")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each warm and streaming row, with train.seed "
                        "0, 1, ...: the memory figures, times and steps/s are their medians (the in-memory comparison "
                        "runs in the first only)")
    parser.add_argument("--prime", action="store_true", help="one step at the largest batch shape before the "
                        "measured steps, so the peak does not depend on which batches a short run draws")
    parser.add_argument("--baseline", help="another checkout to run the cold rows with, e.g. one before this change")
    parser.add_argument("--collect", action="store_true", help="only rewrite the README table from the JSON")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--train", help=argparse.SUPPRESS)
    parser.add_argument("--output-dir", help=argparse.SUPPRESS)
    parser.add_argument("--in-memory", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    if args.collect:
        return write_readme(saved_rows())
    rows = measure(args)
    key = lambda r: (r["sentences"], r["code"], r["cache"])  # noqa: E731
    fresh = {key(r) for r in rows}  # keep the rows of earlier runs that this one did not measure again
    rows = [r for r in saved_rows() if key(r) not in fresh] + rows
    rows.sort(key=lambda r: (r["sentences"], r["code"] != "arrow", r["code"], r["cache"]))
    RESULTS.write_text(json.dumps({"rows": rows}, indent=2) + "\n")
    write_readme(rows)


def saved_rows() -> list[dict]:
    """The rows in the JSON, each with its own step count (files written before rows carried it: the top level's)."""
    if not RESULTS.is_file():
        return []
    saved = json.loads(RESULTS.read_text())
    return [{"steps": saved.get("steps"), **r} for r in saved["rows"]]


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
