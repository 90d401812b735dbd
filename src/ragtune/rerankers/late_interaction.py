"""A late-interaction (ColBERT-style) reranker over the fine-tuned embedder's own token vectors.

Why: the cross-encoder reranker starts from a new, random head and, trained on a few hundred questions, ends up
worse than the retriever it reranks (issue 18). Late interaction needs no head: each query token is matched to its
most similar passage token (MaxSim) with the embedder's contextual token vectors, so before any training it already
scores with what the retriever learned, and training only sharpens it.

Built on sentence-transformers' own ``MultiVectorEncoder`` (ST ≥ 6), not PyLate: PyLate 1.6 pins
sentence-transformers==5.3.0, transformers≤5.3.0 and, through fast-plaid, torch 2.11, so installing it would move
every pin of this project (docs/rerankers.md has the evidence). The modules:

* the embedder's ``Transformer`` (its fine-tuned weights; ``query_length`` / ``document_length`` cap each side);
* ``MultiVectorMask``: padding never scores; punctuation is skipped on the passage side (ColBERT's skiplist);
  [CLS], [SEP] and the prompt tokens stay, as ColBERT keeps its [CLS]/[Q]/[D] markers;
* a token-level ``Normalize``, so a token match is a cosine.

No projection layer: ColBERT's 768→128 projection would start random and destroy the "meaningful from step 0"
property; the embedder's own 384-dim token space is small enough to rerank 10 candidates on a CPU.

The score is **MeanMaxSim**: the sum over query tokens of the best cosine over passage tokens, divided by the
number of query tokens. Within one query (all a reranker compares) it orders candidates exactly as the summed
MaxSim does, and min-max fusion (:func:`ragtune.rerank.fuse`) is scale-free, so reranking is unchanged; but the
score stays in [-1, 1] whatever the query's length, so it reads like a cosine and the training loss's ``scale``
means what it means for the dense MNRL loss.
"""

from __future__ import annotations

import json
import string
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ragtune.errors import UserError
from ragtune.rerankers import MARKER

KIND = "late_interaction"
SIMILARITY = "meanmaxsim"


class LateInteractionError(UserError, ValueError):
    """A folder is not a late-interaction reranker, or the embedder it should start from is unusable."""


def embedder_prompts(path: str | Path) -> dict[str, str]:
    """The query / passage prompts a sentence-transformers folder was saved with (``query: `` / ``passage: `` for
    e5), under the MultiVectorEncoder's task names ``query`` / ``document``. The names follow
    :func:`ragtune.retrieval.model_prompt`: a wrong or missing prefix costs e5 several points, so never guess."""
    from types import SimpleNamespace

    from ragtune.retrieval import model_prompt

    cfg = Path(path, "config_sentence_transformers.json")
    saved = json.loads(cfg.read_text(encoding="utf-8")).get("prompts") or {} if cfg.exists() else {}
    holder = SimpleNamespace(prompts=saved)
    return {"query": model_prompt(holder, "query"), "document": model_prompt(holder, "passage")}


class LateInteractionReranker:
    """Scores (query, passage) pairs by MeanMaxSim over token vectors; ``load`` / ``predict`` / ``save``.

    ``predict`` also accepts ``show_progress_bar`` and the class has ``device``, so :func:`ragtune.rerank.predict`
    (written for a CrossEncoder) can call it unchanged.
    """

    def __init__(self, model: Any) -> None:
        self.model = model  # a sentence_transformers.MultiVectorEncoder

    @classmethod
    def from_embedder(
        cls, path: str | Path, *, max_query_length: int, max_doc_length: int, device: str | None = None
    ) -> LateInteractionReranker:
        """The untrained start: the embedder's transformer and prompts, its pooling dropped, nothing new added."""
        from sentence_transformers import MultiVectorEncoder
        from sentence_transformers.base.modules import Normalize, Transformer
        from sentence_transformers.multi_vector_encoder.modules import MultiVectorMask

        if not Path(path, "config.json").exists():
            raise LateInteractionError(
                f"{path}: no config.json, so no transformer to take token vectors from; late interaction starts "
                "from a saved sentence-transformers embedder whose transformer sits at the folder's root "
                "(models/embedder)"
            )
        encoder = Transformer(str(path), query_length=max_query_length, document_length=max_doc_length)
        vocab = encoder.tokenizer.get_vocab()  # only single-token punctuation can be skipped (else ST warns)
        modules = [
            encoder,
            MultiVectorMask(skiplist_words=[c for c in string.punctuation if c in vocab]),
            Normalize(module_input_name="token_embeddings"),
        ]
        model = MultiVectorEncoder(
            modules=modules, prompts=embedder_prompts(path), similarity_fn_name=SIMILARITY, device=device
        )
        return cls(model)

    @classmethod
    def load(cls, path: str | Path, device: str | None = None) -> LateInteractionReranker:
        """A reranker :meth:`save` wrote; refuses a folder whose marker names another kind."""
        from sentence_transformers import MultiVectorEncoder

        marker = Path(path, MARKER)
        kind = json.loads(marker.read_text(encoding="utf-8")).get("kind") if marker.exists() else None
        if kind != KIND:
            raise LateInteractionError(
                f"{path}: {MARKER} says kind={kind!r}, not {KIND!r}; load it with the loader of its own kind "
                f"(or start from an embedder with LateInteractionReranker.from_embedder)"
            )
        return cls(MultiVectorEncoder(str(path), device=device))

    @property
    def device(self) -> Any:
        return self.model.device

    @property
    def prompts(self) -> dict[str, str]:
        return dict(self.model.prompts)

    def save(self, path: str | Path) -> None:
        """The model (weights, tokenizer, modules, prompts) and the marker a loader dispatches on."""
        self.model.save(str(path))
        encoder = self.model[0]
        marker = {
            "kind": KIND,
            "similarity": SIMILARITY,
            "max_query_length": encoder.query_length,
            "max_doc_length": encoder.document_length,
            "prompts": self.prompts,
        }
        Path(path, MARKER).write_text(json.dumps(marker, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    def predict(
        self, pairs: Sequence[tuple[str, str]], batch_size: int = 32, show_progress_bar: bool = False
    ) -> np.ndarray:
        """MeanMaxSim of each (query, passage) pair. Each distinct query and passage is encoded once: a reranker
        sees one query with k candidates, and a passage often comes back for several queries."""
        import torch

        if not pairs:
            return np.zeros(0, dtype=np.float32)
        queries = list(dict.fromkeys(q for q, _ in pairs))
        docs = list(dict.fromkeys(d for _, d in pairs))
        kw = {"batch_size": batch_size, "show_progress_bar": show_progress_bar}
        with torch.inference_mode():
            q_vecs = self.model.encode_query(queries, **kw)
            d_vecs = self.model.encode_document(docs, **kw)
            q_at, d_at = {q: i for i, q in enumerate(queries)}, {d: i for i, d in enumerate(docs)}
            scores = self.model.similarity_pairwise(
                [q_vecs[q_at[q]] for q, _ in pairs], [d_vecs[d_at[d]] for _, d in pairs]
            )
        return scores.float().cpu().numpy()
