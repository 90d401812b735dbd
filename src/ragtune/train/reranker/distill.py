"""The cross-encoder's distillation warm start: learn the teacher's ranking before learning from labels.

A cross-encoder built on an embedder gets a one-logit head that starts from nothing. Trained on a few hundred
labeled groups it first has to discover what a relevance score is, and on the sample it never did: the reranker
alone cut dev NDCG@10 from .818 to .719. The warm start gives the head a meaningful score before the label stage:
for many (query, candidates) lists it trains the cross-encoder to reproduce the fine-tuned embedder's softmax over
the list (listwise KL, sentence-transformers' ``ListNetLoss``: cross-entropy against the teacher's distribution).
The queries need no labels, so every cheap source serves: the labeled training questions, the pairs stage's
self-supervised pairs and generated questions, which gives thousands of lists where the label stage has hundreds.

The teacher is the fine-tuned embedder, the model whose top-k the reranker will reorder, at the temperature it was
trained at (``train_embedder.scale`` 100 → 0.01). The dev-chosen hybrid is not offered: evaluate chooses it after
this stage, from this stage's output.

``train_reranker.distill`` holds the warm start's own keys; the learning rates, precision, warmup, scheduler and
seed are the train_reranker keys themselves.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from ragtune.retrieval import Ranking
from ragtune.train.reranker.config import DistillSettings


def distill_lists(
    sources: dict[str, Sequence[dict[str, Any]]],
    ranking: Ranking,
    chunk_text: dict[str, str],
    settings: DistillSettings,
    seed: int,
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Up to ``settings.lists`` lists ``{"query", "docs", "labels", "query_id", "doc_ids", "source"}``: the
    teacher's top ``list_size`` chunks for a query and its scores divided by the temperature (ListNetLoss's
    softmax over them is the teacher's distribution).

    ``sources`` are taken in their order, each in a seeded shuffle: the stage passes the training split first (the
    labeled questions, and generated ones when the pairs stage mixed them in: what the reranker will be asked),
    then the self-supervised pairs. A query text seen before is not listed twice. Returns the lists and
    the count taken from each source, plus how many were available.
    """
    lists: list[dict[str, Any]] = []
    counts = {f"from_{s}": 0 for s in sources}
    seen: set[str] = set()
    available = 0
    for name, pairs in sources.items():
        order = sorted(pairs, key=lambda p: p["query_id"])
        random.Random(f"{seed}:distill:{name}").shuffle(order)
        for p in order:
            ranked = ranking.get(p["query_id"], [])[: settings.list_size]
            if len(ranked) < 2 or p["query"] in seen:
                continue
            seen.add(p["query"])
            available += 1
            if len(lists) >= settings.lists:
                continue
            lists.append(
                {
                    "query": p["query"],
                    "docs": [chunk_text[cid] for cid, _ in ranked],
                    "labels": [round(float(s) / settings.temperature, 4) for _, s in ranked],
                    "query_id": p["query_id"],
                    "doc_ids": [cid for cid, _ in ranked],
                    "source": name,
                }
            )
            counts[f"from_{name}"] += 1
    return lists, {**counts, "lists": len(lists), "available": available}


def distill(
    model: Any,
    lists: Sequence[dict[str, Any]],
    cfg: Any,
    settings: DistillSettings,
    output_dir: str | Path,
    *,
    new_head: bool,
    callbacks: Sequence[Any] = (),
) -> dict[str, Any]:
    """Train ``model`` (a one-logit CrossEncoder) in place on ``lists`` with ListNetLoss; returns the warm start's
    metrics: steps, seconds, the first and final loss, and the two losses to read them against (the teacher's
    entropy, reached by a perfect copy, and ln(list size), scored by a uniform guess).

    The arguments are the label stage's (``cfg``: learning rates with the new head's mapping, precision, warmup,
    scheduler, seed) with the warm start's epochs and batch size, no evaluation and no checkpoints: it is minutes
    long, and a killed run redoes it.
    """
    import math
    import time

    from datasets import Dataset
    from sentence_transformers.cross_encoder import losses
    from sentence_transformers.cross_encoder.trainer import CrossEncoderTrainer

    from ragtune.train.common import step_timing, trainer_callbacks
    from ragtune.train.reranker.trainer import build_args

    dataset = Dataset.from_dict({k: [x[k] for x in lists] for k in ("query", "docs", "labels")})
    args_cfg = replace(
        cfg,
        epochs=settings.epochs,
        max_steps=-1,
        batch_size=settings.batch_size,
        eval_steps=1,
        save_steps=10**9,  # no checkpoint
        load_best_model_at_end=False,
        early_stopping_patience=0,
    )
    args = build_args(args_cfg, Path(output_dir), new_head=new_head, has_eval=False)
    trainer = CrossEncoderTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        loss=losses.ListNetLoss(model, mini_batch_size=-1),  # the whole batch in one forward pass
        callbacks=trainer_callbacks(list(callbacks), 0, has_eval=False),
    )
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    model_losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {
        "lists": len(lists),
        "list_size": settings.list_size,
        "temperature": settings.temperature,
        "optimizer_steps": trainer.state.global_step,
        "learning_rate": float(trainer.args.learning_rate),
        "seconds": round(seconds, 1),
        "timing": step_timing(trainer),  # steps and saves, for `ragtune plan`
        "first_loss": round(model_losses[0], 4) if model_losses else None,
        "final_loss": round(model_losses[-1], 4) if model_losses else None,
        # the loss is cross-entropy against the teacher: its floor is the teacher's own entropy (a perfect copy),
        # and a uniform guess scores ln(list size); a final loss near the latter learned nothing
        "teacher_entropy": round(sum(_entropy(x["labels"]) for x in lists) / max(len(lists), 1), 4),
        "uniform_guess_loss": round(sum(math.log(len(x["labels"])) for x in lists) / max(len(lists), 1), 4),
    }


def _entropy(logits: Sequence[float]) -> float:
    """Entropy (nats) of softmax(``logits``): the teacher's own, the floor of the ListNet loss on its list."""
    import math

    top = max(logits)
    weights = [math.exp(v - top) for v in logits]
    total = sum(weights)
    return -sum(w / total * math.log(w / total) for w in weights if w > 0)
