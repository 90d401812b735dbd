"""The embedder's Trainer: dataset, loss, arguments and sampler, from a config whose every value reaches them.

The shape is the canonical one from sentence-transformers' examples: a ``datasets.Dataset`` of
``(anchor, positive, negative_1..n)`` columns, a MultipleNegativesRankingLoss-family loss,
``SentenceTransformerTrainingArguments`` and ``SentenceTransformerTrainer``. Nothing here re-implements what the
Trainer does (optimizer, scheduler, checkpointing, resume, early stopping, DDP); this module only translates the
config into those objects.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ragtune.train.common import trainer_callbacks, training_args_kwargs
from ragtune.train.embedder.config import EmbedderTrainConfig, TrainConfigError
from ragtune.train.rows import training_rows
from ragtune.train.schedule import resolve_schedule, unresolved

if TYPE_CHECKING:
    from ragtune.train.batching import RowKeys


def groups_to_dataset(
    groups: Sequence[dict[str, Any]], n_hard_negatives: int, positives: str = "first"
) -> tuple[Any, int]:
    """FlagEmbedding groups → a ``Dataset`` with columns anchor, positive, negative_1..n (rows: ``training_rows``).

    MNRL needs the same number of columns in every row; a group with fewer mined negatives than asked for is
    dropped and counted (never padded with made-up negatives).
    """
    from datasets import Dataset

    cols: dict[str, list[str]] = {"anchor": [], "positive": []}
    for i in range(1, n_hard_negatives + 1):
        cols[f"negative_{i}"] = []
    rows, dropped = training_rows(groups, n_hard_negatives, positives)
    for g, p in rows:
        cols["anchor"].append(g["query"])
        cols["positive"].append(g["pos"][p])
        for i in range(n_hard_negatives):
            cols[f"negative_{i + 1}"].append(g["neg"][i])
    return Dataset.from_dict(cols), dropped


def column_prompts(n_hard_negatives: int, query_prompt: str, passage_prompt: str) -> dict[str, str]:
    """Per-column prompts: e5 was trained with ``query: `` / ``passage: `` and must be fine-tuned with them too."""
    prompts = {"anchor": query_prompt, "positive": passage_prompt}
    prompts.update({f"negative_{i}": passage_prompt for i in range(1, n_hard_negatives + 1)})
    return {k: v for k, v in prompts.items() if v}


def freeze(model: Any, cfg: EmbedderTrainConfig) -> dict[str, int]:
    """Freeze the word embeddings and/or the first N encoder layers; returns trainable/frozen parameter counts.

    Freezing the 96M-parameter XLM-R embedding matrix of e5-small keeps the 250k-token vocabulary (most of it
    unseen in a small corpus) from drifting, and cuts optimizer memory by ~80%.
    """
    hf = model[0].auto_model
    # sentence-transformers pools token embeddings and never uses BERT's pooler head; left trainable it gets no
    # gradient, which DDP reports as an error ("parameters that were not used in producing loss").
    if getattr(hf, "pooler", None) is not None:
        for p in hf.pooler.parameters():
            p.requires_grad = False
    if cfg.freeze_embeddings:
        for p in hf.embeddings.word_embeddings.parameters():
            p.requires_grad = False
    if cfg.freeze_layers:
        layers = hf.encoder.layer
        if cfg.freeze_layers > len(layers):
            raise TrainConfigError(
                f"train_embedder.freeze_layers={cfg.freeze_layers} but the model has {len(layers)} layers"
            )
        for layer in layers[: cfg.freeze_layers]:
            for p in layer.parameters():
                p.requires_grad = False
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable_params": trainable, "frozen_params": total - trainable}


def fp32_cos_sim(a: Any, b: Any) -> Any:
    """Cosine similarity computed in fp32 even under bf16 autocast.

    Embeddings may be computed in bf16 (the expensive part), but bf16 keeps 8 mantissa bits: at a logit scale of
    100, similarities 0.004 apart (typical gaps between e5's positives and hard negatives) would round together.
    """
    import torch
    from sentence_transformers.util import cos_sim

    with torch.autocast(device_type=a.device.type, enabled=False):
        return cos_sim(a.float(), b.float())


def build_loss(model: Any, cfg: EmbedderTrainConfig, guide: Any = None, distributed: bool = False) -> Any:
    """The configured loss. All are MNRL-family: (anchor, positive, negatives…) with in-batch negatives.

    ``gather_across_devices`` under DDP shares every device's passages as negatives for every query, so the
    effective number of in-batch negatives grows with the number of processes.
    """
    from sentence_transformers.sentence_transformer import losses

    # what the MNRL family shares; cached_mnrl adds its forward chunk size
    mnrl_kwargs: dict[str, Any] = {
        "scale": cfg.scale,
        "similarity_fct": fp32_cos_sim,
        "gather_across_devices": distributed,
        "directions": tuple(cfg.directions),
    }
    if cfg.hardness_mode != "none":
        mnrl_kwargs |= {"hardness_mode": cfg.hardness_mode, "hardness_strength": cfg.hardness_strength}
    if cfg.loss == "mnrl":
        loss = losses.MultipleNegativesRankingLoss(model, **mnrl_kwargs)
    elif cfg.loss == "cached_mnrl":
        loss = losses.CachedMultipleNegativesRankingLoss(model, mini_batch_size=cfg.mini_batch_size, **mnrl_kwargs)
    else:
        if guide is None:
            raise TrainConfigError("train_embedder.loss=gist needs the base model as guide")
        loss = losses.GISTEmbedLoss(model, guide, temperature=cfg.gist_temperature, gather_across_devices=distributed)
    if cfg.matryoshka_dims:
        dim = model.get_embedding_dimension()
        bad = [d for d in cfg.matryoshka_dims if d > dim or d <= 0]
        if bad:
            raise TrainConfigError(f"train_embedder.matryoshka_dims {bad} must be in 1..{dim}")
        loss = losses.MatryoshkaLoss(model, loss, matryoshka_dims=sorted(set(cfg.matryoshka_dims), reverse=True))
    return loss


def batch_sampler(cfg: EmbedderTrainConfig, batch_keys: Sequence[RowKeys] | None) -> Any:
    """The Trainer's ``batch_sampler`` argument for ``cfg.batch_sampler``."""
    from sentence_transformers.base.sampler import BatchSamplers

    if cfg.batch_sampler == "no_duplicates":
        return BatchSamplers.NO_DUPLICATES
    if batch_keys is None:
        raise ValueError("batch_sampler=document_disjoint needs batch_keys (ragtune.train.batching.group_row_keys)")
    from ragtune.train.batching import DocumentDisjointBatchSampler

    return functools.partial(DocumentDisjointBatchSampler, keys=list(batch_keys))


def build_args(
    cfg: EmbedderTrainConfig,
    output_dir: str | Path,
    prompts: dict[str, str],
    *,
    cuda: bool | None = None,
    bf16_supported: bool | None = None,
    has_eval: bool = True,
    batch_keys: Sequence[RowKeys] | None = None,
) -> Any:
    """SentenceTransformerTrainingArguments from the config: the shared fields (``training_args_kwargs``) plus the
    embedder's sampler, per-column prompts and DDP settings.

    ``batch_keys`` (one per training row) are what the document-disjoint sampler keeps apart; see
    ``ragtune.train.batching``.
    """
    from sentence_transformers.sentence_transformer.training_args import SentenceTransformerTrainingArguments

    shared = training_args_kwargs(
        cfg,
        output_dir,
        has_eval=has_eval,
        metric="eval_dev_cosine_ndcg@10",
        cuda=cuda,
        bf16_supported=bf16_supported,
    )
    return SentenceTransformerTrainingArguments(
        **shared,
        batch_sampler=batch_sampler(cfg, batch_keys),
        prompts=prompts,
        # CPU processes under torchrun talk over gloo; a single process needs no backend at all
        ddp_backend="gloo" if shared["use_cpu"] and int(os.environ.get("WORLD_SIZE", "1")) > 1 else None,
        ddp_find_unused_parameters=False,
    )


def build_trainer(
    model: Any,
    cfg: EmbedderTrainConfig,
    train_dataset: Any,
    evaluator: Any,
    output_dir: str | Path,
    prompts: dict[str, str],
    *,
    guide: Any = None,
    distributed: bool = False,
    callbacks: list[Any] | None = None,
    batch_keys: Sequence[RowKeys] | None = None,
) -> Any:
    """The SentenceTransformerTrainer for a config: loss, arguments, evaluator and early stopping wired up.

    ``batch_keys``: the rows' documents for the document-disjoint sampler (``batching.group_row_keys``); without
    them the rows' texts are kept apart, which is what NO_DUPLICATES guarantees. A config whose schedule is still
    ``auto`` is resolved here for ``train_dataset`` (the stage resolves it first, to report the plan).
    """
    from sentence_transformers.sentence_transformer.trainer import SentenceTransformerTrainer

    if unresolved(cfg):
        cfg, _ = resolve_schedule(cfg, len(train_dataset), int(os.environ.get("WORLD_SIZE", "1")) if distributed else 1)
    if cfg.batch_sampler == "document_disjoint" and batch_keys is None:
        from ragtune.train.batching import dataset_row_keys

        batch_keys = dataset_row_keys(train_dataset)
    return SentenceTransformerTrainer(
        model=model,
        args=build_args(cfg, output_dir, prompts, has_eval=evaluator is not None, batch_keys=batch_keys),
        train_dataset=train_dataset,
        loss=build_loss(model, cfg, guide=guide, distributed=distributed),
        evaluator=evaluator,
        callbacks=trainer_callbacks(callbacks, cfg.early_stopping_patience, has_eval=evaluator is not None),
    )
