"""The served models, loaded once, answering in plain Python: what the HTTP layer calls from its model thread.

Everything is the library's own code path, so the server answers exactly what the CLI and the report measured:
:class:`ragtune.search.Searcher` for search (index, chosen pipeline, reranker), :class:`ragtune.retrieval.Embedder`
for embeddings (with the prompts the index manifest records), :func:`ragtune.rerank.predict` for reranking. One
embedder is loaded and shared by search and embeddings; the reranker is loaded whenever its folder exists, even if
the chosen pipeline does not rerank, because /v1/rerank serves it.

Nothing here is thread-safe (the tokenizers and ``Searcher.timings`` are shared state): callers run every method on
one thread (:class:`ragtune.serve.batching.ModelWorker`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ragtune.access import parse_filters
from ragtune.errors import UserError
from ragtune.paths import Paths
from ragtune.precision import use_cpu_bf16
from ragtune.retrieval import DenseEncoder, Embedder, load_dense, model_prompt
from ragtune.search import Pipeline, Searcher, SearchSetupError, index_embedder_dir

InputType = Literal["query", "passage"]
EMBEDDER_ID = "ragtune-embedder"
RERANKER_ID = "ragtune-reranker"


class Unavailable(UserError):
    """The server was started without what a request needs (no index, no reranker): the message says which folder
    is missing and what builds it. Answered with 503, since the client's request was well formed."""


class Refused(UserError):
    """A well-formed request this server cannot answer as asked (a pipeline whose reranker is absent): answered with
    422 naming ``param``."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass
class Service:
    """The embedder, and when their folders exist, the index with its pipeline and the reranker."""

    paths: Paths
    embedder: Embedder
    embedder_dir: Path
    searcher: Searcher | None = None
    reranker: Any = None
    rerank_bf16: bool = False
    index_manifest: dict[str, Any] = field(default_factory=dict)
    _variants: dict[str, Searcher] = field(default_factory=dict, repr=False)

    @classmethod
    def load(cls, paths: Paths, pipeline: Pipeline | None = None) -> Service:
        """Load from a repository layout. Without an index only /v1/embeddings and /v1/rerank work, so a team can
        serve the embedder right after train_embedder; without a reranker, pipelines that rerank are refused.

        ``pipeline`` overrides the one evaluate chose (``models/pipeline.json``).
        """
        pipeline = pipeline or Pipeline.load(paths.pipeline)
        if (paths.index / "manifest.json").exists():
            searcher = Searcher.load(paths.index, pipeline, reranker_dir=paths.reranker)
            searcher.prepare()  # the level of a request that names none: ready before the first one
            manifest = searcher.manifest
            embedder_dir = index_embedder_dir(paths.index, manifest)  # checked by Searcher.load
            model = searcher.embedder
            embedder = Embedder(
                name=str(embedder_dir),
                model=model,
                encoder=DenseEncoder(model, fingerprint="", use_cache=False),
                # the index was embedded with these: a vector store filled through serve must match it
                query_prompt=manifest.get("query_prompt", model_prompt(model, "query")),
                passage_prompt=manifest.get("passage_prompt", model_prompt(model, "passage")),
            )
            reranker = searcher.reranker
        else:
            if not paths.embedder.exists():
                raise SearchSetupError(f"no embedder at {paths.embedder}/: run `dvc repro train_embedder` first")
            searcher, manifest, embedder_dir = None, {}, paths.embedder
            embedder = load_dense({}, name=str(paths.embedder))
            # a server sees unbounded distinct texts: the on-disk cache would only grow
            embedder.encoder.use_cache = False
            reranker = None
        if reranker is None and paths.reranker.exists():
            from ragtune.rerank import load_reranker

            reranker = load_reranker(paths.reranker, device="cpu")
        # bf16 autocast for the reranker where the served pipeline's setting says so, as search and evaluate run it
        service = cls(paths, embedder, embedder_dir, searcher, reranker, use_cpu_bf16(pipeline.rerank_bf16), manifest)
        if searcher is not None:
            service._variants[searcher.pipeline.name] = searcher
        return service

    # ------------------------------------------------------------------------------------------------ embeddings
    @property
    def dimension(self) -> int:
        return int(self.embedder.model.get_embedding_dimension())

    def _prompt(self, input_type: InputType) -> str:
        return self.embedder.query_prompt if input_type == "query" else self.embedder.passage_prompt

    def embed(self, texts: list[str], input_type: InputType) -> np.ndarray:
        """Normalised float32 vectors, one row per text, exactly as the pipeline embeds queries or passages."""
        if input_type == "query":
            return self.embedder.encode_queries(texts)
        return self.embedder.encode_passages(texts)

    def count_tokens(self, texts: list[str], input_type: InputType) -> np.ndarray:
        """Tokens the model reads per text: the prompt and the text, with special tokens, truncated at
        max_seq_length (what OpenAI's ``usage`` counts: the input the model actually processed)."""
        model = self.embedder.model
        prompt = self._prompt(input_type)
        ids = model.tokenizer(
            [prompt + t for t in texts], truncation=True, max_length=model.max_seq_length, add_special_tokens=True
        )["input_ids"]
        return np.array([len(x) for x in ids], dtype=np.int64)

    def embed_with_usage(self, texts: list[str], input_type: InputType) -> tuple[np.ndarray, np.ndarray]:
        """(vectors, tokens per text): one call on the model thread, since the tokenizer is not thread-safe."""
        return self.embed(texts, input_type), self.count_tokens(texts, input_type)

    # ------------------------------------------------------------------------------------------------ rerank
    def rerank(self, query: str, documents: list[str]) -> list[float]:
        """The reranker's score for each document, in document order (any kind: ``ragtune.rerank.predict``)."""
        from ragtune.rerank import predict

        if self.reranker is None:
            raise Unavailable(f"no reranker at {self.paths.reranker}/: run `dvc repro train_reranker`")
        return predict(self.reranker, [(query, d) for d in documents], bf16=self.rerank_bf16)

    # ------------------------------------------------------------------------------------------------ search
    @property
    def pipeline(self) -> Pipeline | None:
        return self.searcher.pipeline if self.searcher else None

    def check_search(self, access_level: str | None, filters: dict[str, Any] | None) -> str:
        """The level a search is answered at (the lowest when none is named), checked with the filters before the
        request waits for the model thread: raises :class:`~ragtune.access.AccessError` or
        :class:`~ragtune.access.FilterError` (a 422), or :class:`Unavailable` without an index."""
        searcher = self._searcher(None)
        parse_filters(filters)
        return searcher.access.name(access_level)

    def search(
        self,
        query: str,
        k: int,
        pipeline: str | None = None,
        access_level: str | None = None,
        filters: dict[str, Any] | None = None,
    ) -> tuple[str, list[dict[str, Any]]]:
        """(pipeline name, ``Searcher.search`` results) with the served pipeline or the named one, for a caller at
        ``access_level`` (none: the lowest), narrowed by ``filters``."""
        searcher = self._searcher(pipeline)
        return searcher.pipeline.name, searcher.search(query, k=k, access_level=access_level, filters=filters)

    def _searcher(self, name: str | None) -> Searcher:
        """The served Searcher, or one for another pipeline sharing its index, embedder, reranker and per-level BM25
        indexes (built on first use: a level's BM25 is fitted when a pipeline first needs it)."""
        if self.searcher is None:
            raise Unavailable(f"no index at {self.paths.index}/: run `dvc repro index` (or the whole pipeline) first")
        if name is None:
            return self.searcher
        if name not in self._variants:
            base = self.searcher
            p = Pipeline.parse(name, base.pipeline)
            if p.rerank and self.reranker is None:
                raise Refused("pipeline", f"{name} needs the reranker, and {self.paths.reranker}/ does not exist")
            self._variants[name] = Searcher(
                chunks=base.chunks,
                dense=base.dense,
                embedder=base.embedder,
                query_prompt=base.query_prompt,
                pipeline=p,
                access=base.access,
                reranker=self.reranker if p.rerank else None,
                bm25_params=base.bm25_params,
                bm25_cache=base.bm25_cache,  # shared: a level's BM25 is fitted once for every pipeline
            )
        return self._variants[name]

    # ------------------------------------------------------------------------------------------------ description
    def describe(self) -> dict[str, Any]:
        """What /v1/models reports: the models, the dimension, the pipeline and its dev/test NDCG@10 from
        ``metrics/evaluate.json`` (null where the file or the system is absent), and the index's access scale
        (levels lowest first, the level of unlabeled documents, the default level, documents per level)."""
        metrics_path = self.paths.metrics("evaluate")
        metrics = json.loads(metrics_path.read_text(encoding="utf-8")) if metrics_path.exists() else {}
        models = [
            {
                "id": EMBEDDER_ID,
                "kind": "embedder",
                "path": str(self.embedder_dir),
                "base_model": (metrics.get("base_model") or {}).get("name"),
                "dimension": self.dimension,
                "max_seq_length": int(self.embedder.model.max_seq_length),
                "prompts": {"query": self.embedder.query_prompt, "passage": self.embedder.passage_prompt},
            }
        ]
        if self.reranker is not None:
            from ragtune.rerank import reranker_kind

            models.append(
                {
                    "id": RERANKER_ID,
                    "kind": "reranker",
                    "path": str(self.paths.reranker),
                    "reranker_kind": reranker_kind(self.paths.reranker),
                }
            )
        pipeline = access = None
        if self.searcher is not None:
            scale = self.searcher.access
            access = {
                **self.index_manifest.get("access", {}),
                "levels": list(scale.levels),
                "unlabeled": scale.unlabeled,
                "default": scale.lowest,  # a search that names no level: fail closed
            }
            name = self.searcher.pipeline.name
            pipeline = {
                "name": name,
                "chosen_on_dev": (metrics.get("selection") or {}).get("system"),
                "index": str(self.paths.index),
                "n_chunks": len(self.searcher.chunks),
                "dev_ndcg@10": (metrics.get("dev", {}).get(name) or {}).get("ndcg@10"),
                "test_ndcg@10": (metrics.get("test", {}).get(name) or {}).get("ndcg@10"),
            }
        return {"models": models, "pipeline": pipeline, "access": access}
