"""The training recipe: setup -> train -> evaluate -> checkpoint -> final/.

Runs on accelerate, so the same code trains on a CPU, one GPU, or many processes (`accelerate launch`, `torchrun`).
Every process builds the same global batches; each takes its rows of them (rank::world), DDP averages gradients.
With ``data.streaming`` each process instead reads its own part of the training stream (:class:`textdvae.data.
TrainStream`) in batches of ``batch_size / world`` rows, and the checkpoint records every process's stream position.
Logging, checkpoints and the final model are written by the main process; validation and test metrics are summed
over all processes' rows.

What the run reports goes to ``output_dir/log.jsonl``, to the experiment trackers of ``train.log_with`` (through
accelerate's tracker API) and, as messages, to this module's :mod:`logging` logger; the CLI decides how they are
shown. Data preparation lives in :mod:`textdvae.data`, the optimizer in :mod:`textdvae.optim`, the checkpoint files
in :mod:`textdvae.checkpointing`.

Faults
------
* ``checkpoints/step-XXXXXXX/`` holds everything a run needs to go on: weights, optimizer, LR scheduler, every
  process's RNG states (torch CPU, CUDA, python ``random``, numpy), the data position, the best validation ELBO,
  the counters and how many lines of ``log.jsonl`` it had written. It is written into ``.step-XXXXXXX.tmp`` and
  renamed, so a ``step-*`` folder is complete; ``.tmp`` leftovers of a killed run are never read and are removed at
  the next start. The newest ``train.keep_checkpoints`` are kept, plus ``checkpoints/best`` (best validation ELBO,
  the final model) and ``checkpoints/tokenizer`` (the run's vocabulary, reused on resume). A checkpoint is also
  written at the last step, so a run that dies in the final evaluation resumes straight into it.
* One run per output folder: the main process holds ``output_dir/.lock`` (checkpointing.RunLock) from before the
  data are loaded until train() ends; a second run into the folder is refused naming the holder.
* ``train.resume=true`` continues from the newest checkpoint that loads. A newer one that cannot be read (a file
  missing, truncated or corrupt) is skipped with a warning naming it and the reason, and set aside as
  ``step-XXXXXXX.unreadable``; if none loads, training stops with a :class:`TrainingError` listing them. The
  checkpoint stores the resolved recipe: a resume that changes the data order or a schedule
  (recipe.RESUME_SENSITIVE_KEYS) is refused listing the differences, unless ``train.resume_allow_changes`` names
  them; ``config.yaml`` is written only after the checkpoint loaded. ``log.jsonl`` is cut back to what the checkpoint had seen, so the log
  continues without duplicate steps. On CPU a resumed run is bitwise identical to an uninterrupted one (same number
  of processes, ``OMP_NUM_THREADS`` and versions).
* SIGINT (Ctrl-C) or SIGTERM (what schedulers and launchers send before killing): the current step finishes, a
  checkpoint is written and :class:`TrainingInterrupted` (a ``KeyboardInterrupt``) is raised, whose message is the
  command that resumes; the CLI prints it and exits with 130 (SIGINT) or 143 (SIGTERM). A second signal more than
  2 s after the first aborts at once without saving (launchers forward the terminal's Ctrl-C, so the copies that
  arrive together count as one).
* fp16 loss scaling: the scaler's state is checkpointed; a step the scaler skips (inf/nan gradients) moves neither
  the step counter nor the LR, beta or tau, and is counted (``scaler_skips``).
* A non-finite loss (or, without fp16 loss scaling, a non-finite gradient norm) skips its batch: no optimizer or
  scheduler step, so the step counter, the LR and the beta/tau schedules do not move, while the data position does
  (the batch is not retried). Skips are logged (``nonfinite_steps``); ``train.max_nonfinite_steps`` in a row stop
  training with a :class:`TrainingError`, keeping the last checkpoint (the current weights are not saved: they are
  what produced the non-finite values).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shlex
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from tqdm.auto import tqdm

from . import data as data_lib
from .checkpointing import (CheckpointUnreadable, RunLock, RunLocked, best_checkpoint, checkpoint_name,
                            checkpoints_newest_first, clean_checkpoint_dir, latest_checkpoint, load_weights,
                            prune_checkpoints, read_checkpoint, recorded_best_elbo, replace_dir, rng_state, set_aside,
                            set_rng_state, temporary_name, truncate_lines, write_checkpoint, write_json_atomic,
                            write_text_atomic)
from .evaluation import elbo_pass, evaluate, format_metrics, iterate_batches
from .modeling import TextDVAE
from .optim import build_optimizer, lr_lambda
from .plots import code_usage_heatmap, plot_training_curves
from .recipe import Recipe, resume_differences
from .redact import public_recipe, without_credentials
from .schedules import RateController, kl_weight, temperature

logger = logging.getLogger(__name__)
TRACKER_PROJECT = "textdvae"  # accelerate's project name: trackers with a folder (TensorBoard) write output_dir/textdvae/
SIGNAL_GRACE_S = 2.0  # signals this close to the first one are copies of it (a launcher forwarding Ctrl-C)


class TrainingError(RuntimeError):
    """Training cannot go on; the message says why and what to do."""


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped training after a checkpoint was saved; the message says how to resume."""

    def __init__(self, message: str, signum: int = signal.SIGINT):
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + int(signum)  # the shell convention: 130 for SIGINT, 143 for SIGTERM


def cpu_lacks_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """True when the CPU's flags are readable (Linux) and name neither AVX-512 BF16 nor AMX BF16; False when unknown."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), None)
    return flags is not None and not {"avx512_bf16", "amx_bf16"} & set(flags)


class Trainer:
    """One training run of a recipe: ``train()`` = setup -> _loop -> save_checkpoint -> finish."""

    def __init__(self, recipe: Recipe):
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        self.recipe, self.cfg = recipe, recipe.train
        self.out = Path(recipe.output_dir)
        self.ckpt_dir = self.out / "checkpoints"
        launched = int(os.environ.get("WORLD_SIZE", "1"))  # set by torchrun / accelerate launch
        trackers, missing = available_trackers(self.cfg.log_with)
        # Without a GPU accelerate would start `launched` independent single-process runs; cpu=True gives gloo DDP
        # bf16 is autocast around the training forward only (`_autocast`), here rather than through accelerate, whose
        # wrapper would put every forward of the model, validation and test included, under it: evaluation stays
        # exact in fp32. fp16 (GPU) needs accelerate's loss scaler, so it goes through accelerate.
        self.accelerator = Accelerator(mixed_precision="fp16" if self.cfg.mixed_precision == "fp16" else "no",
                                       cpu=launched > 1 and not _has_gpu(),
                                       log_with=trackers, project_dir=str(self.out))
        if launched > 1 and self.accelerator.num_processes != launched:
            raise TrainingError(f"started as {launched} processes, but accelerate set up "
                                f"{self.accelerator.num_processes}; check the launcher's options (accelerate config)")
        self.is_main = self.accelerator.is_main_process
        if self.cfg.mixed_precision == "bf16" and self.accelerator.device.type == "cpu" and cpu_lacks_bf16():
            self._inform("warning: train.mixed_precision is bf16, but this CPU has no bf16 matrix instructions "
                         "(AVX-512 BF16 or AMX) and will emulate them, slower than fp32: set train.mixed_precision=no",
                         warn=True)
        if missing:
            self._inform(f"warning: train.log_with names {', '.join(missing)}, not installed: not logging there "
                         "(install it, e.g. pip install 'textdvae[tensorboard]', or drop it from train.log_with)", warn=True)
        self.rank, self.world = self.accelerator.process_index, self.accelerator.num_processes
        if self.cfg.batch_size < self.world:
            raise TrainingError(f"train.batch_size={self.cfg.batch_size} is the global batch, split over "
                                f"{self.world} processes; it must be at least {self.world}")
        self.lock: RunLock | None = None
        self._claim_output_dir()  # before the data are loaded and a tokenizer trained: fail in seconds, not minutes
        set_seed(self.cfg.seed)  # the same initial weights in every process
        # data and model
        tokenizer = None
        if self.cfg.resume and (self.ckpt_dir / "tokenizer").is_dir():  # the run's own vocabulary, never retrained
            from transformers import AutoTokenizer
            tokenizer = AutoTokenizer.from_pretrained(self.ckpt_dir / "tokenizer", trust_remote_code=False)
        self.stream: data_lib.TrainStream | None = None  # data.streaming: this process's part of the training stream
        if recipe.data.streaming and self.cfg.batch_size % self.world:
            raise TrainingError(f"data.streaming=true splits train.batch_size={self.cfg.batch_size} evenly over the "
                                f"{self.world} processes, each reading its own part of the stream: make it a multiple "
                                f"of {self.world}")
        with self.accelerator.main_process_first():  # the main process fills the datasets cache, the others read it
            if recipe.data.streaming:
                self.data, self.stream = data_lib.prepare_stream(recipe, tokenizer, rank=self.rank, world=self.world)
            else:
                self.data = data_lib.prepare_data(recipe, tokenizer)
        data_lib.configure_model_for_tokenizer(recipe, self.data.tokenizer)
        self.model = TextDVAE(recipe.model)
        if self.stream is not None:  # a stream of unknown length: train.max_steps is the budget (recipe validation)
            self.lengths, self.batches_per_epoch = None, None
        else:
            self.lengths = self.data.splits["train"].lengths  # numpy; token ids stay in Arrow until a batch needs them
            self.batches_per_epoch = len(self.epoch_batches(0))
        if self.batches_per_epoch == 0:
            raise TrainingError(f"the training split has {len(self.lengths)} sentences, fewer than the "
                                f"{self.world} processes; give it more data or use fewer processes")
        self.total_steps = self.cfg.max_steps or math.ceil(self.cfg.epochs * self.batches_per_epoch)
        optimizer = build_optimizer(self.model, self.cfg)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lr_lambda(self.cfg.lr_schedule, self.cfg.warmup_steps, self.total_steps))
        self.model, self.optimizer = self.accelerator.prepare(self.model, optimizer)
        self.scheduler = scheduler
        if self.rank:  # the training noise (Gumbel, dropout) must differ between processes, whose rows differ
            set_seed(self.cfg.seed + self.rank)
        # counters: optimizer steps, global batches consumed (the data position), skipped batches
        self.step, self.batches_seen, self.best_elbo = 0, 0, -math.inf
        self.nonfinite_total, self.nonfinite_run = 0, 0
        self.scaler_skips = 0  # fp16 steps the loss scaler skipped (its scale was too high)
        self.log_lines, self.elapsed, self.running = 0, 0.0, {}
        self._saved_step: int | None = None  # the step of the newest checkpoint this process wrote or loaded
        self.stop_requested, self.stop_signal, self._first_signal_at = False, None, None
        self.replicas_in_sync: bool | None = None
        self.resumed_from: Path | None = None
        # train.target_rate: beta is feedback on the KL (checkpointed with the run) instead of a schedule
        self.rate = RateController(self.cfg.target_rate) if self.cfg.target_rate is not None else None

    def epoch_batches(self, epoch: int) -> data_lib.BatchPlan:
        """The global batches of one epoch: a function of (seed, epoch) only. With several processes a batch needs
        a row for each, so the (at most one per pool) smaller tail batches are dropped."""
        plan = data_lib.batch_plan(self.lengths, self.cfg.batch_size, shuffle=True, seed=self.cfg.seed, epoch=epoch)
        return plan.keep(plan.sizes() >= self.world)

    # ---- setup ----------------------------------------------------------------------------------------------------

    def _claim_output_dir(self) -> None:
        """The main process checks output_dir, takes its lock (one run per folder, held until train() ends) and,
        with hub.repo_id set, checks the repo id and the token against the Hub; every process gets the verdict."""
        problem = None
        if self.is_main:
            try:
                if self.out.exists() and not self.out.is_dir():
                    raise TrainingError(f"output_dir={str(self.out)!r} is an existing file, not a folder; choose "
                                        "another output_dir")
                self.out.mkdir(parents=True, exist_ok=True)
                self.lock = RunLock.acquire(self.out)
                if self.recipe.hub.repo_id:
                    from .hub import check_push_access
                    check_push_access(self.recipe.hub.repo_id)
            except RunLocked as err:
                problem = str(err)
            except Exception as err:  # noqa: BLE001 - re-raised below, after the other processes hear of it
                problem = err
        if self.world > 1:
            from accelerate.utils import broadcast_object_list
            verdict = [None if problem is None else str(problem)]
            broadcast_object_list(verdict)
            if verdict[0] is not None and problem is None:
                raise TrainingError(verdict[0])
        if isinstance(problem, BaseException):
            raise problem
        if problem is not None:
            raise TrainingError(problem)

    def release(self) -> None:
        """Let go of output_dir's lock (train() does this when it ends, however it ends)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def setup(self) -> None:
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            self.ckpt_dir.mkdir(exist_ok=True)
            clean_checkpoint_dir(self.ckpt_dir)
        self.accelerator.wait_for_everyone()
        if not self.cfg.resume and any(self.ckpt_dir.glob("step-*")):  # set-aside unreadable ones count too
            raise TrainingError(f"{self.ckpt_dir} already holds checkpoints of an earlier run; continue it with "
                                f"train.resume=true, or choose a new output_dir")
        if self.is_main:
            if not self.cfg.resume or not (self.ckpt_dir / "tokenizer").is_dir():
                tmp = temporary_name(self.ckpt_dir / "tokenizer")
                shutil.rmtree(tmp, ignore_errors=True)
                self.data.tokenizer.save_pretrained(tmp)
                replace_dir(tmp, self.ckpt_dir / "tokenizer")
            if not self.cfg.resume:  # a fresh start: nothing of an earlier run (killed before its first checkpoint)
                shutil.rmtree(self.ckpt_dir / "best", ignore_errors=True)
        if self.cfg.resume:
            self._resume()
        if self.is_main:  # only now: a resume that was refused leaves the run's own config.yaml as it was
            write_text_atomic(self.out / "config.yaml", yaml.safe_dump(self.recipe.raw, sort_keys=False))
            truncate_lines(self.out / "log.jsonl", self.log_lines)  # the log continues where the checkpoint was
        self.accelerator.wait_for_everyone()

    def _resume(self) -> None:
        """Load the newest checkpoint that can be read (chosen by the main process, loaded by every process)."""
        from accelerate.utils import broadcast_object_list

        choice: list[Any] = [None, []]
        contents = None
        if self.is_main:
            skipped, broken = [], []
            for path in checkpoints_newest_first(self.ckpt_dir):
                try:
                    contents = read_checkpoint(path)
                except CheckpointUnreadable as err:
                    skipped.append(f"{path.name}: {err}")
                    broken.append(path)
                    self._inform(f"warning: skipping checkpoint {path} ({err}); trying the one before it", warn=True)
                    continue
                choice = [path.name, skipped]
                for path in broken:  # never picked (or counted as kept) again; kept for a look at what went wrong
                    self._inform(f"warning: set aside unreadable checkpoint {path} as {set_aside(path).name}", warn=True)
                break
            else:
                earlier = sorted(p.name for p in self.ckpt_dir.glob("step-*.unreadable"))
                choice = [None, skipped + [f"set aside earlier: {name}" for name in earlier]]
        if self.world > 1:
            broadcast_object_list(choice)
        name, skipped = choice
        if name is None and skipped:
            raise TrainingError(f"train.resume=true but no checkpoint in {self.ckpt_dir} can be read ("
                                f"{'; '.join(skipped)}); delete the broken ones to start again from step 0, or "
                                "choose a new output_dir")
        if name is None:
            self._inform(f"train.resume=true but no checkpoint in {self.ckpt_dir}: starting from step 0")
            return
        try:
            self.load_checkpoint(self.ckpt_dir / name, contents)
        except CheckpointUnreadable as err:  # readable by the main process, not by this one
            raise TrainingError(f"process {self.rank} cannot read checkpoint {self.ckpt_dir / name} ({err}); "
                                "output_dir must be on a file system every process sees") from None
        self._inform(f"resumed from {self.ckpt_dir / name} at step {self.step}")

    # ---- train ----------------------------------------------------------------------------------------------------

    def train(self) -> dict:
        try:
            self.setup()
            # trackers such as wandb upload the hyperparameters: never the credentials in data.load_options
            self.accelerator.init_trackers(TRACKER_PROJECT, config=flat_config(without_credentials(self.recipe.raw)))
        except BaseException:
            self.release()
            raise
        try:
            self._loop_with_signal_handlers()
            self._agree(True, self.stop_requested)  # a signal after the last step's agreement: all stop, or none
            if self.stop_requested:
                self.save_checkpoint()
                raise TrainingInterrupted(self.resume_message(), self.stop_signal or signal.SIGINT)
            self.save_checkpoint()  # the last step: a run that dies in the final evaluation resumes into it
            return self.finish()
        finally:
            self._end_training()
            self.release()

    def _end_training(self) -> None:
        """accelerate's end_training (closes the trackers, destroys the process group), once gloo's worker threads
        are done with the last collectives. A worker destroys each collective's work object after running it, and
        destroying one that holds tensors made in Python takes the GIL; the process group's destructor (run when the
        DDP model lets go of it) joins those workers while holding the GIL, so a worker still finishing then waits
        on the main thread forever (seen once at the end of a 2-process streaming run: the main thread in
        ~ProcessGroupGloo's join, the worker in ~AsyncAllgatherWork waiting for the GIL). Sleeping releases the GIL."""
        if self.world > 1:
            time.sleep(0.1)
        self.accelerator.end_training()

    def _loop_with_signal_handlers(self) -> None:
        previous = {}
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread only
            for signum in (signal.SIGINT, signal.SIGTERM):
                previous[signum] = signal.signal(signum, self._on_signal)
        try:
            self._loop()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def resume_message(self) -> str:
        command = f"textdvae train {shlex.quote(str(self.out / 'config.yaml'))} train.resume=true"
        if self.world > 1:
            command = f"the same launcher (accelerate launch / torchrun, {self.world} processes) running: {command}"
        return (f"interrupted at step {self.step} of {self.total_steps}; checkpoint saved in "
                f"{self.ckpt_dir / checkpoint_name(self.step)}. Resume with: {command}")

    def _loop(self) -> None:
        cfg, acc = self.cfg, self.accelerator
        rank, world = self.rank, self.world
        log_file = (self.out / "log.jsonl").open("a") if self.is_main else None
        if self.resumed_from is not None:
            self._log(log_file, {"step": self.step, "event": "resumed", "from": str(self.resumed_from)})
        # the bar shows on a terminal only (tqdm's disable=None), and in the main process only
        bar = tqdm(total=self.total_steps, initial=self.step, disable=True if not self.is_main else None, desc="train",
                   dynamic_ncols=True)
        epoch_batches, epoch_index = None, -1
        pad_id = self.recipe.model.pad_token_id
        t0 = time.time() - self.elapsed
        stop = False
        try:
            while self.step < self.total_steps and not stop:
                if self.stream is not None:  # each process reads its own rows from its part of the stream
                    batch = data_lib.collate(self.stream.next_batch(), pad_id)
                else:
                    epoch, position = divmod(self.batches_seen, self.batches_per_epoch)
                    if epoch != epoch_index:
                        epoch_batches, epoch_index = self.epoch_batches(epoch), epoch
                    rows = epoch_batches[position][rank::world]
                    batch = data_lib.collate(self.data.splits["train"].rows(rows), pad_id)
                beta, tau = self.schedules(self.step)
                self.model.train()
                with self._autocast():
                    out = self.model(batch["input_ids"].to(acc.device), batch["attention_mask"].to(acc.device),
                                     tau=tau, beta=beta, free_bits=cfg.free_bits, word_dropout=cfg.word_dropout)
                loss = out.loss
                finite, stop = self._agree(bool(torch.isfinite(loss.detach()).all()), self.stop_requested)
                self.batches_seen += 1  # a skipped batch is not retried: the data position always moves on
                if not finite:
                    self._nonfinite(log_file, "loss")
                    continue
                acc.backward(loss)
                norm = acc.clip_grad_norm_(self.model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
                if acc.scaler is None and norm is not None and not torch.isfinite(norm):  # fp16's scaler skips itself
                    self._nonfinite(log_file, "gradient")
                    continue
                self.optimizer.step()
                if acc.optimizer_step_was_skipped:  # fp16: the loss scaler found inf/nan gradients and lowered its scale
                    self.optimizer.zero_grad(set_to_none=True)
                    self.scaler_skips += 1  # no scheduler step: the step counter, LR, beta and tau stay
                    self._log(log_file, {"step": self.step, "scaler_skipped": True, "scaler_skips": self.scaler_skips})
                    continue
                self.nonfinite_run = 0
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.step += 1
                stats = {"loss": loss.item(), "rec": out.rec.mean().item(),
                         "kl": out.kl.mean().item() if out.kl is not None else 0.0}
                if self.rate is not None:
                    self.rate.update(self._global_mean(stats["kl"]))
                for k, v in stats.items():
                    self.running[k] = self.running.get(k, 0.0) + v
                self.running["n"] = self.running.get("n", 0) + 1
                bar.update(1)
                bar.set_postfix(loss=f"{stats['loss']:.2f}", rec=f"{stats['rec']:.2f}", kl=f"{stats['kl']:.2f}",
                                beta=f"{beta:.2f}", tau=f"{tau:.2f}")
                if self.step % cfg.log_every == 0 or self.step == self.total_steps:
                    self._log(log_file, {"step": self.step, **self._running_means(), "beta": beta, "tau": tau,
                                         "lr": self.scheduler.get_last_lr()[0], "nonfinite_steps": self.nonfinite_total,
                                         "elapsed_s": round(time.time() - t0, 2)})
                    self.running = {}
                if self.step % cfg.eval_every == 0 or self.step == self.total_steps:
                    self._validate(log_file)
                if self.step % cfg.save_every == 0 and self.step < self.total_steps:
                    self.elapsed = time.time() - t0
                    self.save_checkpoint()
        finally:
            bar.close()
            if log_file:
                log_file.close()
        self.elapsed = time.time() - t0
        if world > 1:
            self.replicas_in_sync = self._replicas_in_sync()
            if not self.replicas_in_sync:
                self._inform("warning: the processes ended with different weights; gradients were not synchronised",
                             warn=True)

    def _agree(self, finite: bool, stop: bool) -> tuple[bool, bool]:
        """Every process takes the same decisions (skip this batch, stop after it): one tiny all-reduce per step."""
        if self.world == 1:
            return finite, stop
        flags = torch.tensor([0.0 if finite else 1.0, 1.0 if stop else 0.0], device=self.accelerator.device)
        flags = self.accelerator.reduce(flags, reduction="sum").cpu()
        if flags[1] > 0:
            self.stop_requested = True
        return bool(flags[0] == 0), bool(flags[1] > 0)

    def _global_mean(self, value: float) -> float:
        """A per-process number -> its mean over processes (every process then takes the same decision)."""
        if self.world > 1:
            value = self.accelerator.reduce(torch.tensor([value], device=self.accelerator.device), reduction="mean")
        return float(value)

    def _running_means(self) -> dict[str, float]:
        n = self.running.get("n", 0)
        keys = [k for k in ("loss", "rec", "kl") if k in self.running]
        values = torch.tensor([self.running[k] / max(n, 1) for k in keys], dtype=torch.float64)
        if self.world > 1:  # the mean over processes of each process's mean
            values = self.accelerator.reduce(values.to(self.accelerator.device), reduction="mean").cpu()
        return dict(zip(keys, values.tolist()))

    def _replicas_in_sync(self) -> bool:
        """DDP keeps every process's weights equal; compare a checksum per parameter tensor across processes."""
        sums = torch.stack([p.detach().double().sum() for p in self.unwrapped.parameters()])[None]
        gathered = self.accelerator.gather(sums.to(self.accelerator.device)).cpu()
        return bool((gathered == gathered[0]).all())

    def _autocast(self):
        """The training forward's precision: bf16 matrix products (and GRU, attention) under autocast with fp32
        master weights, optimizer state, loss terms, KL and softmax normalisers (the model upcasts those);
        fp16 through accelerate; else fp32."""
        if self.cfg.mixed_precision == "bf16":
            return torch.autocast(self.accelerator.device.type, dtype=torch.bfloat16)
        return self.accelerator.autocast()

    def schedules(self, step: int) -> tuple[float, float]:
        cfg = self.cfg
        beta = self.rate.beta if self.rate is not None else kl_weight(
            step, cfg.beta_schedule, cfg.beta_max, cfg.beta_warmup_steps, self.total_steps, cfg.beta_cycles, cfg.beta_ratio)
        return beta, temperature(step, cfg.tau_start, cfg.tau_min, cfg.tau_decay)

    def _validate(self, log_file) -> None:
        """Validation uses its own seeded generator and eval mode: it never draws from the training RNG."""
        if "eval" not in self.data.splits:
            return
        metrics = elbo_pass(self.unwrapped, self.eval_batches("eval"), self.accelerator, seed=self.cfg.seed)
        if self.rate is not None:
            self.rate.calibrate(metrics["kl"])
            metrics["rate_scale"] = self.rate.scale
        self._log(log_file, {"step": self.step, "split": "eval", **metrics})
        # with a target rate only a model at its rate (validation KL within 10 %) can be the final one
        on_target = self.rate is None or abs(metrics["kl"] - self.rate.target) <= 0.1 * self.rate.target
        if on_target and metrics["elbo"] > self.best_elbo:
            self.best_elbo = metrics["elbo"]
            if self.is_main:
                self._save_best()

    def _nonfinite(self, log_file, what: str) -> None:
        """Skip the batch: no optimizer or scheduler step, so the step (and with it the LR, beta and tau) stays."""
        self.optimizer.zero_grad(set_to_none=True)
        self.nonfinite_total += 1
        self.nonfinite_run += 1
        self._log(log_file, {"step": self.step, f"nonfinite_{what}": True, "nonfinite_steps": self.nonfinite_total})
        if self.nonfinite_run >= self.cfg.max_nonfinite_steps:
            latest = latest_checkpoint(self.ckpt_dir)
            kept = (f"the last good checkpoint is {latest}" if latest is not None else
                    f"no checkpoint was written yet (train.save_every={self.cfg.save_every})")
            raise TrainingError(
                f"{self.nonfinite_run} non-finite {what} values in a row at step {self.step} "
                f"(train.max_nonfinite_steps={self.cfg.max_nonfinite_steps}); training stopped and {kept}. Lower "
                "train.lr, set train.grad_clip, or check the data; then continue with train.resume=true")

    def _on_signal(self, signum, frame) -> None:
        now = time.monotonic()
        if self.stop_requested:
            if now - self._first_signal_at < SIGNAL_GRACE_S:  # the same Ctrl-C, forwarded by a launcher
                return
            raise KeyboardInterrupt  # a second Ctrl-C means now, without saving
        self.stop_requested, self.stop_signal, self._first_signal_at = True, signum, now
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        self._inform(f"\n{name}: finishing this step and saving a checkpoint (press Ctrl-C again to abort without "
                     "saving)", warn=True)

    # ---- evaluate and save ----------------------------------------------------------------------------------------

    @property
    def unwrapped(self) -> TextDVAE:
        return self.accelerator.unwrap_model(self.model)

    def eval_batches(self, split: str):
        return iterate_batches(self.data.splits[split], self.cfg.eval_batch_size, self.recipe.model.pad_token_id,
                               rank=self.rank, world=self.world)

    def finish(self) -> dict:
        """The final model (the best by validation ELBO), its test metrics, final/, metrics.json, plots, the push."""
        self.accelerator.wait_for_everyone()  # the main process may still be writing checkpoints/best
        metrics = self._final_evaluation()
        if self.is_main:
            final = self._write_final(metrics)
            self._plot(metrics)
            self._inform(format_metrics(metrics))
            self._inform(f"final model: {final}")
            if self.recipe.hub.repo_id:
                self._push(final)
        self.accelerator.wait_for_everyone()
        return metrics

    def _final_evaluation(self) -> dict:
        """Load checkpoints/best (when validation ran) and evaluate it on test, else eval, else train."""
        best = best_checkpoint(self.ckpt_dir)
        if best is not None:
            self.unwrapped.load_state_dict(load_weights(best / "model.safetensors"))
        split = "test" if "test" in self.data.splits else "eval" if "eval" in self.data.splits else "train"
        metrics = evaluate(self.unwrapped, self.data.splits[split], self.data.tokenizer, accelerator=self.accelerator,
                           batch_size=self.cfg.eval_batch_size, iw_samples=self.cfg.iw_samples,
                           iw_temperature=self.cfg.iw_temperature, seed=self.cfg.seed)
        data_stats = dict(self.data.stats)
        if self.stream is not None:  # what this (the main) process read of the training stream
            data_stats["train_stream"] = dict(self.stream.counts)
        metrics.update(split=split, step=self.step, num_processes=self.world, nonfinite_steps=self.nonfinite_total,
                       data=data_stats)
        if self.replicas_in_sync is not None:
            metrics["replicas_in_sync"] = self.replicas_in_sync
        return metrics

    def _write_final(self, metrics: dict) -> Path:
        """final/ (weights, tokenizer, recipe.yaml, metrics.json) renamed into place whole, then output_dir/metrics.json."""
        final = self.out / "final"
        tmp = temporary_name(final)
        shutil.rmtree(tmp, ignore_errors=True)
        self.unwrapped.save_pretrained(tmp)
        self.data.tokenizer.save_pretrained(tmp)
        # what final/ may carry to the Hub: no credentials, no absolute local paths (textdvae.redact)
        (tmp / "recipe.yaml").write_text(yaml.safe_dump(public_recipe(self.recipe.raw, self.out), sort_keys=False))
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2))
        for path in tmp.iterdir():  # flushed before the rename, like a checkpoint
            with path.open("rb") as file:
                os.fsync(file.fileno())
        replace_dir(tmp, final)
        write_json_atomic(self.out / "metrics.json", metrics)
        return final

    def _plot(self, metrics: dict) -> None:
        plot_training_curves(self.out / "log.jsonl", self.out / "training_curves.png")
        if "code_usage" in metrics:
            code_usage_heatmap(metrics["code_usage"], self.out / "code_usage.png",
                               title=f"code usage on {metrics['split']}")

    def _push(self, final: Path) -> None:
        from .hub import push_to_hub
        hub = self.recipe.hub
        url = push_to_hub(final, hub.repo_id, private=hub.private, revision=hub.revision)
        self._inform(f"pushed to {url}")

    def _counters(self) -> dict:
        """What trainer.json holds: everything besides weights, optimizer, scheduler and RNG that resume restores."""
        return {"step": self.step, "batches_seen": self.batches_seen, "best_elbo": self.best_elbo,
                "nonfinite_steps": self.nonfinite_total, "nonfinite_run": self.nonfinite_run,
                "log_lines": self.log_lines, "elapsed_s": self.elapsed, "running": self.running,
                "num_processes": self.world, "total_steps": self.total_steps, "scaler_skips": self.scaler_skips,
                "recipe": self.recipe.raw,
                "rate_controller": self.rate.state_dict() if self.rate is not None else None,
                "batch_plan": data_lib.BATCH_PLAN_VERSION}

    def save_checkpoint(self) -> None:
        """checkpoints/step-XXXXXXX/: weights, optimizer, scheduler, every process's RNG states and the counters,
        written atomically (checkpointing.write_checkpoint); the oldest beyond train.keep_checkpoints are deleted."""
        rng = rng_state()
        stream = self.stream.position() if self.stream is not None else None
        if self.world > 1:
            from accelerate.utils import gather_object
            rngs = gather_object([rng])  # every process's own streams, in rank order
            streams = gather_object([stream]) if stream is not None else None
            running = gather_object([self.running])  # each process's partial sums since the last log line
        else:
            rngs, streams, running = [rng], [stream] if stream is not None else None, [self.running]
        if not self.is_main:
            return
        folder = self.ckpt_dir / checkpoint_name(self.step)
        if folder.is_dir() and self._saved_step == self.step:
            return  # already saved at this step (Ctrl-C right after a periodic checkpoint)
        state = {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(), "rng": rngs,
                 "scaler": self.accelerator.scaler.state_dict() if self.accelerator.scaler is not None else None}
        counters = {**self._counters(), "running_per_process": running}
        if streams is not None:  # data.streaming: every process's stream position, in rank order
            counters["stream_positions"] = streams
        write_checkpoint(folder, self.unwrapped.state_dict(), counters, state)
        self._saved_step = self.step
        prune_checkpoints(self.ckpt_dir, self.cfg.keep_checkpoints, written=folder)

    def _save_best(self) -> None:
        write_checkpoint(self.ckpt_dir / "best", self.unwrapped.state_dict(), {"step": self.step, "elbo": self.best_elbo})

    def load_checkpoint(self, path: Path, contents: tuple | None = None) -> None:
        """Restore everything save_checkpoint wrote (``contents``: what read_checkpoint already read from it). Raises
        CheckpointUnreadable for broken files and TrainingError for a checkpoint that does not fit this recipe."""
        weights, state, trainer = contents if contents is not None else read_checkpoint(path)
        self._check_same_run(path, trainer.get("recipe"))
        try:
            self.unwrapped.load_state_dict(weights)
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as err:
            raise TrainingError(f"checkpoint {path} does not fit the model of this recipe ({err}); resume with the "
                                f"recipe the run started with ({self.out / 'config.yaml'})") from None
        self.scheduler.load_state_dict(state["scheduler"])
        if self.accelerator.scaler is not None and state.get("scaler"):
            self.accelerator.scaler.load_state_dict(state["scaler"])
        self.scaler_skips = trainer.get("scaler_skips", 0)
        rngs = state["rng"]
        if len(rngs) == self.world:
            set_rng_state(rngs[self.rank])
        else:  # another number of processes: the run goes on, but not bitwise as it would have
            set_rng_state(rngs[0])
            if self.rank:
                torch.manual_seed(self.cfg.seed + self.rank + 1000 * trainer["step"])
            self._inform(f"note: {path} was written by {len(rngs)} processes, this run has {self.world}; training "
                         "continues, but not bitwise as the original run would have", warn=True)
        self.step, self.batches_seen = trainer["step"], trainer["batches_seen"]
        plan_version = trainer.get("batch_plan", 1)
        mid_epoch = self.stream is None and self.batches_seen % self.batches_per_epoch
        if mid_epoch and plan_version != data_lib.BATCH_PLAN_VERSION:
            self._inform(f"note: {path} was written by a textdvae whose batch order (version {plan_version}) differs "
                         f"from this one's ({data_lib.BATCH_PLAN_VERSION}); the rest of epoch "
                         f"{self.batches_seen // self.batches_per_epoch} is batched in this version's order, so some of "
                         "its sentences may come twice or not at all; later epochs are unaffected", warn=True)
        if self.stream is not None:
            positions = trainer.get("stream_positions") or []
            if len(positions) != self.world:
                raise TrainingError(f"checkpoint {path} holds the stream positions of {len(positions)} processes, this "
                                    f"run has {self.world}; a streamed run resumes with the same number of processes")
            self.stream.restore(positions[self.rank])
        self.best_elbo = trainer["best_elbo"]
        self.nonfinite_total, self.nonfinite_run = trainer["nonfinite_steps"], trainer["nonfinite_run"]
        self.log_lines, self.elapsed, self.running = trainer["log_lines"], trainer["elapsed_s"], trainer["running"]
        per_process = trainer.get("running_per_process") or []
        if len(per_process) == self.world:  # this process's own partial sums (the log line averages every process's)
            self.running = per_process[self.rank]
        if self.rate is not None and trainer.get("rate_controller"):
            self.rate.load_state_dict(trainer["rate_controller"])
        self._saved_step = self.step
        self.resumed_from = path
        # checkpoints/best may come from steps after this checkpoint (the run died between the two): it is still a
        # model this run trained and validated, so only a better validation ELBO replaces it
        recorded = recorded_best_elbo(self.ckpt_dir)
        if recorded is not None:
            self.best_elbo = max(self.best_elbo, recorded)

    def _check_same_run(self, path: Path, stored: dict | None) -> None:
        """Refuse a resume whose recipe changes the data order or a schedule (recipe.RESUME_SENSITIVE_KEYS) from
        the one the checkpoint was trained with, unless train.resume_allow_changes names the change."""
        if stored is None:  # written before checkpoints stored their recipe
            return
        differences = resume_differences(stored, self.recipe.raw, self.cfg.resume_allow_changes)
        if differences:
            keys = ", ".join(d.split(":")[0] for d in differences)
            raise TrainingError(
                f"checkpoint {path} was trained with another recipe; resuming would not continue that run: "
                f"{'; '.join(differences)}. Resume with the recipe it started with ({self.out / 'config.yaml'}), or "
                f"allow the change with train.resume_allow_changes=[{keys}]")

    # ---- output ---------------------------------------------------------------------------------------------------

    def _log(self, log_file, record: dict) -> None:
        """One record to log.jsonl, and its numbers to the trackers of train.log_with (main process only)."""
        if log_file is not None:
            log_file.write(json.dumps(record) + "\n")
            log_file.flush()
            self.log_lines += 1
            prefix = record.get("split", "train")
            scalars = {f"{prefix}/{key}": value for key, value in record.items()
                       if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "step"}
            if scalars:
                self.accelerator.log(scalars, step=record.get("step", 0))

    def _inform(self, text: str, warn: bool = False) -> None:
        """A message for the user, from the main process only, through this module's logger."""
        if self.is_main:
            logger.log(logging.WARNING if warn else logging.INFO, text)


def available_trackers(names: list[str]) -> tuple[list[str], list[str]]:
    """train.log_with split into (trackers whose packages are installed, those that are not); accelerate itself
    would drop the missing ones silently."""
    from accelerate.tracking import get_available_trackers

    installed = {str(getattr(t, "value", t)) for t in get_available_trackers()}
    missing = [name for name in names if name != "all" and name not in installed]
    return [name for name in names if name not in missing], missing


def flat_config(raw: dict, prefix: str = "") -> dict[str, Any]:
    """The recipe as flat ``section.key`` hyperparameters of the plain types every tracker accepts."""
    flat: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, dict):
            flat.update(flat_config(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value if isinstance(value, (bool, int, float, str)) else json.dumps(value)
    return flat


def _has_gpu() -> bool:
    xpu = getattr(torch, "xpu", None)
    return torch.cuda.is_available() or bool(xpu is not None and xpu.is_available())


def train(recipe: Recipe) -> dict:
    """Train a model from a validated recipe; returns the final metrics (also written to output_dir/metrics.json).
    Raises TrainingInterrupted (a KeyboardInterrupt) after saving a checkpoint on SIGINT/SIGTERM."""
    return Trainer(recipe).train()
