"""The embedder trainer's params: every key of ``train_embedder:`` in params.yaml, validated."""

from __future__ import annotations

from dataclasses import dataclass

from ragtune.errors import UserError
from ragtune.train.config import TrainerConfig
from ragtune.train.rows import POSITIVES

LOSSES = ("mnrl", "cached_mnrl", "gist")
BATCH_SAMPLERS = ("document_disjoint", "no_duplicates")
# MNRL interaction terms (sentence-transformers' ``directions``): query_to_doc is the classic InfoNCE; adding
# doc_to_query makes it symmetric (each passage must also pick its own query out of the batch), and all four are
# GTE's "improved contrastive loss".
DIRECTIONS = ("query_to_doc", "doc_to_query", "query_to_query", "doc_to_doc")
# MNRL hardness weighting: add strength·stop_grad(cos) to these negatives' logits, so harder negatives weigh more.
HARDNESS_MODES = ("none", "in_batch_negatives", "hard_negatives", "all_negatives")


class TrainConfigError(UserError, ValueError):
    """A train_embedder param is unknown or invalid; the message names the key and the fix."""


@dataclass(frozen=True, kw_only=True)
class EmbedderTrainConfig(TrainerConfig):
    """``train_embedder:``: the shared trainer keys (:class:`TrainerConfig`) plus the loss, the rows and the
    decision of what ships (WiSE-FT merge, base model kept without dev evidence)."""

    SECTION = "train_embedder"
    ERROR = TrainConfigError

    loss: str
    scale: float  # MNRL logit scale = 1 / temperature; e5 was trained with temperature 0.01 (scale 100)
    directions: tuple[str, ...]  # mnrl / cached_mnrl interaction terms, see DIRECTIONS
    hardness_mode: str  # mnrl / cached_mnrl, see HARDNESS_MODES
    hardness_strength: float  # Lan et al. 2025 use 9 for in_batch_negatives, EmbeddingGemma 5 for hard_negatives
    mini_batch_size: int  # cached_mnrl: forward chunk size; memory, not the effective batch
    gist_temperature: float
    matryoshka_dims: tuple[int, ...]
    n_hard_negatives: int
    positives: str  # first | all: one training row per labeled positive (see ragtune.train.rows)
    batch_sampler: str  # or no_duplicates (identical texts only): see ragtune.train.batching
    max_seq_length: int
    dev_level: str  # dev evaluator relevance: doc (labeled documents, MaxP) | chunk (aligned chunks)
    dev_pool_k: int  # dev evaluator corpus: labeled chunks + BM25's and the base model's top k per question; 0 = all
    merge_alpha: float  # WiSE-FT: weights = (1 - alpha)·base + alpha·fine-tuned; 1.0 = no merge
    merge_tolerance: float  # keep the merge unless the unmerged model beats it on dev by more than this
    keep_base_if_worse: bool  # ship the base model (loudly) unless dev shows the trained one better (interval > 0)
    enabled: bool  # false: ship model.embedder untrained (a base-model bake-off)
    freeze_embeddings: bool
    freeze_layers: int

    def validate(self) -> None:
        if self.loss not in LOSSES:
            raise TrainConfigError(f"train_embedder.loss={self.loss!r}: choose one of {LOSSES}")
        bad = [d for d in self.directions if d not in DIRECTIONS]
        if bad or "query_to_doc" not in self.directions or len(set(self.directions)) != len(self.directions):
            raise TrainConfigError(
                f"train_embedder.directions={list(self.directions)!r}: list distinct terms from {DIRECTIONS}, "
                "always including query_to_doc (the retrieval direction), e.g. [query_to_doc, doc_to_query]"
            )
        if self.loss == "gist" and tuple(self.directions) != ("query_to_doc",):
            raise TrainConfigError(
                "train_embedder.directions applies to loss mnrl or cached_mnrl; GISTEmbedLoss has only query_to_doc. "
                "Set directions: [query_to_doc] or pick another loss"
            )
        if self.hardness_mode not in HARDNESS_MODES:
            raise TrainConfigError(
                f"train_embedder.hardness_mode={self.hardness_mode!r}: choose one of {HARDNESS_MODES}"
            )
        if self.hardness_strength < 0 or (self.hardness_mode == "none") != (self.hardness_strength == 0):
            raise TrainConfigError(
                f"train_embedder.hardness_mode={self.hardness_mode!r} with hardness_strength={self.hardness_strength}: "
                "set both (a mode and a strength > 0, e.g. in_batch_negatives and 9) or neither (none and 0)"
            )
        if self.loss == "gist" and self.hardness_mode != "none":
            raise TrainConfigError("train_embedder.hardness_mode applies to loss mnrl or cached_mnrl, not gist")
        if self.positives not in POSITIVES:
            raise TrainConfigError(
                f"train_embedder.positives={self.positives!r}: choose one of {POSITIVES} (all: one training row per "
                "labeled positive; first: only each question's first positive)"
            )
        if self.batch_sampler not in BATCH_SAMPLERS:
            raise TrainConfigError(
                f"train_embedder.batch_sampler={self.batch_sampler!r}: choose one of {BATCH_SAMPLERS}"
            )
        if self.batch_size < 2:
            raise TrainConfigError("train_embedder.batch_size must be ≥ 2: MNRL needs in-batch negatives")
        if self.dev_pool_k < 0:
            raise TrainConfigError(
                f"train_embedder.dev_pool_k={self.dev_pool_k} must be ≥ 0 (chunks per dev question from BM25 and from "
                "the base model; 0 scores dev against the whole corpus)"
            )
        if self.n_hard_negatives < 0:
            raise TrainConfigError("train_embedder.n_hard_negatives must be ≥ 0")
        if self.scale <= 0:
            raise TrainConfigError("train_embedder.scale must be > 0 (it is 1 / temperature)")
        if not 0 < self.merge_alpha <= 1:
            raise TrainConfigError(
                f"train_embedder.merge_alpha={self.merge_alpha} must be in (0, 1]: 1 keeps the fine-tuned weights, "
                "0.5 averages them with the base model's"
            )
        if self.merge_tolerance < 0:
            raise TrainConfigError("train_embedder.merge_tolerance must be ≥ 0 (dev ndcg@10 points, e.g. 0.005)")
        super().validate()
