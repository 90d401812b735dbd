"""One model thread for every model call, and micro-batching of concurrent embedding requests.

Model calls are CPU-bound and hold state that is not thread-safe (a fast tokenizer raises "Already borrowed" when
two threads use it at once), so they run on a single worker thread, off the event loop: the server keeps accepting
and answering (health, validation errors) while a model runs, and torch still uses every core inside one call.

Embedding requests are queued rather than run one by one. While the model thread works, requests that arrive wait
in the queue; the next model call takes all of them (up to ``max_batch`` texts, per ``input_type``) in one forward
pass, which is what makes 16 concurrent one-query requests cost about one batch instead of sixteen calls. No request
waits on a timer: a request that finds the thread idle runs at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")
EmbedFn = Callable[[list[str], str], tuple[np.ndarray, ...]]
"""``(texts, input_type) → arrays with one row per text`` (vectors, token counts): each is split per request."""


@dataclass
class _Job:
    texts: list[str]
    input_type: str
    future: asyncio.Future[tuple[np.ndarray, ...]] = field(repr=False)


class ModelWorker:
    """Runs model calls on one thread; :meth:`embed` merges concurrent embedding requests into shared calls.

    Create it inside the running event loop (the app's lifespan), then :meth:`start`; :meth:`stop` fails what is
    still queued and lets the thread finish its current call.
    """

    def __init__(self, embed_fn: EmbedFn, max_batch: int) -> None:
        self._embed_fn = embed_fn
        self._max_batch = max_batch
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ragtune-model")
        self._queue: asyncio.Queue[_Job] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.calls = 0  # embedding model calls made (the tests read it to see batching happen)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._batches(), name="ragtune-embed-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        while not self._queue.empty():
            job = self._queue.get_nowait()
            if not job.future.done():
                job.future.set_exception(RuntimeError("the server is shutting down"))
        self._executor.shutdown(wait=True, cancel_futures=True)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on the model thread, after the calls queued before it."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, partial(fn, *args))

    async def embed(self, texts: list[str], input_type: str) -> tuple[np.ndarray, ...]:
        """``embed_fn``'s arrays for ``texts`` (one request's), computed with whatever other requests are waiting."""
        job = _Job(texts, input_type, asyncio.get_running_loop().create_future())
        self._queue.put_nowait(job)
        return await job.future

    async def _batches(self) -> None:
        carry: _Job | None = None
        while True:
            job = carry or await self._queue.get()
            carry = None
            jobs, n = [job], len(job.texts)
            while not self._queue.empty():
                nxt = self._queue.get_nowait()
                if n + len(nxt.texts) > self._max_batch:
                    carry = nxt  # starts the next batch: a request is never split
                    break
                jobs.append(nxt)
                n += len(nxt.texts)
            try:
                await self._run_batch(jobs)
            except asyncio.CancelledError:  # stop(): nobody will answer these requests now
                for j in [*jobs, *([carry] if carry else [])]:
                    j.future.cancel()
                raise

    async def _run_batch(self, jobs: list[_Job]) -> None:
        for input_type in dict.fromkeys(j.input_type for j in jobs):  # one call per prompt, in arrival order
            group = [j for j in jobs if j.input_type == input_type and not j.future.done()]
            if not group:
                continue
            texts = [t for j in group for t in j.texts]
            try:
                arrays = await self.run(self._embed_fn, texts, input_type)
            except Exception as exc:  # a model failure fails these requests, never the batcher
                for j in group:
                    if not j.future.done():
                        j.future.set_exception(exc)
                continue
            finally:
                self.calls += 1
            start = 0
            for j in group:
                if not j.future.done():  # cancelled: the client went away
                    j.future.set_result(tuple(a[start : start + len(j.texts)] for a in arrays))
                start += len(j.texts)
