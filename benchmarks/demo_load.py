"""Load on the demo page: 32 concurrent clients send 20 requests each (interpolate and encode, alternating) to the
page of `textdvae demo MODEL` on a loopback port, over Gradio's HTTP API (POST /gradio_api/call/NAME, then the
event's result stream); no request may fail. Reports p50 / p95 latency, and beside them the p50 of one client alone
(20 requests before the load): the time a request takes without waiting.

    python benchmarks/demo_load.py runs/quickstart/final            # starts `textdvae demo` on 127.0.0.1 itself
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
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
README_START, README_END = "<!-- demo-load: written by benchmarks/demo_load.py -->", "<!-- /demo-load -->"
LOOPBACK = ("127.", "localhost", "::1")


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100), linear between the closest ranks."""
    s = sorted(values)
    k = (len(s) - 1) * q / 100
    lo = int(k)
    return s[lo] + (s[min(lo + 1, len(s) - 1)] - s[lo]) * (k - lo)


def call(url: str, api: str, data: list):
    """One request to the page's API: queue the event, then read its stream to the end -> the outputs, or raise."""
    req = urllib.request.Request(f"{url}gradio_api/call/{api}", json.dumps({"data": data}).encode(),
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        event_id = json.loads(r.read())["event_id"]
    with urllib.request.urlopen(f"{url}gradio_api/call/{api}/{event_id}", timeout=600) as r:
        stream = r.read().decode()
    event = result = None
    for line in stream.splitlines():  # server-sent events: "event: NAME" then "data: JSON"
        if line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:") and event in ("complete", "error"):
            result = (event, line[5:].strip())
    if result is None or result[0] != "complete":
        raise RuntimeError(f"{api}: {result[1] if result else 'no result in ' + stream[:200]!r}")
    return json.loads(result[1])


def client_run(url: str, cid: int, requests: int, sentences: list[str], out: list, errors: list,
               start: threading.Barrier):
    """One client: `requests` calls, even ones interpolate (hamming) between two corpus sentences, odd ones encode."""
    rng = random.Random(cid)
    start.wait()
    for i in range(requests):
        a, b = rng.sample(sentences, 2)
        kind = "interpolate" if i % 2 == 0 else "encode"
        t = time.perf_counter()
        try:
            if kind == "interpolate":
                (path,) = call(url, "interpolate", [a, b, "hamming", 5])
                assert path["data"], "an empty path"
            else:
                _, rec, code, *_ = call(url, "encode", [a])  # grid, reconstruction, code, decoded, (state)
                assert rec and code, "no reconstruction"
        except Exception as err:  # counted, and the run fails at the end
            errors.append(f"client {cid} request {i} ({kind}): {type(err).__name__}: {err}")
            continue
        out.append((kind, time.perf_counter() - t))


def start_page(model: str) -> tuple[subprocess.Popen, str]:
    """`textdvae demo MODEL` on a free loopback port, in its own process (as a user runs it) -> (process, url)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    log = tempfile.TemporaryFile("w+")  # not a pipe: a full pipe would stall the server
    proc = subprocess.Popen([sys.executable, "-m", "textdvae", "demo", model, "--port", str(port)], env=env,
                            stdout=log, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 300
    while time.time() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            raise SystemExit(f"textdvae demo {model} exited with status {proc.returncode}: {log.read()[-2000:]}")
        try:
            urllib.request.urlopen(f"{url}gradio_api/info", timeout=5).close()
            return proc, url
        except OSError:
            time.sleep(0.5)
    proc.terminate()
    raise SystemExit(f"textdvae demo {model} did not answer on {url} within 300 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?", default="runs/quickstart/final", help="the model the page serves")
    parser.add_argument("--url", help="a page already running on a loopback address (default: start one)")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=20, help="requests per client")
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "demo_load.json"))
    parser.add_argument("--no-readme", action="store_true", help="do not rewrite the README's figures")
    args = parser.parse_args()

    proc, url = (None, args.url.rstrip("/") + "/") if args.url else start_page(args.model)
    if not (urlparse(url).hostname or "").startswith(LOOPBACK):
        raise SystemExit(f"--url {url}: only a loopback address (127.0.0.1, localhost, ::1) is loaded")
    sentences = [json.loads(line)["text"] for line in (ROOT / "data" / "test.jsonl").open()][:200]
    try:
        alone, errors = [], []  # one client alone first (10 requests of each kind): the latency without waiting
        client_run(url, -1, 20, sentences, alone, errors, threading.Barrier(1))
        load = os.getloadavg()[0]  # the machine is shared: other jobs slow the page down
        latencies = []
        start = threading.Barrier(args.clients + 1)
        threads = [threading.Thread(target=client_run, args=(url, c, args.requests, sentences, latencies, errors,
                                                             start)) for c in range(args.clients)]
        for t in threads:
            t.start()
        start.wait()
        t0 = time.perf_counter()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)

    total = args.clients * args.requests
    row = {"model": args.model, "clients": args.clients, "requests_per_client": args.requests, "requests": total,
           "failed": total - len(latencies), "wall_s": round(wall, 1),
           "requests_per_s": round(len(latencies) / wall, 2),
           "load_average_at_start": round(load, 1), "cpu_cores": os.cpu_count()}
    for kind in ("all", "interpolate", "encode"):
        ms = [1000 * s for k, s in latencies if kind in ("all", k)]
        if ms:
            row[kind] = {"p50_ms": round(percentile(ms, 50)), "p95_ms": round(percentile(ms, 95)),
                         "mean_ms": round(statistics.fmean(ms)),
                         "alone_p50_ms": round(percentile([1000 * s for k, s in alone if kind in ("all", k)], 50))}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(row, indent=2) + "\n")
    print(json.dumps(row, indent=2))
    for e in errors[:10]:
        print(e, file=sys.stderr)
    if errors:
        raise SystemExit(f"{len(errors)} requests failed (of {total} under load and 20 alone)")
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
        "| requests | p50 | p95 | p50 of one client alone |",
        "|---|---|---|---|",
        *(f"| {kind} | {row[kind]['p50_ms']} ms | {row[kind]['p95_ms']} ms | {row[kind]['alone_p50_ms']} ms |"
          for kind in ("all", "interpolate", "encode")),
        "",
        "`textdvae demo` ran in its own process, the clients in another. The page runs one model call at a time "
        "(its queue takes four requests of each kind at once), so under load a request mostly waits for the ones "
        "ahead of it.",
    ]
    README.write_text(text[:start + len(README_START)] + "\n" + "\n".join(lines) + "\n" + text[end:])


if __name__ == "__main__":
    main()
