"""Load on the demo page: 32 concurrent clients send 20 requests each (interpolate and encode, alternating) to the
page served on a loopback port, through Gradio's client API; no request may fail. Reports p50 / p95 latency.

    python benchmarks/demo_load.py runs/quickstart/final            # serves the page itself on 127.0.0.1
    python benchmarks/demo_load.py MODEL --url http://127.0.0.1:7860/   # a page already running (`textdvae demo`)

Writes benchmarks/results/demo_load.json and the README's figures between its markers. Only loopback addresses.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
README = ROOT / "README.md"
README_START, README_END = "<!-- demo-load: written by benchmarks/demo_load.py -->", "<!-- /demo-load -->"
LOOPBACK = ("127.", "localhost", "::1")


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100), linear between the closest ranks."""
    s = sorted(values)
    k = (len(s) - 1) * q / 100
    lo = int(k)
    return s[lo] + (s[min(lo + 1, len(s) - 1)] - s[lo]) * (k - lo)


def client_run(url: str, cid: int, requests: int, sentences: list[str], out: list, errors: list,
               start: threading.Barrier):
    """One client: `requests` calls, even ones interpolate (hamming) between two corpus sentences, odd ones encode."""
    from gradio_client import Client

    rng = random.Random(cid)
    client = Client(url, verbose=False)
    start.wait()
    for i in range(requests):
        a, b = rng.sample(sentences, 2)
        kind = "interpolate" if i % 2 == 0 else "encode"
        t = time.perf_counter()
        try:
            if kind == "interpolate":
                path = client.predict(a, b, "hamming", 5, api_name="/interpolate")
                assert path["data"], "an empty path"
            else:
                _, rec, code, _ = client.predict(a, api_name="/encode")
                assert rec and code, "no reconstruction"
        except Exception as err:  # counted, and the run fails at the end
            errors.append(f"client {cid} request {i} ({kind}): {type(err).__name__}: {err}")
            continue
        out.append((kind, time.perf_counter() - t))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?", default="runs/quickstart/final", help="the model the page serves")
    parser.add_argument("--url", help="a page already running on a loopback address (default: serve one here)")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=20, help="requests per client")
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "demo_load.json"))
    parser.add_argument("--no-readme", action="store_true", help="do not rewrite the README's figures")
    args = parser.parse_args()

    page = None
    url = args.url
    if url is None:
        from textdvae.cli import load_model
        from textdvae.demo import build_demo, launch

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        model, _ = load_model(args.model)
        page = launch(build_demo(model), "127.0.0.1", port, wait=False)
        url = f"http://127.0.0.1:{port}/"
    if not (urlparse(url).hostname or "").startswith(LOOPBACK):
        raise SystemExit(f"--url {url}: only a loopback address (127.0.0.1, localhost, ::1) is loaded")
    sentences = [json.loads(line)["text"] for line in (ROOT / "data" / "test.jsonl").open()][:200]

    load = os.getloadavg()[0]  # the machine is shared: other jobs slow the page down
    latencies, errors = [], []
    start = threading.Barrier(args.clients + 1)
    threads = [threading.Thread(target=client_run, args=(url, c, args.requests, sentences, latencies, errors, start))
               for c in range(args.clients)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if page is not None:
        page.close()

    total = args.clients * args.requests
    row = {"model": args.model, "clients": args.clients, "requests_per_client": args.requests, "requests": total,
           "failed": total - len(latencies), "wall_s": round(wall, 1),
           "requests_per_s": round(len(latencies) / wall, 2),
           "load_average_at_start": round(load, 1), "cpu_cores": os.cpu_count()}
    for kind in ("all", "interpolate", "encode"):
        ms = [1000 * s for k, s in latencies if kind in ("all", k)]
        if ms:
            row[kind] = {"p50_ms": round(percentile(ms, 50)), "p95_ms": round(percentile(ms, 95)),
                         "mean_ms": round(statistics.fmean(ms))}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(row, indent=2) + "\n")
    print(json.dumps(row, indent=2))
    for e in errors[:10]:
        print(e, file=sys.stderr)
    if errors:
        raise SystemExit(f"{len(errors)} of {total} requests failed")
    if not args.no_readme:
        write_readme(row)


def write_readme(row: dict) -> None:
    text = README.read_text()
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        raise SystemExit(f"{README} lacks the markers {README_START} ... {README_END}")
    lines = [
        f"{row['clients']} clients x {row['requests_per_client']} requests ({row['requests']}, interpolate and encode "
        f"alternating) against `{row['model']}` on 127.0.0.1, {row['cpu_cores']} CPU cores (1-minute load average "
        f"{row['load_average_at_start']} at the start: other jobs shared them): **{row['failed']} failed**, "
        f"{row['requests_per_s']} requests/s, {row['wall_s']} s in all.",
        "",
        "| requests | p50 | p95 |",
        "|---|---|---|",
        *(f"| {kind} | {row[kind]['p50_ms']} ms | {row[kind]['p95_ms']} ms |"
          for kind in ("all", "interpolate", "encode")),
    ]
    README.write_text(text[:start + len(README_START)] + "\n" + "\n".join(lines) + "\n" + text[end:])


if __name__ == "__main__":
    main()
