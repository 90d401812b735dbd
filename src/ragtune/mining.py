"""Hard-negative mining: BM25 + base-dense (``mine_hard_negatives``' rule, exact search at corpus scale) + random.

Each training pair becomes a FlagEmbedding-style group ``{"query", "pos": [...], "neg": [...]}``.

False negatives are the main risk: a "negative" that actually answers the query teaches the model to push a
right answer away. Three guards apply to every source:

1. Chunks of a positive *document* are never negatives (labels are per document, so a sibling chunk may well
   answer the query), nor is any chunk whose text equals a positive.
2. BM25: the top ``bm25.skip_top`` candidates are skipped, and a candidate scoring ≥ ``bm25.max_ratio`` × the
   positive's BM25 score is dropped as "too close to call".
3. Dense: sentence-transformers' ``mine_hard_negatives`` rule with ``range_min`` and ``relative_margin`` (the
   NV-Retriever TopK-PercPos rule): a candidate within ``relative_margin`` of the positive's similarity is dropped.

Random negatives keep easy contrast in the mix, so the model does not only see near-misses.
"""

from __future__ import annotations

import random
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ragtune.console import warn
from ragtune.io import EmptyInputError, count_records, iter_jsonl, read_jsonl, require_records, write_json, write_jsonl
from ragtune.knn import DEFAULT_BACKEND, Backend, array_blocks, exact_top_k, order_rows
from ragtune.retrieval import BM25Index, Embedder, bm25_settings, load_bm25_counts, load_dense
from ragtune.text import text_digest

if TYPE_CHECKING:
    from ragtune.paths import Paths


def _positive_texts(pair: dict[str, Any], chunk_text: dict[str, str]) -> list[str]:
    return pair.get("positive_texts") or [chunk_text[c] for c in pair["positive_chunk_ids"]]


def mine_dense(
    pairs: Sequence[dict[str, Any]],
    corpus_texts: Sequence[str],
    dense: Embedder,
    *,
    num_candidates: int,
    range_min: int,
    range_max: int,
    relative_margin: float,
    chunk_text: dict[str, str],
    knn_backend: Backend = DEFAULT_BACKEND,
) -> tuple[dict[str, list[tuple[str, float]]], dict[str, float]]:
    """Dense candidates per query id, best first, margin-filtered, by the rule of sentence-transformers'
    ``mine_hard_negatives`` (``sampling_strategy="top"``, ``relative_margin``), computed at corpus scale.

    Why not that function: it holds the corpus's vectors in memory (twice, with FAISS) or scores up to 16,384
    queries against the whole corpus in one matrix (131 GB at 2M chunks), and an encode it starts cannot resume.
    Here the corpus is encoded through the embedder's sharded cache (:class:`ragtune.retrieval.DenseEncoder`: a
    killed encode resumes at its last finished shard, and evaluate reads the same vectors) and searched exactly,
    block by block (:func:`ragtune.knn.exact_top_k`). tests/test_mining.py checks the result against
    ``mine_hard_negatives`` on the same model.

    The rule: rows are (query, positive text); rows with the same query text are one query, and each of its
    positives is masked for all of them; the corpus is deduplicated by text, positives included. Each query's best
    ``range_max`` + (most rows of one query text) chunks are searched, its positives removed, and a chunk scoring
    above (lowest positive score − |that| × ``relative_margin``) dropped (NV-Retriever's TopK-PercPos); of the rest,
    ranks [``range_min``, ``range_max``) are candidates, the first ``num_candidates`` kept. More candidates than
    needed are asked for, because same-document chunks are removed afterwards (this rule only knows positive texts).
    """
    rows = [(p["query_id"], p["query"], text) for p in pairs for text in _positive_texts(p, chunk_text)]
    if not rows:
        return {}, {}
    corpus = list(dict.fromkeys([*corpus_texts, *(text for _, _, text in rows)]))
    row_of = {text: i for i, text in enumerate(corpus)}
    queries = list(dict.fromkeys(query for _, query, _ in rows))
    query_of = {query: i for i, query in enumerate(queries)}
    positives: list[list[int]] = [[] for _ in queries]
    for _, query, text in rows:
        if row_of[text] not in positives[query_of[query]]:
            positives[query_of[query]].append(row_of[text])
    range_max = min(range_max, len(corpus_texts) - 1)
    num_candidates = max(1, min(num_candidates, range_max - range_min))

    query_vecs = dense.encode_queries(queries)
    corpus_vecs = dense.encode_passages(corpus)
    positive_scores = [np.einsum("d,kd->k", query_vecs[q], corpus_vecs[rows_]) for q, rows_ in enumerate(positives)]
    most_rows = max(Counter(query for _, query, _ in rows).values())
    scores, found = exact_top_k(query_vecs, array_blocks(corpus_vecs), range_max + most_rows, backend=knn_backend)
    for q, pos in enumerate(positives):
        lowest = float(positive_scores[q].min())
        scores[q, np.isin(found[q], pos) | (scores[q] > lowest - abs(lowest) * relative_margin)] = -np.inf
    scores, found = order_rows(scores, found, range_max)
    scores = scores[:, range_min : range_min + num_candidates]
    found = found[:, range_min : range_min + num_candidates]

    candidates: list[list[tuple[str, float]]] = []
    pos_scores: list[float] = []
    neg_scores: list[float] = []
    for q, pos in enumerate(positives):
        kept = [(corpus[int(i)], float(s)) for i, s in zip(found[q], scores[q], strict=True) if s != -np.inf]
        candidates.append(kept)
        if kept:  # as mine_hard_negatives counts: one row per positive, its negatives repeated on each
            pos_scores.extend(float(s) for s in positive_scores[q])
            neg_scores.extend(s for _ in pos for _, s in kept)
    out: dict[str, list[tuple[str, float]]] = {}
    for qid, query, _ in rows:
        out.setdefault(qid, candidates[query_of[query]])
    stats = {
        "dense_positive_score_mean": round(float(np.mean(pos_scores)), 4) if pos_scores else 0.0,
        "dense_negative_score_mean": round(float(np.mean(neg_scores)), 4) if neg_scores else 0.0,
    }
    return out, stats


def descending(scores: np.ndarray, first: int = 64) -> Iterator[int]:
    """Indices from the highest score to the lowest, ties by index: ``np.argsort(-scores, kind="stable")`` computed
    a growing prefix at a time. Mining reads a few dozen ranks per question; a full sort of a million-chunk score
    vector per question was most of the stage's time at 100,000 chunks."""
    n, k, done = len(scores), first, 0
    while done < n:
        if k >= n:
            order = np.argsort(-scores, kind="stable")
        else:
            kth = np.partition(scores, n - k)[n - k]  # the k-th highest score
            cand = np.flatnonzero(scores >= kth)  # every index tied with it too: the prefix is exact
            order = cand[np.lexsort((cand, -scores[cand]))]
        for i in order[done:]:
            yield int(i)
        done = len(order)
        k *= 4


class MiningCorpus:
    """What mining needs of every chunk, without the texts: ids, the first chunk of each text (by
    :func:`~ragtune.text.text_digest`) and its later copies, the chunks of the documents the pairs name and the texts
    of their positive chunks. Chunks are added one at a time as a stream passes (:meth:`add`); the texts of the chosen
    negatives are fetched at the end (:meth:`texts`).

    Why: at a million chunks, holding every chunk record, a text → index map and the id maps cost 4.8 GB; this
    costs about a fifth of that, and the groups are the same.
    """

    def __init__(
        self, named_docs: Collection[str], named_chunks: Collection[str], fetch: Callable[[set[int]], dict[int, str]]
    ):
        self.named_docs, self.named_chunks, self._fetch = named_docs, named_chunks, fetch
        self.ids: list[str] = []
        self.first_of_text: dict[bytes, int] = {}
        self.copies: dict[bytes, list[int]] = {}  # the later chunks of a text that occurs more than once
        self.doc_chunks: dict[str, list[int]] = defaultdict(list)
        self.index_of: dict[str, int] = {}  # the named chunks' positions
        self.text_of: dict[str, str] = {}  # the named chunks' texts

    def add(self, chunk: dict[str, Any]) -> str:
        """Take the next chunk of the corpus; returns its text (so a BM25 index can be built from the same pass)."""
        i, text = len(self.ids), chunk["text"]
        self.ids.append(chunk["chunk_id"])
        digest = text_digest(text)
        if self.first_of_text.setdefault(digest, i) != i:
            self.copies.setdefault(digest, []).append(i)
        if chunk["doc_id"] in self.named_docs:
            self.doc_chunks[chunk["doc_id"]].append(i)
        if chunk["chunk_id"] in self.named_chunks:
            self.index_of[chunk["chunk_id"]] = i
            self.text_of[chunk["chunk_id"]] = text
        return text

    @classmethod
    def of(cls, chunks: Sequence[dict[str, Any]]) -> MiningCorpus:
        """Every chunk of an in-memory list."""
        corpus = cls(
            {c["doc_id"] for c in chunks},
            {c["chunk_id"] for c in chunks},
            lambda wanted: {i: chunks[i]["text"] for i in wanted},
        )
        for c in chunks:
            corpus.add(c)
        return corpus

    @classmethod
    def for_pairs(cls, path: Path, pairs: Sequence[dict[str, Any]]) -> MiningCorpus:
        """An empty corpus for the chunks of JSONL file ``path`` that holds the texts ``pairs`` need; the negatives'
        texts are fetched from the file (only their lines are parsed)."""

        def fetch(wanted: set[int]) -> dict[int, str]:
            return {i: c["text"] for i, (_, c) in zip(sorted(wanted), iter_jsonl(path, only=wanted), strict=True)}

        named_docs = {d for p in pairs for d in p["positive_doc_ids"]}
        return cls(named_docs, {c for p in pairs for c in p["positive_chunk_ids"]}, fetch)

    @classmethod
    def read(cls, path: Path, pairs: Sequence[dict[str, Any]]) -> MiningCorpus:
        """:meth:`for_pairs`, filled from ``path`` in one streamed pass."""
        corpus = cls.for_pairs(path, pairs)
        for _, c in iter_jsonl(path):
            corpus.add(c)
        return corpus

    def __len__(self) -> int:
        return len(self.ids)

    def index_of_text(self, text: str) -> int | None:
        """The first chunk whose text is ``text``."""
        return self.first_of_text.get(text_digest(text))

    def same_text(self, text: str) -> list[int]:
        """Every chunk whose text is ``text``."""
        digest = text_digest(text)
        first = self.first_of_text.get(digest)
        return [] if first is None else [first, *self.copies.get(digest, [])]

    def texts(self, wanted: set[int]) -> dict[int, str]:
        return self._fetch(wanted)


def build_groups(
    pairs: Sequence[dict[str, Any]],
    corpus: MiningCorpus | Sequence[dict[str, Any]],
    bm25: BM25Index | None,
    dense_candidates: dict[str, list[tuple[str, float]]],
    *,
    n_bm25: int,
    n_dense: int,
    n_random: int,
    bm25_skip_top: int,
    bm25_max_ratio: float,
    seed: int,
) -> tuple[list[dict[str, Any]], Counter]:
    """Assemble groups from the three sources, applying the same-document guard to all of them.

    ``corpus`` names the chunks the pairs' documents and positives come from (a list of chunk records is read
    whole). Negatives are ordered dense, then BM25, then random: a trainer that takes only the first n uses the
    margin-filtered dense negatives first (lexical top hits are likelier to be unlabeled positives).
    """
    if not isinstance(corpus, MiningCorpus):
        corpus = MiningCorpus.of(corpus)
    rng = random.Random(seed)
    stats: Counter = Counter()
    groups = []
    from ragtune.console import track

    for p in track(pairs, "Mining negatives", total=len(pairs)):
        pos_texts = _positive_texts(p, corpus.text_of)
        excluded = {i for d in p["positive_doc_ids"] for i in corpus.doc_chunks.get(d, [])}
        excluded |= {i for t in pos_texts for i in corpus.same_text(t)}  # a copy of a positive is no negative
        chosen: list[int] = []
        sources: list[str] = []

        if n_dense:
            taken = 0
            for text, _score in dense_candidates.get(p["query_id"], []):
                i = corpus.index_of_text(text)
                if i is None or i in excluded or i in chosen:
                    if i is not None and i in excluded:
                        stats["dense_dropped_same_document"] += 1
                    continue
                chosen.append(i)
                sources.append("dense")
                taken += 1
                if taken >= n_dense:
                    break

        if n_bm25 and bm25 is not None:
            scores = bm25.scores(p["query"])
            pos_idx = [corpus.index_of[c] for c in p["positive_chunk_ids"] if c in corpus.index_of]
            pos_score = max((float(scores[i]) for i in pos_idx), default=0.0)
            taken = 0
            for rank, i in enumerate(descending(scores)):
                if taken >= n_bm25 or scores[i] <= 0:
                    break
                if i in excluded or i in chosen:  # chosen: already a dense negative of this group
                    continue
                if rank < bm25_skip_top:
                    stats["bm25_skipped_top_rank"] += 1
                    continue
                if pos_score > 0 and scores[i] >= bm25_max_ratio * pos_score:
                    stats["bm25_dropped_too_close_to_positive"] += 1
                    continue
                chosen.append(i)
                sources.append("bm25")
                taken += 1

        if n_random:
            # rejection sampling: O(n_random) per pair, so million-chunk corpora stay cheap
            taken, tries = 0, 0
            while taken < n_random and tries < 50 * n_random:
                tries += 1
                i = rng.randrange(len(corpus))
                if i in excluded or i in chosen:
                    continue
                chosen.append(i)
                sources.append("random")
                taken += 1

        wanted = n_bm25 + n_dense + n_random
        if len(chosen) < wanted:
            stats["groups_short_of_negatives"] += 1
        stats.update(sources)
        groups.append(
            {
                "query_id": p["query_id"],
                "query": p["query"],
                "pos": pos_texts,
                "pos_ids": list(p["positive_chunk_ids"]),
                "neg": chosen,  # positions until every group is built: their texts are fetched in one pass
                "neg_ids": [corpus.ids[i] for i in chosen],
                "neg_sources": sources,
            }
        )
    texts = corpus.texts({i for g in groups for i in g["neg"]})
    for g in groups:
        g["neg"] = [texts[i] for i in g["neg"]]
    return groups, stats


@dataclass
class DenseDecision:
    """Whether the negatives stage mines with the base embedder, and why (``negatives.dense``)."""

    use: bool
    rule: str  # the setting that decided, kept in metrics/negatives.json
    why: str = ""  # auto's measured estimate, printed
    estimated_encode_s: float | None = None


def decide_dense(mode: str, n_dense: int, n_chunks: int, budget_s: float, probe: Callable[[], float]) -> DenseDecision:
    """``negatives.dense``: ``on`` and ``off`` are kept as said; ``auto`` mines when encoding every chunk, at the
    throughput ``probe`` measures on this machine (passages/s), fits ``negatives.dense_budget_s``. On a CPU the base
    e5-small encodes ~12 chunks/s here: the sample's 357 chunks take half a minute, a 1.8M-chunk corpus two days."""
    if not n_dense:
        return DenseDecision(False, "negatives.n_dense is 0")
    if mode in ("on", "off"):
        return DenseDecision(mode == "on", f"negatives.dense is {mode}")
    rate = probe()
    estimate = n_chunks / rate
    within = estimate <= budget_s
    why = (
        f"encoding {n_chunks:,} chunks at the measured {rate:.1f} passages/s takes about {_duration(estimate)}, "
        f"{'within' if within else 'over'} negatives.dense_budget_s ({_duration(budget_s)})"
    )
    return DenseDecision(within, "negatives.dense auto", why, estimate)


def _duration(seconds: float) -> str:
    if seconds >= 5400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


def encode_rate(dense: Any, corpus: MiningCorpus, batch_size: int) -> float:
    """Passages per second of ``dense`` on a sample of the corpus's texts (one warm-up batch, then two timed batches,
    spread over the corpus so that their lengths are typical), as ``mine_hard_negatives`` encodes them."""
    step = max(1, len(corpus) // (3 * batch_size))
    picked = list(range(0, len(corpus), step))[: 3 * batch_size]
    texts = corpus.texts(set(picked))
    sample = [texts[i] for i in picked]
    warm, timed = sample[:batch_size], sample[batch_size:] or sample
    dense.model.encode(warm, prompt=dense.passage_prompt, batch_size=batch_size, show_progress_bar=False)
    start = time.perf_counter()
    dense.model.encode(timed, prompt=dense.passage_prompt, batch_size=batch_size, show_progress_bar=False)
    return len(timed) / max(time.perf_counter() - start, 1e-6)


def run_negatives(
    negatives_params: dict[str, Any], model_params: dict[str, Any], bm25_params: dict[str, Any], paths: Paths
) -> dict[str, str]:
    """The negatives stage: training pairs (train + synthetic, those with a positive) and chunks → the embedder's
    training groups and ``metrics/negatives.json``."""
    n = negatives_params
    require_records(paths.chunks, "Run the chunk stage first.")
    pairs = read_jsonl(paths.train) + read_jsonl(paths.synthetic)
    pairs = [p for p in pairs if p["positive_chunk_ids"]]
    if not pairs:
        raise EmptyInputError(
            f"{paths.train} and {paths.synthetic} hold no pair with a positive chunk: there is nothing to mine "
            "negatives for, nor to train on. Label questions (`ingest.queries`) or set "
            "`pairs.synthetic.enabled: true` in params.yaml, and run pairs again."
        )
    # One streamed pass fills the corpus and, with BM25 negatives, the index: a million texts are never held.
    bm25 = None
    if int(n["n_bm25"]):
        corpus = MiningCorpus.for_pairs(paths.chunks, pairs)
        n_chunks = count_records(paths.chunks)
        bm25 = BM25Index(ids=corpus.ids, **bm25_settings(bm25_params, n_chunks))
        counts = load_bm25_counts(paths.bm25_counts, paths.chunks, bm25_params, n_chunks)
        if counts is not None and bm25.backend == "bm25s":  # the bm25 stage tokenized every chunk once, for both
            for _, c in iter_jsonl(paths.chunks):
                corpus.add(c)
            bm25.fit_counts(counts)
        else:
            bm25.fit((corpus.add(c) for _, c in iter_jsonl(paths.chunks)), n_texts=n_chunks)
    else:
        corpus = MiningCorpus.read(paths.chunks, pairs)

    def all_texts() -> Iterator[str]:  # read again: dense mining encodes the corpus as one list
        return (c["text"] for _, c in iter_jsonl(paths.chunks))

    dense_candidates, dense_stats = {}, {}
    loaded: list[Any] = []

    def probe() -> float:
        loaded.append(load_dense(model_params))
        return encode_rate(loaded[0], corpus, int(model_params["batch_size"]))

    mode = {True: "on", False: "off"}.get(n["dense"], n["dense"])  # YAML reads a bare on/off as a boolean
    decision = decide_dense(str(mode), int(n["n_dense"]), len(corpus), float(n["dense_budget_s"]), probe)
    if not decision.use and decision.estimated_encode_s is not None:
        warn(
            f"{decision.rule}: {decision.why}: dense mining is off; BM25 and random negatives are mined. Set "
            "negatives.dense: on to mine anyway, or raise negatives.dense_budget_s."
        )
    if decision.use:
        dense = loaded[0] if loaded else load_dense(model_params)
        dense_candidates, dense_stats = mine_dense(
            pairs,
            list(all_texts()),  # the encoder takes the corpus as one list
            dense,
            # over-fetch: same-document chunks are removed afterwards
            num_candidates=int(n["n_dense"]) * 3 + 5,
            range_min=int(n["dense_range_min"]),
            range_max=int(n["dense_range_max"]),
            relative_margin=float(n["dense_relative_margin"]),
            chunk_text=corpus.text_of,
        )
    groups, stats = build_groups(
        pairs,
        corpus,
        bm25,
        dense_candidates,
        n_bm25=int(n["n_bm25"]),
        n_dense=int(n["n_dense"]) if decision.use else 0,
        n_random=int(n["n_random"]),
        bm25_skip_top=int(n["bm25_skip_top"]),
        bm25_max_ratio=float(n["bm25_max_ratio"]),
        seed=int(n["seed"]),
    )
    write_jsonl(paths.train_groups, groups)
    n_neg = sum(len(g["neg"]) for g in groups)
    write_json(
        paths.metrics("negatives"),
        {
            "groups": len(groups),
            "negatives": n_neg,
            "negatives_per_group_mean": round(n_neg / max(1, len(groups)), 3),
            "by_source": {k: stats.get(k, 0) for k in ("bm25", "dense", "random")},
            "guards": {k: v for k, v in sorted(stats.items()) if k not in ("bm25", "dense", "random")},
            **dense_stats,
            "dense_mining": {"used": decision.use, "reason": decision.rule},
        },
    )
    return {
        "read": f"{len(pairs)} training pairs, {len(corpus)} chunks",
        "wrote": f"{len(groups)} groups with {n_neg} negatives",
    }
