"""The embedder's dev checks: sentence-transformers' IR evaluator at document level, and the paired evidence that a
fine-tune beats its base model."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from ragtune.train.embedder.config import TrainConfigError


def _document_ir_evaluator_class() -> type:
    """Subclass of InformationRetrievalEvaluator that scores documents, not chunks (built lazily: ST import is slow)."""
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

    class DocumentIREvaluator(InformationRetrievalEvaluator):
        """Retrieves chunks, then ranks each document by its best chunk (MaxP) before computing ST's metrics.

        Why: the labels name documents. Chunk-level dev relevance needs one "aligned" positive chunk per query,
        chosen by BM25 + base-dense scores, so it favours the base model and can pick the wrong checkpoint.
        Document level is what the evaluate stage reports, so the checkpoint kept is the one evaluate would
        prefer. All metric code is sentence-transformers' own; only the chunk → document collapse is added.
        """

        def __init__(self, *args: Any, chunk_to_doc: dict[str, str], **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.chunk_to_doc = chunk_to_doc

        def compute_metrics(self, queries_result_list: list[object]) -> dict[str, Any]:
            collapsed = []
            for hits in queries_result_list:
                best: dict[str, float] = {}
                for hit in sorted(hits, key=lambda h: (-h["score"], h["corpus_id"])):
                    best.setdefault(self.chunk_to_doc[hit["corpus_id"]], hit["score"])
                collapsed.append([{"corpus_id": d, "score": sc} for d, sc in best.items()])
            return super().compute_metrics(collapsed)

    return DocumentIREvaluator


def build_ir_evaluator(
    dev: list[dict[str, Any]],
    chunks: list[dict[str, Any]],
    query_prompt: str,
    passage_prompt: str,
    name: str = "dev",
    batch_size: int = 32,
    level: str = "doc",
    candidate_k: int = 100,
) -> Any:
    """The dev InformationRetrievalEvaluator over all chunks, at document level (default) or chunk level.

    ``level="doc"``: a query's labeled documents are relevant, and each document scores as its best chunk among
    the top ``candidate_k`` chunks (as in the evaluate stage). ``level="chunk"``: the aligned positive chunks are
    relevant. Metrics keep ST's names (``dev_cosine_ndcg@10``), so ``metric_for_best_model`` is the same for both.
    """
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

    if level not in ("doc", "chunk"):
        raise TrainConfigError(f"train_embedder.dev_level={level!r}: use doc or chunk")
    key = "positive_doc_ids" if level == "doc" else "positive_chunk_ids"
    labeled = [q for q in dev if q.get(key)]
    kwargs: dict[str, Any] = dict(
        queries={q["query_id"]: q["query"] for q in labeled},
        corpus={c["chunk_id"]: c["text"] for c in chunks},
        relevant_docs={q["query_id"]: set(q[key]) for q in labeled},
        name=name,
        query_prompt=query_prompt or None,
        corpus_prompt=passage_prompt or None,
        mrr_at_k=[10],
        ndcg_at_k=[10],
        accuracy_at_k=[1, 10],
        precision_recall_at_k=[10],
        map_at_k=[10],
        batch_size=batch_size,
        show_progress_bar=False,
    )
    if level == "chunk":
        return InformationRetrievalEvaluator(**kwargs)
    # ST retrieves max(all k) hits per query; the extra recall@candidate_k widens that to candidate_k chunks,
    # so ten distinct documents survive the collapse. It reads: a labeled document among the candidates.
    kwargs["precision_recall_at_k"] = [10, candidate_k]
    return _document_ir_evaluator_class()(**kwargs, chunk_to_doc={c["chunk_id"]: c["doc_id"] for c in chunks})


def dev_metrics(scores: dict[str, float]) -> dict[str, float]:
    """The dev evaluator's ``dev_cosine_*`` scores as metrics keys (``ndcg@10``, ``mrr@10``, …), rounded."""
    return {k.replace("dev_cosine_", ""): round(float(v), 4) for k, v in scores.items() if "cosine" in k}


def dev_questions(dev: Sequence[dict[str, Any]], level: str) -> list[dict[str, Any]]:
    """The dev questions the dev evaluator can score at ``level``: those with relevance labels at that level."""
    key = "positive_doc_ids" if level == "doc" else "positive_chunk_ids"
    return [q for q in dev if q.get(key)]


def dev_evidence(
    model: Any,
    base: Any,
    dev: Sequence[dict[str, Any]],
    chunks: Sequence[dict[str, Any]],
    query_prompt: str,
    passage_prompt: str,
    *,
    base_fingerprint: str,
    batch_size: int = 32,
    seed: int = 0,
) -> dict[str, float]:
    """The trained model's per-query dev NDCG@10 gain over its base, with a 95% paired-bootstrap interval.

    Scored as evaluate scores: every chunk retrieved, a document ranked by its best chunk. Why an interval and not
    the two means: with 10–15 dev questions one question moving a rank shifts the mean by several points, and a
    fine-tune that merely drew lucky dev questions must not replace a base model that may be better. The base
    model's vectors come from the embedding cache (``base_fingerprint``); the trained model is encoded afresh.
    """
    from ragtune.evaluation.metrics import dense_doc_metrics, paired_bootstrap
    from ragtune.retrieval import DenseEncoder, DenseIndex

    ids = [c["chunk_id"] for c in chunks]
    chunk_to_doc = {c["chunk_id"]: c["doc_id"] for c in chunks}
    per_query = {}
    for name, m, fingerprint in (("base", base, base_fingerprint), ("trained", model, "")):
        enc = DenseEncoder(m, fingerprint, batch_size=batch_size, use_cache=bool(fingerprint))
        index = DenseIndex(ids, enc.encode([c["text"] for c in chunks], passage_prompt, f"Dev check: {name}"))
        encode = functools.partial(enc.encode, prompt=query_prompt, description=f"Dev check: {name}")
        per_query[name] = dense_doc_metrics(index, encode, dev, chunk_to_doc)
    return paired_bootstrap(per_query["trained"], per_query["base"], seed=seed)
