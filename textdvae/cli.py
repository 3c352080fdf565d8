"""`textdvae SUBCOMMAND ...`: train, eval, encode, reconstruct, sample, interpolate, traverse, factors, push, demo.

User errors (a bad recipe, bad data, a missing model) print one paragraph and exit with status 2; `--debug`
shows the traceback instead. The package reports through the ``textdvae`` logger; the CLI prints its messages,
information on stdout and warnings on stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path


def _user_errors() -> tuple[type[BaseException], ...]:
    from .data import DataError
    from .hub import HubError
    from .recipe import RecipeError
    from .training import TrainingError
    return (RecipeError, DataError, TrainingError, HubError, ModelLoadError, InputError, FileNotFoundError)


def _positive_float(text: str) -> float:
    """An argparse type: a finite number > 0 (argparse turns the error into a usage message and exit status 2)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


class ModelLoadError(RuntimeError):
    """A model folder or repo id that cannot be loaded."""


def load_model(name: str, revision: str | None = None):
    """A local `final/` folder or a Hub repo id -> (model, tokenizer), in eval mode. Runs no code from the folder or
    repo (trust_remote_code=False), reads safetensors weights only, and refuses a tokenizer that does not fit."""
    from transformers import AutoTokenizer

    from .modeling import IncompatibleWeightsError, TextDVAE
    from .tokenization import TokenizerMismatch, check_tokenizer_fits

    if name.startswith("~"):
        name = str(Path(name).expanduser())
    path = Path(name)
    if path.exists() and not (path / "config.json").is_file():
        raise ModelLoadError(f"{name} is not a saved model: it has no config.json (pass a training run's final/ folder)")
    if not path.exists() and (name.startswith((".", "/")) or name.count("/") != 1):
        raise ModelLoadError(f"model {name!r} not found: pass a local folder (a training run's final/) or a Hub repo id "
                             "such as user/model")
    try:
        # strict (a half-loaded model never decodes), safetensors only, no repository code
        model = TextDVAE.from_pretrained(name, revision=revision, use_safetensors=True, trust_remote_code=False)
        tokenizer = AutoTokenizer.from_pretrained(name, revision=revision, trust_remote_code=False)
    except OSError as err:
        from huggingface_hub import constants
        from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError
        cause = err.__cause__
        if isinstance(cause, RevisionNotFoundError):
            msg = f"revision {revision!r} not found in Hub repo {name} on {constants.ENDPOINT} (pass a branch, tag or commit)"
        elif isinstance(cause, RepositoryNotFoundError):
            msg = (f"model {name!r} not found: no local folder of that name and no Hub repo {name} on {constants.ENDPOINT} "
                   "(if the repo is private or gated, log in with `hf auth login` or set HF_TOKEN)")
        else:
            msg = f"could not load model {name!r}: {' '.join(str(err).split())}"  # one paragraph
        raise ModelLoadError(msg) from None
    except IncompatibleWeightsError as err:
        raise ModelLoadError(str(err)) from None
    except Exception as err:  # safetensors raises its own error types for truncated or corrupt files
        if type(err).__name__ in ("SafetensorError", "HeaderTooLarge", "HeaderTooSmall", "InvalidHeaderDeserialization"):
            raise ModelLoadError(f"the weights of {name!r} are truncated or corrupt ({err}); re-download or re-train") from None
        raise
    try:
        check_tokenizer_fits(model.config, tokenizer)
    except TokenizerMismatch as err:
        raise ModelLoadError(f"{name}: {err}") from None
    model.tokenizer = tokenizer  # the one from this revision; saves loading it a second time
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
    from .data import prepare_data
    from .evaluation import evaluate, format_metrics

    if args.extra_metric and not args.allow_metric_code:
        raise InputError(f"--extra-metric {' '.join(args.extra_metric)}: `evaluate` downloads each metric's Python "
                         "script and runs it on this machine; add --allow-metric-code if you trust it")
    model, tokenizer = load_model(args.model, args.revision)
    from .hub import is_run_folder

    folder = Path(args.model).expanduser()
    recipe_path = folder / "recipe.yaml"
    if is_run_folder(folder.resolve().parent):  # a run's final/: its config.yaml keeps the paths recipe.yaml drops
        recipe_path = folder.resolve().parent / "config.yaml"
    if args.recipe:
        recipe_path = Path(args.recipe).expanduser()
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
                       iw_temperature=args.iw_temperature, seed=args.seed, extra_metrics=args.extra_metric)
    metrics.update(split=args.split, num_processes=1)
    print(format_metrics(metrics))
    if args.json:
        Path(args.json).write_text(json.dumps(metrics, indent=2))
    plot = args.plot if args.plot is not None else (
        str(Path(args.json).with_suffix("")) + "_code_usage.png" if args.json else "code_usage.png")
    if "code_usage" in metrics and plot:
        from .plots import code_usage_heatmap
        code_usage_heatmap(metrics["code_usage"], Path(plot), title=f"code usage on {args.split}")
        print(f"code usage heatmap: {plot}")
    return 0


def _texts(args) -> list[str]:
    """Texts from arguments, --file, or stdin ("-" among the arguments, or nothing given and stdin not a terminal)."""
    texts = []
    for t in args.texts:
        texts += [line.strip() for line in sys.stdin if line.strip()] if t == "-" else [t]
    if args.file:
        path = Path(args.file).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"--file {args.file} not found")
        try:
            content = path.read_text(encoding="utf-8-sig")  # a byte-order mark is not part of the first sentence
        except UnicodeDecodeError as err:
            raise InputError(f"--file {args.file} is not UTF-8 text ({err})") from None
        texts += [line.strip() for line in content.splitlines() if line.strip()]
    if not args.texts and not args.file and not sys.stdin.isatty():
        texts = [line.strip() for line in sys.stdin if line.strip()]
    if not texts:
        raise InputError("no texts given: pass them as arguments, with --file FILE, or on stdin")
    for i, t in enumerate(texts):
        if not t.strip():
            raise InputError(f"text {i + 1} is empty; give at least one word")
    return texts


class InputError(ValueError):
    """Texts or codes given to a command that cannot be used."""


def _explore_model(args):
    """The model of an explore command, with the tokenizer loaded beside it (same revision). Categorical and Gaussian
    models alike: a Gaussian model is encoded to, and decoded from, its posterior means."""
    model, tokenizer = load_model(args.model, args.revision)
    model.tokenizer = tokenizer
    return model


def _code_row(model, code) -> dict:
    """One sentence's code for a table or JSON: categorical {"codes": [categories]}, Gaussian {"z": [means]}."""
    if model.config.latent == "gaussian":
        return {"z": [round(v, 4) for v in code.tolist()]}
    return {"codes": code.tolist()}


def _code_key(model) -> str:
    return "z" if model.config.latent == "gaussian" else "codes"


def _explore(fn, *args, **kwargs):
    """Run an explore function; its ValueErrors (an empty text, a latent out of range, bad decoding settings) are
    the user's input, reported without a traceback."""
    try:
        return fn(*args, **kwargs)
    except InputError:
        raise
    except ValueError as err:
        raise InputError(str(err)) from None


def _emit(args, rows: list[dict], columns: list[str]) -> None:
    if args.json:
        print(json.dumps(rows, ensure_ascii=False, indent=2))
        return
    widths = {c: max(len(c), *(len(_cell(r[c])) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns).rstrip())
    for r in rows:
        print("  ".join(_cell(r[c]).ljust(widths[c]) for c in columns).rstrip())


def _cell(value) -> str:
    if isinstance(value, list):
        return " ".join(f"{v:.3g}" if isinstance(v, float) else str(v) for v in value)
    return str(value)


def cmd_encode(args) -> int:
    texts = _texts(args)
    model = _explore_model(args)
    codes, spread = _explore(model.encode, texts)  # (B, N) and q (B, N, K); Gaussian: means and std (B, Dz)
    if model.config.latent == "gaussian":  # how sure: the posterior's mean standard deviation (the prior's is 1)
        rows = [{"text": t, **_code_row(model, c), "std": round(float(s.mean()), 4)} for t, c, s in zip(texts, codes, spread)]
    else:  # how sure: the mean probability of the chosen categories
        rows = [{"text": t, **_code_row(model, c), "confidence": round(float(p.max(-1).values.mean()), 4)}
                for t, c, p in zip(texts, codes, spread)]
    key = _code_key(model)
    _emit(args, rows, [key, "std" if key == "z" else "confidence", "text"])
    return 0


def cmd_reconstruct(args) -> int:
    texts = _texts(args)
    model = _explore_model(args)
    codes, _ = _explore(model.encode, texts)
    recs = _explore(model.decode, codes, strategy=args.strategy, num_beams=args.num_beams, max_length=args.max_length)
    rows = [{"text": t, **_code_row(model, c), "reconstruction": r} for t, c, r in zip(texts, codes, recs)]
    _emit(args, rows, ["text", _code_key(model), "reconstruction"])
    return 0


def cmd_sample(args) -> int:
    import torch

    model = _explore_model(args)
    gen = torch.Generator().manual_seed(args.seed)
    texts, codes = _explore(model.sample, args.n, generator=gen, strategy=args.strategy, top_k=args.top_k,
                            top_p=args.top_p, temperature=args.temperature, max_length=args.max_length)
    if codes is None:  # latent: none
        _emit(args, [{"text": t} for t in texts], ["text"])
        return 0
    _emit(args, [{**_code_row(model, c), "text": t} for t, c in zip(texts, codes)], [_code_key(model), "text"])
    return 0


def cmd_interpolate(args) -> int:
    model = _explore_model(args)
    for t in (args.a, args.b):
        if not t.strip():
            raise InputError("interpolate needs two non-empty sentences")
    path = _explore(model.interpolate, args.a, args.b, method=args.method, steps=args.steps, max_length=args.max_length)
    key = _code_key(model)
    if args.json:
        print(json.dumps([{"step": p["step"], "text": p["text"], key: p["codes"], **({"t": p["t"]} if "t" in p else {})}
                          | ({"repeated": True} if p["repeated"] else {}) for p in path], ensure_ascii=False, indent=2))
        return 0
    rows = [{**p, key: p["codes"], "text": p["text"] + ("  (same as above)" if p["repeated"] else "")} for p in path]
    _emit(args, rows, ["step", "t", key, "text"] if "t" in path[0] else ["step", key, "text"])
    return 0


def cmd_traverse(args) -> int:
    model = _explore_model(args)
    if not args.text.strip():
        raise InputError("traverse needs a non-empty sentence")
    gaussian = model.config.latent == "gaussian"
    if args.values is not None and not gaussian:
        raise InputError(f"--values sets a Gaussian latent's value; {args.model} has latent={model.config.latent!r}, "
                         "whose traversal visits each of its categories (drop --values)")
    rows = _explore(model.traverse, args.text, args.latent, max_length=args.max_length,
                    **({"values": args.values} if args.values is not None else {}))
    if args.plot:
        from .plots import traversal_table
        traversal_table(args.text, args.latent, rows, args.plot)
    _emit(args, [{**r, "mark": "*" if r["original"] else ""} for r in rows], ["value" if gaussian else "category", "mark", "text"])
    return 0


_FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".tsv": "csv"}  # factors' DATA by extension


def _factor_data(args) -> tuple[list[str], dict[str, list]]:
    """DATA read like a recipe's `data` section: a local JSONL/JSON/CSV/TSV file (that split alone) or a Hub dataset
    (its `--split`) -> the non-blank texts and each factor column's labels for them."""
    import datasets

    from .data import DataError, _check_local_files
    from .recipe import DataConfig

    path = Path(args.data)
    suffix = path.suffix.lower()
    if path.exists() or suffix in _FILE_BUILDERS:
        if suffix not in _FILE_BUILDERS:
            raise InputError(f"{args.data} is not a .jsonl, .json, .csv or .tsv file; give labelled data in one of "
                             "those, or a Hub dataset id")
        options = {"delimiter": "\t"} if suffix == ".tsv" else {}
        cfg = DataConfig(path=_FILE_BUILDERS[suffix], data_files={args.split: str(path)}, load_options=options)
    else:
        cfg = DataConfig(path=args.data, name=args.name)
    _check_local_files(cfg)
    try:
        dataset = datasets.load_dataset(cfg.path, cfg.name, data_files=cfg.data_files, **cfg.load_options)
    except (datasets.exceptions.DatasetNotFoundError, ConnectionError, ValueError) as err:
        raise DataError(f"could not load {args.data!r}: {' '.join(str(err).split())}") from None
    if args.split not in dataset:
        raise DataError(f"split {args.split!r} not in {args.data!r} (splits: {', '.join(dataset)}); pass --split")
    split = dataset[args.split]
    missing = [c for c in [args.text_column, *args.factors] if c not in split.column_names]
    if missing:
        raise DataError(f"{args.data!r} has no column {', '.join(map(repr, missing))} (columns: "
                        f"{', '.join(split.column_names)}); pass --text-column and --factors with its column names")
    columns = split.with_format("arrow")[:]  # a pyarrow Table
    texts = columns[args.text_column].to_pylist()
    keep = [i for i, t in enumerate(texts) if isinstance(t, str) and t.strip()][: args.max_samples]
    if len(keep) < 2:
        raise DataError(f"{args.data!r} (split {args.split!r}) has {len(keep)} non-blank texts; scoring needs 2 or more")
    labels = {f: columns[f].to_pylist() for f in args.factors}
    return [texts[i].strip() for i in keep], {f: [labels[f][i] for i in keep] for f in args.factors}


def cmd_factors(args) -> int:
    import numpy as np

    from . import factors as fx

    model = _explore_model(args)
    if model.config.latent == "none":
        raise InputError(f"{args.model} has no latent (latent='none'): there are no codes to score")
    texts, labels = _factor_data(args)
    codes, _ = _explore(model.encode, texts)  # (n, N) categories, or (n, Dz) posterior means
    recs = _explore(model.decode, codes, max_length=args.max_length)
    exact = sum(r.split() == t.split() for r, t in zip(recs, texts)) / len(texts)
    if model.config.latent == "categorical":
        discrete = codes.cpu().numpy()
        features, owner = fx.one_hot_features(discrete, model.config.num_categories)
    else:
        means = codes.cpu().numpy()
        discrete = fx.discretize(means)
        features, owner = fx.standardized_features(means)
    try:
        result = fx.score(discrete, features, owner, labels, seed=args.seed)
    except ValueError as err:  # labels that cannot be scored (e.g. missing values) are the user's data
        raise InputError(str(err)) from None
    result = {"model": args.model, "data": args.data, "split": args.split, "latent": model.config.latent,
              **result, "exact_reconstruction": exact}
    print(f"{result['n']} sentences of {args.data} ({args.split}); probes and SAP scored on {result['n_heldout']} "
          f"held out; {model.config.latent} codes ({discrete.shape[1]} latents)")
    rows = [{"factor": name, "values": len(set(labels[name])), "best latent": f["best_latent"],
             "NMI": f"{f['nmi']:.3f}", "MIG": f"{f['mig']:.3f}", "SAP": f"{f['sap']:.3f}",
             "probe": f"{f['probe_accuracy']:.3f}", "majority": f"{f['majority']:.3f}"}
            for name, f in result["factors"].items()]
    plain = argparse.Namespace(json=False)
    _emit(plain, rows, ["factor", "values", "best latent", "NMI", "MIG", "SAP", "probe", "majority"])
    print(f"mean best-latent NMI {result['nmi_mean']:.3f}, MIG {result['mig']:.3f}, SAP {result['sap']:.3f}; DCI "
          f"disentanglement {result['dci_disentanglement']:.3f}, completeness {result['dci_completeness']:.3f}, "
          f"informativeness {result['dci_informativeness']:.3f}; exact reconstruction {exact:.1%}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    if args.plot:
        from .plots import factor_nmi_heatmap
        factor_nmi_heatmap(np.array(result["nmi_matrix"]), list(labels), Path(args.plot),
                           title=f"NMI between latents and factors ({args.split})")
    return 0


def cmd_push(args) -> int:
    from .hub import push_to_hub

    url = push_to_hub(args.model_dir, args.repo_id, private=args.private, revision=args.revision,
                      commit_message=args.commit_message, include=args.include)
    print(f"pushed {args.model_dir} to {url}")
    if args.space:
        from .hub import push_space

        print(f"pushed the demo Space to {push_space(args.repo_id, revision=args.revision, private=args.private)}")
    return 0


def cmd_demo(args) -> int:
    try:
        import gradio  # noqa: F401  (the optional extra)
    except ImportError:
        print("textdvae demo: error: the demo page needs Gradio, which is not installed; install the extra with "
              "pip install 'textdvae[demo]'", file=sys.stderr)
        return 2
    from .demo import build_demo, launch, model_figures

    model, _ = load_model(args.model, args.revision)
    page = build_demo(model, model_figures(args.model, args.revision), title=f"textdvae: {args.model}")
    try:
        launch(page, args.host, args.port, share=args.share)
    except OSError as err:  # Gradio's "Cannot find empty port", or an address this machine does not have
        raise InputError(f"cannot serve on {args.host}:{args.port} ({err}); pass another --port or --host") from None
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
    p.add_argument("--iw-temperature", type=_positive_float, default=1.0,
                   help="the NLL's proposal: q(z|x) tempered by this (logits / T); 1 is q itself")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--recipe", help="take the data section from this recipe instead of the model's own")
    p.add_argument("--extra-metric", action="append", default=[], metavar="NAME_OR_PATH",
                   help="also score reconstructions with this Hugging Face `evaluate` metric (repeatable); evaluate "
                        "downloads the metric's Python script and RUNS it, so this needs --allow-metric-code; skipped "
                        "with a message when it cannot be loaded")
    p.add_argument("--allow-metric-code", action="store_true",
                   help="let --extra-metric run the metric scripts evaluate downloads")
    p.add_argument("--revision", help="Hub revision")
    p.add_argument("--json", help="also write the metrics to this JSON file")
    p.add_argument("--plot", help="code-usage heatmap (latent x category) PNG; default beside --json, or "
                   "./code_usage.png; '' skips it")
    p.set_defaults(func=cmd_eval)

    def model_command(name: str, func, help: str, texts: bool = True):
        p = sub.add_parser(name, help=help)
        p.add_argument("model", help="a final/ folder or a Hub repo id")
        if texts:
            p.add_argument("texts", nargs="*", help="sentences (or - to read stdin)")
            p.add_argument("--file", help="read sentences from this file, one per line")
        p.add_argument("--revision", help="Hub revision")
        p.add_argument("--json", action="store_true", help="print JSON instead of a table")
        if name != "encode":
            p.add_argument("--max-length", type=int, default=64, help="longest decoded sentence, in tokens")
        p.set_defaults(func=func)
        _intermixed(p)
        return p

    model_command("encode", cmd_encode, "sentences -> codes")
    p = model_command("reconstruct", cmd_reconstruct, "sentences -> codes -> sentences")
    p.add_argument("--strategy", default="greedy", choices=["greedy", "beam"])
    p.add_argument("--num-beams", type=int, default=4)
    p = model_command("sample", cmd_sample, "sentences from codes drawn from the prior", texts=False)
    p.add_argument("-n", type=int, default=10)
    p.add_argument("--strategy", default="greedy", choices=["greedy", "sample"])
    p.add_argument("--top-k", type=int, default=0, help="sample from the k most likely tokens only (0: all)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling: the most likely tokens of this mass")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p = model_command("interpolate", cmd_interpolate, "a path of sentences between A and B in code space", texts=False)
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--method", choices=["hamming", "simplex", "linear"],
                   help="categorical: hamming (the default) or simplex; Gaussian: linear (the default and only one)")
    p.add_argument("--steps", type=int, default=5, help="points on a simplex or linear path")
    p = model_command("traverse", cmd_traverse, "decode a sentence with one latent set to each category (Gaussian: "
                      "to each of --values)", texts=False)
    p.add_argument("text")
    p.add_argument("--latent", type=int, required=True)
    p.add_argument("--values", type=float, nargs="+", help="Gaussian models: the values to set the latent to "
                   "(default -3 .. 3, in prior standard deviations)")
    p.add_argument("--plot", help="also draw the table to this PNG file")

    p = sub.add_parser("factors", help="how well the codes line up with labelled factors: NMI, MIG, SAP, DCI, probes")
    p.add_argument("model", help="a final/ folder or a Hub repo id")
    p.add_argument("data", help="labelled sentences: a .jsonl, .json, .csv or .tsv file, or a Hub dataset id")
    p.add_argument("--factors", nargs="+", required=True, metavar="COL", help="the label columns to score")
    p.add_argument("--split", default="test", help="the split of a Hub dataset (a file is read as this split)")
    p.add_argument("--name", help="the Hub dataset's configuration name")
    p.add_argument("--text-column", default="text")
    p.add_argument("--max-samples", type=int, help="score the first n sentences only")
    p.add_argument("--max-length", type=int, default=64, help="longest decoded sentence, in tokens")
    p.add_argument("--seed", type=int, default=0, help="seed of the held-out split")
    p.add_argument("--revision", help="Hub revision")
    p.add_argument("--json", help="also write the scores to this JSON file")
    p.add_argument("--plot", help="also draw the latent x factor NMI heatmap to this PNG file")
    p.set_defaults(func=cmd_factors)

    p = sub.add_parser("push", help="push a saved model folder to the Hugging Face Hub")
    p.add_argument("model_dir")
    p.add_argument("repo_id")
    p.add_argument("--private", action="store_true")
    p.add_argument("--revision")
    p.add_argument("--commit-message")
    p.add_argument("--space", action="store_true",
                   help="also create a Gradio Space of the same id whose app.py serves `textdvae demo REPO_ID` "
                   "(at --revision)")
    p.add_argument("--include", action="append", default=[], metavar="PATTERN",
                   help="also upload the folder's files matching this glob (repeatable); by default only what the "
                        "model needs: weights, config, tokenizer, generation config, card, recipe.yaml, metrics.json")
    p.set_defaults(func=cmd_push)

    p = sub.add_parser("demo", help="a page in the browser to explore the code space (pip install 'textdvae[demo]')")
    p.add_argument("model", help="a final/ folder or a Hub repo id")
    p.add_argument("--revision", help="Hub revision")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--share", action="store_true", help="also serve through a public gradio.live link")
    p.set_defaults(func=cmd_demo)
    return parser


def _intermixed(parser: argparse.ArgumentParser) -> None:
    """Let options come between a subcommand's positional arguments (`reconstruct MODEL --json "a" "b"`): before
    Python 3.13 argparse gives a `nargs="*"` positional the empty list at the first option and then rejects the rest."""
    plain = parser.parse_known_args
    busy = []

    def parse_known_args(args=None, namespace=None):
        if busy:  # parse_known_intermixed_args calls parse_known_args itself (Python < 3.13)
            return plain(args, namespace)
        busy.append(True)
        try:
            return parser.parse_known_intermixed_args(args, namespace)
        finally:
            busy.pop()

    parser.parse_known_args = parse_known_args


class _MessageHandler(logging.Handler):
    """The package's log messages as a command line shows them: information on stdout, warnings on stderr, written
    through tqdm so that a progress bar stays whole."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm.auto import tqdm
        try:
            tqdm.write(self.format(record), file=sys.stderr if record.levelno >= logging.WARNING else sys.stdout)
        except Exception:
            self.handleError(record)


def _show_messages() -> None:
    package = logging.getLogger("textdvae")
    if not any(isinstance(h, _MessageHandler) for h in package.handlers):  # main() may run many times in a process
        package.addHandler(_MessageHandler())
    package.setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> int:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights" bars are noise on a command line
    _show_messages()
    args = build_parser().parse_args(argv)
    if args.debug:
        return args.func(args)
    try:
        return args.func(args)
    except _user_errors() as err:
        print(f"textdvae {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:  # training's TrainingInterrupted says how to resume, and carries 130 or 143
        print(f"textdvae {args.command}: {str(err) or 'interrupted'}", file=sys.stderr)
        return getattr(err, "exit_code", 130)


if __name__ == "__main__":
    sys.exit(main())
