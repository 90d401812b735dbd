"""Process pools for CPU-bound per-record text work (normalizing, chunking, BM25 tokenizing) whose output must not
depend on the worker count.

The work is pure Python, so threads would not help. Batches go to a pool of :func:`workers` processes and come back
in submission order, so the outputs are the same bytes with one worker or many: DVC sees the same outputs whatever
the machine. Inputs are read a bounded window ahead of the workers, never whole, so a streamed corpus stays
streamed.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def workers() -> int:
    """Processes for CPU-bound text work: the cores this process may run on (``RAGTUNE_WORKERS`` overrides)."""
    value = os.environ.get("RAGTUNE_WORKERS", "").strip()
    if value:
        if not value.isdigit() or int(value) < 1:
            raise ValueError(
                f"RAGTUNE_WORKERS={value!r}: not a whole number ≥ 1. Set it to the processes for text work "
                "(e.g. RAGTUNE_WORKERS=2), or unset it to use the cores this process may run on."
            )
        return int(value)
    affinity = getattr(os, "sched_getaffinity", None)  # Linux; macOS and Windows have only cpu_count
    return len(affinity(0)) if affinity else os.cpu_count() or 1


def pool_size(parallel: bool) -> int:
    """The processes :func:`ordered_map` runs ``fn`` in: :func:`workers` (at most 32) with a pool, else 1 (this one),
    for progress labels that say how the work is spread."""
    n_workers = min(workers(), 32)
    return n_workers if parallel and n_workers >= 2 else 1


def batched(items: Iterable[T], n: int) -> Iterator[list[T]]:
    """``items`` in lists of ``n`` (the last may be shorter), read lazily (Python 3.12's ``itertools.batched``)."""
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def bounded_imap(pool: Any, fn: Callable[[T], R], items: Iterable[T], window: int) -> Iterator[R]:
    """``pool.imap(fn, items)`` with at most ``window`` items in flight: ``imap`` reads its whole input ahead, which
    for a streamed corpus is the corpus in memory."""
    pending: collections.deque = collections.deque()
    for item in items:
        pending.append(pool.apply_async(fn, (item,)))
        if len(pending) >= window:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()


def ordered_map(
    fn: Callable[[T], R],
    items: Iterable[T],
    *,
    parallel: bool = True,
    initializer: Callable[..., None] | None = None,
    initargs: tuple[Any, ...] = (),
) -> Iterator[R]:
    """``map(fn, items)``, in a pool of :func:`workers` processes when ``parallel`` and there are two or more cores.

    ``initializer(*initargs)`` sets up each worker's state (a tokenizer, a chunker) once; without a pool it runs
    here, so ``fn`` sees the same state either way. Results come in ``items`` order, with at most two items a
    worker in flight. An exception raised by ``fn`` in a worker is raised here, with its own type.
    """
    n_workers = pool_size(parallel)
    if n_workers == 1:
        if initializer is not None:
            initializer(*initargs)
        yield from map(fn, items)
        return
    import multiprocessing

    # spawn, not fork: the parent may hold torch and tokenizer threads, which a forked child would inherit broken
    with multiprocessing.get_context("spawn").Pool(n_workers, initializer, initargs) as pool:
        yield from bounded_imap(pool, fn, items, 2 * n_workers)
