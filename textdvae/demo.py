"""The page for exploring a model's code space: `textdvae demo MODEL` (the optional extra `textdvae[demo]`, Gradio).

`build_demo(model, figures)` makes the page from a loaded model, so tests and a Space can start it; `model_figures`
finds the model's own metrics and plots; `launch` serves the page. Tabs:
  Encode       a sentence -> its N x K grid of q(z_i | x) and the greedy reconstruction; clicking a cell sets that
               latent to that category and decodes the edited code at once (the code can also be typed).
  Interpolate  a Hamming or simplex path between two sentences: step, codes, text, the latents that changed.
  Traverse     one latent of a sentence through all K categories.
  Sample       sentences from the prior, decoded greedily, with beam search or nucleus (top-p) sampling.
  Figures      metrics.json, code_usage.png and training_curves.png of the model's folder, where it has them.
Bad input (an empty sentence, a text longer than the model reads, a code outside [0, K)) raises gr.Error, which the
page shows as a message while the server goes on serving; words outside the vocabulary are named in a gr.Warning.
Gaussian models and language models (latent "gaussian" / "none") have no code grid: those tabs say so, Sample works.
"""

from __future__ import annotations

import json
import re
import threading
import warnings
from pathlib import Path

import gradio as gr
import torch

from . import explore

FIGURES = ("code_usage.png", "training_curves.png")  # the plots a training run writes, shown when present
METRICS = ("elbo", "rec", "kl", "nll", "nll_exact", "ppl", "mi", "active_latents", "au", "rec_token_acc",
           "rec_bleu")  # the scalars of metrics.json shown, in this order
MAX_SAMPLES = 20  # sentences one click on Sample may ask for
MAX_LENGTH = 64  # longest decoded sentence, in tokens
# System fonts only: the default theme fetches web fonts, which neither a loopback test nor an offline user has.
THEME = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                          font_mono=["ui-monospace", "Consolas", "monospace"])
CSS = "#grid td { cursor: pointer; }"


def model_figures(name: str, revision: str | None = None) -> dict:
    """A model's own figures: {"metrics": {key: number}, "images": [(path, caption)]}, from its folder and the
    training run around it (a run's final/ sits beside metrics.json and the plots), or from its Hub repo (which
    carries metrics.json when pushed by `textdvae push`). Missing files are skipped."""
    paths = {}
    wanted = ("metrics.json",) + FIGURES
    folder = Path(name)
    if folder.is_dir():
        for file in wanted:
            found = [p for p in (folder / file, folder.parent / file) if p.is_file()]
            if found:
                paths[file] = found[0]
    else:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError

        for file in wanted:
            try:
                paths[file] = Path(hf_hub_download(name, file, revision=revision))
            except EntryNotFoundError:
                continue
    metrics = {}
    if "metrics.json" in paths:
        try:
            raw = json.loads(paths["metrics.json"].read_text(encoding="utf-8"))
        except ValueError as err:  # a side figure: the page still serves, without it
            warnings.warn(f"{paths['metrics.json']} is not valid JSON ({err}); the page shows no metrics")
            raw = {}
        metrics = {k: raw[k] for k in METRICS if isinstance(raw, dict) and isinstance(raw.get(k), (int, float))
                   and not isinstance(raw[k], bool)}
    images = [(str(paths[f]), f.removesuffix(".png").replace("_", " ")) for f in FIGURES if f in paths]
    return {"metrics": metrics, "images": images}


class Explorer:
    """The page's handlers: plain functions of the inputs -> outputs, one model call at a time (the tokenizer and the
    decoders are not meant to be shared between threads)."""

    def __init__(self, model):
        self.model = model
        self.lock = threading.Lock()
        c = model.config
        self.N, self.K = (c.num_latents, c.num_categories) if c.latent == "categorical" else (0, 0)

    # ---- input checks --------------------------------------------------------------------------------------------

    def check_text(self, text: str | None, what: str = "the sentence") -> str:
        """A usable sentence, or gr.Error; words outside the vocabulary are named in a warning (they read as <unk>)."""
        what = what[0].upper() + what[1:]
        if text is None or not text.strip():
            raise _refuse(f"{what} is empty: type at least one word.")
        tok = self.model.tokenizer
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        limit = explore.max_tokens(self.model) - 1  # EOS takes one position
        if len(enc["input_ids"]) > limit:
            raise _refuse(f"{what} is {len(enc['input_ids']):,} tokens long; this model reads at most "
                           f"{limit} tokens. Shorten it.")
        unknown = [text[a:b] for i, (a, b) in zip(enc["input_ids"], enc["offset_mapping"]) if i == tok.unk_token_id]
        if unknown:
            shown = ", ".join(dict.fromkeys(unknown[:10]))
            gr.Warning(f"Not in the model's vocabulary, read as {tok.unk_token}: {shown}.")
        return text

    def parse_code(self, code: str | None) -> list[int]:
        """'3 0 7 ...' (N integers in [0, K)) -> the code, or gr.Error naming the bad value."""
        parts = re.split(r"[\s,]+", (code or "").strip())
        parts = [p for p in parts if p]
        if not parts:
            raise _refuse(f"The code is empty: give {self.N} categories, one per latent (encode a sentence first).")
        bad = [p for p in parts if not re.fullmatch(r"[+-]?\d+", p)]
        if bad:
            raise _refuse(f"The code must be whole numbers; {bad[0]!r} is not one.")
        values = [int(p) for p in parts]
        if len(values) != self.N:
            raise _refuse(f"The code has {len(values)} categories; this model has {self.N} latents, give one each.")
        for i, v in enumerate(values):
            if not 0 <= v < self.K:
                raise _refuse(f"Latent z{i} has category {v}, outside [0, {self.K}): "
                              f"each latent takes 0..{self.K - 1}.")
        return values

    def run(self, fn, *args, **kwargs):
        """A model call under the lock; a ValueError of the explore API (bad settings) becomes a message."""
        with self.lock:
            try:
                return fn(*args, **kwargs)
            except ValueError as err:
                raise _refuse(str(err)) from None

    # ---- encode ---------------------------------------------------------------------------------------------------

    def grid(self, probs: list[list[float]], code: list[int]) -> dict:
        """q(z_i | x) as an N x K table; the category each latent has in `code` is marked."""
        rows = [[f"z{i}"] + [("● " if k == code[i] else "") + f"{p:.2f}" for k, p in enumerate(row)]
                for i, row in enumerate(probs)]
        return {"headers": ["latent"] + [str(k) for k in range(self.K)], "data": rows}

    def encode(self, text: str):
        """-> (grid, reconstruction, code, decoded, probs state)."""
        text = self.check_text(text)
        codes, probs, rec = self.run(self._encode, text)  # one turn at the model: waiting twice doubles the wait
        code, probs = codes[0].tolist(), probs[0].tolist()
        return self.grid(probs, code), rec, _code_text(code), rec, probs

    def pick(self, probs: list[list[float]] | None, code: str, evt: gr.SelectData):
        """A click on cell (latent i, category k): set z_i = k and decode -> (grid, code, decoded)."""
        if not probs:
            raise _refuse("Encode a sentence first; then click a cell to set that latent to that category.")
        row, col = evt.index
        values = self.parse_code(code)
        if col == 0:  # the latent's name
            raise _refuse("Click a category (a number column) to set that latent to it.")
        values[row] = col - 1
        return self.grid(probs, values), _code_text(values), self.decode_code(_code_text(values))

    def _encode(self, text: str):
        codes, probs = self.model.encode([text])
        return codes, probs, self.model.decode(codes, max_length=MAX_LENGTH)[0]

    def decode_code(self, code: str) -> str:
        values = self.parse_code(code)
        return self.run(self.model.decode, torch.tensor([values]), max_length=MAX_LENGTH)[0]

    # ---- interpolate, traverse, sample -----------------------------------------------------------------------------

    def interpolate(self, a: str, b: str, method: str, steps: float) -> dict:
        a, b = self.check_text(a, "sentence A"), self.check_text(b, "sentence B")
        path = self.run(self.model.interpolate, a, b, method=method, steps=int(steps), max_length=MAX_LENGTH)
        rows = []
        for prev, point in zip([None] + path, path):
            changed = [i for i, (x, y) in enumerate(zip(prev["codes"], point["codes"])) if x != y] if prev else []
            note = ", ".join(f"z{i}: {prev['codes'][i]} → {point['codes'][i]}" for i in changed)
            if point["repeated"]:
                note += " (same text)"
            row = {"step": point["step"], "codes": _code_text(point["codes"]), "text": point["text"], "changed": note}
            rows.append({"step": row["step"], "t": point["t"], **row} if method == "simplex" else row)
        return _table(rows)

    def traverse(self, text: str, latent: float | None) -> dict:
        text = self.check_text(text)
        if latent is None or latent != int(latent) or not 0 <= latent < self.N:
            raise _refuse(f"Latent {latent} does not exist: this model has latents 0..{self.N - 1}.")
        rows = self.run(self.model.traverse, text, int(latent), max_length=MAX_LENGTH)
        return _table([{"category": r["category"], "mark": "◀ the sentence's own" if r["original"] else "",
                        "text": r["text"]} for r in rows])

    def sample(self, n: float, strategy: str, top_p: float, seed: float) -> dict:
        if n is None or n != int(n) or not 1 <= n <= MAX_SAMPLES:
            raise _refuse(f"Ask for 1..{MAX_SAMPLES} sentences, not {n}.")
        if seed is None or seed != int(seed):
            raise _refuse(f"The seed must be a whole number, not {seed}.")
        decoding = {"greedy": {"strategy": "greedy"}, "beam": {"strategy": "beam", "num_beams": 4},
                    "top-p": {"strategy": "sample", "top_p": top_p}}
        if strategy not in decoding:
            raise _refuse(f"Decoding {strategy!r} is not one of {', '.join(decoding)}.")
        gen = torch.Generator().manual_seed(int(seed))
        texts, codes = self.run(self.model.sample, int(n), generator=gen, max_length=MAX_LENGTH, **decoding[strategy])
        if codes is None:  # a language model: no latent
            return _table([{"text": t} for t in texts])
        if self.model.config.latent == "gaussian":
            return _table([{"z": " ".join(f"{v:.2f}" for v in z.tolist()), "text": t} for z, t in zip(codes, texts)])
        return _table([{"codes": _code_text(c.tolist()), "text": t} for c, t in zip(codes, texts)])


def _refuse(message: str) -> gr.Error:
    """Bad input: a message on the page, no traceback on the server's console (nothing went wrong there)."""
    return gr.Error(message, print_exception=False)


def _code_text(code: list[int]) -> str:
    return " ".join(map(str, code))


def _table(rows: list[dict]) -> dict:
    """Rows of one set of keys -> a gr.Dataframe value."""
    return {"headers": list(rows[0]), "data": [list(r.values()) for r in rows]}


def build_demo(model, figures: dict | None = None, title: str | None = None) -> gr.Blocks:
    """The page for a loaded model (with its tokenizer as `model.tokenizer`); figures as `model_figures` gives them."""
    ex = Explorer(model)
    c = model.config
    categorical = c.latent == "categorical"
    kind = {"gaussian": "a continuous Gaussian z", "none": "no latent: a language model"}.get(c.latent, "")
    prior = {"gaussian": "N(0, I)", "none": "none: a language model"}.get(c.latent, c.prior)
    no_grid = (f"This model has `latent: {c.latent}` ({kind}), so it has no code grid to encode into, interpolate "
               "across or traverse. **Sample** works.")
    with gr.Blocks(title=title or "textdvae demo", analytics_enabled=False) as page:
        gr.Markdown(f"# {title or 'textdvae: explore the code space'}\n" + (
            f"Each sentence is a code of **N = {c.num_latents}** latents with **K = {c.num_categories}** categories "
            f"each ({c.prior} prior)." if categorical else no_grid))
        with gr.Tab("Encode"):
            if categorical:
                with gr.Row():
                    text = gr.Textbox(label="Sentence", elem_id="encode-text", scale=4)
                    go = gr.Button("Encode", variant="primary", elem_id="encode-go", scale=1)
                rec = gr.Textbox(label="Greedy reconstruction", interactive=False, elem_id="encode-rec")
                gr.Markdown("q(z<sub>i</sub> | x), one row per latent, ● the category in the code. "
                            "**Click a cell** to set that latent to that category.")
                grid = gr.Dataframe(label="Code", interactive=False, elem_id="grid", max_height=640)
                with gr.Row():
                    code = gr.Textbox(label="Code (one category per latent; edit and press Enter)", elem_id="code",
                                      scale=2)
                    decoded = gr.Textbox(label="Decoded from the code", interactive=False, elem_id="decoded", scale=3)
                probs = gr.State(None)
                outputs = [grid, rec, code, decoded, probs]
                go.click(ex.encode, [text], outputs, api_name="encode")
                text.submit(ex.encode, [text], outputs, api_visibility="private")
                grid.select(ex.pick, [probs, code], [grid, code, decoded], api_visibility="private")
                code.submit(ex.decode_code, [code], [decoded], api_name="decode")
            else:
                gr.Markdown(no_grid)
        with gr.Tab("Interpolate"):
            if categorical:
                with gr.Row():
                    a = gr.Textbox(label="Sentence A", elem_id="interp-a")
                    b = gr.Textbox(label="Sentence B", elem_id="interp-b")
                with gr.Row():
                    method = gr.Radio(["hamming", "simplex"], value="hamming", label="Path",
                                      info="hamming: one latent at a time; simplex: the posteriors mixed")
                    steps = gr.Slider(2, 12, value=5, step=1, label="Points on a simplex path")
                    go = gr.Button("Interpolate", variant="primary", elem_id="interp-go")
                path = gr.Dataframe(label="Path from A's reconstruction to B's", interactive=False, wrap=True,
                                    elem_id="path", max_height=1200)
                go.click(ex.interpolate, [a, b, method, steps], [path], api_name="interpolate")
            else:
                gr.Markdown(no_grid)
        with gr.Tab("Traverse"):
            if categorical:
                with gr.Row():
                    text = gr.Textbox(label="Sentence", scale=3)
                    latent = gr.Number(0, label=f"Latent (0..{c.num_latents - 1})", precision=0, scale=1)
                    go = gr.Button("Traverse", variant="primary", scale=1)
                table = gr.Dataframe(label="The sentence with that latent set to each category", interactive=False)
                go.click(ex.traverse, [text, latent], [table], api_name="traverse")
            else:
                gr.Markdown(no_grid)
        with gr.Tab("Sample"):
            gr.Markdown(f"Codes drawn from the model's prior ({prior}), then decoded.")
            with gr.Row():
                n = gr.Slider(1, MAX_SAMPLES, value=5, step=1, label="Sentences")
                strategy = gr.Radio(["greedy", "beam", "top-p"], value="greedy", label="Decoding")
                top_p = gr.Slider(0.05, 1.0, value=0.9, step=0.05, label="top-p (nucleus mass)")
                seed = gr.Number(0, label="Seed", precision=0)
            go = gr.Button("Sample", variant="primary")
            samples = gr.Dataframe(label="Samples", interactive=False, wrap=True)
            go.click(ex.sample, [n, strategy, top_p, seed], [samples], api_name="sample")
        with gr.Tab("Figures"):
            figures = figures or {"metrics": {}, "images": []}
            if figures["metrics"]:
                gr.Dataframe(_table([{"metric": k, "value": f"{v:.4g}"} for k, v in figures["metrics"].items()]),
                             label="metrics.json", interactive=False)
            for path, caption in figures["images"]:
                gr.Image(path, label=caption, interactive=False, buttons=["download", "fullscreen"])
            if not figures["metrics"] and not figures["images"]:
                gr.Markdown("This model's folder has no metrics.json, code_usage.png or training_curves.png "
                            "(a training run writes them beside its final/ folder).")
    return page


def launch(page: gr.Blocks, host: str | None = None, port: int | None = None, share: bool = False,
           wait: bool = True) -> gr.Blocks:
    """Serve the page at http://HOST:PORT (None: Gradio's defaults, GRADIO_SERVER_NAME / 7860, as on a Space); with
    share, also through a public Gradio link. Requests queue, four at a time (the model itself runs one at a time).
    wait=False returns once serving (tests; stop with page.close())."""
    page.queue(default_concurrency_limit=4)
    page.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=not wait, quiet=not wait,
                show_error=True, theme=THEME, css=CSS)
    return page
