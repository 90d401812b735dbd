"""Reranker inference: score (query, passage) pairs and fuse the scores with the retriever's.

This is what search, serve and evaluate import. It holds no training code, so that loading a reranker to answer a
query never imports the trainer (see :mod:`ragtune.train.reranker` for how the reranker is trained).

The reranker's score is fused with the retriever's (:func:`fuse`), with the weight chosen on dev by the evaluate
stage. Weight 0 is the retriever alone, so a reranker that learned nothing useful cannot make the chosen pipeline
worse on dev, and the report shows the weight it got.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ragtune.rerankers import MARKER  # a CrossEncoder folder has none
from ragtune.retrieval import Ranking


def _minmax(values: Sequence[float]) -> list[float]:
    lo, hi = min(values), max(values)
    return [0.5 if hi == lo else (v - lo) / (hi - lo) for v in values]


def fuse(
    candidates: Sequence[tuple[str, float]], rerank_scores: Sequence[float], weight: float
) -> list[tuple[str, float]]:
    """``weight × reranker + (1 - weight) × retriever``, both min-max normalised over the reranked candidates.

    ``candidates`` are the retriever's top-n (best first) and ``rerank_scores`` the reranker's scores for them.
    Weight 1 is the reranker alone, 0 the retriever alone. Ties keep retrieval order.
    """
    if not candidates:
        return []
    r = _minmax([s for _, s in candidates])
    x = _minmax(list(rerank_scores))
    fused = [
        (cid, weight * xs + (1.0 - weight) * rs, i)
        for i, ((cid, _), rs, xs) in enumerate(zip(candidates, r, x, strict=True))
    ]
    fused.sort(key=lambda t: (-t[1], t[2]))
    return [(cid, round(s, 6)) for cid, s, _ in fused]


def reranker_kind(path: str | Path) -> str:
    """``cross_encoder`` for a sentence-transformers CrossEncoder folder, else the kind its marker names."""
    marker = Path(path, MARKER)
    return json.loads(marker.read_text(encoding="utf-8")).get("kind", "?") if marker.exists() else "cross_encoder"


def load_reranker(path: str | Path, device: str | None = "cpu") -> Any:
    """Any reranker the train_reranker stage ships, by its kind; each answers ``predict(pairs, batch_size)``.

    The kinds' modules are imported only when their kind is loaded: search with a cross-encoder never imports
    ``peft`` or the multi-vector encoder.
    """
    kind = reranker_kind(path)
    if kind == "cross_encoder":
        from sentence_transformers import CrossEncoder

        return CrossEncoder(str(path), device=device)
    if kind == "late_interaction":
        from ragtune.rerankers.late_interaction import LateInteractionReranker

        return LateInteractionReranker.load(path, device=device)
    if kind == "llm":
        from ragtune.rerankers.llm import LLMReranker

        return LLMReranker.load(path)
    raise ValueError(f"{path}: {MARKER} names an unknown reranker kind {kind!r} (cross_encoder, late_interaction, llm)")


def predict(model: Any, pairs: Sequence[tuple[str, str]], batch_size: int = 32, bf16: bool = False) -> list[float]:
    """Reranker scores for (query, passage) pairs; ``bf16`` runs the encoder under bf16 autocast on CPU.

    Cross-encoder inference is the slow part of reranking on CPU (every candidate is a full forward pass), and on a
    CPU with native bf16 the bf16 matmul is ~4× the fp32 peak (without it, bf16 is far slower: callers decide with
    :func:`ragtune.precision.use_cpu_bf16`); the one-logit head stays fp32, so only the encoder is rounded.
    """
    import contextlib

    import torch

    if not pairs:
        return []
    ctx = (
        torch.autocast("cpu", dtype=torch.bfloat16) if bf16 and model.device.type == "cpu" else contextlib.nullcontext()
    )
    with ctx, torch.inference_mode():
        scores = model.predict(list(pairs), batch_size=batch_size, show_progress_bar=False)
    return [float(s) for s in scores]


def rerank_ranking(
    model: Any,
    ranking: Ranking,
    queries: dict[str, str],
    chunk_text: dict[str, str],
    k: int,
    batch_size: int = 32,
    bf16: bool = False,
) -> dict[str, list[float]]:
    """Reranker scores for each query's top-k candidates, in candidate order (one ``predict`` call for all)."""
    pairs, spans = [], {}
    for qid, items in ranking.items():
        start = len(pairs)
        pairs += [(queries[qid], chunk_text[cid]) for cid, _ in items[:k]]
        spans[qid] = (start, len(pairs))
    scores = predict(model, pairs, batch_size, bf16)
    return {qid: scores[a:b] for qid, (a, b) in spans.items()}


def rerank_scores(
    model: Any,
    systems_by_split: dict[str, dict[str, Ranking]],
    splits: dict[str, Sequence[dict[str, Any]]],
    retrievers: Sequence[str],
    chunks: Sequence[dict[str, Any]],
    k: int,
    bf16: bool,
) -> dict[str, dict[str, dict[str, float]]]:
    """Reranker score per split, query and chunk over the union of the retrievers' top ``k``: one forward pass per
    (query, chunk), however many retrievers proposed it, and one ``predict`` call for every split, so a reranker that
    encodes each distinct passage once (late interaction) encodes a passage dev and test both retrieved once."""
    chunk_text = {c["chunk_id"]: c["text"] for c in chunks}
    union: dict[tuple[str, str], dict[str, float]] = {}  # (split, query id) → its candidates
    qtext: dict[tuple[str, str], str] = {}
    for split, queries in splits.items():
        qtext |= {(split, q["query_id"]): q["query"] for q in queries}
        for retr in retrievers:
            for qid, items in systems_by_split[split][retr].items():
                for cid, _ in items[:k]:
                    union.setdefault((split, qid), {})[cid] = 0.0
    pairs = [(qtext[key], chunk_text[cid]) for key, cids in union.items() for cid in cids]
    scores = iter(predict(model, pairs, 32, bf16))
    out: dict[str, dict[str, dict[str, float]]] = {split: {} for split in splits}
    for (split, qid), cids in union.items():
        out[split][qid] = {cid: next(scores) for cid in cids}
    return out


def apply_rerank(ranking: Ranking, scores: dict[str, list[float]], weight: float) -> Ranking:
    """The fused top-k (see :func:`fuse`) followed by the rest of the retriever's list, unchanged."""
    out: Ranking = {}
    for qid, items in ranking.items():
        n = len(scores.get(qid, []))
        out[qid] = fuse(items[:n], scores.get(qid, []), weight) + [(c, s - 1e3) for c, s in items[n:]]
    return out


def top1_concentration(ranking: Ranking, chunk_to_doc: dict[str, str]) -> tuple[str, float]:
    """The document most often ranked first, and the share of queries for which it is first."""
    firsts = Counter(chunk_to_doc[items[0][0]] for items in ranking.values() if items)
    if not firsts:
        return "", 0.0
    doc, n = firsts.most_common(1)[0]
    return doc, n / sum(firsts.values())
