"""The reranker trainer's params: every key of ``train_reranker:`` in params.yaml, validated."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ragtune.errors import UserError
from ragtune.params import StageConfig
from ragtune.train.config import TrainerConfig

LOSSES = ("bce", "lambda", "mnrl")
KINDS = ("cross_encoder", "late_interaction", "llm")


class RerankerConfigError(UserError, ValueError):
    """A ``train_reranker`` param is unknown or out of range."""


HEAD_PATTERNS = {"cls": r"classifier", "mean": r"(^|\.)2\.linear\."}  # new-head parameters, for learning_rate_mapping


class DistillConfigError(RerankerConfigError):
    """A ``train_reranker.distill`` setting is missing, unknown or out of range."""


@dataclass(frozen=True, kw_only=True)
class DistillSettings(StageConfig):
    """``train_reranker.distill``: how many lists, how long, how sharp the teacher; no defaults (params.yaml)."""

    SECTION = "train_reranker.distill"
    ERROR = DistillConfigError

    lists: int  # (query, candidates) lists to distill; 0 = off; more than there are queries = all of them
    list_size: int  # candidates per list: the teacher's top list_size chunks for the query
    temperature: float  # teacher softmax temperature on its cosine scores
    epochs: float  # passes over the lists
    batch_size: int  # lists per optimizer step (each is list_size (query, passage) pairs)

    def validate(self) -> None:
        sec, err = self.SECTION, self.ERROR
        if self.lists < 0:
            raise err(f"{sec}.lists={self.lists}: use 0 (off) or a positive number of lists")
        if self.list_size < 2:
            raise err(f"{sec}.list_size={self.list_size}: a list needs at least 2 candidates to rank")
        if not self.temperature > 0:
            raise err(f"{sec}.temperature={self.temperature}: must be > 0 (the embedder's: 1 / train_embedder.scale)")
        if not self.epochs > 0:
            raise err(f"{sec}.epochs={self.epochs}: must be > 0")
        if self.batch_size < 1:
            raise err(f"{sec}.batch_size={self.batch_size}: must be ≥ 1")


@dataclass(frozen=True, kw_only=True)
class RerankerTrainConfig(TrainerConfig):
    """``train_reranker:``: the shared trainer keys (:class:`TrainerConfig`) plus the start model and its head, the
    loss, and how groups are mined from the embedder's ranking."""

    SECTION = "train_reranker"
    ERROR = RerankerConfigError

    kind: str  # cross_encoder | late_interaction | llm (ragtune.train.reranker.kinds)
    late_interaction: dict[str, Any]  # kind: late_interaction only: its own keys (the shared ones come from here)
    llm: dict[str, Any]  # kind: llm only: its own keys
    distill: dict[str, Any]  # kind: cross_encoder: the distillation warm start's own keys (train/reranker/distill.py)
    # embedder: the fine-tuned embedder's encoder + a new head | base: model.embedder + a new head |
    # any other value: a model name or path (e.g. BAAI/bge-reranker-v2-m3), loaded with its own head
    base: str
    head: str  # new head on: mean (mean-pooled tokens + linear) | cls (ST's [CLS]-pooler conversion)
    loss: str
    pos_weight: float  # bce: weight of positives; 0 = negatives per positive (balances the classes)
    mnrl_scale: float
    n_hard: int  # hard negatives per positive, from the fine-tuned embedder's ranks [rank_min, rank_max)
    n_random: int
    rank_min: int
    rank_max: int
    margin: float  # drop candidates scoring ≥ (1 - margin) × the positive's similarity (false negatives)
    max_pos_per_doc: int  # cap on training questions per positive document; 0 = no cap
    use_synthetic: bool  # add the pairs stage's self-supervised pairs (when it wrote any)
    max_length: int
    head_lr: float  # learning rate of a newly initialised head; 0 = same as lr
    rerank_k: int  # dev evaluator: rerank this many embedder candidates per query

    def validate(self) -> None:
        if self.kind not in KINDS:
            raise RerankerConfigError(f"train_reranker.kind={self.kind!r}: choose one of {KINDS}")
        for name in ("late_interaction", "llm", "distill"):
            if not isinstance(getattr(self, name), dict):
                raise RerankerConfigError(f"train_reranker.{name} must be a mapping of its keys (see params.yaml)")
        DistillSettings.from_params(self.distill)  # refuses a missing, unknown or bad key before minutes of mining
        if self.loss not in LOSSES:
            raise RerankerConfigError(f"train_reranker.loss={self.loss!r}: choose one of {LOSSES}")
        if self.n_hard + self.n_random < 1:
            raise RerankerConfigError("train_reranker: n_hard + n_random must be ≥ 1 (a reranker needs negatives)")
        if not 0 <= self.rank_min < self.rank_max:
            raise RerankerConfigError("train_reranker: need 0 ≤ rank_min < rank_max")
        if self.head not in HEAD_PATTERNS:
            raise RerankerConfigError(f"train_reranker.head={self.head!r}: use one of {sorted(HEAD_PATTERNS)}")
        if self.head_lr < 0:
            raise RerankerConfigError("train_reranker.head_lr must be ≥ 0 (0 = same as lr)")
        if self.batch_size < 2:
            raise RerankerConfigError("train_reranker.batch_size must be ≥ 2")
        super().validate()
