"""The demo page (textdvae/demo.py), served on a loopback port and driven in headless Chromium; its bad-input
messages through the Gradio client; the command line (`textdvae demo`, and the exit without the extra); the Space
that `textdvae push --space` writes, run against the loopback Hub.

One small model trained on the bundled corpus serves every test (a module fixture, ~30 s), one server and one
browser session: the suite runs on 2 CPU cores.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

gr = pytest.importorskip("gradio", reason="the demo extra is not installed: pip install -e '.[dev,demo]'")

from conftest import train_small_quickstart  # noqa: E402
from textdvae.cli import load_model, main  # noqa: E402
from textdvae.demo import Explorer, build_demo, launch, model_figures  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
from hub_server import HubServer, child_result, run_with_hub  # noqa: E402

CHROMIUM = "/usr/bin/chromium"  # Debian's package (.ci/run installs it); Playwright's own download is not possible
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
A, B = "the doctors do not chase the old nurse quietly .", "the farmer watches the nurse quickly ."  # the corpus's


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    train_small_quickstart(out, max_train_samples=2000, max_steps=200)
    model, _ = load_model(str(out / "final"))
    return SimpleNamespace(path=out / "final", model=model)


@pytest.fixture(scope="module")
def server(trained):
    """The page of the trained model, served on a loopback port from this process."""
    port = free_port()
    page = launch(build_demo(trained.model, model_figures(str(trained.path))), "127.0.0.1", port, wait=False)
    yield f"http://127.0.0.1:{port}/"
    page.close()


# ---- the page in a real browser ----------------------------------------------------------------------------------


def open_page(playwright, url: str, width: int = 1280, height: int = 1400):
    """Headless Chromium on the page; every request that leaves the loopback server is refused and recorded."""
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    page = browser.new_page(viewport={"width": width, "height": height})
    page.outside = []

    def route(r):
        if r.request.url.startswith(url) or r.request.url.startswith("data:"):
            return r.continue_()
        page.outside.append(r.request.url)
        return r.abort()

    page.route("**/*", route)
    page.goto(url)
    return browser, page


def table(page, elem_id: str) -> list[dict]:
    """The rows of a gr.Dataframe on the page, as {header: cell text}."""
    return page.evaluate("""id => {
        const root = document.getElementById(id);
        const heads = [...root.querySelectorAll('thead th')].map(th => th.getAttribute('title'));
        const rows = {};
        for (const cell of root.querySelectorAll('[data-testid^="cell-"]')) {
            const [r, c] = cell.dataset.testid.split('-').slice(1).map(Number);
            (rows[r] = rows[r] || {})[heads[c]] = cell.innerText.trim();
        }
        return Object.keys(rows).map(Number).sort((x, y) => x - y).map(r => rows[r]);
    }""", elem_id)


def interpolate_in_page(page, a: str, b: str) -> list[dict]:
    page.get_by_role("tab", name="Interpolate").click()
    page.locator("#interp-a textarea").fill(a)
    page.locator("#interp-b textarea").fill(b)
    page.locator("#interp-go").click()
    page.wait_for_function("document.querySelectorAll('#path [data-testid^=\"cell-\"]').length > 0")
    return table(page, "path")


def encode_in_page(page, text: str, before: str = "") -> str:
    """Encode `text` and wait for a reconstruction other than `before` (the one on the page now)."""
    page.get_by_role("tab", name="Encode").click()
    page.locator("#encode-text textarea").fill(text)
    page.locator("#encode-go").click()
    page.wait_for_function("t => document.querySelector('#encode-rec textarea').value !== t", arg=before)
    return page.locator("#encode-rec textarea").input_value()


def click_cell(page, latent: int, category: int, before: str) -> str:
    """Click the grid cell (latent, category) and wait for the decoded sentence to differ from `before`."""
    page.locator(f'#grid [data-testid="cell-{latent}-{category + 1}"]').click()
    page.wait_for_function("t => document.querySelector('#decoded textarea').value !== t", arg=before)
    return page.locator("#decoded textarea").input_value()


def changing_cell(model, text: str) -> tuple[int, int, str]:
    """A (latent, category) whose setting changes the text's greedy decoding, and the sentence it gives."""
    (code,), _ = model.encode([text])
    rec = model.decode(code.unsqueeze(0))[0]
    for i in range(model.config.num_latents):
        for k in range(model.config.num_categories):
            if k != code[i]:
                edited = code.clone()
                edited[i] = k
                out = model.decode(edited.unsqueeze(0))[0]
                if out != rec:
                    return i, k, out
    raise AssertionError(f"no single change of {text!r}'s code changes its decoding")


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no browser at {CHROMIUM}: install Debian's chromium "
                    "package (apt-get install -y chromium), as .ci/run does")
def test_page_in_a_browser(trained, server):
    from playwright.sync_api import sync_playwright

    model = trained.model
    rec_a, rec_b = model.reconstruct([A, B])
    latent, category, expected = changing_cell(model, A)
    with sync_playwright() as p:
        browser, page = open_page(p, server)
        try:
            path = interpolate_in_page(page, A, B)
            assert len(path) >= 2 and [path[0]["text"], path[-1]["text"]] == [rec_a, rec_b]
            assert path[0]["changed"] == "" and all(row["changed"].startswith("z") for row in path[1:])

            assert encode_in_page(page, A) == rec_a
            code_before = page.locator("#code textarea").input_value()
            decoded = click_cell(page, latent, category, rec_a)
            assert decoded == expected != rec_a  # the decoded sentence changed, to the edited code's decoding
            code_after = page.locator("#code textarea").input_value().split()
            assert code_after[latent] == str(category) and code_after != code_before.split()
            assert page.locator(f'#grid [data-testid="cell-{latent}-{category + 1}"]').inner_text().startswith("●")

            page.locator("#encode-text textarea").fill("")  # bad input: a message, and the page goes on working
            page.locator("#encode-go").click()
            page.get_by_text("The sentence is empty").first.wait_for()
            assert encode_in_page(page, B, before=rec_a) == rec_b

            page.get_by_role("tab", name="Figures").click()
            page.get_by_text("metrics.json").first.wait_for()
            assert page.locator("img").count() >= 2  # code usage and training curves
            assert page.outside == []  # nothing but the loopback server was asked for
        finally:
            browser.close()


# ---- bad input through the Gradio client: a message each, and the server keeps serving --------------------------


def test_bad_input_is_a_message_and_the_server_keeps_serving(trained, server):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    model = trained.model
    client = Client(server, verbose=False)
    N, K = model.config.num_latents, model.config.num_categories
    bad = [
        (("",), "/encode", "The sentence is empty"),
        (("   ",), "/encode", "The sentence is empty"),
        ((" ".join(["cat"] * 10_000),), "/encode", "10,000 tokens long"),
        ((" ".join(["0"] * (N - 1) + [str(K)]),), "/decode", f"Latent z{N - 1} has category {K}, outside [0, {K})"),
        ((" ".join(["-1"] * N),), "/decode", "outside [0,"),
        (("1 2",), "/decode", f"this model has {N} latents"),
        (("a b",), "/decode", "'a' is not one"),
        ((A, "", "hamming", 5), "/interpolate", "Sentence B is empty"),
    ]
    for args, api, message in bad:
        with pytest.raises(AppError, match=message.replace("(", r"\(").replace("[", r"\[").replace(")", r"\)")):
            client.predict(*args, api_name=api)
    grid, rec, code, decoded = client.predict(A, api_name="/encode")  # still serving, and right (no State)
    assert rec == decoded == model.reconstruct([A])[0]
    assert code.split() == [str(c) for c in model.encode([A])[0][0].tolist()]
    assert len(grid["data"]) == N and len(grid["headers"]) == K + 1


def test_unknown_words_are_named(trained):
    ex = Explorer(trained.model)
    with pytest.warns(UserWarning, match="read as <unk>: zebra, qwerty"):
        ex.check_text("the zebra watches the qwerty nurse .")
    with warnings_none():
        ex.check_text(A)


@contextlib.contextmanager
def warnings_none():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def test_traverse_and_sample_handlers(trained):
    model, ex = trained.model, Explorer(trained.model)
    rows = ex.traverse(A, 3)["data"]
    assert [r[2] for r in rows] == [t["text"] for t in model.traverse(A, 3)]
    with pytest.raises(gr.Error, match=f"latents 0..{model.config.num_latents - 1}"):
        ex.traverse(A, model.config.num_latents)
    greedy = ex.sample(4, "greedy", 0.9, 7)
    texts, codes = model.sample(4, generator=torch.Generator().manual_seed(7))
    assert [r[1] for r in greedy["data"]] == texts and greedy["headers"] == ["codes", "text"]
    for strategy in ("beam", "top-p"):
        assert len(ex.sample(4, strategy, 0.5, 7)["data"]) == 4
    with pytest.raises(gr.Error, match="1..20 sentences"):
        ex.sample(0, "greedy", 0.9, 0)


@pytest.mark.parametrize("latent", ["gaussian", "none"])
def test_no_code_grid_without_categorical_codes(latent):
    from test_explore import tiny

    model = tiny(latent=latent)
    page = build_demo(model)
    notes = [b.value for b in page.blocks.values() if isinstance(b, gr.Markdown)]
    assert sum("no code grid" in n for n in notes) == 4  # the header, Encode, Interpolate, Traverse
    assert not any(isinstance(b, gr.Textbox) for b in page.blocks.values())  # nothing to type a sentence into
    out = Explorer(model).sample(3, "greedy", 0.9, 0)
    assert len(out["data"]) == 3 and out["headers"] == (["z", "text"] if latent == "gaussian" else ["text"])


def test_figures_from_the_run_folder(trained, tmp_path):
    figures = model_figures(str(trained.path))
    metrics = json.loads((trained.path.parent / "metrics.json").read_text())
    assert figures["metrics"]["elbo"] == metrics["elbo"] and "kl_per_latent" not in figures["metrics"]
    assert [Path(p).name for p, _ in figures["images"]] == ["code_usage.png", "training_curves.png"]
    assert model_figures(str(tmp_path)) == {"metrics": {}, "images": []}
    (tmp_path / "metrics.json").write_text("{not json")
    with pytest.warns(UserWarning, match="not valid JSON"):
        assert model_figures(str(tmp_path)) == {"metrics": {}, "images": []}


# ---- the command line ----------------------------------------------------------------------------------------------


def test_cli_without_the_extra_says_how_to_install(monkeypatch, trained):
    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio -> ImportError
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(["demo", str(trained.path)]) == 2
    assert "pip install 'textdvae[demo]'" in err.getvalue()


def test_cli_refuses_a_busy_port(trained):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port, err = busy.getsockname()[1], io.StringIO()
        with contextlib.redirect_stderr(err):
            assert main(["demo", str(trained.path), "--port", str(port)]) == 2
    assert f"cannot serve on 127.0.0.1:{port}" in err.getvalue() and "another --port" in err.getvalue()


def test_cli_serves_the_page(trained, tmp_path):
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(["demo", str(tmp_path / "missing")]) == 2
    assert "not found" in err.getvalue()
    proc = subprocess.Popen([sys.executable, "-m", "textdvae", "demo", str(trained.path), "--port", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, info = time.time() + 120, None
        while time.time() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/gradio_api/info", timeout=5) as r:
                    info = json.loads(r.read())
                break
            except OSError:
                time.sleep(0.5)
        assert info is not None, proc.stdout.read() if proc.poll() is not None else "no answer in 120 s"
        assert {"/encode", "/decode", "/interpolate", "/traverse", "/sample"} <= set(info["named_endpoints"])
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# ---- the Space ----------------------------------------------------------------------------------------------------

SPACE_CHECK = """
import contextlib, io, json, runpy, sys
from textdvae.cli import main
out = io.StringIO()
with contextlib.redirect_stdout(out):
    rc = main(["push", sys.argv[1], "user/tiny", "--space"])
assert rc == 0 and "pushed the demo Space to" in out.getvalue(), out.getvalue()
for name in [m for m in sys.modules if m == "textdvae" or m.startswith("textdvae.")]:
    del sys.modules[name]  # what follows runs the Space's own copy of the package, as a Space would
from huggingface_hub import snapshot_download
space = snapshot_download("user/tiny", repo_type="space")
sys.path.insert(0, space)
import gradio, textdvae
launched = []
gradio.Blocks.launch = lambda self, **kw: launched.append((self, kw))
runpy.run_path(space + "/app.py", run_name="__main__")
page, kw = launched[0]
ex = [fn.fn.__self__ for fn in page.fns.values() if getattr(fn.fn, "__name__", "") == "encode"][0]
print("@@RESULT@@" + json.dumps({"textdvae": textdvae.__file__, "space": space, "title": page.title,
      "host": kw["server_name"], "rec": ex.model.reconstruct(["the farmer watches the nurse quickly ."])[0]}))
"""


def test_push_space_serves_the_model_by_repo_id(trained):
    """`textdvae push --space` (the command line's main, in a child wired to the loopback Hub), then the Space's
    app.py run from a download of the Space: it loads the model by repo id and builds the page."""
    with HubServer() as hub:
        result = child_result(run_with_hub(SPACE_CHECK.replace("sys.argv[1]", repr(str(trained.path))), hub, cwd="/"))
        assert hub.repo_ids() == ["user/tiny"] and "model.safetensors" in hub.files("user/tiny")
        assert hub.repo_ids("space") == ["user/tiny"] and hub.space_sdk("user/tiny") == "gradio"
        files = hub.files("user/tiny", repo_type="space")
    assert 'MODEL, REVISION = "user/tiny", None' in files["app.py"].decode()
    requirements = files["requirements.txt"].decode().split()
    assert any(r.startswith("gradio") for r in requirements) and any(r.startswith("torch") for r in requirements)
    assert "sdk: gradio" in files["README.md"].decode() and "app_file: app.py" in files["README.md"].decode()
    assert files["textdvae/demo.py"] == (ROOT / "textdvae" / "demo.py").read_bytes()
    assert "model.safetensors" not in files  # the Space loads the model from its own repo
    assert result["textdvae"].startswith(result["space"])  # the Space runs its own copy of the package
    assert result["title"] == "textdvae: user/tiny" and result["host"] is None  # Gradio's default: a Space's address
    assert result["rec"] == trained.model.reconstruct(["the farmer watches the nurse quickly ."])[0]
