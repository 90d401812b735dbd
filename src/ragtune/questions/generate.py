"""Ask an LLM for questions about each chunk: concurrent, rate-limited, cached, with a progress bar and cost estimate.

Answers are asked for in parallel (a remote LLM spends seconds per answer, mostly waiting), cached as they arrive,
then filtered in chunk order in one thread, so the output depends only on the cache, never on which answer came
back first.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Any, Protocol

from ragtune.console import progress as progress_bar
from ragtune.questions.cache import AnswerCache, cache_key, text_sha
from ragtune.questions.client import Completion
from ragtune.questions.config import GenerationConfig
from ragtune.questions.filters import QuestionFilter
from ragtune.questions.prompt import load_prompt, user_message


class Client(Protocol):
    def complete(self, system: str, user: str) -> Completion: ...


class RateLimiter:
    """At most ``per_second`` request starts per second across threads; 0 means no limit.

    Spacing starts evenly is enough: the server's 429 with Retry-After, handled by the openai client, covers the
    rest, and a token bucket would only allow bursts that hosted APIs punish.
    """

    def __init__(self, per_second: float) -> None:
        self.interval = 1.0 / per_second if per_second > 0 else 0.0
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        if not self.interval:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval
        time.sleep(max(0.0, start - now))


def _description(tokens: int, price_per_1k: float | None) -> str:
    """The bar's label: tokens so far, and the cost when the user gave a price (never a guessed one)."""
    cost = f" · ~${tokens / 1000 * price_per_1k:.4f}" if price_per_1k is not None else ""
    return f"questions · {tokens:,} tokens{cost}"


def select_chunks(chunks: Sequence[dict[str, Any]], max_chunks: int | None) -> list[dict[str, Any]]:
    """The ``max_chunks`` chunks with the lowest sha256 of their id, in chunk order; all when ``max_chunks`` is None.

    Not the first N: those are the first documents' chunks, one corner of the corpus, and a held-out set drawn from
    them would test one topic. Hash order spreads the budget evenly over documents, needs no seed, and is stable
    when documents are added: a new chunk enters only by beating a selected one's hash, so most answers stay cached.
    """
    if max_chunks is None or max_chunks >= len(chunks):
        return list(chunks)
    ranked = sorted(range(len(chunks)), key=lambda i: text_sha(str(chunks[i]["chunk_id"])))
    return [chunks[i] for i in sorted(ranked[:max_chunks])]


def generate(
    chunks: Sequence[dict[str, Any]],
    config: GenerationConfig,
    *,
    client: Client,
    cache: AnswerCache,
    held_out: frozenset[str] = frozenset(),
    prompt: tuple[str, str] | None = None,
    progress: bool = True,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """``(questions, quarantine, counts)`` for up to ``max_chunks`` chunks (:func:`select_chunks`); only uncached
    chunks are asked.

    ``held_out`` holds :func:`ragtune.pairs.query_key` of every dev/test question (the leak guard). Questions come
    out by chunk order, then kind, then text. ``counts`` never holds the key or the endpoint's answers.
    """
    system, prompt_sha = prompt or load_prompt()
    selected = select_chunks(chunks, config.max_chunks)
    params = config.generation_params()
    keys = [cache_key(chunk["text"], prompt_sha, config.model, params) for chunk in selected]
    todo = {key: chunk for key, chunk in zip(keys, selected, strict=True) if key not in cache}
    limiter = RateLimiter(config.requests_per_second)
    usage = {"prompt_tokens": 0, "completion_tokens": 0}
    lock = threading.Lock()  # guards usage; the cache has its own

    def ask(key: str, chunk: dict[str, Any]) -> None:
        limiter.wait()
        answer = client.complete(system, user_message(chunk["text"], config.per_kind))
        cache.put(
            {
                "key": key,
                "chunk_id": chunk["chunk_id"],
                "model": config.model,
                "text": answer.text,
                "prompt_tokens": answer.prompt_tokens,
                "completion_tokens": answer.completion_tokens,
            }
        )
        with lock:
            usage["prompt_tokens"] += answer.prompt_tokens
            usage["completion_tokens"] += answer.completion_tokens

    if todo:
        with progress_bar() as bar, ThreadPoolExecutor(max_workers=max(1, config.concurrency)) as pool:
            task = bar.add_task(_description(0, config.price_per_1k_tokens), total=len(todo), visible=progress)
            pending = {pool.submit(ask, key, chunk) for key, chunk in todo.items()}
            while pending:
                done, pending = wait(pending, timeout=0.2, return_when=FIRST_EXCEPTION)
                for future in done:
                    if future.exception() is not None:  # an unreachable endpoint: stop asking, keep what came back
                        pool.shutdown(wait=True, cancel_futures=True)
                        raise future.exception()  # type: ignore[misc]
                tokens = usage["prompt_tokens"] + usage["completion_tokens"]
                bar.update(task, advance=len(done), description=_description(tokens, config.price_per_1k_tokens))

    filters = QuestionFilter(held_out)
    questions: list[dict[str, Any]] = []
    quarantine: list[dict[str, Any]] = []
    for key, chunk in zip(keys, selected, strict=True):
        kept, rejected = filters.chunk_questions(chunk, cache.get(key)["text"])  # type: ignore[index]
        questions.extend(kept)
        quarantine.extend(rejected)
    counts: dict[str, Any] = {
        "chunks": len(selected),
        "asked": len(todo),
        "cached": len(selected) - len(todo),
        "questions": len(questions),
        "tokens": usage,
        "quarantined": filters.verdicts.quarantined,
        "dropped": filters.verdicts.dropped,
    }
    if config.price_per_1k_tokens is not None:
        counts["estimated_cost"] = round(sum(usage.values()) / 1000 * config.price_per_1k_tokens, 6)
    return questions, quarantine, counts
