"""Load-test `ragtune serve` on loopback: requests/s and p50/p95/p99 latency at 1, 4 and 16 concurrent clients.

Usage (repo root, after `dvc repro`):
    python benchmarks/serve_load.py [--clients 1,4,16] [--seconds 20] [--max-requests 400]

Starts `ragtune serve --root .` as a child process on a free 127.0.0.1 port (nothing else is reachable), waits for
`/health`, then for each endpoint and each client count runs closed-loop clients (each sends its next request when
the previous one is answered) for at most `--seconds` or `--max-requests`, whichever comes first, after a warm-up.
Requests:

- `/v1/embeddings`: one held-out test question per request (`input_type: query`), as an application embeds a
  user's question;
- `/v1/search`: one test question, `top_k` 5, at the highest access level (the whole corpus), through the pipeline
  evaluate chose.

Reports per cell: requests, requests/s, p50/p95/p99 latency in ms; and the server's peak RSS (VmHWM from
/proc/<pid>/status, Linux). The server is stopped at the end, also on error or Ctrl-C. Writes
metrics/benchmarks/serve_load.json. CPU threads are whatever the server process gets (set OMP_NUM_THREADS to pin).

Backends: PyTorch only. ONNX and ONNX int8 rows are not measured: sentence-transformers' ONNX backend needs
optimum-onnx, whose latest release (0.1.0) requires transformers < 4.58, while sentence-transformers 6 requires
transformers >= 5 (docs/serving.md, "ONNX").
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from ragtune.io import read_jsonl, write_json

OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never through a proxy


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def post(port: int, path: str, body: dict[str, Any]) -> float:
    """Send one request; return its latency in seconds (raises on a non-2xx answer)."""
    data = json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data, {"Content-Type": "application/json"})
    t0 = time.perf_counter()
    with OPENER.open(req, timeout=120) as resp:
        resp.read()
    return time.perf_counter() - t0


def wait_ready(port: int, proc: subprocess.Popen, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"ragtune serve exited with {proc.returncode} before it was ready (see its output above)")
        try:
            with OPENER.open(f"http://127.0.0.1:{port}/health", timeout=2) as resp:
                return json.loads(resp.read())
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"ragtune serve did not answer /health within {timeout:.0f} s")


def peak_rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def run_cell(port: int, path: str, bodies: list[dict[str, Any]], clients: int, seconds: float, cap: int) -> dict:
    """Closed-loop clients until ``seconds`` pass or ``cap`` requests are sent."""
    latencies: list[float] = []
    lock = threading.Lock()
    sent = [0]
    errors: list[str] = []
    deadline = time.perf_counter() + seconds

    def client(i: int) -> None:
        while True:
            with lock:
                if sent[0] >= cap or time.perf_counter() > deadline:
                    return
                n = sent[0]
                sent[0] += 1
            try:
                dt = post(port, path, bodies[(n + i) % len(bodies)])
            except OSError as exc:
                with lock:
                    errors.append(str(exc))
                return
            with lock:
                latencies.append(dt)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise SystemExit(f"{path} with {clients} clients: {len(errors)} failed requests, e.g. {errors[0]}")
    ms = sorted(x * 1000 for x in latencies)

    def pct(p: float) -> float:
        return round(ms[min(len(ms) - 1, round(p / 100 * (len(ms) - 1)))], 1)

    return {
        "clients": clients,
        "requests": len(ms),
        "requests_per_s": round(len(ms) / wall, 2),
        "p50_ms": pct(50),
        "p95_ms": pct(95),
        "p99_ms": pct(99),
        "mean_ms": round(statistics.fmean(ms), 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", default="1,4,16", help="concurrent clients per cell")
    ap.add_argument("--seconds", type=float, default=20.0, help="at most this long per cell (after warm-up)")
    ap.add_argument("--max-requests", type=int, default=400, help="at most this many requests per cell")
    ap.add_argument("--ready-timeout", type=float, default=300.0, help="seconds to wait for the server to load")
    ap.add_argument("--out", default="metrics/benchmarks/serve_load.json")
    args = ap.parse_args()
    questions = [q["query"] for q in read_jsonl("data/pairs/test.jsonl")]
    if not questions:
        raise SystemExit("data/pairs/test.jsonl has no questions: run `dvc repro` first")
    port = free_port()
    exe = Path(sys.executable).with_name("ragtune")
    cmd = [str(exe), "serve", "--root", ".", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    proc = subprocess.Popen(cmd, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        t0 = time.perf_counter()
        health = wait_ready(port, proc, args.ready_timeout)
        load_s = round(time.perf_counter() - t0, 1)
        levels = health.get("access_levels") or []
        level = {"access_level": levels[-1]} if levels else {}
        endpoints = {
            "/v1/embeddings": [{"input": q, "model": "ragtune-embedder", "input_type": "query"} for q in questions],
            "/v1/search": [{"query": q, "top_k": 5, **level} for q in questions],
        }
        cells: dict[str, list[dict]] = {}
        for path, bodies in endpoints.items():
            for body in bodies[:3]:  # warm-up: first calls pay for lazy setup (BM25 of the level, allocator)
                post(port, path, body)
            for c in [int(x) for x in args.clients.split(",")]:
                row = run_cell(port, path, bodies, c, args.seconds, args.max_requests)
                cells.setdefault(path, []).append(row)
                print(
                    f"{path:15s} {c:3d} clients: {row['requests_per_s']:7.2f} req/s, p50 {row['p50_ms']:7.1f} ms, "
                    f"p95 {row['p95_ms']:7.1f} ms, p99 {row['p99_ms']:7.1f} ms ({row['requests']} requests)",
                    flush=True,
                )
        rss = peak_rss_mib(proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
    pipeline = json.loads(Path("models/pipeline.json").read_text(encoding="utf-8"))["system"]
    write_json(
        args.out,
        {
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, CPU",
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "backend": "pytorch",
            "not_measured": {
                "onnx": "blocked: optimum-onnx 0.1.0 (latest) requires transformers<4.58; sentence-transformers 6 "
                "requires transformers>=5",
                "onnx_int8": "blocked: as onnx",
            },
            "pipeline": pipeline,
            "server_load_s": load_s,
            "server_peak_rss_mib": rss,
            "seconds_per_cell": args.seconds,
            "max_requests_per_cell": args.max_requests,
            "questions": len(questions),
            "endpoints": cells,
        },
    )
    print(f"server peak RSS {rss} MiB; wrote {args.out}")


if __name__ == "__main__":
    main()
