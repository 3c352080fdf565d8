"""Screenshots of the demo page for the README, made in headless Chromium by the same steps as the browser test
(tests/test_demo.py): interpolate between two sentences, then encode one and click a grid cell.

    python benchmarks/demo_screenshot.py runs/quickstart/final

Writes benchmarks/results/demo_encode.png and demo_interpolate.png. Serves the page on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import socket
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from test_demo import (A, B, changing_cell, click_cell, encode_in_page, interpolate_in_page,  # noqa: E402
                       open_page)

from textdvae.cli import load_model  # noqa: E402
from textdvae.demo import build_demo, launch, model_figures  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?", default="runs/quickstart/final")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    model, _ = load_model(args.model)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    page = launch(build_demo(model, model_figures(args.model), title=f"textdvae: {args.model}"), "127.0.0.1", port,
                  wait=False)
    out = Path(args.out)
    try:
        with sync_playwright() as p:
            browser, tab = open_page(p, f"http://127.0.0.1:{port}/", height=1000)
            interpolate_in_page(tab, A, B)
            tab.screenshot(path=str(out / "demo_interpolate.png"), full_page=True)
            latent, category, _ = changing_cell(model, A)
            rec = encode_in_page(tab, A)
            decoded = click_cell(tab, latent, category, rec)
            tab.screenshot(path=str(out / "demo_encode.png"), full_page=True)
            browser.close()
    finally:
        page.close()
    print(f"z{latent} := {category}: {rec!r} -> {decoded!r}")
    print(f"wrote {out / 'demo_encode.png'} and {out / 'demo_interpolate.png'}")


if __name__ == "__main__":
    main()
