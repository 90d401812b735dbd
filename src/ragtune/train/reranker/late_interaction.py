"""Training the late-interaction reranker (``train_reranker.kind: late_interaction``) on the reranker's groups.

The model is :class:`ragtune.rerankers.late_interaction.LateInteractionReranker` started from the fine-tuned
embedder, so step 0 already scores with the retriever's own token vectors. Training is contrastive over MeanMaxSim
scores: each query against its positive, its mined negatives (the groups' ``neg``: the embedder's hard negatives and
random ones) and every other row's passages in the batch (in-batch negatives), with sentence-transformers'
``MultiVectorMultipleNegativesRankingLoss`` and ``MultiVectorEncoderTrainer``: the Trainer and the loss are ST's,
not a hand-written loop, so precision, seeding, scheduling and logging behave as in the other two trainers.

Dev is scored before and after on the same samples the cross-encoder's evaluator reranks (the embedder's top-k per
dev question; a chunk of a labeled document is relevant), with :func:`ragtune.evaluation.metrics.query_metrics`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ragtune.errors import UserError
from ragtune.evaluation.metrics import query_metrics
from ragtune.params import StageConfig
from ragtune.rerankers.late_interaction import LateInteractionReranker

MIN_STEPS = 50  # fewer optimizer steps than this: barely trained (the cross-encoder's guard, same threshold)


class LateInteractionConfigError(UserError, ValueError):
    """A ``train_reranker.late_interaction`` setting is missing, unknown or out of range."""


@dataclass(frozen=True, kw_only=True)
class LateInteractionSettings(StageConfig):
    """Every knob of the late-interaction trainer; no defaults (params.yaml holds them, see :class:`StageConfig`)."""

    SECTION = "train_reranker.late_interaction"
    ERROR = LateInteractionConfigError

    seed: int  # data order, dropout
    lr: float  # peak learning rate of the encoder (there is no new head)
    epochs: float  # passes over the groups; ignored when max_steps > 0
    max_steps: int  # > 0: exactly this many optimizer steps
    batch_size: int  # groups per step; every other group's passages are in-batch negatives
    n_negatives: int  # mined negatives per group (the groups' first n; fewer if the smallest group has fewer)
    max_query_length: int  # query tokens, prompt included
    max_doc_length: int  # passage tokens, prompt included
    scale: float  # 1 / temperature on MeanMaxSim (a cosine-like score in [-1, 1])
    warmup_ratio: float  # fraction of steps warming the learning rate up from 0
    scheduler: str  # transformers lr_scheduler_type
    weight_decay: float
    bf16: bool  # bf16 autocast (CPU or CUDA); false = fp32
    # dropout on attention probabilities while training; None = the embedder's own (0.1 for e5). Not the
    # cross-encoder's train_reranker.attention_dropout: dev chose another default for this kind (docs/rerankers.md)
    attention_dropout: float | None
    # keep the token-embedding matrix (96M of e5-small's 118M parameters) fixed, as train_embedder.freeze_embeddings
    # does: its dense gradient was zero-filled and the optimizer swept it at every step (docs/rerankers.md)
    freeze_embeddings: bool
    logging_steps: int  # log the loss every N steps (the first step is always logged)

    def validate(self) -> None:
        sec, err = self.SECTION, self.ERROR
        if not 0 < self.lr <= 1e-2:
            raise err(f"{sec}.lr={self.lr} is outside (0, 1e-2]; typical: 1e-5 … 1e-4")
        if self.batch_size < 2:
            raise err(f"{sec}.batch_size={self.batch_size}: need ≥ 2 (in-batch negatives)")
        if self.epochs <= 0 and self.max_steps <= 0:
            raise err(f"{sec}: set epochs > 0 or max_steps > 0")
        if self.n_negatives < 0:
            raise err(f"{sec}.n_negatives={self.n_negatives} must be ≥ 0")
        if self.max_query_length < 4 or self.max_doc_length < 4:
            raise err(f"{sec}.max_query_length / max_doc_length must be ≥ 4 tokens (the prompt alone takes ~3)")
        if self.scale <= 0:
            raise err(f"{sec}.scale={self.scale} must be > 0 (1 / temperature)")
        if not 0 <= self.warmup_ratio < 1:
            raise err(f"{sec}.warmup_ratio={self.warmup_ratio} must be in [0, 1)")
        if self.attention_dropout is not None and not 0 <= self.attention_dropout < 1:
            raise err(f"{sec}.attention_dropout={self.attention_dropout} must be in [0, 1), or empty")
        if self.logging_steps < 1:
            raise err(f"{sec}.logging_steps must be ≥ 1")


def groups_to_rows(groups: Sequence[dict[str, Any]], n_negatives: int) -> tuple[Any, int]:
    """``(query, positive, negative_1..n)`` rows, one per group with a positive, and n: ``n_negatives`` cut to the
    smallest group's negative count, since every row needs the same columns (no padding with fake negatives)."""
    from datasets import Dataset

    usable = [g for g in groups if g["pos"]]
    n = min([n_negatives, *(len(g["neg"]) for g in usable)])
    rows: dict[str, list[str]] = {"query": [g["query"] for g in usable], "positive": [g["pos"][0] for g in usable]}
    for i in range(n):
        rows[f"negative_{i + 1}"] = [g["neg"][i] for g in usable]
    return Dataset.from_dict(rows), n


def dev_rerank_metrics(
    reranker: LateInteractionReranker, samples: Sequence[dict[str, Any]], batch_size: int, bf16: bool = False
) -> dict[str, float]:
    """NDCG@10, Recall@1 and MRR@10 of the reranked dev lists, and of the retrieved order as given (``base_*``).

    ``samples``: ``{"query", "positive": [texts], "documents": [texts]}``, documents in retrieval order. A query
    with no relevant document retrieved scores 0 on both (the first stage missed it; reranking cannot help), so the
    mean is over every dev question, as evaluate counts them. ``bf16``: score under CPU bf16 autocast, as evaluate and
    search run the reranker where the CPU computes bf16 natively (``rerank_bf16: auto``), through the same
    :func:`ragtune.rerank.predict`; so dev measures the model as it is served (and twice as fast on such a CPU).
    """
    from ragtune.rerank import predict

    pairs = [(s["query"], d) for s in samples for d in s["documents"]]
    scores = predict(reranker, pairs, batch_size=batch_size, bf16=bf16)
    keys = ("ndcg@10", "recall@1", "mrr@10")
    sums = dict.fromkeys([*keys, *(f"base_{k}" for k in keys)], 0.0)
    at = 0
    for s in samples:
        n = len(s["documents"])
        mine, at = scores[at : at + n], at + n
        relevant = {i for i, d in enumerate(s["documents"]) if d in set(s["positive"])}
        if not relevant:
            continue
        order = sorted(range(n), key=lambda i: (-mine[i], i))  # ties keep retrieval order
        for prefix, ranked in (("", order), ("base_", list(range(n)))):
            m = query_metrics([str(i) for i in ranked], {str(i) for i in relevant}, [1, 10])
            for k in keys:
                sums[prefix + k] += m[k]
    return {k: round(v / max(len(samples), 1), 4) for k, v in sums.items()}


def trainable_counts(model: Any) -> dict[str, int]:
    """Trainable and frozen parameter counts, for the metrics."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable_params": trainable, "frozen_params": sum(p.numel() for p in model.parameters()) - trainable}


def freeze_embeddings(model: Any) -> dict[str, int]:
    """Fix the transformer's token-embedding matrix; returns :func:`trainable_counts`.

    Why: a late-interaction reranker reads the same vocabulary the embedder froze
    (``train_embedder.freeze_embeddings``), and a few hundred groups touch a few thousand of XLM-R's 250k rows. Left
    trainable, the 96M-parameter matrix cost every step a zero-filled dense gradient of 384 MB and an AdamW sweep
    over it: py-spy (``--native``) put 14% of a step in ``embedding_dense_backward``'s fill alone.
    """
    model[0].auto_model.get_input_embeddings().weight.requires_grad_(False)
    return trainable_counts(model)


def _optimizer_lr(trainer: Any) -> float:
    """The peak learning rate the optimizer was given (``initial_lr``, set by the scheduler): read back, not
    copied from the settings, so a setting that never reached the optimizer shows in the metrics."""
    groups = trainer.optimizer.param_groups
    return float(max(g.get("initial_lr", g["lr"]) for g in groups))


def build_trainer(
    reranker: LateInteractionReranker,
    settings: LateInteractionSettings,
    rows: Any,
    n: int,
    checkpoint_dir: str | Path,
    callbacks: Sequence[Any],
) -> Any:
    """MultiVectorEncoderTrainer with ST's multi-vector MNRL on MeanMaxSim; prompts per column as the embedder's."""
    import torch
    from sentence_transformers.base.sampler import BatchSamplers
    from sentence_transformers.multi_vector_encoder import (
        MultiVectorEncoderTrainer,
        MultiVectorEncoderTrainingArguments,
    )
    from sentence_transformers.multi_vector_encoder.losses import MultiVectorMultipleNegativesRankingLoss
    from sentence_transformers.multi_vector_encoder.scoring import mean_colbert_scores

    from ragtune.train.common import trainer_callbacks

    s = settings
    cuda = torch.cuda.is_available()
    prompts = reranker.prompts
    doc_prompt = prompts.get("document", "")
    args = MultiVectorEncoderTrainingArguments(
        output_dir=str(checkpoint_dir),
        seed=s.seed,
        data_seed=s.seed,
        num_train_epochs=s.epochs,
        max_steps=s.max_steps,
        per_device_train_batch_size=s.batch_size,
        learning_rate=s.lr,
        warmup_steps=s.warmup_ratio,  # transformers v5: a float < 1 is a ratio of total steps
        lr_scheduler_type=s.scheduler,
        weight_decay=s.weight_decay,
        logging_steps=s.logging_steps,
        logging_first_step=True,
        eval_strategy="no",
        save_strategy="no",  # minutes of training on CPU: nothing to resume, and no checkpoint to clean up
        report_to="none",
        use_cpu=not cuda,
        bf16=s.bf16,
        dataloader_num_workers=0,
        # the same passage twice in a batch would be its own in-batch negative
        batch_sampler=BatchSamplers.NO_DUPLICATES,
        prompts={
            "query": prompts.get("query", ""),
            "positive": doc_prompt,
            **{f"negative_{i + 1}": doc_prompt for i in range(n)},
        },
    )
    loss = MultiVectorMultipleNegativesRankingLoss(reranker.model, scale=s.scale, similarity_fct=mean_colbert_scores)
    return MultiVectorEncoderTrainer(
        model=reranker.model,
        args=args,
        train_dataset=rows,
        loss=loss,
        callbacks=trainer_callbacks(list(callbacks), 0, has_eval=False),
    )


def train_late_interaction(
    groups: Sequence[dict[str, Any]],
    dev_samples: Sequence[dict[str, Any]],
    settings: LateInteractionSettings,
    out_dir: str | Path,
    checkpoint_dir: str | Path,
    callbacks: Sequence[Any] = (),
    *,
    embedder_dir: str | Path,
) -> dict[str, Any]:
    """Start from ``embedder_dir``, score dev, train on ``groups``, score dev again, save to ``out_dir``.

    Returns the metrics: the learning rate read back from the optimizer, optimizer steps, the first and last
    logged loss, dev before/after, the settings and the warnings (each also printed with ``console.warn``).
    """
    from ragtune.console import warn
    from ragtune.train.common import apply_attention_dropout, step_timing

    s = settings
    reranker = LateInteractionReranker.from_embedder(
        embedder_dir, max_query_length=s.max_query_length, max_doc_length=s.max_doc_length
    )
    # 0 lets the CPU use the fused attention kernel: 1.9x faster steps on the sample, at a dev cost (docs/rerankers.md)
    attention, warnings = apply_attention_dropout(reranker.model, s.attention_dropout, s.SECTION)
    counts = freeze_embeddings(reranker.model) if s.freeze_embeddings else trainable_counts(reranker.model)
    rows, n = groups_to_rows(groups, s.n_negatives)
    if len(rows) < s.batch_size:
        raise LateInteractionConfigError(
            f"{s.SECTION}: only {len(rows)} training groups with a positive; need ≥ batch_size={s.batch_size}"
        )
    # scored as evaluate and search run it: bf16 on a CPU with native bf16 (the training flag follows the same rule)
    before = dev_rerank_metrics(reranker, dev_samples, s.batch_size, bf16=s.bf16) if dev_samples else {}
    trainer = build_trainer(reranker, s, rows, n, checkpoint_dir, callbacks)
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    after = dev_rerank_metrics(reranker, dev_samples, s.batch_size, bf16=s.bf16) if dev_samples else {}

    steps = int(trainer.state.global_step)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    if steps < MIN_STEPS:
        warnings.append(f"only {steps} late-interaction optimizer steps (< {MIN_STEPS}): barely trained")
    # dev worse after training: the stage ships the start instead (kinds.run_kind), and says so
    for w in warnings:
        warn(w)
    reranker.save(out_dir)
    return {
        "kind": "late_interaction",
        "effective": {
            "learning_rate": _optimizer_lr(trainer),
            "optimizer_steps": steps,
            "epochs": round(float(trainer.state.epoch or 0), 3),
            "negatives_per_group": n,
            "in_batch_negatives": (s.batch_size - 1) * (1 + n),
            "bf16": bool(trainer.args.bf16),
            **attention,
            **counts,
        },
        "train": {
            "rows": len(rows),
            "first_loss": round(losses[0], 4) if losses else None,
            "final_loss": round(losses[-1], 4) if losses else None,
            "seconds": round(seconds, 1),
            "timing": step_timing(trainer),  # steps and saves, for `ragtune plan`
        },
        "dev": {"n_queries": len(dev_samples), "before": before, "after": after},
        "settings": asdict(s),
        "warnings": warnings,
    }
