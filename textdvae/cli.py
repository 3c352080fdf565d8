"""`textdvae SUBCOMMAND ...`: train, eval, encode, reconstruct, sample, interpolate, traverse, push.

User errors (a bad recipe, bad data, a missing model) print one paragraph and exit with status 2; `--debug`
shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path



def _user_errors() -> tuple[type[BaseException], ...]:
    from .data import DataError
    from .hub import HubError
    from .recipe import RecipeError
    from .training import TrainingError
    return (RecipeError, DataError, TrainingError, HubError, ModelLoadError, FileNotFoundError)


class ModelLoadError(RuntimeError):
    """A model folder or repo id that cannot be loaded."""


def load_model(name: str, revision: str | None = None):
    """A local `final/` folder or a Hub repo id -> (model, tokenizer), in eval mode."""
    from transformers import AutoTokenizer

    from .modeling import TextDVAE

    path = Path(name)
    if path.exists() and not (path / "config.json").is_file():
        raise ModelLoadError(f"{name} is not a saved model: it has no config.json (pass a training run's final/ folder)")
    if not path.exists() and (name.startswith((".", "/")) or name.count("/") != 1):
        raise ModelLoadError(f"model {name!r} not found: pass a local folder (a training run's final/) or a Hub repo id "
                             "such as user/model")
    try:
        model = TextDVAE.from_pretrained(name, revision=revision)
        tokenizer = AutoTokenizer.from_pretrained(name, revision=revision)
    except OSError as err:
        raise ModelLoadError(f"could not load model {name!r}: {err}") from None
    except Exception as err:  # safetensors raises its own error types for truncated or corrupt files
        if type(err).__name__ in ("SafetensorError", "HeaderTooLarge", "HeaderTooSmall", "InvalidHeaderDeserialization"):
            raise ModelLoadError(f"the weights of {name!r} are truncated or corrupt ({err}); re-download or re-train") from None
        raise
    model.eval()
    return model, tokenizer


def cmd_train(args) -> int:
    from . import recipe as recipe_lib
    from .training import train

    recipe = recipe_lib.load(args.recipe, args.overrides)
    train(recipe)
    return 0


def cmd_eval(args) -> int:
    import torch

    from . import recipe as recipe_lib
    from .evaluation import evaluate
    from .training import format_metrics, prepare_data

    model, tokenizer = load_model(args.model, args.revision)
    recipe_path = Path(args.model) / "recipe.yaml"
    if args.recipe:
        recipe_path = Path(args.recipe)
    if not recipe_path.is_file():
        raise ModelLoadError(f"{args.model} has no recipe.yaml saying where its data are; pass --recipe RECIPE.yaml "
                             "with a data section (and data.* overrides)")
    raw_overrides = ["output_dir=unused"] + list(args.overrides)
    recipe = recipe_lib.load(recipe_path, raw_overrides)
    prepared = prepare_data(recipe, tokenizer)
    split = {"test": "test", "validation": "eval", "valid": "eval", "eval": "eval", "train": "train"}.get(args.split)
    if split not in prepared.splits:
        raise recipe_lib.RecipeError(f"split {args.split!r} not found; the data have {', '.join(prepared.splits)}")
    torch.manual_seed(args.seed)
    metrics = evaluate(model, prepared.splits[split], tokenizer, batch_size=args.batch_size, iw_samples=args.iw_samples,
                       seed=args.seed)
    metrics.update(split=args.split, num_processes=1)
    print(format_metrics(metrics))
    if args.json:
        Path(args.json).write_text(json.dumps(metrics, indent=2))
    return 0


def cmd_push(args) -> int:
    from .hub import push_to_hub

    url = push_to_hub(args.model_dir, args.repo_id, private=args.private, revision=args.revision,
                      commit_message=args.commit_message)
    print(f"pushed {args.model_dir} to {url}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="textdvae", description="Discrete variational autoencoders for text.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model from a YAML recipe")
    p.add_argument("recipe", help="recipe file, e.g. recipes/quickstart.yaml")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.max_steps=200 output_dir=runs/x")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="ELBO, importance-sampled and exact NLL, MI, AU, BLEU on a split")
    p.add_argument("model", help="a final/ folder or a Hub repo id")
    p.add_argument("overrides", nargs="*", help="data.* overrides, e.g. data.data_files.test=path.txt")
    p.add_argument("--split", default="test")
    p.add_argument("--iw-samples", type=int, default=100, help="importance samples for the NLL (literature: 500)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--recipe", help="take the data section from this recipe instead of the model's own")
    p.add_argument("--revision", help="Hub revision")
    p.add_argument("--json", help="also write the metrics to this JSON file")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("push", help="push a saved model folder to the Hugging Face Hub")
    p.add_argument("model_dir")
    p.add_argument("repo_id")
    p.add_argument("--private", action="store_true")
    p.add_argument("--revision")
    p.add_argument("--commit-message")
    p.set_defaults(func=cmd_push)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.debug:
        return args.func(args)
    try:
        return args.func(args)
    except _user_errors() as err:
        print(f"textdvae {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"textdvae {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
