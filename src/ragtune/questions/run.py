"""The questions stage: chunks → LLM-written questions that passed every filter, their quarantine and metrics.

Off (``questions.generator: none``, the default) it writes empty outputs, so the DAG is the same with or without
an LLM and ``dvc repro`` never needs an endpoint unless the user turned one on. On, it asks only for chunks the
answer cache does not hold, then filters in a fixed order: parsing, length, language, copying, duplicates
(:mod:`~ragtune.questions.filters`), then round-trip consistency (:mod:`~ragtune.questions.consistency`). The leak
guard against dev/test questions runs in the pairs stage, which is where the splits are drawn.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from ragtune.console import warn
from ragtune.errors import UserError
from ragtune.io import read_nonempty_jsonl, write_json, write_jsonl
from ragtune.paths import Paths
from ragtune.questions.cache import AnswerCache
from ragtune.questions.client import ChatClient
from ragtune.questions.config import KINDS, GenerationConfig
from ragtune.questions.consistency import round_trip
from ragtune.questions.generate import generate
from ragtune.questions.prompt import load_prompt

MOSTLY_QUARANTINED = 0.5  # above this share of questions quarantined, the model or prompt is likely wrong: say so


def generation_config(questions_p: dict[str, Any]) -> GenerationConfig:
    """The ``questions:`` params section as a :class:`GenerationConfig` (``per_chunk`` → ``per_kind``, 0 → all)."""
    q = questions_p
    price = q.get("price_per_1k_tokens")
    return GenerationConfig(
        base_url=str(q["base_url"]),
        model=str(q["model"]),
        api_key_env=str(q.get("api_key_env") or ""),
        temperature=float(q["temperature"]),
        max_tokens=int(q["max_tokens"]),
        per_kind={kind: int(n) for kind, n in dict(q["per_chunk"]).items() if int(n)},
        max_chunks=int(q["max_chunks"]) or None,
        concurrency=int(q["concurrency"]),
        requests_per_second=float(q["requests_per_second"]),
        timeout_s=float(q["timeout_s"]),
        max_retries=int(q["max_retries"]),
        price_per_1k_tokens=None if price is None else float(price),
    )


def _prompt(prompt_file: str) -> tuple[str, str]:
    path = Path(prompt_file)
    if not path.is_file():
        raise UserError(
            f"questions.prompt_file: {prompt_file} is not a file; point it at the prompt to send (the shipped one "
            "is src/ragtune/questions/prompt.vi.md)"
        )
    return load_prompt(path)


def run_questions(
    questions_p: dict[str, Any], model_p: dict[str, Any], bm25_p: dict[str, Any], paths: Paths
) -> dict[str, str]:
    """Run the questions stage under ``paths``; returns the stage summary ``{"read": …, "wrote": …}``.

    The answer cache (``paths.answer_cache``) is never removed: it is what makes a re-run free. Every other output
    is removed first, so a failed run leaves no stale questions for pairs to read.
    """
    for path in (paths.questions, paths.questions_quarantine, paths.metrics("questions")):
        path.unlink(missing_ok=True)
    paths.answer_cache.parent.mkdir(parents=True, exist_ok=True)
    paths.answer_cache.touch()  # a DVC output even when the generator is off

    if questions_p["generator"] == "none":
        write_jsonl(paths.questions, [])
        write_jsonl(paths.questions_quarantine, [])
        write_json(paths.metrics("questions"), {"generator": "none", "questions": 0})
        return {"read": "questions.generator: none", "wrote": "0 questions (set questions.generator: llm to ask one)"}

    config = generation_config(questions_p)
    if not config.per_kind:
        raise UserError("questions.per_chunk asks for 0 questions of every kind; ask for at least one")
    prompt = _prompt(str(questions_p["prompt_file"]))
    client = ChatClient(config)  # a named but unset key variable fails here, before any request
    chunks = read_nonempty_jsonl(paths.chunks, "Run the chunk stage first.")
    cache = AnswerCache(paths.answer_cache)
    questions, quarantine, counts = generate(chunks, config, client=client, cache=cache, prompt=prompt)
    questions, inconsistent, consistency = round_trip(
        questions, chunks, dict(questions_p["consistency"]), model_p, bm25_p
    )
    quarantine += inconsistent
    counts["quarantined"]["not_round_trip"] = len(inconsistent)
    counts["questions"] = len(questions)

    by_kind = Counter(q["kind"] for q in questions)
    metrics = {
        "generator": "llm",
        "model": config.model,
        "prompt_sha256": prompt[1],
        "chunks_with_questions": len({q["chunk_id"] for q in questions}),
        "by_kind": {kind: by_kind.get(kind, 0) for kind in KINDS},
        "consistency": consistency,
        **counts,
    }
    write_jsonl(paths.questions, questions)
    write_jsonl(paths.questions_quarantine, quarantine)
    write_json(paths.metrics("questions"), metrics)

    rejected = sum(counts["quarantined"].values())
    if rejected > MOSTLY_QUARANTINED * (rejected + len(questions)):
        top = max(counts["quarantined"].items(), key=lambda kv: kv[1])
        warn(
            f"{rejected} of {rejected + len(questions)} generated questions were quarantined (most: {top[0]} "
            f"{top[1]}); read {paths.questions_quarantine} — the model ({config.model}) or the prompt may not suit "
            "this corpus"
        )
    return {
        "read": f"{counts['chunks']} chunks ({counts['asked']} asked, {counts['cached']} cached)",
        "wrote": f"{len(questions)} questions, {len(quarantine)} quarantined "
        f"({consistency['not_round_trip']} not round-trip), {sum(counts['tokens'].values()):,} tokens",
    }
