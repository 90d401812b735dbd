"""Search a corpus with the trained models: the index folder, the pipeline chosen on dev, and one query at a time.

``models/index/`` (written by the index stage) holds everything search needs besides the two model folders:

* ``chunks.jsonl``: the indexed chunks with their document title, metadata and access rank, lowest level first;
* ``embeddings.npy``: the fine-tuned embedder's normalised passage vectors, float32, one row per chunk;
* ``manifest.json``: the embedder folder, its fingerprint and dimension (search and serve refuse an index another
  model built), its prompts, the BM25 settings, the access scale, and counts.

``models/pipeline.json`` (written by evaluate) names the pipeline that scored best on dev: the retriever (dense or
hybrid), whether the reranker runs, on how many candidates, and the fusion weight. Search follows it by default,
so what a user runs is what the report measured.

**Access levels** (:mod:`ragtune.access`): a caller at level L is answered as if the index held only the chunks at
L or below. Rows are stored lowest level first, so those chunks are a prefix of the index: dense scores of the prefix
are the scores of a smaller index, and BM25 (whose IDF and length statistics are corpus-wide, so a restricted
document would shift the scores of public ones) gets one index per prefix, fitted on first use and cached. Fusion
and the reranker only ever see the allowed candidates. Metadata filters are the caller's choice within what it may
see, so they mask candidates under the level's statistics.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ragtune.access import AccessScale, MetadataIndex, parse_filters
from ragtune.errors import UserError
from ragtune.io import read_jsonl
from ragtune.models.identity import model_fingerprint
from ragtune.paths import Paths
from ragtune.precision import use_cpu_bf16
from ragtune.retrieval import (
    BM25Index,
    DenseIndex,
    Ranking,
    build_bm25,
    convex_fusion,
    load_dense,
    resolve_tokenizer,
    rrf,
    top_k,
)

if TYPE_CHECKING:
    from ragtune.paths import Paths

DEFAULT = Paths()  # the repository layout: where the index stage writes and evaluate chooses the pipeline
RETRIEVERS = ("ft_dense", "ft_hybrid", "ft_convex", "bm25")


class SearchSetupError(UserError, RuntimeError):
    """The index or a model folder is missing: says which, and which command builds it."""


@dataclass
class Pipeline:
    """How a query is answered. Mirrors an evaluate system name: ``<retriever>`` or ``<retriever>+rerank``."""

    retriever: str = "ft_dense"
    rerank: bool = False
    rerank_k: int = 20
    fusion_weight: float = 1.0
    candidate_k: int = 100
    rrf_k: int = 60
    alpha: float = 0.5  # ft_convex: weight of the dense score (1 − alpha for BM25), chosen on dev
    rerank_bf16: bool | str = "auto"  # bf16 autocast for the reranker on CPU; auto: where the CPU has native bf16
    # dev's reranker weight for each retriever: a pipeline named at query time (``parse``) fuses at its own
    # retriever's weight, not at the one chosen for the served retriever
    fusion_weights: dict[str, float] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.retriever + ("+rerank" if self.rerank else "")

    @classmethod
    def parse(cls, name: str, base: Pipeline | None = None) -> Pipeline:
        """``ft_hybrid+rerank`` → Pipeline; other settings come from ``base`` (the file evaluate wrote)."""
        retriever, _, suffix = name.partition("+")
        if retriever not in RETRIEVERS or suffix not in ("", "rerank"):
            raise SearchSetupError(
                f"unknown pipeline {name!r}: use one of "
                + ", ".join(r + s for r in RETRIEVERS for s in ("", "+rerank"))
            )
        b = base or cls()
        return replace(
            b,
            retriever=retriever,
            rerank=suffix == "rerank",
            fusion_weight=b.fusion_weights.get(retriever, b.fusion_weight),
            fusion_weights=dict(b.fusion_weights),
        )

    @classmethod
    def load(cls, path: str | Path = DEFAULT.pipeline) -> Pipeline:
        path = Path(path)
        if not path.exists():
            return cls()
        data = json.loads(path.read_text(encoding="utf-8"))
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


@dataclass
class Searcher:
    """Loaded index + models. Build once (seconds), then :meth:`search` answers a query in well under a second.

    ``chunks`` (and the rows of ``dense``) are ordered by ``access_rank``, lowest first; ``bm25_cache`` holds one
    BM25 index per level, keyed by how many chunks it covers, and may be shared by Searchers over the same index.
    """

    chunks: list[dict[str, Any]]
    dense: DenseIndex
    embedder: Any
    query_prompt: str
    pipeline: Pipeline
    access: AccessScale
    reranker: Any = None
    bm25_params: dict[str, Any] = field(default_factory=dict)
    manifest: dict[str, Any] = field(default_factory=dict, repr=False)  # the index's manifest.json, as loaded
    bm25_cache: dict[int, BM25Index] = field(default_factory=dict, repr=False)
    load_seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    by_id: dict[str, dict[str, Any]] = field(init=False, repr=False)
    metadata: MetadataIndex = field(init=False, repr=False)
    visible: list[int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.by_id = {c["chunk_id"]: c for c in self.chunks}  # built once: search() looks chunks up per query
        self.metadata = MetadataIndex(self.chunks)
        ranks = np.array([c["access_rank"] for c in self.chunks], dtype=np.int64)
        if len(ranks) and (np.any(np.diff(ranks) < 0) or ranks.min() < 0 or ranks.max() >= len(self.access.levels)):
            raise SearchSetupError("the index's chunks are not ordered by access rank: run `dvc repro index`")
        # visible[r]: how many chunks a caller at rank r sees (they are the first ones)
        self.visible = [int(np.searchsorted(ranks, r, side="right")) for r in range(len(self.access.levels))]

    @classmethod
    def load(
        cls,
        index_dir: str | Path = DEFAULT.index,
        pipeline: Pipeline | None = None,
        reranker_dir: str | Path = DEFAULT.reranker,
    ) -> Searcher:
        t0 = time.perf_counter()
        index_dir = Path(index_dir)
        manifest_path = index_dir / "manifest.json"
        if not manifest_path.exists():
            raise SearchSetupError(f"no index at {index_dir}/: run `dvc repro index` (or the whole pipeline) first")
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        if "access" not in manifest:  # served as one level, it would show every document to every caller
            raise SearchSetupError(
                f"the index at {index_dir}/ was built before access levels: run `dvc repro index` to rebuild it"
            )
        pipeline = pipeline or Pipeline()
        embedder_dir = check_index_embedder(index_dir, manifest)
        from sentence_transformers import SentenceTransformer

        chunks = read_jsonl(index_dir / "chunks.jsonl")
        vectors = np.load(index_dir / "embeddings.npy")
        embedder = SentenceTransformer(str(embedder_dir), device="cpu")
        reranker = None
        if pipeline.rerank:
            if not Path(reranker_dir).exists():
                raise SearchSetupError(
                    f"pipeline {pipeline.name} needs the reranker at {reranker_dir}: run `dvc repro train_reranker`"
                )
            from ragtune.rerank import load_reranker

            reranker = load_reranker(reranker_dir, device="cpu")
        return cls(
            chunks=chunks,
            dense=DenseIndex([c["chunk_id"] for c in chunks], vectors),
            embedder=embedder,
            query_prompt=manifest.get("query_prompt", ""),
            pipeline=pipeline,
            access=AccessScale.from_params(manifest["access"]),
            reranker=reranker,
            bm25_params=manifest.get("bm25", {}),
            manifest=manifest,
            load_seconds=time.perf_counter() - t0,
        )

    def prepare(self, access_level: str | None = None) -> None:
        """Fit the BM25 index of ``access_level`` now (if the pipeline uses BM25), so the first query at that level
        is as fast as the next; the seconds count as load time. Without it, BM25 is fitted on first use."""
        t0 = time.perf_counter()
        if self.pipeline.retriever in ("ft_hybrid", "ft_convex", "bm25"):
            self.bm25_at(self.visible[self.access.rank(access_level)])
        self.load_seconds += time.perf_counter() - t0

    def bm25_at(self, n: int) -> BM25Index:
        """BM25 over the first ``n`` chunks (one access level's), fitted on first use and cached: its IDF and length
        statistics come from those chunks alone, as in an index that never held the others."""
        if n not in self.bm25_cache:
            self.bm25_cache[n] = build_bm25(self.chunks[:n], self.bm25_params)
        return self.bm25_cache[n]

    def retrieve(
        self, query: str, depth: int, rank: int = 0, wanted: np.ndarray | None = None
    ) -> list[tuple[str, float]]:
        """First-stage candidates (chunk id, score), best first, among the chunks a caller at ``rank`` may see that
        ``wanted`` (a mask over all chunks, from the filters) keeps."""
        p = self.pipeline
        n = self.visible[rank]
        ids = self.dense.ids if n == len(self.dense.ids) else self.dense.ids[:n]
        keep = None if wanted is None else np.nonzero(wanted[:n])[0]
        if n == 0 or (keep is not None and not len(keep)):
            return []
        if keep is not None:
            ids = [ids[j] for j in keep]
        dense = sparse = None
        if p.retriever in ("ft_dense", "ft_hybrid", "ft_convex"):
            vec = self.embedder.encode(
                [query], prompt=self.query_prompt, normalize_embeddings=True, convert_to_numpy=True
            )
            # the level's rows only: the same product, on the same rows, as an index holding only them
            dense = (vec.astype(np.float32) @ self.dense.embeddings[:n].T)[0]
            dense = dense if keep is None else dense[keep]
        if p.retriever in ("ft_hybrid", "ft_convex", "bm25"):
            sparse = self.bm25_at(n).scores(query)
            sparse = sparse if keep is None else sparse[keep]
        if p.retriever == "ft_convex":
            assert dense is not None and sparse is not None
            return convex_fusion(["q"], ids, dense[None], sparse[None], [p.alpha], depth)[p.alpha]["q"]
        if p.retriever == "ft_hybrid":
            assert dense is not None and sparse is not None
            ranked: list[Ranking] = [{"q": top_k(ids, sparse, depth)}, {"q": top_k(ids, dense, depth)}]
            return rrf(ranked, k=p.rrf_k, depth=depth)["q"]
        scores = dense if sparse is None else sparse
        assert scores is not None
        return top_k(ids, scores, depth)

    def search(
        self, query: str, k: int = 5, access_level: str | None = None, filters: dict[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        """Ranked passages: ``{"rank", "chunk_id", "doc_id", "title", "section", "text", "metadata", "scores"}``.

        ``access_level``: the caller's level; none is the lowest (fail closed). A chunk above it is never returned
        and changes nothing in what is. ``filters``: ``{field: value or [values]}`` on ``doc_id``, ``department``,
        ``document_type``, ``tags``. Fewer than ``k`` results when fewer chunks are allowed. An unknown level raises
        :class:`~ragtune.access.AccessError`; a bad filter :class:`~ragtune.access.FilterError`.

        ``scores`` holds ``retriever`` (cosine, RRF for hybrid, the fused score for convex), ``reranker`` (raw logit
        → sigmoid) for the reranked head, and ``final``: the fused score that orders the reranked head, null below it.
        """
        from ragtune.rerank import fuse, predict

        p = self.pipeline
        rank = self.access.rank(access_level)
        wanted = self.metadata.mask(parse_filters(filters))
        t0 = time.perf_counter()
        candidates = self.retrieve(query, max(p.candidate_k, k), rank, wanted)
        t1 = time.perf_counter()
        retr_score = dict(candidates)
        rerank_score: dict[str, float] = {}
        final: list[tuple[str, float | None]] = list(candidates)
        if p.rerank and self.reranker is not None and candidates:
            top = candidates[: p.rerank_k]
            pairs = [(query, self.by_id[cid]["text"]) for cid, _ in top]
            scores = predict(self.reranker, pairs, bf16=use_cpu_bf16(p.rerank_bf16))
            rerank_score = {cid: float(s) for (cid, _), s in zip(top, scores, strict=True)}
            # past the reranked head, candidates keep retrieval order and have no fused score (final: null)
            final = fuse(top, [rerank_score[c] for c, _ in top], p.fusion_weight)
            final += [(cid, None) for cid, _ in candidates[p.rerank_k :]]
        t2 = time.perf_counter()
        self.timings = {"retrieve_s": t1 - t0, "rerank_s": t2 - t1, "total_s": t2 - t0}
        out = []
        for rank_, (cid, score) in enumerate(final[:k], start=1):
            c = self.by_id[cid]
            scores = {"retriever": round(retr_score[cid], 6), "final": None if score is None else round(score, 6)}
            if cid in rerank_score:
                scores["reranker"] = round(rerank_score[cid], 6)
            out.append(
                {
                    "rank": rank_,
                    "chunk_id": cid,
                    "doc_id": c["doc_id"],
                    "title": c.get("title", ""),
                    "section": c.get("section", ""),
                    "text": c["text"],
                    "metadata": c.get("metadata", {}),
                    "scores": scores,
                }
            )
        return out


def index_embedder_dir(index_dir: str | Path, manifest: dict[str, Any]) -> Path:
    """The embedder folder the manifest names: stored relative to the repo root, which holds ``models/index``."""
    embedder_dir = Path(manifest["embedder"])
    if not embedder_dir.is_absolute():
        embedder_dir = Path(index_dir).resolve().parent.parent / embedder_dir
    return embedder_dir


def check_index_embedder(index_dir: str | Path, manifest: dict[str, Any]) -> Path:
    """The embedder folder of an index, after checking it is the model that embedded the index's passages.

    Why: after ``train_embedder`` runs again (new params, new data) the index still holds the old model's vectors.
    Queries embedded by the new model would then be compared with passages from another vector space: no error, just
    poor results. The manifest records the embedder's fingerprint (sha256 of its weights, tokenizer and config) and
    dimension; a mismatch stops search and serve with the fix."""
    embedder_dir = index_embedder_dir(index_dir, manifest)
    if not embedder_dir.exists():
        raise SearchSetupError(f"embedder folder {embedder_dir} is missing: run `dvc repro train_embedder`")
    expected = manifest.get("embedder_fingerprint")
    if not expected:
        raise SearchSetupError(
            f"the index at {index_dir}/ does not record which embedder built it (built before model fingerprints): "
            "run `dvc repro index` to rebuild it"
        )
    found = model_fingerprint(embedder_dir)
    if found != expected:
        raise SearchSetupError(
            f"the index at {index_dir}/ was embedded by another model (fingerprint {expected[:12]}) than the "
            f"embedder at {embedder_dir} ({found[:12]}): its passage vectors do not match the queries this model "
            "embeds. Run `dvc repro index` to re-embed the corpus, then `ragtune reindex --out FILE` to refresh an "
            "external vector store."
        )
    return embedder_dir


def write_index(
    out_dir: str | Path,
    chunks: list[dict[str, Any]],
    documents: list[dict[str, Any]],
    vectors: np.ndarray,
    manifest: dict[str, Any],
    access: AccessScale,
) -> dict[str, Any]:
    """Write the index folder read by :meth:`Searcher.load` (deterministic: same inputs, same bytes).

    Each chunk gets its document's access rank; rows are stored lowest level first (stable), so each level's chunks
    are a prefix. The manifest gets the scale and the documents per level. Returns that ``access`` entry (raises
    :class:`~ragtune.access.AccessError` for a label off the scale)."""
    from ragtune.io import write_json, write_jsonl

    doc_ranks, n_unlabeled = access.document_ranks(documents)
    default = access.rank(access.unlabeled)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = {d["doc_id"]: d.get("metadata", {}) for d in documents}
    rows = [
        {
            "chunk_id": c["chunk_id"],
            "doc_id": c["doc_id"],
            "title": c.get("title", ""),
            "section": c.get("section", ""),
            "text": c["text"],
            "metadata": meta.get(c["doc_id"], {}),
            "access_rank": doc_ranks.get(c["doc_id"], default),
        }
        for c in chunks
    ]
    order = sorted(range(len(rows)), key=lambda i: rows[i]["access_rank"])  # stable: chunk order within a level
    per_level = [sum(r == i for r in doc_ranks.values()) for i in range(len(access.levels))]
    entry = {
        **access.to_manifest(),
        "documents": dict(zip(access.levels, per_level, strict=True)),
        "unlabeled_documents": n_unlabeled,
    }
    write_jsonl(out / "chunks.jsonl", [rows[i] for i in order])
    np.save(out / "embeddings.npy", np.ascontiguousarray(vectors[order], dtype=np.float32))
    write_json(
        out / "manifest.json", {**manifest, "access": entry, "n_chunks": len(rows), "dim": int(vectors.shape[1])}
    )
    return entry


def access_summary(entry: dict[str, Any]) -> str:
    """One phrase for the stage's summary line: documents per level, and loudly how many had no label and the
    level they got; empty for a corpus without labels (it works as before: every document at one level)."""
    counts = entry["documents"]
    n_docs, unlabeled = sum(counts.values()), entry["unlabeled_documents"]
    if unlabeled == n_docs:
        return ""
    text = "; access levels: " + ", ".join(f"{level} {n}" for level, n in counts.items())
    if unlabeled:
        text += f"; {unlabeled} of {n_docs} documents have no access_level → {entry['unlabeled']} (access.unlabeled)"
    return text


def run_index(
    model_params: dict[str, Any], bm25_params: dict[str, Any], access_params: dict[str, Any], paths: Paths
) -> dict[str, str]:
    """The index stage: embed every chunk with the fine-tuned embedder → the index folder search loads.

    The manifest names the embedder folder as ``paths`` spells it (relative at the repo root), so a copied repo
    still finds it; the BM25 settings go with it so search tokenizes queries as evaluate did, and the access scale
    so search and serve rank callers' levels as the documents were ranked here. Labels are checked before the
    embedding starts: an off-scale label fails in seconds, not after the corpus is encoded.
    """
    access = AccessScale.from_params(access_params)
    chunks = read_jsonl(paths.chunks)
    documents = read_jsonl(paths.documents)
    access.document_ranks(documents)
    embedder = load_dense(model_params, name=str(paths.embedder))
    vectors = embedder.encode_passages([c["text"] for c in chunks])
    entry = write_index(
        paths.index,
        chunks,
        documents,
        vectors,
        {
            "embedder": str(paths.embedder),
            "embedder_fingerprint": model_fingerprint(paths.embedder),  # search and serve check it (a retrained
            # embedder with a stale index would embed queries into another space)
            "query_prompt": embedder.query_prompt,
            "passage_prompt": embedder.passage_prompt,
            # the tokenizer as resolved for the whole corpus: search fits one BM25 per access level over fewer
            # chunks, and `auto` must not resolve differently there
            "bm25": {k: bm25_params[k] for k in ("backend", "k1", "b") if k in bm25_params}
            | {"tokenizer": resolve_tokenizer(bm25_params.get("tokenizer", "auto"), len(chunks))},
        },
        access,
    )
    return {
        "read": f"{len(chunks)} chunks of {len(documents)} documents",
        "wrote": f"{paths.index}/ ({vectors.shape[0]} × {vectors.shape[1]} vectors, chunks, manifest)"
        + access_summary(entry),
    }
