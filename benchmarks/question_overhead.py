"""What the question generator itself costs per chunk, with an LLM that answers instantly.

Usage (repo root, venv active, after `dvc repro chunk`; no LLM endpoint needed):
    python benchmarks/question_overhead.py [--chunks data/chunks/chunks.jsonl] [--n 100] [--repeats 3]
        [--concurrency 1,4] [--out metrics/benchmarks/question_overhead.json]

A real endpoint's latency (seconds per answer for a 7B model) swamps everything else, so this measures what is left
when the answer is free: ragtune's side of `ragtune.questions.generate` (the `openai` client's HTTP round trip, the
cache key and the append-only cache write, the rate limiter and thread pool, parsing and every quality filter). The
server is `ragtune.questions.loopback.LoopbackLLM` in a child process (so its JSON handling does not share this
process's GIL), answering every request at once with valid Vietnamese JSON: the questions params.yaml asks for,
numbered per request so the run-wide duplicate filter keeps them.

Each repeat starts from an empty answer cache (every chunk is asked), then runs again on the same cache (nothing is
asked: the cost of a re-run, the cache loaded from disk and every answer filtered again). The consistency filter
(round-trip retrieval) belongs to the questions stage and is not timed here.

Writes metrics/benchmarks/question_overhead.json (ms per chunk, median of the repeats, per concurrency).
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from ragtune.io import read_jsonl, write_json
from ragtune.params import load_params, section
from ragtune.paths import Paths
from ragtune.questions import AnswerCache, ChatClient, GenerationConfig, generate
from ragtune.questions.config import KINDS

# Question templates by kind (two each: a kind asked twice must not be its own near-duplicate); {n} makes each
# request's questions distinct, since the duplicate filter is run-wide.
TEMPLATES = {
    "factual": (
        "Theo quy định này, thời hạn xử lý hồ sơ số {n} là bao nhiêu ngày làm việc?",
        "Ai là người phê duyệt đề nghị mã {n} của nhân viên trong công ty?",
    ),
    "how_to": (
        "Nhân viên cần làm những bước nào để hoàn tất thủ tục số {n}?",
        "Làm sao để gửi yêu cầu hỗ trợ mã {n} cho bộ phận phụ trách?",
    ),
    "yes_no": (
        "Người lao động có được nộp hồ sơ số {n} qua mạng không?",
        "Trưởng phòng có phải ký xác nhận đơn mã {n} trước khi gửi đi không?",
    ),
    "multi_sentence": (
        "Tôi mới chuyển sang phòng ban khác. Tôi có phải làm lại thủ tục số {n} từ đầu không?",
        "Tôi đã nộp đơn mã {n} tuần trước. Bao lâu nữa thì tôi nhận được kết quả?",
    ),
}
_counter = itertools.count(1)


def canned_answer(body: dict[str, Any]) -> str:
    """A valid answer with the counts the request asked for (read back from its "N câu \"kind\"" line)."""
    user = body["messages"][-1]["content"]
    n = next(_counter)
    questions = []
    for kind in KINDS:
        marker = f'câu "{kind}"'
        if marker in user:
            count = int(user.split(marker)[0].rsplit(" ", 2)[-2])
            questions += [{"kind": kind, "question": TEMPLATES[kind][i % 2].format(n=f"{n}.{i}")} for i in range(count)]
    return json.dumps({"questions": questions}, ensure_ascii=False)


def serve(conn: Any) -> None:
    """Child process: a loopback server; answers "count" with the requests served so far, stops on "stop"."""
    from ragtune.questions.loopback import LoopbackLLM

    with LoopbackLLM(canned_answer) as llm:
        conn.send(llm.base_url)
        while (command := conn.recv()) != "stop":
            conn.send(len(llm.requests) if command == "count" else None)


def config_from(questions_p: dict[str, Any], base_url: str, concurrency: int) -> GenerationConfig:
    """The shipped questions params as a :class:`GenerationConfig`, pointed at the loopback server."""
    return GenerationConfig(
        base_url=base_url,
        model=str(questions_p["model"]),
        api_key_env="",
        temperature=float(questions_p["temperature"]),
        max_tokens=int(questions_p["max_tokens"]),
        per_kind=dict(questions_p["per_chunk"]),
        concurrency=concurrency,
        requests_per_second=0.0,
        timeout_s=float(questions_p["timeout_s"]),
        max_retries=int(questions_p["max_retries"]),
    )


def timed(chunks: list[dict], config: GenerationConfig, cache_path: Path) -> tuple[float, dict[str, Any]]:
    """One generate() run on ``cache_path`` (loaded fresh, as a re-run would): seconds and its counts."""
    t0 = time.perf_counter()
    cache = AnswerCache(cache_path)
    _, _, counts = generate(chunks, config, client=ChatClient(config), cache=cache, progress=False)
    return time.perf_counter() - t0, counts


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--chunks", default=str(Paths().chunks))
    ap.add_argument("--n", type=int, default=100, help="chunks asked about (the first N)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--concurrency", default="1,4")
    ap.add_argument("--out", default="metrics/benchmarks/question_overhead.json")
    args = ap.parse_args()
    chunks = read_jsonl(args.chunks)[: args.n]
    questions_p = section(load_params(), "questions")

    parent, child = multiprocessing.Pipe()
    server = multiprocessing.get_context("spawn").Process(target=serve, args=(child,), daemon=True)
    server.start()
    base_url = parent.recv()

    def served() -> int:
        parent.send("count")
        return parent.recv()

    rows: dict[str, Any] = {}
    try:
        for concurrency in (int(c) for c in args.concurrency.split(",")):
            config = config_from(questions_p, base_url, concurrency)
            cold, warm, requests, cached_requests, counts = [], [], [], [], {}
            for _ in range(args.repeats):
                with tempfile.TemporaryDirectory(prefix="ragtune-qoverhead-") as tmp:
                    cache_path = Path(tmp) / "answers.jsonl"
                    before = served()
                    seconds, counts = timed(chunks, config, cache_path)
                    middle = served()
                    cached_seconds, _ = timed(chunks, config, cache_path)
                    cold.append(seconds)
                    warm.append(cached_seconds)
                    requests.append(middle - before)
                    cached_requests.append(served() - middle)
            rows[str(concurrency)] = {
                "ms_per_chunk": round(1000 * statistics.median(cold) / len(chunks), 2),
                "cached_ms_per_chunk": round(1000 * statistics.median(warm) / len(chunks), 2),
                "requests": requests,
                "cached_requests": cached_requests,
                "questions_kept": counts["questions"],
                "quarantined": {k: v for k, v in counts["quarantined"].items() if v},
                "dropped": {k: v for k, v in counts["dropped"].items() if v},
            }
            print(concurrency, rows[str(concurrency)], flush=True)
    finally:
        parent.send("stop")
        server.join(timeout=5)
    out = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "protocol": "ragtune.questions.generate against LoopbackLLM in a child process answering instantly with "
        "valid Vietnamese JSON; per repeat: an empty cache (every chunk asked), then the same cache again (none "
        "asked); median of the repeats; consistency filter not included",
        "chunks": len(chunks),
        "chunks_file": args.chunks,
        "per_chunk": dict(questions_p["per_chunk"]),
        "repeats": args.repeats,
        "concurrency": rows,
    }
    write_json(args.out, out)
    print(json.dumps({c: {k: r[k] for k in ("ms_per_chunk", "cached_ms_per_chunk")} for c, r in rows.items()}))


if __name__ == "__main__":
    main()
