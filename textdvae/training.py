"""The training recipe: setup -> train -> evaluate -> checkpoint -> final/.

Runs on accelerate, so the same code trains on a CPU, one GPU, or many processes (`accelerate launch`, `torchrun`).
Every process builds the same global batches; each takes its rows of them (rank::world), DDP averages gradients.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from tqdm.auto import tqdm

from . import data as data_lib
from .evaluation import elbo_pass, evaluate, iterate_batches
from .modeling import TextDVAE
from .plots import code_usage_heatmap, plot_training_curves
from .recipe import Recipe
from .schedules import kl_weight, temperature
from .tokenization import build_tokenizer


class TrainingError(RuntimeError):
    """Training cannot go on; the message says why and what to do."""


@dataclass
class Prepared:
    tokenizer: Any
    splits: dict[str, list[list[int]]]  # split -> token ids ending with EOS
    stats: dict[str, dict[str, int]] = field(default_factory=dict)


def prepare_data(recipe: Recipe, tokenizer=None) -> Prepared:
    """Load the splits, train (or load) the tokenizer, write its ids into the model config, encode."""
    texts, blank = data_lib.load_texts(recipe.data)
    if tokenizer is None:
        tokenizer = build_tokenizer(recipe.tokenizer, texts["train"])
    splits, stats = {}, {}
    for name, items in texts.items():
        ids, split_stats = data_lib.encode(tokenizer, items, recipe.data.max_length)
        split_stats.n_skipped_blank = blank.get(name, 0)
        splits[name], stats[name] = ids, vars(split_stats)
    return Prepared(tokenizer, splits, stats)


def configure_model_for_tokenizer(recipe: Recipe, tokenizer) -> None:
    c = recipe.model
    c.vocab_size = len(tokenizer)
    c.pad_token_id, c.bos_token_id = tokenizer.pad_token_id, tokenizer.bos_token_id
    c.eos_token_id, c.unk_token_id = tokenizer.eos_token_id, tokenizer.unk_token_id
    c.__post_init__()  # re-validate: adaptive-softmax cutoffs must lie inside the real vocabulary


def lr_lambda(schedule: str, warmup_steps: int, total_steps: int):
    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        if schedule == "linear":
            return max(0.0, 1.0 - progress)
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return 1.0
    return factor


class Trainer:
    def __init__(self, recipe: Recipe):
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        self.recipe, self.cfg = recipe, recipe.train
        self.out = Path(recipe.output_dir)
        self.ckpt_dir = self.out / "checkpoints"
        self.accelerator = Accelerator(mixed_precision=self.cfg.mixed_precision)
        self.is_main = self.accelerator.is_main_process
        set_seed(self.cfg.seed)
        # data and model
        tokenizer = None
        if self.cfg.resume and (self.ckpt_dir / "tokenizer").is_dir():  # the run's own vocabulary, never retrained
            from transformers import AutoTokenizer
            tokenizer = AutoTokenizer.from_pretrained(self.ckpt_dir / "tokenizer")
        self.data = prepare_data(recipe, tokenizer)
        configure_model_for_tokenizer(recipe, self.data.tokenizer)
        self.model = TextDVAE(recipe.model)
        self.lengths = [len(s) for s in self.data.splits["train"]]
        self.batches_per_epoch = math.ceil(len(self.lengths) / self.cfg.batch_size)
        self.total_steps = self.cfg.max_steps or math.ceil(self.cfg.epochs * self.batches_per_epoch)
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            (no_decay if p.ndim < 2 or "bias" in name else decay).append(p)
        optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": self.cfg.weight_decay},
                                       {"params": no_decay, "weight_decay": 0.0}], lr=self.cfg.lr)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lr_lambda(self.cfg.lr_schedule, self.cfg.warmup_steps, self.total_steps))
        self.model, self.optimizer = self.accelerator.prepare(self.model, optimizer)
        self.scheduler = scheduler
        self.step, self.best_elbo, self.nonfinite_total, self.nonfinite_run = 0, -math.inf, 0, 0
        self.stop_requested = False

    # ---- setup ----------------------------------------------------------------------------------------------------

    def setup(self) -> None:
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.yaml").write_text(yaml.safe_dump(self.recipe.raw, sort_keys=False))
            self.ckpt_dir.mkdir(exist_ok=True)
            if not (self.ckpt_dir / "tokenizer").is_dir():
                self.data.tokenizer.save_pretrained(self.ckpt_dir / "tokenizer")
        if self.cfg.resume:
            latest = latest_checkpoint(self.ckpt_dir)
            if latest is None:
                self._print(f"train.resume=true but no checkpoint in {self.ckpt_dir}: starting from step 0")
            else:
                self.load_checkpoint(latest)
                self._print(f"resumed from {latest} at step {self.step}")
        elif latest_checkpoint(self.ckpt_dir) is not None:
            raise TrainingError(f"{self.ckpt_dir} already holds checkpoints of an earlier run; continue it with "
                                f"train.resume=true, or choose a new output_dir")
        self.accelerator.wait_for_everyone()

    # ---- train ----------------------------------------------------------------------------------------------------

    def train(self) -> dict:
        self.setup()
        previous = signal.signal(signal.SIGINT, self._on_sigint)
        try:
            self._loop()
        finally:
            signal.signal(signal.SIGINT, previous)
        if self.stop_requested:
            self.save_checkpoint()
            self._print(f"interrupted at step {self.step}; checkpoint saved. Resume with: textdvae train "
                        f"{self.out / 'config.yaml'} train.resume=true")
            return {}
        return self.finish()

    def _loop(self) -> None:
        cfg, acc = self.cfg, self.accelerator
        rank, world = acc.process_index, acc.num_processes
        log_file = (self.out / "log.jsonl").open("a") if self.is_main else None
        bar = tqdm(total=self.total_steps, initial=self.step, disable=not self.is_main, desc="train", dynamic_ncols=True)
        epoch_batches, epoch_index = None, -1
        pad_id = self.recipe.model.pad_token_id
        running: dict[str, float] = {}
        t0 = time.time()
        while self.step < self.total_steps and not self.stop_requested:
            epoch, position = divmod(self.step, self.batches_per_epoch)
            if epoch != epoch_index:
                epoch_batches = data_lib.make_batches(self.lengths, cfg.batch_size, shuffle=True, seed=cfg.seed, epoch=epoch)
                epoch_index = epoch
            rows = epoch_batches[position][rank::world]
            batch = data_lib.collate([self.data.splits["train"][i] for i in rows], pad_id)
            beta, tau = self.schedules(self.step)
            self.model.train()
            with acc.autocast():
                out = self.model(batch["input_ids"].to(acc.device), batch["attention_mask"].to(acc.device), tau=tau,
                                 beta=beta, free_bits=cfg.free_bits, word_dropout=cfg.word_dropout)
            loss = out.loss
            if not torch.isfinite(loss.detach()).all():
                self._nonfinite(log_file)
                continue
            self.nonfinite_run = 0
            acc.backward(loss)
            if cfg.grad_clip > 0:
                acc.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            stats = {"loss": loss.item(), "rec": out.rec.mean().item(),
                     "kl": out.kl.mean().item() if out.kl is not None else 0.0}
            for k, v in stats.items():
                running[k] = running.get(k, 0.0) + v
            running["n"] = running.get("n", 0) + 1
            bar.update(1)
            bar.set_postfix(loss=f"{stats['loss']:.2f}", rec=f"{stats['rec']:.2f}", kl=f"{stats['kl']:.2f}",
                            beta=f"{beta:.2f}", tau=f"{tau:.2f}")
            if self.step % cfg.log_every == 0 or self.step == self.total_steps:
                n = running.pop("n")
                record = {"step": self.step, **{k: v / n for k, v in running.items()}, "beta": beta, "tau": tau,
                          "lr": self.scheduler.get_last_lr()[0], "nonfinite_steps": self.nonfinite_total,
                          "elapsed_s": round(time.time() - t0, 2)}
                running = {}
                self._log(log_file, record)
            if self.step % cfg.eval_every == 0 or self.step == self.total_steps:
                self._validate(log_file)
            if self.step % cfg.save_every == 0 and self.step < self.total_steps:
                self.save_checkpoint()
        bar.close()
        if log_file:
            log_file.close()

    def schedules(self, step: int) -> tuple[float, float]:
        cfg = self.cfg
        beta = kl_weight(step, cfg.beta_schedule, cfg.beta_max, cfg.beta_warmup_steps, self.total_steps,
                         cfg.beta_cycles, cfg.beta_ratio)
        return beta, temperature(step, cfg.tau_start, cfg.tau_min, cfg.tau_decay)

    def _validate(self, log_file) -> None:
        if "eval" not in self.data.splits:
            return
        metrics = elbo_pass(self.unwrapped, self.eval_batches("eval"), self.accelerator, seed=self.cfg.seed)
        self._log(log_file, {"step": self.step, "split": "eval", **metrics})
        if metrics["elbo"] > self.best_elbo:
            self.best_elbo = metrics["elbo"]
            if self.is_main:
                self._save_best()

    def _nonfinite(self, log_file) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.nonfinite_total += 1
        self.nonfinite_run += 1
        self._log(log_file, {"step": self.step, "nonfinite_loss": True, "nonfinite_steps": self.nonfinite_total})
        if self.nonfinite_run >= self.cfg.max_nonfinite_steps:
            raise TrainingError(
                f"{self.nonfinite_run} non-finite losses in a row at step {self.step}; training stopped. The last good "
                f"checkpoint is in {self.ckpt_dir}. Lower train.lr, set train.grad_clip, or check the data; then resume "
                "with train.resume=true")
        # skip the batch: the step counter does not move, so advance the data position by hand
        self.step += 1

    def _on_sigint(self, signum, frame) -> None:
        if self.stop_requested:  # a second Ctrl-C means now
            raise KeyboardInterrupt
        self.stop_requested = True
        self._print("\nCtrl-C: finishing this step and saving a checkpoint (press again to abort without saving)")

    # ---- evaluate and save ----------------------------------------------------------------------------------------

    @property
    def unwrapped(self) -> TextDVAE:
        return self.accelerator.unwrap_model(self.model)

    def eval_batches(self, split: str):
        return iterate_batches(self.data.splits[split], self.cfg.eval_batch_size, self.recipe.model.pad_token_id,
                               rank=self.accelerator.process_index, world=self.accelerator.num_processes)

    def finish(self) -> dict:
        acc = self.accelerator
        best = best_checkpoint(self.ckpt_dir)
        if best is not None:  # the final model is the best one by validation ELBO
            self.unwrapped.load_state_dict(load_weights(best / "model.safetensors"))
        split = "test" if "test" in self.data.splits else "eval" if "eval" in self.data.splits else "train"
        metrics = evaluate(self.unwrapped, self.data.splits[split], self.data.tokenizer, accelerator=acc,
                           batch_size=self.cfg.eval_batch_size, iw_samples=self.cfg.iw_samples, seed=self.cfg.seed)
        metrics.update(split=split, step=self.step, num_processes=acc.num_processes,
                       nonfinite_steps=self.nonfinite_total, data=self.data.stats)
        if self.is_main:
            final = self.out / "final"
            tmp = self.out / ".final.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            self.unwrapped.save_pretrained(tmp)
            self.data.tokenizer.save_pretrained(tmp)
            (tmp / "recipe.yaml").write_text(yaml.safe_dump(self.recipe.raw, sort_keys=False))
            (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2))
            replace_dir(tmp, final)
            write_json_atomic(self.out / "metrics.json", metrics)
            plot_training_curves(self.out / "log.jsonl", self.out / "training_curves.png")
            if "code_usage" in metrics:
                code_usage_heatmap(metrics["code_usage"], self.out / "code_usage.png", title=f"code usage on {split}")
            self._print(format_metrics(metrics))
            self._print(f"final model: {final}")
            if self.recipe.hub.repo_id:
                from .hub import push_to_hub
                url = push_to_hub(final, self.recipe.hub.repo_id, private=self.recipe.hub.private,
                                  revision=self.recipe.hub.revision)
                self._print(f"pushed to {url}")
        acc.wait_for_everyone()
        return metrics

    def save_checkpoint(self) -> None:
        """checkpoints/step-XXXXXXX/: weights (safetensors), optimizer, scheduler, RNG and counters. Written into a
        temporary folder and renamed, so a checkpoint that exists is complete."""
        self.accelerator.wait_for_everyone()
        if not self.is_main:
            return
        from safetensors.torch import save_file
        name = f"step-{self.step:07d}"
        tmp = self.ckpt_dir / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file(self.unwrapped.state_dict(), tmp / "model.safetensors")
        torch.save({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                    "torch_rng": torch.get_rng_state()}, tmp / "state.pt")
        (tmp / "trainer.json").write_text(json.dumps({"step": self.step, "best_elbo": self.best_elbo,
                                                      "nonfinite_steps": self.nonfinite_total}))
        replace_dir(tmp, self.ckpt_dir / name)
        for old in sorted(self.ckpt_dir.glob("step-*"))[:-self.cfg.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)

    def _save_best(self) -> None:
        from safetensors.torch import save_file
        tmp = self.ckpt_dir / ".best.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file(self.unwrapped.state_dict(), tmp / "model.safetensors")
        (tmp / "trainer.json").write_text(json.dumps({"step": self.step, "elbo": self.best_elbo}))
        replace_dir(tmp, self.ckpt_dir / "best")

    def load_checkpoint(self, path: Path) -> None:
        self.unwrapped.load_state_dict(load_weights(path / "model.safetensors"))
        state = torch.load(path / "state.pt", weights_only=True)  # our own file; weights_only never runs code
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        trainer = json.loads((path / "trainer.json").read_text())
        self.step, self.best_elbo, self.nonfinite_total = trainer["step"], trainer["best_elbo"], trainer["nonfinite_steps"]

    # ---- output ---------------------------------------------------------------------------------------------------

    def _log(self, log_file, record: dict) -> None:
        if log_file is not None:
            log_file.write(json.dumps(record) + "\n")
            log_file.flush()

    def _print(self, text: str) -> None:
        if self.is_main:
            tqdm.write(text)


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    found = sorted(p for p in Path(ckpt_dir).glob("step-*") if (p / "trainer.json").is_file())
    return found[-1] if found else None


def best_checkpoint(ckpt_dir: Path) -> Path | None:
    path = Path(ckpt_dir) / "best"
    return path if (path / "model.safetensors").is_file() else None


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    return load_file(str(path))


def replace_dir(tmp: Path, target: Path) -> None:
    """Move a finished folder into place: the old one is renamed away first, then the new one renamed in."""
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


def write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def format_metrics(metrics: dict) -> str:
    keys = ("elbo", "rec", "kl", "nll", "nll_exact", "ppl", "mi", "active_latents", "au", "rec_token_acc", "rec_bleu")
    rows = [f"  {k:<15} {metrics[k]:.4g}" if isinstance(metrics.get(k), float) else f"  {k:<15} {metrics.get(k)}"
            for k in keys if k in metrics]
    return f"metrics on {metrics.get('split', '?')}:\n" + "\n".join(rows)


def train(recipe: Recipe) -> dict:
    """Train a model from a validated recipe; returns the final metrics (also written to output_dir/metrics.json)."""
    return Trainer(recipe).train()
