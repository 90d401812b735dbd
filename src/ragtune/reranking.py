"""Training the cross-encoder reranker: its groups, its trainer and its checks (inference: :mod:`ragtune.rerank`).

Why it is built this way:

* **Negatives come from the fine-tuned embedder's own top-k** (:func:`mine_rerank_groups`), because those are the
  candidates the reranker will be asked to order. Chunks of a labeled document are never negatives, and a
  candidate within ``margin`` of the positive's similarity is dropped as a likely false negative.
* **Positives are capped per document** (``max_pos_per_doc``). A reranker trained on a few hundred questions
  otherwise learns document popularity: one document that answers many training questions ends up first for
  everything (see :func:`ragtune.rerank.top1_concentration`).
* **A new head learns faster than the body** (``head_lr``, via sentence-transformers' ``learning_rate_mapping``):
  a one-logit head initialised from nothing needs a larger step than a pretrained encoder can take.
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ragtune.params import StageConfig
from ragtune.retrieval import Ranking
from ragtune.training import (
    check_attention_dropout,
    check_schedule,
    model_card_sections,
    precision_flags,
    require_resolved,
    resolve_schedule,
    trainer_callbacks,
    unresolved,
)

LOSSES = ("bce", "lambda", "mnrl")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


class RerankerConfigError(ValueError):
    """A ``train_reranker`` param is unknown or out of range."""


@dataclass
class RerankerTrainConfig(StageConfig):
    """Every knob of the train_reranker stage. Field names are the params.yaml keys under ``train_reranker:``.

    No field has a default: params.yaml's ``train_reranker:`` section holds every value (see :class:`StageConfig`).
    """

    SECTION = "train_reranker"
    ERROR = RerankerConfigError

    seed: int
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
    epochs: float | str  # auto: training.plan_schedule sizes it to the training rows; a number wins
    max_steps: int  # > 0 overrides epochs and the auto plan
    auto_min_steps: int  # epochs: auto trains whole epochs until at least this many optimizer steps …
    auto_max_epochs: int  # … but never more epochs than this …
    auto_max_steps: int  # … and stops here even mid-epoch (a deterministic compute budget, in steps)
    eval_fraction: float  # eval_steps / save_steps: auto = ceil(eval_fraction × total steps)
    batch_size: int
    lr: float
    head_lr: float  # learning rate of a newly initialised head; 0 = same as lr
    warmup_ratio: float
    scheduler: str
    weight_decay: float
    rerank_k: int  # dev evaluator: rerank this many embedder candidates per query
    eval_steps: int | str  # auto: see eval_fraction; a number wins
    save_steps: int | str  # auto: equal to eval_steps
    save_total_limit: int
    early_stopping_patience: int
    load_best_model_at_end: bool
    ship_unchecked: bool  # no dev question: ship the untrained start model (false) or train unchecked (true)
    gradient_accumulation_steps: int
    gradient_checkpointing: bool
    precision: str
    cpu_bf16: bool
    attention_dropout: float | None  # None: the model's own; 0: fused attention kernel, ~2× faster steps
    logging_steps: int
    dataloader_num_workers: int
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def validate(self) -> None:
        if self.loss not in LOSSES:
            raise RerankerConfigError(f"train_reranker.loss={self.loss!r}: choose one of {LOSSES}")
        if self.precision not in PRECISIONS:
            raise RerankerConfigError(f"train_reranker.precision={self.precision!r}: choose one of {PRECISIONS}")
        if self.n_hard + self.n_random < 1:
            raise RerankerConfigError("train_reranker: n_hard + n_random must be ≥ 1 (a reranker needs negatives)")
        if not 0 <= self.rank_min < self.rank_max:
            raise RerankerConfigError("train_reranker: need 0 ≤ rank_min < rank_max")
        if self.lr <= 0 or self.lr > 1e-2:
            raise RerankerConfigError(f"train_reranker.lr={self.lr} is outside (0, 1e-2]")
        if self.head not in HEAD_PATTERNS:
            raise RerankerConfigError(f"train_reranker.head={self.head!r}: use one of {sorted(HEAD_PATTERNS)}")
        if self.head_lr < 0:
            raise RerankerConfigError("train_reranker.head_lr must be ≥ 0 (0 = same as lr)")
        if self.batch_size < 2:
            raise RerankerConfigError("train_reranker.batch_size must be ≥ 2")
        check_attention_dropout(self.attention_dropout, RerankerConfigError, self.SECTION)
        check_schedule(self, RerankerConfigError)


# --------------------------------------------------------------------------------------------------- data
def cap_per_document(
    pairs: Sequence[dict[str, Any]], max_per_doc: int, seed: int
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Keep at most ``max_per_doc`` pairs per (first) positive document, chosen at random with ``seed``.

    Returns the kept pairs in their input order, and the number dropped per document (for the metrics).
    """
    if max_per_doc <= 0:
        return list(pairs), {}
    by_doc: dict[str, list[int]] = {}
    for i, p in enumerate(pairs):
        by_doc.setdefault(p["positive_doc_ids"][0], []).append(i)
    keep: set[int] = set()
    dropped: dict[str, int] = {}
    for doc, idx in sorted(by_doc.items()):
        if len(idx) > max_per_doc:
            idx = sorted(random.Random(f"{seed}:{doc}").sample(idx, max_per_doc))
            dropped[doc] = len(by_doc[doc]) - max_per_doc
        keep.update(idx)
    return [p for i, p in enumerate(pairs) if i in keep], dropped


def mine_rerank_groups(
    pairs: Sequence[dict[str, Any]],
    ranking: Ranking,
    chunk_text: dict[str, str],
    chunk_to_doc: dict[str, str],
    cfg: RerankerTrainConfig,
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """FlagEmbedding groups ``{"query", "pos", "neg", ...}`` with negatives from the embedder's ranking.

    Per pair: the positive is its aligned positive chunk (or its ICT text). Hard negatives are the first
    ``n_hard`` candidates in ranks ``[rank_min, rank_max)`` that are not from a positive document and score below
    ``(1 - margin)`` × the positive's similarity; ``n_random`` more are drawn from the rest of the corpus. A group
    short of hard negatives is kept with what it has, and counted.
    """
    all_chunks = sorted(chunk_text)
    groups, counts = [], Counter()
    for p in pairs:
        positive_docs = set(p["positive_doc_ids"])
        pos_ids = list(p.get("positive_chunk_ids") or [])[:1]
        pos_texts = list(p.get("positive_texts") or [chunk_text[c] for c in pos_ids])[:1]
        if not pos_texts:
            counts["skipped_no_positive"] += 1
            continue
        ranked = ranking.get(p["query_id"], [])
        pos_scores = [s for cid, s in ranked if chunk_to_doc[cid] in positive_docs]
        ceiling = (1.0 - cfg.margin) * max(pos_scores) if pos_scores else math.inf
        hard: list[str] = []
        for rank, (cid, score) in enumerate(ranked):
            if len(hard) == cfg.n_hard:
                break
            if rank < cfg.rank_min or rank >= cfg.rank_max or chunk_to_doc[cid] in positive_docs:
                continue
            if score >= ceiling:
                counts["dropped_by_margin"] += 1
                continue
            hard.append(cid)
        if len(hard) < cfg.n_hard:
            counts["groups_short_of_hard_negatives"] += 1
        rng = random.Random(f"{cfg.seed}:{p['query_id']}")
        taken = set(hard)
        rand: list[str] = []
        for cid in rng.sample(all_chunks, min(len(all_chunks), 4 * cfg.n_random + 16)):
            if len(rand) == cfg.n_random:
                break
            if cid not in taken and chunk_to_doc[cid] not in positive_docs:
                rand.append(cid)
                taken.add(cid)
        neg_ids = hard + rand
        groups.append(
            {
                "query": p["query"],
                "pos": pos_texts,
                "neg": [chunk_text[c] for c in neg_ids],
                "query_id": p["query_id"],
                "pos_ids": pos_ids,
                "neg_ids": neg_ids,
                "neg_sources": ["embedder"] * len(hard) + ["random"] * len(rand),
            }
        )
        counts["groups"] += 1
        counts["negatives"] += len(neg_ids)
    return groups, dict(counts)


def groups_to_dataset(groups: Sequence[dict[str, Any]], loss: str) -> Any:
    """Training rows in the shape each loss expects.

    * bce: ``(query, passage, label)`` pointwise rows, label 1.0 / 0.0;
    * lambda: ``(query, docs, labels)`` one listwise row per group;
    * mnrl: ``(query, positive, negative_1..n)`` with n the smallest group's negative count (no padding).
    """
    from datasets import Dataset

    if loss == "bce":
        rows: dict[str, list[Any]] = {"query": [], "passage": [], "label": []}
        for g in groups:
            for text, label in [(t, 1.0) for t in g["pos"]] + [(t, 0.0) for t in g["neg"]]:
                rows["query"].append(g["query"])
                rows["passage"].append(text)
                rows["label"].append(label)
        return Dataset.from_dict(rows)
    if loss == "lambda":
        return Dataset.from_dict(
            {
                "query": [g["query"] for g in groups],
                "docs": [g["pos"] + g["neg"] for g in groups],
                "labels": [[1.0] * len(g["pos"]) + [0.0] * len(g["neg"]) for g in groups],
            }
        )
    n = min((len(g["neg"]) for g in groups), default=0)
    rows = {"query": [g["query"] for g in groups], "positive": [g["pos"][0] for g in groups]}
    for i in range(n):
        rows[f"negative_{i + 1}"] = [g["neg"][i] for g in groups]
    return Dataset.from_dict(rows)


def dev_samples(
    dev: Sequence[dict[str, Any]],
    ranking: Ranking,
    chunk_text: dict[str, str],
    chunk_to_doc: dict[str, str],
    k: int,
) -> list[dict[str, Any]]:
    """CrossEncoderRerankingEvaluator samples: the embedder's top-k chunks per dev query, in retrieval order.

    Every retrieved chunk of a labeled document counts as positive, as in document-level evaluation. Queries whose
    labeled documents are not retrieved are kept (they score 0 before and after), so the metric is honest about
    first-stage misses.
    """
    out = []
    for q in dev:
        docs = [cid for cid, _ in ranking.get(q["query_id"], [])[:k]]
        rel = set(q["positive_doc_ids"])
        out.append(
            {
                "query": q["query"],
                "positive": [chunk_text[c] for c in docs if chunk_to_doc[c] in rel],
                "documents": [chunk_text[c] for c in docs],
            }
        )
    return out


# --------------------------------------------------------------------------------------------------- model
def head_is_new(path: str | Path) -> bool:
    """True when the folder holds no trained reranker: not a saved CrossEncoder, and no classification head."""
    st_config = Path(path, "config_sentence_transformers.json")
    if st_config.exists() and json.loads(st_config.read_text(encoding="utf-8")).get("model_type") == "CrossEncoder":
        return False
    config = Path(path, "config.json")
    if not config.exists():
        return True
    archs = json.loads(config.read_text(encoding="utf-8")).get("architectures") or []
    return not any("ForSequenceClassification" in a for a in archs)


HEAD_PATTERNS = {"cls": r"classifier", "mean": r"(^|\.)2\.linear\."}  # new-head parameters, for learning_rate_mapping


def load_reranker(path: str | Path, max_length: int, head: str = "mean", seed: int | None = None) -> Any:
    """A one-logit CrossEncoder from ``path``; a new head is initialised from ``seed`` (the global RNG is untouched),
    so two runs with the same params start from the same weights. Without it the head came from whatever state the
    global RNG was in, and the "before training" dev scores differed between identical runs.

    A model with its own classification head loads as is. An embedder folder gets a new head:

    * ``cls``: sentence-transformers' conversion to ``*ForSequenceClassification`` (pooler on [CLS] + a linear);
    * ``mean``: the encoder's mean-pooled tokens + a linear, built from ST modules. An embedder like e5 was trained
      to put meaning in its *mean-pooled* output, so this head reads a meaningful vector from step 0, where the
      [CLS] pooler of a mean-pooling model starts out nearly input-independent.
    """
    import torch
    from sentence_transformers import CrossEncoder

    if head not in HEAD_PATTERNS:
        raise RerankerConfigError(f"train_reranker.head={head!r}: use one of {sorted(HEAD_PATTERNS)}")
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        if head == "cls" or not head_is_new(path):
            return CrossEncoder(str(path), num_labels=1, max_length=max_length)
        from sentence_transformers.base.modules import Dense, Transformer
        from sentence_transformers.sentence_transformer.modules import Pooling

        encoder = Transformer(str(path), max_seq_length=max_length)
        dim = encoder.get_embedding_dimension()
        scorer = Dense(dim, 1, activation_function=torch.nn.Identity(), module_output_name="scores")
        return CrossEncoder(modules=[encoder, Pooling(dim, "mean"), scorer])


def build_loss(model: Any, cfg: RerankerTrainConfig, pos_weight: float) -> Any:
    import torch
    from sentence_transformers.cross_encoder import losses

    if cfg.loss == "bce":
        return losses.BinaryCrossEntropyLoss(model, pos_weight=torch.tensor(pos_weight))
    if cfg.loss == "lambda":
        return losses.LambdaLoss(model)
    return losses.MultipleNegativesRankingLoss(model, scale=cfg.mnrl_scale)


def build_args(
    cfg: RerankerTrainConfig,
    output_dir: str | Path,
    *,
    new_head: bool,
    has_eval: bool,
    cuda: bool | None = None,
    bf16_supported: bool | None = None,
) -> Any:
    """CrossEncoderTrainingArguments from the config, every field mapped explicitly (``cfg`` resolved: no ``auto``)."""
    require_resolved(cfg)
    import torch
    from sentence_transformers.cross_encoder.training_args import CrossEncoderTrainingArguments

    cuda = torch.cuda.is_available() if cuda is None else cuda
    if bf16_supported is None:
        bf16_supported = bool(cuda and torch.cuda.is_bf16_supported())
    mapping = {HEAD_PATTERNS[cfg.head]: cfg.head_lr} if new_head and cfg.head_lr > 0 else {}
    return CrossEncoderTrainingArguments(
        output_dir=str(output_dir),
        seed=cfg.seed,
        data_seed=cfg.seed,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        learning_rate=cfg.lr,
        learning_rate_mapping=mapping,
        warmup_steps=cfg.warmup_ratio,
        lr_scheduler_type=cfg.scheduler,
        weight_decay=cfg.weight_decay,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=cfg.eval_steps,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        load_best_model_at_end=cfg.load_best_model_at_end and has_eval,
        metric_for_best_model="eval_dev_ndcg@10" if has_eval else None,
        greater_is_better=True,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        activation_checkpointing=cfg.gradient_checkpointing,
        logging_steps=cfg.logging_steps,
        logging_first_step=True,
        dataloader_num_workers=cfg.dataloader_num_workers,
        report_to="none",
        use_cpu=not cuda,
        **precision_flags(cfg, cuda, bf16_supported),  # type: ignore[arg-type]
    )


def build_trainer(
    model: Any,
    cfg: RerankerTrainConfig,
    train_dataset: Any,
    evaluator: Any,
    output_dir: str | Path,
    *,
    new_head: bool,
    pos_weight: float,
    callbacks: list[Any] | None = None,
) -> Any:
    """The CrossEncoderTrainer for a config: loss, arguments, evaluator and early stopping wired up.

    A schedule still set to ``auto`` is resolved here for ``train_dataset`` (the stage resolves it first, to report
    the plan).
    """
    from sentence_transformers.cross_encoder.trainer import CrossEncoderTrainer

    if unresolved(cfg):
        cfg, _ = resolve_schedule(cfg, len(train_dataset))
    return CrossEncoderTrainer(
        model=model,
        args=build_args(cfg, output_dir, new_head=new_head, has_eval=evaluator is not None),
        train_dataset=train_dataset,
        loss=build_loss(model, cfg, pos_weight),
        evaluator=evaluator,
        callbacks=trainer_callbacks(callbacks, cfg.early_stopping_patience, has_eval=evaluator is not None),
    )


def build_evaluator(samples: list[dict[str, Any]], batch_size: int) -> Any:
    """ST's CrossEncoderRerankingEvaluator on dev, reranking the retrieved list as is (realistic setting)."""
    from sentence_transformers.cross_encoder.evaluation import CrossEncoderRerankingEvaluator

    return CrossEncoderRerankingEvaluator(
        samples=samples, at_k=10, always_rerank_positives=False, name="dev", batch_size=batch_size, write_csv=False
    )


def pair_summary(model: Any, groups: Sequence[dict[str, Any]], batch_size: int = 32) -> dict[str, float]:
    """Dev pair classification: accuracy at 0.5, mean positive and negative scores (sigmoid), and their margin."""
    pairs, labels = [], []
    for g in groups:
        pairs += [(g["query"], t) for t in g["pos"]] + [(g["query"], t) for t in g["neg"]]
        labels += [1] * len(g["pos"]) + [0] * len(g["neg"])
    if not pairs:
        return {}
    scores = [float(s) for s in model.predict(pairs, batch_size=batch_size, show_progress_bar=False)]
    pos = [s for s, y in zip(scores, labels, strict=True) if y == 1]
    neg = [s for s, y in zip(scores, labels, strict=True) if y == 0]
    acc = sum((s > 0.5) == (y == 1) for s, y in zip(scores, labels, strict=True)) / len(labels)
    mean_pos = sum(pos) / max(len(pos), 1)
    mean_neg = sum(neg) / max(len(neg), 1)
    return {
        "accuracy": round(acc, 4),
        "avg_pos_score": round(mean_pos, 4),
        "avg_neg_score": round(mean_neg, 4),
        "margin": round(mean_pos - mean_neg, 4),
    }


def reranker_warnings(
    *,
    optimizer_steps: int,
    dev_input_ndcg: float | None,
    dev_reranked_ndcg: float | None,
    popular_doc: str = "",
    popular_share: float = 0.0,
    min_steps: int = 50,
    max_share: float = 0.2,
) -> list[str]:
    """Signs that the reranker did not learn to rerank. Each is printed, stored in metrics and reported."""
    out = []
    if optimizer_steps < min_steps:
        out.append(f"only {optimizer_steps} reranker optimizer steps (< {min_steps}): barely trained")
    if dev_input_ndcg is not None and dev_reranked_ndcg is not None and dev_reranked_ndcg < dev_input_ndcg:
        out.append(
            f"the reranker makes dev ranking worse: ndcg@10 {dev_input_ndcg:.4f} (embedder order) → "
            f"{dev_reranked_ndcg:.4f} (reranked)"
        )
    if popular_share > max_share:
        out.append(
            f"the reranker puts one document ({popular_doc}) first for {popular_share:.0%} of dev queries: "
            "it may have learned document popularity (lower train_reranker.max_pos_per_doc)"
        )
    return out


# --------------------------------------------------------------------------------------------------- outputs
def write_model_card(out_dir: str | Path, base_model: str, cfg: RerankerTrainConfig, metrics: dict[str, Any]) -> None:
    """README.md for the reranker folder: its base, its params, and dev reranking before → after."""
    rows, params, warn = model_card_sections(cfg, metrics)
    eff = metrics["effective"]
    shipped = str(metrics.get("shipped", "fine-tuned"))
    head = "new one-logit head" if eff["new_head"] else "its own head"
    if shipped.startswith("untrained"):  # the card must not call a model trained that never was
        title = "ragtune reranker: the untrained start model"
        state = "seeded, never trained" if eff["new_head"] else "unchanged"
        intro = f"`{base_model}` ({head}, {state}), written by the ragtune `train_reranker` stage: {shipped}."
    else:
        title = "ragtune fine-tuned reranker"
        intro = f"""Trained from `{base_model}` ({head}) by the ragtune
`train_reranker` stage: loss {eff["loss"]}, {eff["optimizer_steps"]} optimizer steps, negatives from the
fine-tuned embedder's top {cfg.rank_max} plus random ones (shipped: {shipped})."""
    planned = "" if eff["optimizer_steps"] else " (planned, not run)"
    schedule = f"Schedule{planned}: {metrics['plan']['reason']}" if "plan" in metrics else ""
    rows = rows or "| not measured | | |"
    text = f"""---
library_name: sentence-transformers
base_model: {base_model}
language: [vi]
tags: [sentence-transformers, cross-encoder, reranker, ragtune]
---

# {title}

{intro}

{schedule}

```python
from sentence_transformers import CrossEncoder
model = CrossEncoder("{out_dir}")
hits = model.rank("Nhân viên được nghỉ phép bao nhiêu ngày?",
                  ["Nhân viên chính thức có 12 ngày phép năm.", "Quy trình mua sắm thiết bị."])
print(hits)  # [{{'corpus_id': 0, 'score': ...}}, ...]
```

## Dev split: reranking the embedder's top {cfg.rerank_k}, before → after training

`base_*` rows are the embedder's own order (the input); the others are after reranking. `accuracy`, `avg_*_score`
and `margin` are pair classification on dev groups (score > 0.5 = relevant).

| metric | before | after |
|---|---:|---:|
{rows}

How the reranker changes the held-out **test** ranking, and the fusion weight chosen on dev, are in the
repository's `reports/evaluation.md`.

## Warnings

{warn}

## Training params

| param | value |
|---|---|
{params}
"""
    Path(out_dir, "README.md").write_text(text, encoding="utf-8")
