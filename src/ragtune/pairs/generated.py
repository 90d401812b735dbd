"""LLM-generated questions (the questions stage's ``questions.jsonl``) joined to the pairs.

Three rules keep them honest:

- **Leak guard**: a generated question equal (after :func:`~ragtune.pairs.split.query_key`) to a labeled dev/test
  question is dropped: training on it would score the test on a memorised text.
- **Synthetic held-out sets**: with no labeled dev (or test) question, evaluate would have nothing to measure on. The
  questions of a few seeded chunks then form that split (``"source": "llm"``), and no training question, generated
  or self-supervised, may come from those chunks: the model must never have seen a held-out chunk as a positive.
- **Their own cap**: at most ``pairs.generated.max_per_labeled`` generated training pairs per labeled training
  question, so labels (the task) are not outvoted, as with the self-supervised pairs' cap. With no labels they are
  the main source: no cap.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ragtune.console import warn
from ragtune.errors import UserError
from ragtune.io import read_jsonl
from ragtune.pairs.split import query_key
from ragtune.pairs.synthetic import cap_synthetic

HELD_OUT = ("test", "dev")  # the order held-out chunks are drawn in: test first, as split_queries does


class StaleQuestionsError(UserError):
    """questions.jsonl names a chunk that chunks.jsonl lacks: it was written for another chunking."""


@dataclass
class Mixed:
    """What the generated questions add: held-out rows for empty labeled splits, training pairs, and counts."""

    heldout: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # only splits whose labeled set was empty
    train: list[dict[str, Any]] = field(default_factory=list)  # kind "llm", capped
    held_out_chunks: set[str] = field(default_factory=set)
    counts: dict[str, Any] = field(default_factory=dict)


def read_generated(path: str | Path) -> list[dict[str, Any]]:
    """The generated questions; none when the file is missing (no questions stage yet) or empty (generator off)."""
    return read_jsonl(path) if Path(path).is_file() else []


def held_out_size(ratio: float, cap: int, n_chunks: int) -> int:
    """How many chunks' questions form a synthetic held-out split: ``round(ratio × n_chunks)``, at least 1 when
    the ratio asks for a split and there are 2 chunks or more (one chunk stays for training), at most ``cap``."""
    if ratio <= 0 or cap <= 0 or n_chunks == 0:
        return 0
    return min(cap, max(1 if n_chunks >= 2 else 0, round(ratio * n_chunks)))


def mix_generated(
    generated: list[dict[str, Any]],
    splits: dict[str, list[dict[str, Any]]],
    chunk_docs: dict[str, str],
    pairs_params: dict[str, Any],
    questions_path: str | Path = "questions.jsonl",
) -> Mixed:
    """Split ``generated`` into held-out rows (for the labeled splits that are empty) and capped training pairs.

    ``splits`` are the labeled splits, ``chunk_docs`` maps chunk ids to their documents (at least every
    chunk a generated question names: a chunk missing from it is a stale question). Held-out chunks are
    drawn (seeded by ``pairs.seed``) among the chunks with a generated question that is no labeled training
    question's positive; dev and test chunks are disjoint. Returns nothing but zero counts when ``generated`` is
    empty, so a run without generated questions is the run it was before.
    """
    if not generated:
        return Mixed(counts=_counts(0))
    for line, q in enumerate(generated, 1):
        if q["chunk_id"] not in chunk_docs:
            raise StaleQuestionsError(
                f"{questions_path}:{line}: chunk {q['chunk_id']!r} is not in the chunks: the questions were written "
                "for another chunking. Re-run the questions stage (dvc repro questions)."
            )
    counts = _counts(len(generated))
    labeled_heldout = {query_key(q["query"]) for s in HELD_OUT for q in splits[s]}
    kept = [q for q in generated if query_key(q["query"]) not in labeled_heldout]
    counts["dropped_equal_to_heldout_query"] = len(generated) - len(kept)

    by_chunk: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for q in kept:
        by_chunk[q["chunk_id"]].append(q)
    labeled_train_chunks = {c for q in splits["train"] for c in q["positive_chunk_ids"]}
    candidates = sorted(set(by_chunk) - labeled_train_chunks)
    random.Random(int(pairs_params["seed"])).shuffle(candidates)
    held: dict[str, list[str]] = {}
    for name in HELD_OUT:
        ratio = float(pairs_params[f"{name}_ratio"])
        if splits[name]:  # a labeled split stays as it is
            continue
        taken = sum(len(c) for c in held.values())
        n = min(
            held_out_size(ratio, int(pairs_params["generated"]["held_out_chunks"]), len(candidates)),
            len(candidates) - taken,
        )
        held[name] = candidates[taken : taken + n]

    mixed = Mixed(counts=counts)
    train_keys = {query_key(q["query"]) for q in splits["train"]}
    heldout_keys = set(labeled_heldout)
    for name, chunk_ids in held.items():
        rows = []
        for q in (q for c in chunk_ids for q in by_chunk[c]):
            key = query_key(q["query"])
            if key in train_keys:  # a labeled training question: as a held-out question it would be a leak
                counts["dropped_heldout_equal_to_train_query"] += 1
            elif key in heldout_keys:  # already a question of the other held-out split
                counts["dropped_equal_to_heldout_query"] += 1
            else:
                heldout_keys.add(key)
                rows.append(_row(q, chunk_docs, query_id=q["question_id"], split=name, source="llm"))
        mixed.heldout[name] = sorted(rows, key=lambda r: r["query_id"])
        mixed.held_out_chunks.update(chunk_ids)
        counts["held_out_chunks"][name] = len(chunk_ids)
        counts["held_out_questions"][name] = len(rows)

    train = []
    for q in kept:
        if q["chunk_id"] in mixed.held_out_chunks:
            continue
        if query_key(q["query"]) in heldout_keys:  # equal to a synthetic held-out question of another chunk
            counts["dropped_equal_to_heldout_query"] += 1
            continue
        train.append(_row(q, chunk_docs, query_id=q["question_id"], kind="llm", question_kind=q.get("kind", "")))
    mixed.train, counts["dropped_over_max_per_labeled"] = cap_synthetic(
        train, len(splits["train"]), float(pairs_params["generated"]["max_per_labeled"]), int(pairs_params["seed"])
    )
    counts["train_kept"] = len(mixed.train)
    return mixed


def split_source(n_labeled: int, mixed: Mixed, name: str) -> str:
    """Where a held-out split's questions come from: ``labeled``, ``llm`` (synthetic) or ``none`` (empty)."""
    return "labeled" if n_labeled else "llm" if mixed.heldout.get(name) else "none"


def describe_generated(mixed: Mixed) -> str:
    """The generated part of the stage summary (`` + 120 generated pairs; test: 80 LLM-generated questions
    (synthetic)``); warns for each synthetic held-out split, whose scores say little about real users, and when
    the cap threw away most of the generated pairs (questions paid for and not used)."""
    text = f" + {len(mixed.train)} generated pairs"
    capped = mixed.counts["dropped_over_max_per_labeled"]
    if capped > len(mixed.train):  # most of what was paid for is thrown away
        warn(
            f"{capped} generated pairs were dropped by pairs.generated.max_per_labeled and {len(mixed.train)} kept: "
            "ask about fewer chunks (questions.max_chunks) to pay for fewer questions, or raise the cap"
        )
    for name in HELD_OUT:
        if mixed.heldout.get(name):
            text += f"; {name}: {len(mixed.heldout[name])} LLM-generated questions (synthetic)"
            warn(
                f"the {name} questions are LLM-generated from {mixed.counts['held_out_chunks'][name]} held-out "
                "chunks: their scores measure agreement with the generator, not with real users; label questions "
                f"for a real {name} split"
            )
    return text


def _counts(read: int) -> dict[str, Any]:
    return {
        "read": read,
        "dropped_equal_to_heldout_query": 0,
        "dropped_heldout_equal_to_train_query": 0,
        "held_out_chunks": {"dev": 0, "test": 0},
        "held_out_questions": {"dev": 0, "test": 0},
        "train_kept": 0,
        "dropped_over_max_per_labeled": 0,
        "dropped_self_supervised_from_held_out_chunks": 0,
    }


def _row(q: dict[str, Any], chunk_docs: dict[str, str], **extra: Any) -> dict[str, Any]:
    """A pair row in the shape of the labeled and synthetic rows; the document is the chunk's own."""
    query_id = extra.pop("query_id")
    return {
        "query_id": query_id,
        "query": q["query"],
        "positive_doc_ids": [chunk_docs[q["chunk_id"]]],
        "positive_chunk_ids": [q["chunk_id"]],
        **extra,
    }
