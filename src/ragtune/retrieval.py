"""Retrieval systems over chunks: BM25 on word-segmented Vietnamese, dense bi-encoder, and RRF fusion.

A ranking is ``{query_id: [(item_id, score), ...]}`` sorted best-first. Systems rank *chunks*; document-level
rankings are derived by :func:`to_doc_ranking` (a document scores as its best chunk), because labels are usually
given per document while retrieval for RAG happens per chunk.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ragtune.parallel import batched, ordered_map, pool_size
from ragtune.schema import devices_problem

if TYPE_CHECKING:
    from ragtune.bm25_matrix import TermCounts
    from ragtune.ray_encode import RaySettings

Ranking = dict[str, list[tuple[str, float]]]

_WORD = re.compile(r"[\w]+", re.UNICODE)


# --------------------------------------------------------------------------------------------------- BM25 text
@lru_cache(maxsize=1)
def _pyvi():
    from pyvi import ViTokenizer

    return ViTokenizer


Tokenizer = Literal["pyvi", "syllable", "bigram"]
TOKENIZERS = ("pyvi", "syllable", "bigram")
# Phrase breaks for bigrams: punctuation and line breaks end a phrase (no bigram spans "điều 5." and "khoản 2").
_PHRASE_BREAK = re.compile(r"[^\w\s]+|\n")


def _keep(token: str) -> bool:
    return not token.isdigit() or len(token) > 1


def bm25_tokenize(text: str, method: Tokenizer = "pyvi") -> list[str]:
    """Tokens for BM25.

    Vietnamese writes one syllable per space-separated unit, so a "word" like *ma túy* is two syllables; BM25 on
    syllables matches ``ma`` everywhere. ``pyvi`` joins multi-syllable words (``ma_túy``) first, which makes IDF
    meaningful. Segmentation runs before lower-casing because pyvi uses capitalisation as a feature. ``bigram``
    gets most of that without a segmenter: every syllable plus every pair of adjacent syllables in a phrase
    (``ma``, ``túy``, ``ma_túy``), at regex speed (pyvi costs ~5 ms a chunk: hours at a million chunks).
    """
    text = unicodedata.normalize("NFC", text)
    if method == "bigram":
        tokens: list[str] = []
        for phrase in _PHRASE_BREAK.split(text.lower()):
            words = [t for t in _WORD.findall(phrase) if _keep(t)]
            tokens += words
            tokens += [f"{a}_{b}" for a, b in itertools.pairwise(words)]
        return tokens
    if method == "pyvi":
        text = _pyvi().tokenize(text)
    elif method != "syllable":
        raise ValueError(
            f"bm25 tokenizer must be one of {', '.join(TOKENIZERS)}, got {method!r} (params.yaml: bm25.tokenizer)"
        )
    return [t for t in _WORD.findall(text.lower()) if _keep(t)]


# bm25.tokenizer auto: pyvi up to this many indexed texts, syllable above. pyvi costs ~5 ms a chunk on one core
# (4 min per BM25 build at 50,000 chunks, and several stages build one); syllable costs ~0.1 ms and matched or beat
# pyvi on the sample's and ALQAC's train+dev questions (benchmarks/bm25_tokenizers.py, docs/benchmarks.md).
AUTO_PYVI_MAX_TEXTS = 50_000
# Fewer texts than this are tokenized in-process: starting worker processes costs more than it saves.
PARALLEL_MIN_TEXTS = 4_096
PARALLEL_BATCH = 512  # texts per task sent to a worker


def resolve_tokenizer(method: str, n_texts: int) -> Tokenizer:
    """``bm25.tokenizer`` made concrete for an index of ``n_texts`` texts (``auto`` → pyvi or syllable)."""
    if method == "auto":
        return "pyvi" if n_texts <= AUTO_PYVI_MAX_TEXTS else "syllable"
    if method not in TOKENIZERS:
        raise ValueError(
            f"bm25 tokenizer must be auto or one of {', '.join(TOKENIZERS)}, got {method!r} "
            "(params.yaml: bm25.tokenizer)"
        )
    return method  # type: ignore[return-value]


def _tokenize_batch(args: tuple[list[str], Tokenizer]) -> list[list[str]]:
    texts, method = args
    return [bm25_tokenize(t, method) for t in texts]


def iter_token_batches(
    texts: Iterable[str], method: Tokenizer = "pyvi", n_texts: int | None = None
) -> Iterator[list[list[str]]]:
    """:func:`bm25_tokenize` of every text, in order, in batches of :data:`PARALLEL_BATCH`. Large inputs are
    tokenized by a pool of :func:`ragtune.parallel.workers` processes (pyvi is pure Python: threads would not help);
    the batches come back in order, so the tokens are the same whatever the worker count. A consumer that turns each
    batch into term ids holds one batch of strings at a time.

    ``texts`` may be a stream (a generator reading a file) when ``n_texts`` says how many it holds: it is read one
    batch ahead of the workers (at most two batches a worker in flight), never whole.
    """
    from ragtune.console import track

    size = PARALLEL_BATCH
    n = len(texts) if n_texts is None else n_texts  # type: ignore[arg-type]
    batches = ((batch, method) for batch in batched(texts, size))
    parallel = n >= PARALLEL_MIN_TEXTS
    n_proc = pool_size(parallel)
    label = f"BM25 tokenizing ({method}, {n_proc} processes)" if n_proc > 1 else f"BM25 tokenizing ({method})"
    yield from track(ordered_map(_tokenize_batch, batches, parallel=parallel), label, total=-(-n // size))


def bm25_tokenize_many(texts: Sequence[str], method: Tokenizer = "pyvi") -> list[list[str]]:
    """:func:`bm25_tokenize` of every text, in order (see :func:`iter_token_batches`)."""
    return [tokens for batch in iter_token_batches(texts, method) for tokens in batch]


@dataclass
class BM25Index:
    """BM25 over a fixed list of ids/texts, with a swappable backend.

    ``bm25s`` (sparse matrices, default) and ``rank_bm25`` (the reference pure-Python implementation) give the
    same ranking up to BM25-variant details; ``benchmarks/bm25_backends.py`` measures both.
    """

    ids: list[str]
    tokenizer: Tokenizer = "pyvi"
    backend: Literal["bm25s", "rank_bm25"] = "bm25s"
    k1: float = 1.5
    b: float = 0.75

    def fit(self, texts: Iterable[str], n_texts: int | None = None) -> BM25Index:
        """Index ``texts``, one per id: a sequence, or a stream of ``n_texts`` texts (``len(ids)`` by default; a
        caller may fill ``ids`` while the stream is read). With the ``bm25s`` backend a streamed corpus's texts are
        never all in memory."""
        n = len(self.ids) if n_texts is None else n_texts
        self.tokenizer = resolve_tokenizer(self.tokenizer, n)
        if self.backend == "bm25s":  # streamed: one batch of token strings in memory at a time
            self._fit_bm25s(iter_token_batches(texts, self.tokenizer, n_texts=n))
        else:
            self.fit_tokens(bm25_tokenize_many(list(texts), self.tokenizer))
        if len(self.ids) != n:
            raise ValueError(f"BM25 index of {n} texts has {len(self.ids)} ids")
        return self

    def _fit_bm25s(self, batches: Iterable[list[list[str]]]) -> BM25Index:
        from ragtune.bm25_matrix import bm25s_retriever, build_bm25_matrix

        self._engine = bm25s_retriever(build_bm25_matrix(batches, self.k1, self.b), self.k1, self.b)
        return self

    def fit_counts(self, counts: TermCounts) -> BM25Index:
        """Index from the bm25 stage's term counts (the same matrix :meth:`fit` builds from the texts)."""
        from ragtune.bm25_matrix import bm25s_retriever

        if self.backend != "bm25s":
            raise ValueError(f"term counts feed the bm25s backend, not {self.backend!r}")
        if counts.num_docs != len(self.ids):
            raise ValueError(f"BM25 term counts of {counts.num_docs} texts for {len(self.ids)} ids")
        self._engine = bm25s_retriever(counts.matrix(self.k1, self.b), self.k1, self.b)
        return self

    def fit_tokens(self, tokens: list[list[str]]) -> BM25Index:
        """Index pre-tokenized texts (lets a benchmark time indexing apart from word segmentation)."""
        if self.backend == "bm25s":
            return self._fit_bm25s([tokens])
        if self.backend == "rank_bm25":
            from rank_bm25 import BM25Okapi

            # rank_bm25 divides by zero on an all-empty corpus; a placeholder token keeps it defined.
            self._engine = BM25Okapi([t or ["∅"] for t in tokens], k1=self.k1, b=self.b)
        else:
            raise ValueError(f"bm25 backend must be 'bm25s' or 'rank_bm25', got {self.backend!r}")
        return self

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every indexed item for one query (shape ``[n_items]``). A query with no BM25 tokens
        ('!!!', an emoji) scores 0 everywhere: bm25s raises IndexError on an empty token list."""
        tokens = bm25_tokenize(query, self.tokenizer)
        if not tokens:
            return np.zeros(len(self.ids), dtype=np.float32)
        return np.asarray(self._engine.get_scores(tokens), dtype=np.float32)

    def search(self, queries: dict[str, str], k: int) -> Ranking:
        return {qid: top_k(self.ids, self.scores(text), k) for qid, text in queries.items()}

    def score_matrix(self, queries: Sequence[str] | Any) -> np.ndarray:
        """BM25 scores of every indexed item for each query, shape ``[n_queries, n_items]`` (convex fusion needs
        the score of a chunk BM25 did not retrieve)."""
        rows = [self.scores(text) for text in queries]
        return np.stack(rows) if rows else np.zeros((0, len(self.ids)), dtype=np.float32)


def top_k(ids: Sequence[str], scores: np.ndarray, k: int) -> list[tuple[str, float]]:
    """Best ``k`` items, ties broken by id so rankings are deterministic across runs and backends."""
    k = min(k, len(ids))
    if k <= 0:
        return []
    # argpartition then a stable sort on (-score, id)
    cand = np.argpartition(-scores, k - 1)[:k] if k < len(ids) else np.arange(len(ids))
    # include everything tied with the k-th score so the tie-break by id is global
    kth = scores[cand].min()
    cand = np.nonzero(scores >= kth)[0]
    order = sorted(cand.tolist(), key=lambda i: (-float(scores[i]), ids[i]))[:k]
    return [(ids[i], round(float(scores[i]), 6)) for i in order]


# --------------------------------------------------------------------------------------------------- dense
def cache_root() -> Path:
    return Path(os.environ.get("RAGTUNE_CACHE", Path.home() / ".cache" / "ragtune"))


def _alias_file(fingerprint: str) -> Path:
    return cache_root() / "embeddings" / "aliases" / fingerprint


def cached_as(fingerprint: str) -> str:
    """The fingerprint whose cached vectors a model with ``fingerprint`` reads and writes: its own, or the one an
    alias (:func:`share_cached_vectors`) names. Fingerprints hash a folder's contents, so an alias never goes stale."""
    alias = _alias_file(fingerprint) if fingerprint else None
    return alias.read_text(encoding="utf-8").strip() if alias is not None and alias.is_file() else fingerprint


def share_cached_vectors(
    saved: str | Path, original: str | Path, probe: Sequence[str], *, max_seq_length: int | None, batch_size: int
) -> bool:
    """Let the model folder ``saved`` read the embedding cache of ``original`` when the two compute identical vectors.

    Why: when train_embedder ships the base model (no dev evidence for the fine-tune, or ``enabled: false``), it
    re-saves the base under ``models/embedder``, whose files (config, card) differ from the base folder's, so its
    fingerprint differs and the index stage encoded the whole corpus a second time: 206 s of ALQAC's 3,308 chunks
    on 2 cores, hours at a million documents, for vectors the base model had already cached. Both folders are
    loaded as the later stages load them (:func:`load_dense`: ``model.max_seq_length``) and encode ``probe``; only
    bit-identical vectors write the alias, so a folder that computes anything differently keeps its own cache.
    Returns whether the alias was written.
    """
    from ragtune.models import load_embedder, model_fingerprint

    if not probe:
        return False
    vectors = []
    for path in (saved, original):
        model = load_embedder(str(path), max_seq_length=max_seq_length)
        vectors.append(model.encode(list(probe), batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False))
    if not np.array_equal(vectors[0], vectors[1]):
        return False
    alias = _alias_file(model_fingerprint(saved))
    alias.parent.mkdir(parents=True, exist_ok=True)
    tmp = alias.with_name(f"{alias.name}.{os.getpid()}.tmp")
    tmp.write_text(cached_as(model_fingerprint(original)) + "\n", encoding="utf-8")
    os.replace(tmp, alias)
    return True


def model_prompt(model: Any, role: Literal["query", "passage"], override: str | None = None) -> str:
    """The instruction prefix the model was trained with (``query: `` / ``passage: `` for e5).

    Prompts stored in the model's config win; ``override`` (params) covers models that document prompts only in
    their README. Using the wrong prefix silently costs e5 several NDCG points, so this is never guessed.
    """
    if override is not None:
        return override
    prompts = getattr(model, "prompts", None) or {}
    names = {"query": ("query",), "passage": ("passage", "document", "corpus")}[role]
    for name in names:
        if name in prompts:
            return prompts[name]
    return ""


class VectorShards:
    """A folder of embedding shards: ``<name>.vecs.npy`` (float32 rows) and ``<name>.keys.npy`` (their text hashes).

    Each shard is written as soon as it is encoded, vectors first and keys last, both through a rename: a shard is
    there whole or not at all, so an encode killed after hours resumes at the first shard it had not finished.
    Vectors are read memory-mapped, only the rows asked for.
    """

    def __init__(self, folder: Path, legacy: Path | None = None):
        self.folder = folder
        self.legacy = legacy  # the single-file cache of earlier versions, still read

    def lookup(self, wanted: set[str]) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        if self.legacy is not None and self.legacy.exists():
            with np.load(self.legacy) as data:
                vecs = data["vecs"]
                found |= {k: vecs[i] for i, k in enumerate(data["keys"].tolist()) if k in wanted}
        for keys_path in sorted(self.folder.glob("*.keys.npy")) if self.folder.exists() else []:
            keys = np.load(keys_path).tolist()
            rows = [i for i, k in enumerate(keys) if k in wanted and k not in found]
            if rows:
                vecs = np.load(keys_path.with_name(keys_path.name.replace(".keys.", ".vecs.")), mmap_mode="r")
                found |= {keys[i]: np.array(vecs[i]) for i in rows}
        return found

    def add(self, keys: list[str], vecs: np.ndarray) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        name = hashlib.sha256("\x00".join(keys).encode()).hexdigest()[:24]
        for kind, array in (("vecs", vecs.astype(np.float32)), ("keys", np.array(keys))):
            tmp = self.folder / f"{name}.{kind}.{os.getpid()}.tmp.npy"
            np.save(tmp, array)
            os.replace(tmp, self.folder / f"{name}.{kind}.npy")


class DenseEncoder:
    """Encodes texts with a SentenceTransformer, caching vectors on disk by (model, prompt, text).

    Several stages embed the same chunks with the same base model (pairs alignment, negatives, evaluate); the cache
    makes that cost paid once, and ``dvc exp run`` over non-model params becomes cheap. Keys include the model's
    weight fingerprint, so a fine-tuned model never reads the base model's vectors, and its ``max_seq_length``. The
    cache is written in shards (:class:`VectorShards`) of :attr:`shard_size` texts as they are encoded, so a killed
    encode resumes.
    """

    def __init__(
        self,
        model: Any,
        fingerprint: str,
        batch_size: int = 32,
        use_cache: bool = True,
        ray: RayEncoding | None = None,
        devices: Sequence[str] = (),
    ):
        self.model = model
        # a folder that computes what another computes reads that one's vectors (share_cached_vectors)
        self.fingerprint = cached_as(fingerprint) if use_cache else fingerprint
        self.batch_size = batch_size
        self.use_cache = use_cache
        self.ray = ray  # encode the blocks on a Ray cluster instead of here (model.encode_on: ray)
        # two or more local devices: one process per device (sentence-transformers' pool), blocks sent whole
        self.devices = list(devices) if len(devices) > 1 else []
        # a multiple of the encode block (batch_size × 8), so blocks, and so padding, are the same with or without
        # shards: the vectors do not depend on how the work was cut
        self.shard_size = batch_size * 8 * 32

    def _store(self, prompt: str) -> VectorShards:
        # the truncation is part of what computed a vector: a model loaded at another max_seq_length must not read it
        key = hashlib.sha256(f"{self.fingerprint}\x00{prompt}\x00{self.model.max_seq_length}".encode()).hexdigest()[:24]
        return VectorShards(cache_root() / "embeddings" / key, legacy=cache_root() / "embeddings" / f"{key}.npz")

    def encode(self, texts: Sequence[str], prompt: str, description: str = "Encoding") -> np.ndarray:
        from ragtune.console import progress

        texts = list(texts)
        if not texts:
            dim = self.model.get_sentence_embedding_dimension()
            return np.zeros((0, dim), dtype=np.float32)
        hashes = [hashlib.sha1(t.encode("utf-8")).hexdigest() for t in texts]
        store = self._store(prompt)
        cached = store.lookup(set(hashes)) if self.use_cache else {}
        missing = sorted({h: t for h, t in zip(hashes, texts, strict=True) if h not in cached}.items())
        if missing:
            with progress() as bar:
                task = bar.add_task(description, total=len(missing))
                shards = self._shards([t for _, t in missing], prompt, lambda n: bar.advance(task, n))
                for start, new in shards:
                    part = missing[start : start + len(new)]
                    cached.update(zip([h for h, _ in part], new, strict=True))
                    if self.use_cache:
                        store.add([h for h, _ in part], new)
        return np.stack([cached[h] for h in hashes]).astype(np.float32)

    def _shards(self, texts: list[str], prompt: str, advance: Callable[[int], Any]) -> Iterator[tuple[int, np.ndarray]]:
        """(first text, vectors) of each shard of ``texts``, in order, encoded here, by a process per local device, or
        by Ray actors."""
        if self.ray is None and self.devices:
            yield from self._pooled_shards(texts, prompt, advance)
            return
        if self.ray is None:
            for start in range(0, len(texts), self.shard_size):
                yield start, self._encode_raw(texts[start : start + self.shard_size], prompt, advance)
            return
        from ragtune.ray_encode import iter_encoded

        block = self.batch_size * 8
        vectors = iter_encoded(
            [texts[start : start + block] for start in range(0, len(texts), block)],
            model_path=self.ray.model_path,
            max_seq_length=self.model.max_seq_length,
            prompt=prompt,
            batch_size=self.batch_size,
            dim=self.model.get_sentence_embedding_dimension(),
            settings=self.ray.settings,
        )
        for start in range(0, len(texts), self.shard_size):  # a shard is a whole number of blocks
            shard = [next(vectors) for _ in range(-(-min(self.shard_size, len(texts) - start) // block))]
            advance(sum(len(v) for v in shard))
            yield start, np.concatenate(shard).astype(np.float32)

    def _pooled_shards(
        self, texts: list[str], prompt: str, advance: Callable[[int], Any]
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Shards encoded by sentence-transformers' multi-process pool, one process per device in ``devices``.

        Each pool task is one encode block (``batch_size`` × 8 texts) encoded with ``batch_size``, as
        :meth:`_encode_raw` encodes it here: the same length-sorting and padding, so the same vectors as one process
        on the same kind of device (a test checks it on two CPU processes)."""
        pool = self.model.start_multi_process_pool(self.devices)
        try:
            for start in range(0, len(texts), self.shard_size):
                shard = texts[start : start + self.shard_size]
                vectors = self.model.encode(
                    shard, **self._encode_args(prompt), pool=pool, chunk_size=self.batch_size * 8
                )
                advance(len(shard))
                yield start, np.asarray(vectors, dtype=np.float32).reshape(len(shard), -1)
        finally:
            self.model.stop_multi_process_pool(pool)

    def _encode_args(self, prompt: str) -> dict[str, Any]:
        """How every block is encoded, here or in a device pool: the same arguments give the same vectors."""
        return {"prompt": prompt, "batch_size": self.batch_size, "normalize_embeddings": True,
                "convert_to_numpy": True, "show_progress_bar": False}  # fmt: skip

    def _encode_raw(self, texts: list[str], prompt: str, advance: Callable[[int], Any]) -> np.ndarray:
        out = []
        for start in range(0, len(texts), self.batch_size * 8):
            block = texts[start : start + self.batch_size * 8]
            out.append(self.model.encode(block, **self._encode_args(prompt)))
            advance(len(block))
        return np.concatenate(out).astype(np.float32)


@dataclass(frozen=True)
class RayEncoding:
    """``model.encode_on: ray``: the model folder the Ray actors load, and the cluster settings."""

    model_path: str
    settings: RaySettings


@dataclass
class DenseIndex:
    """Cosine-similarity search over normalized chunk embeddings (exact; a sample corpus needs no ANN)."""

    ids: list[str]
    embeddings: np.ndarray

    def similarities(self, query_vecs: np.ndarray) -> np.ndarray:
        """Cosine similarity of each query to every chunk, shape ``[n_queries, n_chunks]``."""
        return query_vecs @ self.embeddings.T

    def search_vectors(self, query_ids: Sequence[str], query_vecs: np.ndarray, k: int) -> Ranking:
        sims = self.similarities(query_vecs)
        return {qid: top_k(self.ids, sims[i], k) for i, qid in enumerate(query_ids)}


# --------------------------------------------------------------------------------------------------- fusion
def rrf(rankings: Sequence[Ranking], k: int = 60, depth: int | None = None) -> Ranking:
    """Reciprocal rank fusion: ``score = Σ 1 / (k + rank)`` over systems (Cormack et al., 2009).

    RRF needs no score calibration between BM25 (unbounded) and cosine (−1..1), which is why it is the default
    hybrid.
    """
    fused: Ranking = {}
    qids = sorted(set().union(*[r.keys() for r in rankings]))
    for qid in qids:
        scores: dict[str, float] = {}
        for ranking in rankings:
            for rank, (item, _) in enumerate(ranking.get(qid, [])[:depth], start=1):
                scores[item] = scores.get(item, 0.0) + 1.0 / (k + rank)
        order = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))
        fused[qid] = [(item, round(s, 8)) for item, s in order]
    return fused


def _minmax(values: np.ndarray) -> np.ndarray:
    lo, hi = float(values.min()), float(values.max())
    return np.full_like(values, 0.5) if hi == lo else (values - lo) / (hi - lo)


def convex_fusion(
    query_ids: Sequence[str],
    ids: Sequence[str],
    dense: np.ndarray,
    sparse: np.ndarray,
    alphas: Sequence[float],
    depth: int,
) -> dict[float, Ranking]:
    """Convex fusion ``alpha × dense + (1 − alpha) × BM25`` of min-max normalised scores, for every alpha at once.

    Why not only RRF: RRF weighs both sides equally, so where the dense side is weak it drags BM25 down (an unseen
    legal benchmark: RRF hybrid MRR@10 .784 against BM25 alone .806 and dense .755). A convex combination with a
    weight chosen on dev can lean on the stronger side (Bruch et al., 2023, "An Analysis of Fusion Functions for
    Hybrid Retrieval"; the ViRE benchmark found it beats RRF on most Vietnamese sets).

    ``dense`` and ``sparse`` hold every chunk's score per query (``[n_queries, n_chunks]``). The candidates are the
    union of each side's top ``depth``; both scores are exact for every candidate (no "missing = 0" guess) and are
    min-max normalised over the candidates. ``alpha = 1`` orders like dense alone, ``alpha = 0`` like BM25 alone.
    """
    out: dict[float, Ranking] = {float(a): {} for a in alphas}
    for i, qid in enumerate(query_ids):
        d, s = dense[i], sparse[i]
        k = min(depth, len(ids))
        cand = np.union1d(np.argpartition(-d, k - 1)[:k], np.argpartition(-s, k - 1)[:k]) if k else np.arange(0)
        if not len(cand):
            for a in out:
                out[a][qid] = []
            continue
        dn, sn = _minmax(d[cand].astype(np.float64)), _minmax(s[cand].astype(np.float64))
        cand_ids = [ids[j] for j in cand]
        for a in out:
            out[a][qid] = top_k(cand_ids, a * dn + (1.0 - a) * sn, depth)
    return out


def to_doc_ranking(ranking: Ranking, chunk_to_doc: dict[str, str]) -> Ranking:
    """Document ranking from a chunk ranking: a document scores as its best chunk (max-pooling, "MaxP")."""
    out: Ranking = {}
    for qid, items in ranking.items():
        seen: dict[str, float] = {}
        for chunk_id, score in items:
            doc = chunk_to_doc[chunk_id]
            if doc not in seen:
                seen[doc] = score
        out[qid] = list(seen.items())
    return out


# --------------------------------------------------------------------------------------------------- factories
def build_bm25(chunks: Sequence[dict[str, Any]], params: dict[str, Any]) -> BM25Index:
    """BM25 over chunk texts, configured by the ``bm25:`` params section (``tokenizer: auto`` resolved on the number
    of chunks; a caller indexing a subset passes the corpus's resolved tokenizer, as search does)."""
    return BM25Index(ids=[c["chunk_id"] for c in chunks], **bm25_settings(params, len(chunks))).fit(
        [c["text"] for c in chunks]
    )


def bm25_settings(params: dict[str, Any], n_texts: int) -> dict[str, Any]:
    """:class:`BM25Index`'s settings from the ``bm25:`` params section, for an index of ``n_texts`` texts."""
    return {
        "tokenizer": resolve_tokenizer(params.get("tokenizer", "auto"), n_texts),
        "backend": params.get("backend", "bm25s"),
        "k1": float(params.get("k1", 1.5)),
        "b": float(params.get("b", 0.75)),
    }


BM25_MANIFEST = "manifest.json"


def _file_md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def run_bm25(params: dict[str, Any], chunks: Path, out: Path) -> dict[str, str]:
    """The bm25 stage: tokenize every chunk once (``bm25.tokenizer``, resolved on the chunk count) and save the term
    counts that pairs and negatives build their BM25 from (:class:`~ragtune.bm25_matrix.TermCounts`), with a
    manifest naming the tokenizer and the chunk file they were counted from."""
    from ragtune.bm25_matrix import TermCounts
    from ragtune.io import count_records, iter_jsonl

    n = count_records(chunks)
    tokenizer = resolve_tokenizer(params.get("tokenizer", "auto"), n)
    counts = TermCounts.count(iter_token_batches((c["text"] for _, c in iter_jsonl(chunks)), tokenizer, n_texts=n))
    counts.save(out)
    manifest = {
        "tokenizer": tokenizer,
        "documents": counts.num_docs,
        "terms": len(counts.vocab),
        "pairs": len(counts.terms),
        "chunks_md5": _file_md5(chunks),
    }
    (out / BM25_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return {
        "read": f"{n:,} chunks",
        "wrote": f"BM25 term counts ({tokenizer}: {len(counts.vocab):,} terms, {len(counts.terms):,} pairs)",
    }


def load_bm25_counts(folder: Path, chunks: Path, params: dict[str, Any], n_chunks: int) -> TermCounts | None:
    """The bm25 stage's counts of ``chunks``, memory-mapped; None when the stage has not run (a stage script run by
    hand, a test), so the caller tokenizes itself. Counts of another chunk file or tokenizer are refused: their
    scores would be silently wrong."""
    from ragtune.bm25_matrix import TermCounts
    from ragtune.errors import UserError

    if not (folder / BM25_MANIFEST).exists():
        return None
    manifest = json.loads((folder / BM25_MANIFEST).read_text(encoding="utf-8"))
    tokenizer = resolve_tokenizer(params.get("tokenizer", "auto"), n_chunks)
    if (
        manifest["tokenizer"] != tokenizer
        or manifest["documents"] != n_chunks
        or manifest["chunks_md5"] != _file_md5(chunks)
    ):
        raise UserError(
            f"{folder} holds BM25 counts of another {chunks} or tokenizer ({manifest['documents']:,} chunks, "
            f"{manifest['tokenizer']}; now {n_chunks:,} chunks, {tokenizer}). Run `dvc repro bm25` (or "
            f"`python stages/bm25.py`) first."
        )
    return TermCounts.load(folder)


def bm25_row_scorer(
    texts: Iterable[str], n_texts: int, keep: Iterable[int], params: dict[str, Any], counts: TermCounts | None = None
) -> Callable[[str, Sequence[int]], np.ndarray]:
    """BM25 scores of the texts at positions ``keep`` of ``n_texts`` streamed ``texts``: what :func:`build_bm25`
    over all of them would score there, without its index. The scorer takes a query and row numbers into ``keep``
    in ascending order (row ``r`` is the ``r``-th smallest kept position). With the ``bm25s`` backend only the kept
    texts' rows are built and only the rows asked for are summed (:class:`~ragtune.bm25_matrix.BM25Subset`, bit for
    bit the same scores), from the bm25 stage's ``counts`` when given (``texts`` is then not read); the
    ``rank_bm25`` backend builds its full index."""
    from ragtune.bm25_matrix import build_bm25_subset

    settings = bm25_settings(params, n_texts)
    positions = sorted(set(keep))
    if settings["backend"] == "bm25s":
        k1, b = settings["k1"], settings["b"]
        if counts is None:
            batches = iter_token_batches(texts, settings["tokenizer"], n_texts=n_texts)
            subset = build_bm25_subset(batches, positions, k1, b)
        else:
            subset = counts.subset(positions, k1, b)
        return lambda query, rows: subset.scores(bm25_tokenize(query, settings["tokenizer"]), rows)
    index = BM25Index(ids=[str(i) for i in range(n_texts)], **settings).fit(texts)
    return lambda query, rows: index.scores(query)[[positions[r] for r in rows]]


@dataclass
class Embedder:
    """A loaded embedder with the prompts it expects and a cached encoder."""

    name: str
    model: Any
    encoder: DenseEncoder
    query_prompt: str
    passage_prompt: str

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        return self.encoder.encode(texts, self.query_prompt, "Encoding queries")

    def encode_passages(self, texts: Sequence[str]) -> np.ndarray:
        return self.encoder.encode(texts, self.passage_prompt, "Encoding passages")


def encode_devices(setting: str | Sequence[str] | None, gpus: int | None = None) -> list[str]:
    """``model.devices``: the local devices dense encoding runs on, one process each; ``[]`` = this process.

    ``auto`` takes every CUDA GPU when there are two or more (one process per GPU; sentence-transformers' own pool),
    and this process otherwise: on a CPU, torch already spreads one process's matmuls over every core, and a second
    process would only split them. A list (``[cuda:0, cuda:1]``, or ``[cpu, cpu]`` to try the path) is used as said;
    a list of one device is this process, on that device (:func:`load_dense` loads the model there).
    ``gpus``: the GPU count (default: torch's), for tests.
    """
    if problem := devices_problem(setting):
        raise ValueError(problem)
    if setting in (None, "auto"):
        if gpus is None:
            import torch

            gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        return [f"cuda:{i}" for i in range(gpus)] if gpus > 1 else []
    return [str(d) for d in setting]


def load_dense(params: dict[str, Any], name: str | None = None) -> Embedder:
    """Load the embedder named in the ``model:`` params section (or ``name``), with prompts resolved."""
    from ragtune.models import load_embedder, model_fingerprint, resolve_model

    revision = None if name else params.get("revision")  # model.revision pins model.embedder, not other folders
    name = name or params["embedder"]
    path = resolve_model(name, revision=revision)
    devices = encode_devices(params.get("devices", "auto"))
    # one device named (e.g. [cuda:1]): this process encodes there; two or more: a process each (DenseEncoder)
    model = load_embedder(
        path, max_seq_length=params.get("max_seq_length"), device=devices[0] if len(devices) == 1 else None
    )
    ray = None
    if params.get("encode_on", "local") == "ray":
        from ragtune.ray_encode import RaySettings

        ray = RayEncoding(str(path), RaySettings.from_params(params))
    return Embedder(
        name=name,
        model=model,
        encoder=DenseEncoder(
            model, model_fingerprint(path), batch_size=int(params.get("batch_size", 32)), ray=ray, devices=devices
        ),
        query_prompt=model_prompt(model, "query", params.get("query_prompt")),
        passage_prompt=model_prompt(model, "passage", params.get("passage_prompt")),
    )
