"""The last gate before pairs are written: refuse a leaked split, and report statistics that make bad pairs visible."""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Sequence
from typing import Any

from ragtune.pairs.split import query_key


def validate(
    splits: dict[str, list[dict[str, Any]]],
    synthetic: Sequence[dict[str, Any]],
    chunks: dict[str, dict[str, Any]],
    documents: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """Statistics that make bad pair data visible in `metrics/pairs.json` (and fail loudly on leakage).

    :func:`~ragtune.pairs.run.run_pairs` runs this before writing any output, so a leaked split is never written.
    """
    heldout = {query_key(q["query"]) for s in ("dev", "test") for q in splits[s]}
    train_keys = [query_key(q["query"]) for q in splits["train"]] + [query_key(p["query"]) for p in synthetic]
    leaked = sorted({k for k in train_keys if k in heldout})
    if leaked:
        raise AssertionError(f"{len(leaked)} held-out query texts also appear in training, e.g. {leaked[:3]}")
    test_keys = {query_key(q["query"]) for q in splits["test"]}
    leaked = sorted({query_key(q["query"]) for q in splits["dev"]} & test_keys)
    if leaked:  # model selection on dev would then be selection on test
        raise AssertionError(f"{len(leaked)} test query texts also appear in dev, e.g. {leaked[:3]}")
    # A synthetic ("source": "llm") held-out question was written from its chunk: no training pair may have it as a
    # positive, or the held-out score would measure recall of a chunk the model was trained on.
    held_chunks = {
        c for s in ("dev", "test") for q in splits[s] if q.get("source") == "llm" for c in q["positive_chunk_ids"]
    }
    trained = sorted({c for p in [*splits["train"], *synthetic] for c in p["positive_chunk_ids"]} & held_chunks)
    if trained:
        raise AssertionError(f"{len(trained)} held-out chunks are positives of training pairs, e.g. {trained[:3]}")

    def lengths(items):
        return [len(x["query"].split()) for x in items]

    report: dict[str, Any] = {"leaked_heldout_queries": 0}
    for name, items in [*splits.items(), ("synthetic", synthetic)]:
        qlens = lengths(items)
        pos = [chunks[c] for x in items for c in x["positive_chunk_ids"]]
        by_type = Counter(
            documents[d].get("metadata", {}).get("document_type", "unknown")
            for x in items
            for d in x["positive_doc_ids"]
        )
        keys = Counter((query_key(x["query"]), tuple(x["positive_chunk_ids"])) for x in items)
        report[name] = {
            "pairs": len(items),
            "duplicates": sum(n - 1 for n in keys.values() if n > 1),
            "empty_queries": sum(1 for x in items if not x["query"].strip()),
            "no_positive_chunk": sum(1 for x in items if not x["positive_chunk_ids"]),
            "query_words_median": statistics.median(qlens) if qlens else 0,
            "query_length_outliers": sum(1 for n in qlens if n < 2 or n > 64),
            "positive_tokens_median": statistics.median([p["n_tokens"] for p in pos]) if pos else 0,
            "positives_per_query_mean": round(sum(len(x["positive_doc_ids"]) for x in items) / len(items), 3)
            if items
            else 0,
            "by_document_type": dict(sorted(by_type.items())),
        }
    return report
