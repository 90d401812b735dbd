"""The reranker's model and Trainer: a CrossEncoder (its own head, or a new seeded one), loss, arguments, evaluator.

A new head learns faster than the body (``head_lr``, via sentence-transformers' ``learning_rate_mapping``): a
one-logit head initialised from nothing needs a larger step than a pretrained encoder can take.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ragtune.train.common import trainer_callbacks, training_args_kwargs
from ragtune.train.reranker.config import HEAD_PATTERNS, RerankerConfigError, RerankerTrainConfig
from ragtune.train.schedule import resolve_schedule, unresolved


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
    """CrossEncoderTrainingArguments from the config: the shared fields (``training_args_kwargs``) plus the new
    head's learning rate."""
    from sentence_transformers.cross_encoder.training_args import CrossEncoderTrainingArguments

    mapping = {HEAD_PATTERNS[cfg.head]: cfg.head_lr} if new_head and cfg.head_lr > 0 else {}
    shared = training_args_kwargs(
        cfg, output_dir, has_eval=has_eval, metric="eval_dev_ndcg@10", cuda=cuda, bf16_supported=bf16_supported
    )
    return CrossEncoderTrainingArguments(**shared, learning_rate_mapping=mapping)


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
