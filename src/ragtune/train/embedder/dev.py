"""The embedder's dev checks: sentence-transformers' IR evaluator at document level, scored over a fixed candidate
pool of the corpus, and the paired evidence (over the whole corpus) that a fine-tune beats its base model."""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ragtune.train.embedder.config import TrainConfigError

if TYPE_CHECKING:
    from ragtune.retrieval import DenseIndex, Ranking


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
    pool: Collection[str] | None = None,
) -> Any:
    """The dev InformationRetrievalEvaluator over all chunks (``pool=None``) or over the chunks of a fixed candidate
    pool (:func:`build_dev_pool`), at document level (default) or chunk level.

    ``level="doc"``: a query's labeled documents are relevant, and each document scores as its best chunk among
    the top ``candidate_k`` chunks (as in the evaluate stage). ``level="chunk"``: the aligned positive chunks are
    relevant. Metrics keep ST's names (``dev_cosine_ndcg@10``), so ``metric_for_best_model`` is the same for both.
    The pool only shrinks the corpus the evaluator encodes at every eval step; queries, labels and metric code are
    unchanged.
    """
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

    if level not in ("doc", "chunk"):
        raise TrainConfigError(f"train_embedder.dev_level={level!r}: use doc or chunk")
    key = "positive_doc_ids" if level == "doc" else "positive_chunk_ids"
    labeled = [q for q in dev if q.get(key)]
    keep = None if pool is None else set(pool)
    kwargs: dict[str, Any] = dict(
        queries={q["query_id"]: q["query"] for q in labeled},
        corpus={c["chunk_id"]: c["text"] for c in chunks if keep is None or c["chunk_id"] in keep},
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


def labeled_chunks(query: dict[str, Any], level: str, doc_chunks: dict[str, list[str]]) -> list[str]:
    """The chunks a dev question's labels make relevant at ``level``: every chunk of a labeled document (``doc``:
    MaxP may pick any of them, so all must be scored) or the aligned positive chunks (``chunk``)."""
    if level == "chunk":
        return list(query.get("positive_chunk_ids") or [])
    return [c for d in query.get("positive_doc_ids") or [] for c in doc_chunks.get(d, [])]


def dev_pool(
    dev: Sequence[dict[str, Any]], chunks: Sequence[dict[str, Any]], level: str, rankings: Iterable[Ranking], k: int
) -> tuple[list[str], dict[str, list[str]]]:
    """The dev candidate pool: per dev question, its labeled chunks (:func:`labeled_chunks`) and the first ``k``
    chunks of each ranking (BM25's, the base model's). Returns the union of all questions' pools in corpus order
    (the evaluator's corpus: independent of the order of questions and rankings), and each question's own pool."""
    doc_chunks: dict[str, list[str]] = {}
    for c in chunks:
        doc_chunks.setdefault(c["doc_id"], []).append(c["chunk_id"])
    rankings = list(rankings)
    per_query = {}
    for q in dev:
        own = dict.fromkeys(labeled_chunks(q, level, doc_chunks))
        for ranking in rankings:
            own |= dict.fromkeys(cid for cid, _ in ranking.get(q["query_id"], [])[:k])
        per_query[q["query_id"]] = list(own)
    wanted = {cid for own in per_query.values() for cid in own}
    return [c["chunk_id"] for c in chunks if c["chunk_id"] in wanted], per_query


@contextlib.contextmanager
def truncated(model: Any, max_seq_length: int | None) -> Iterator[None]:
    """``model`` encodes at ``max_seq_length`` inside the block (None: its own), then gets its own back: the model
    being trained, and the one saved, keep ``train_embedder.max_seq_length``."""
    own = model.max_seq_length
    model.max_seq_length = max_seq_length or own
    try:
        yield
    finally:
        model.max_seq_length = own


def pool_rankings(
    dev: Sequence[dict[str, Any]],
    chunks: Sequence[dict[str, Any]],
    k: int,
    *,
    base: Any,
    base_fingerprint: str,
    query_prompt: str,
    passage_prompt: str,
    bm25_params: dict[str, Any],
    batch_size: int,
    max_seq_length: int | None = None,
) -> tuple[dict[str, Ranking], DenseIndex]:
    """BM25's and the base model's top ``k`` chunks per dev question (``{"bm25": …, "base": …}``), ties broken by
    chunk id. BM25 is built from the ``bm25:`` params as every other stage builds it, and lists only chunks sharing
    a term with the question (a score of 0 is no candidate). The base model's passage vectors come from the
    embedding cache under ``base_fingerprint`` (an empty one: no cache); the stage's final dev check encodes the
    same corpus with the same base model, so whichever of the two runs first pays for the encode, once (and pairs and
    negatives have usually paid it already: ``max_seq_length``, their ``model.max_seq_length``, makes the vectors the
    ones they cached). Also returns the base model's index of the whole corpus, whose vectors score the base
    model before training (:meth:`DevPool.base_corpus_embeddings`)."""
    from ragtune.retrieval import DenseEncoder, DenseIndex, build_bm25

    queries = {q["query_id"]: q["query"] for q in dev}
    bm25 = build_bm25(chunks, bm25_params).search(queries, k)
    enc = DenseEncoder(base, base_fingerprint, batch_size=batch_size, use_cache=bool(base_fingerprint))
    with truncated(base, max_seq_length):
        texts = [c["text"] for c in chunks]
        index = DenseIndex([c["chunk_id"] for c in chunks], enc.encode(texts, passage_prompt, "Dev pool: base model"))
        query_vecs = enc.encode(list(queries.values()), query_prompt, "Dev pool: queries")
    rankings = {
        "bm25": {qid: [(cid, s) for cid, s in hits if s > 0] for qid, hits in bm25.items()},
        "base": index.search_vectors(list(queries), query_vecs, k),
    }
    return rankings, index


@dataclass(frozen=True)
class DevPool:
    """The fixed dev candidate pool (:func:`build_dev_pool`) and what ``metrics/train_embedder.json`` records of it."""

    chunk_ids: list[str]  # the evaluator's corpus, in corpus order
    k: int
    corpus_chunks: int
    docs_per_query_min: int  # distinct documents in the smallest question's own pool (MaxP NDCG@10 wants ≥ 10)
    seconds: float
    # the base model's passage vectors of chunk_ids, row for row (see base_corpus_embeddings); not in the metrics
    base_vectors: np.ndarray | None = field(default=None, repr=False, compare=False)

    def base_corpus_embeddings(self, device: Any = None) -> Any:
        """The base model's vectors of the pool, in the evaluator's corpus order, for its ``corpus_embeddings``.

        Why: the dev score before training is the base model's, and the pool was just ranked with the base model's
        vectors of every chunk (from the embedding cache, which pairs and negatives usually filled). Re-encoding
        the pool to score it was the stage's slowest dev check (28.6 of its 521 s on the sample): fp32, and not
        needed. The vectors were encoded at ``model.max_seq_length``; the chunk stage guarantees that every chunk
        fits ``train_embedder.max_seq_length`` too, so both truncations keep every token. ``device``: the model's, where
        the evaluator puts the queries' vectors."""
        import torch

        return None if self.base_vectors is None else torch.from_numpy(self.base_vectors).to(device or "cpu")

    def metrics(self) -> dict[str, Any]:
        return {
            "k": self.k,
            "chunks": len(self.chunk_ids),
            "corpus_chunks": self.corpus_chunks,
            "fraction": round(len(self.chunk_ids) / max(1, self.corpus_chunks), 4),
            "docs_per_query_min": self.docs_per_query_min,
            "seconds": round(self.seconds, 1),
        }


def build_dev_pool(
    dev: Sequence[dict[str, Any]],
    chunks: Sequence[dict[str, Any]],
    *,
    level: str,
    k: int,
    base: Any,
    base_fingerprint: str,
    query_prompt: str,
    passage_prompt: str,
    bm25_params: dict[str, Any],
    batch_size: int,
    max_seq_length: int | None = None,
) -> DevPool:
    """The chunks the dev evaluator scores at every eval step, built once before training: each dev question's
    labeled chunks, plus BM25's and the base model's top ``k`` for it (``train_embedder.dev_pool_k``).

    Why: ST's evaluator re-encodes its whole corpus at every eval step. On ALQAC's 3,308 chunks that took minutes
    per eval and most of the training time (issue 20); at a million chunks it cannot run. The pool holds at most
    ``questions × (2k + labeled chunks)`` chunks, however large the corpus.

    Why it measures the same thing: a checkpoint's NDCG@10 (and MRR@10, recall@10) depends only on the chunks it
    ranks in its top 10 (at document level, its best chunks down to the tenth distinct document) and on the labels.
    Ranking within a subset of the corpus keeps the order of the chunks in it, so whenever the checkpoint's top 10
    lies inside the pool, the pooled score equals the full-corpus score exactly. The labeled chunks are always in
    the pool, so a relevant document is never missing and scores as its best chunk; what is left out is only what
    neither BM25 nor the base model put in their top ``k`` and nobody labeled. The pool is fixed and deterministic
    (ties broken by chunk id), so every checkpoint is compared on the same candidates. (Only the @10 metrics are
    covered: document-level ``recall@100`` counts labeled documents among the first 100 chunks of the pool.)

    What it can miss: a checkpoint that promotes an unlabeled chunk from outside the pool into its top 10 would, on
    the full corpus, see a labeled document pushed down; here that chunk is absent, so its score is optimistic.
    That bias cancels between checkpoints only if they share it; ``benchmarks/dev_pool.py`` measures whether the
    pooled and the full-corpus evaluators keep the same checkpoint. The final dev evidence (:func:`dev_evidence`)
    still ranks the whole corpus.
    """
    t0 = time.perf_counter()
    rankings, index = pool_rankings(
        dev,
        chunks,
        k,
        base=base,
        base_fingerprint=base_fingerprint,
        query_prompt=query_prompt,
        passage_prompt=passage_prompt,
        bm25_params=bm25_params,
        batch_size=batch_size,
        max_seq_length=max_seq_length,
    )
    ids, per_query = dev_pool(dev, chunks, level, rankings.values(), k)
    chunk_to_doc = {c["chunk_id"]: c["doc_id"] for c in chunks}
    docs = [len({chunk_to_doc[c] for c in own if c in chunk_to_doc}) for own in per_query.values()]
    row = {cid: i for i, cid in enumerate(index.ids)}
    vectors = np.ascontiguousarray(index.embeddings[[row[c] for c in ids]], dtype=np.float32)
    return DevPool(ids, k, len(chunks), min(docs, default=0), time.perf_counter() - t0, vectors)


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
    trained_fingerprint: str = "",
    max_seq_length: int | None = None,
    batch_size: int = 32,
    seed: int = 0,
) -> dict[str, float]:
    """The trained model's per-query dev NDCG@10 gain over its base, with a 95% paired-bootstrap interval.

    Scored as evaluate scores: every chunk retrieved, a document ranked by its best chunk. Why an interval and not
    the two means: with 10–15 dev questions one question moving a rank shifts the mean by several points, and a
    fine-tune that merely drew lucky dev questions must not replace a base model that may be better. The base
    model's vectors come from the embedding cache (``base_fingerprint``). The trained model's go into it under
    ``trained_fingerprint`` when given: the fingerprint of the folder the stage saved it to, which the index,
    train_reranker and evaluate stages load, so the corpus is encoded by the fine-tuned model once per repro instead
    of twice (on ALQAC's 3,308 chunks, minutes). Empty: encoded afresh and not cached. ``max_seq_length``: the
    truncation those stages encode with (``model.max_seq_length``), set on both models while they are scored, so
    the cached vectors are theirs and both sides are scored as evaluate scores them; None keeps the models' own.
    """
    from ragtune.evaluation.metrics import dense_doc_metrics, paired_bootstrap
    from ragtune.retrieval import DenseEncoder, DenseIndex

    ids = [c["chunk_id"] for c in chunks]
    chunk_to_doc = {c["chunk_id"]: c["doc_id"] for c in chunks}
    per_query = {}
    for name, m, fingerprint in (("base", base, base_fingerprint), ("trained", model, trained_fingerprint)):
        enc = DenseEncoder(m, fingerprint, batch_size=batch_size, use_cache=bool(fingerprint))
        with truncated(m, max_seq_length):
            index = DenseIndex(ids, enc.encode([c["text"] for c in chunks], passage_prompt, f"Dev check: {name}"))
            encode = functools.partial(enc.encode, prompt=query_prompt, description=f"Dev check: {name}")
            per_query[name] = dense_doc_metrics(index, encode, dev, chunk_to_doc)
    return paired_bootstrap(per_query["trained"], per_query["base"], seed=seed)
