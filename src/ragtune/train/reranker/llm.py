"""Train the LLM reranker (``train_reranker.kind: llm``): LoRA SFT of a causal LM to answer "yes" / "no".

Qwen3-Reranker's recipe: every (query, passage) of a FlagEmbedding group becomes the reranker's prompt
(:mod:`ragtune.rerankers.llm`) with the label token "yes" (positive) or "no" (negative); the loss is the
cross-entropy over the two logits ``[no, yes]`` at the last position, which is exactly what the score reads.
Adapters come from ``peft`` (LoRA); transformers' Trainer runs the loop, only ``compute_loss`` is ours.

It carries the lessons of a Qwen3-0.6B LoRA reranker that trained to nothing (too few steps, a loss no better than
chance), each one measured and returned, and each one tested:

* the learning rate that reached the optimizer is read back from it (``effective.learning_rate``), not assumed;
* fewer than :data:`MIN_STEPS` optimizer steps is a warning;
* the training loss is compared with chance: ln 2 for a yes/no answer (``random_baseline``), and the entropy of
  the yes/no share (``prior_baseline``: a model that always says "no" with the right confidence reaches it without
  reading anything). Not beating them by :data:`LOSS_MARGIN` is a warning;
* Recall@1 and NDCG@10 of dev reranking before and after training, next to the retriever's own order, with the
  project's metric code (:func:`ragtune.evaluation.metrics.query_metrics`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

from ragtune.errors import UserError
from ragtune.evaluation.metrics import mean_metrics, query_metrics
from ragtune.models import resolve_model
from ragtune.params import StageConfig
from ragtune.rerankers.llm import LLMReranker
from ragtune.train.common import precision_flags, step_timing
from ragtune.train.config import PRECISIONS

MIN_STEPS = 50  # fewer optimizer steps than this: barely trained (the embedder and cross-encoder guards say 50 too)
RANDOM_BASELINE = math.log(2)  # cross-entropy of a yes/no answer at 50/50
LOSS_MARGIN = 0.05  # the final loss must beat a baseline by this much to count as learned
DEV_KEYS = ("recall@1", "ndcg@10", "mrr@10")


class LLMRerankerConfigError(UserError, ValueError):
    """A ``train_reranker.llm`` param is out of range."""


@dataclass(frozen=True, kw_only=True)
class LLMRerankerSettings(StageConfig):
    """Every knob of the LLM reranker's training. No field has a default: params.yaml holds them (see
    :class:`ragtune.params.StageConfig`, whose ``from_params`` refuses missing and unknown keys)."""

    SECTION = "train_reranker.llm"
    ERROR = LLMRerankerConfigError
    cpu_bf16: ClassVar[bool] = False  # precision: auto on CPU is fp32 (an LLM on CPU is for tests only)

    base: str  # the start model: a Qwen3-Reranker (already answers yes/no) or any causal LM, name or path
    instruction: str  # the prompt's <Instruct>; Qwen advise English instructions even for other languages
    max_length: int  # tokens per prompt; only the document is cut
    lr: float
    epochs: float  # ignored when max_steps > 0
    max_steps: int  # > 0 overrides epochs
    batch_size: int  # (query, passage) rows per device batch
    gradient_accumulation_steps: int
    warmup_ratio: float
    weight_decay: float
    lora_r: int
    lora_alpha: int
    lora_dropout: float
    target_modules: tuple[str, ...]  # LoRA'd linear layers, by module name
    precision: str  # auto: bf16 (or fp16) autocast on CUDA, fp32 on CPU
    seed: int
    logging_steps: int

    def validate(self) -> None:
        sec, err = self.SECTION, self.ERROR
        positive = ("lr", "max_length", "batch_size", "gradient_accumulation_steps", "lora_r", "lora_alpha")
        for key in (*positive, "logging_steps"):
            if getattr(self, key) <= 0:
                raise err(f"{sec}.{key}={getattr(self, key)} must be > 0")
        if self.max_steps <= 0 and self.epochs <= 0:
            raise err(f"{sec}: set epochs > 0, or max_steps > 0 (which overrides epochs)")
        for key in ("warmup_ratio", "lora_dropout"):
            if not 0 <= getattr(self, key) < 1:
                raise err(f"{sec}.{key}={getattr(self, key)} must be in [0, 1)")
        if self.weight_decay < 0:
            raise err(f"{sec}.weight_decay={self.weight_decay} must be ≥ 0")
        if not self.target_modules:
            raise err(f"{sec}.target_modules is empty: name the linear layers LoRA adapts (e.g. q_proj, v_proj)")
        if self.precision not in PRECISIONS:
            raise err(f"{sec}.precision={self.precision!r}: choose one of {PRECISIONS}")


def pair_rows(groups: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (query, passage) of each group: label 1 ("yes") for ``pos``, 0 ("no") for ``neg``."""
    rows = []
    for g in groups:
        rows += [{"query": g["query"], "document": t, "label": 1} for t in g["pos"]]
        rows += [{"query": g["query"], "document": t, "label": 0} for t in g["neg"]]
    return rows


def binary_entropy(p: float) -> float:
    """Cross-entropy of always predicting the class share ``p``: the loss reached by reading nothing but the prior."""
    return 0.0 if p <= 0 or p >= 1 else -(p * math.log(p) + (1 - p) * math.log(1 - p))


def dev_rerank_metrics(samples: Sequence[dict[str, Any]], reranker: LLMReranker | None, batch_size: int) -> dict:
    """Mean Recall@1, NDCG@10 and MRR@10 of reranking each sample's ``documents`` (None: keep their order, i.e. the
    retriever's). A sample whose ``positive`` is empty scores 0, as in the cross-encoder's dev evaluator: the
    retriever missed it, and reranking cannot repair that."""
    if not samples:
        return {}
    per_query = []
    for s in samples:
        docs = list(s["documents"])
        if reranker is not None and docs:
            scores = reranker.predict([(s["query"], d) for d in docs], batch_size=batch_size)
            docs = [docs[i] for i in sorted(range(len(docs)), key=lambda i: (-float(scores[i]), i))]
        relevant = set(s["positive"]) or {"\0no positive retrieved"}  # a sentinel no document equals: scores 0
        per_query.append(query_metrics(docs, relevant, [1, 10]))
    means = mean_metrics(per_query)
    return {k: means[k] for k in DEV_KEYS}


def effective_learning_rate(trainer: Any) -> float:
    """The peak learning rate the optimizer was given, read back from it after training (the scheduler decays the
    current value, so each group's ``initial_lr`` is the one to compare). Every group with trainable parameters
    must hold the same one; a mismatch is an error, never a silent average."""
    groups = [g for g in trainer.optimizer.param_groups if any(p.requires_grad for p in g["params"])]
    lrs = {float(g.get("initial_lr", g["lr"])) for g in groups}
    if len(lrs) != 1:
        raise LLMRerankerConfigError(f"the optimizer's parameter groups hold different learning rates: {sorted(lrs)}")
    return lrs.pop()


def training_warnings(*, steps: int, loss_last: float | None, prior: float, dev: dict[str, dict]) -> list[str]:
    """Signs the LLM reranker did not learn (each printed by the stage, stored in metrics and reported)."""
    out = []
    if steps < MIN_STEPS:
        out.append(f"only {steps} LLM reranker optimizer steps (< {MIN_STEPS}): barely trained")
    if loss_last is not None and loss_last > RANDOM_BASELINE - LOSS_MARGIN:
        out.append(
            f"final training loss {loss_last:.4f} is not below the yes/no random baseline ln 2 = "
            f"{RANDOM_BASELINE:.4f} by {LOSS_MARGIN}: the reranker answers no better than a coin (more steps, or a "
            "higher train_reranker.llm.lr)"
        )
    elif loss_last is not None and prior < RANDOM_BASELINE and loss_last > prior - LOSS_MARGIN:
        out.append(
            f"final training loss {loss_last:.4f} is not below {prior:.4f}, the loss of always answering with the "
            "yes/no share of the training rows: it may have learned the class balance, not relevance"
        )
    after, given = dev.get("after", {}), dev.get("input", {})
    # dev worse after training than before: the stage ships the start and warns (kinds.run_kind)
    if after and given and after["ndcg@10"] < given["ndcg@10"]:
        out.append(
            f"the LLM reranker orders dev worse than the retriever: ndcg@10 {given['ndcg@10']:.4f} (retriever) → "
            f"{after['ndcg@10']:.4f} (reranked)"
        )
    return out


def build_trainer(
    reranker: LLMReranker,
    rows: Sequence[dict[str, Any]],
    settings: LLMRerankerSettings,
    checkpoint_dir: str | Path,
    callbacks: Sequence[Any] = (),
) -> Any:
    """LoRA adapters on ``reranker.model`` (the reranker then holds the ``PeftModel``) and the Trainer that trains
    them on ``rows``. Split from :func:`train_llm_reranker` so a test can look at the weights before merging."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer, TrainingArguments, set_seed

    set_seed(settings.seed)  # LoRA's A matrices are drawn from the global RNG: the same params, the same start
    lora = LoraConfig(
        r=settings.lora_r,
        lora_alpha=settings.lora_alpha,
        lora_dropout=settings.lora_dropout,
        target_modules=list(settings.target_modules),
        task_type="CAUSAL_LM",
    )
    reranker.model = get_peft_model(reranker.model, lora)

    class YesNoTrainer(Trainer):
        """The loss is cross-entropy over the ``[no, yes]`` logits at the last position (label 0 = no, 1 = yes)."""

        def compute_loss(self, model: Any, inputs: dict, return_outputs: bool = False, **kwargs: Any) -> Any:
            labels = inputs.pop("labels")
            logits = reranker.yes_no_logits(model, inputs)
            loss = torch.nn.functional.cross_entropy(logits, labels)
            return (loss, {"logits": logits}) if return_outputs else loss

    def collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
        enc = reranker.encode([(r["query"], r["document"]) for r in batch], device="cpu")  # the Trainer moves it
        return {**enc, "labels": torch.tensor([r["label"] for r in batch], dtype=torch.long)}

    cuda = torch.cuda.is_available()
    args = TrainingArguments(
        output_dir=str(checkpoint_dir),
        seed=settings.seed,
        data_seed=settings.seed,
        learning_rate=settings.lr,
        num_train_epochs=settings.epochs,
        max_steps=settings.max_steps if settings.max_steps > 0 else -1,
        per_device_train_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.gradient_accumulation_steps,
        warmup_steps=settings.warmup_ratio,  # transformers v5: a float < 1 is a ratio of the total steps
        weight_decay=settings.weight_decay,
        lr_scheduler_type="linear",
        logging_steps=settings.logging_steps,
        logging_first_step=True,
        save_strategy="no",  # the stage saves the merged model itself; LoRA runs are short enough to restart
        eval_strategy="no",  # dev is scored before and after (dev_rerank_metrics), on the whole reranked list
        remove_unused_columns=False,  # the collator reads query/document/label, which the model does not take
        report_to="none",
        use_cpu=not cuda,
        **precision_flags(settings, cuda, bool(cuda and torch.cuda.is_bf16_supported())),
    )
    trainer = YesNoTrainer(
        model=reranker.model, args=args, train_dataset=list(rows), data_collator=collate, callbacks=list(callbacks)
    )
    # the loss is a mean over the micro-batch: let the Trainer divide it by the accumulation steps, as for any model
    # whose forward does not take num_items_in_batch
    trainer.model_accepts_loss_kwargs = False
    return trainer


def train_llm_reranker(
    groups: Sequence[dict[str, Any]],
    dev_samples: Sequence[dict[str, Any]],
    settings: LLMRerankerSettings,
    out_dir: str | Path,
    checkpoint_dir: str | Path,
    callbacks: Sequence[Any] = (),
) -> dict[str, Any]:
    """LoRA-train ``settings.base`` on ``groups`` (FlagEmbedding rows ``{"query", "pos", "neg"}``), score
    ``dev_samples`` (``{"query", "positive", "documents"}``) before and after, save the merged reranker to
    ``out_dir`` (:meth:`LLMReranker.save`), and return the metrics, warnings included (the caller prints them)."""
    import torch

    rows = pair_rows(groups)
    if not rows:
        raise LLMRerankerConfigError("train_reranker.llm: no training rows (every group is empty)")
    # fp32 weights; the Trainer's bf16/fp16 autocast does the mixed precision (LoRA in bf16 weights loses updates)
    # a folder, the HF cache or the hub, as every base model resolves (docs/models.md)
    reranker = LLMReranker.from_pretrained(
        resolve_model(settings.base),
        instruction=settings.instruction,
        max_length=settings.max_length,
        base=settings.base,
        dtype=torch.float32,
    )
    dev = {"input": dev_rerank_metrics(dev_samples, None, settings.batch_size)}
    dev["before"] = dev_rerank_metrics(dev_samples, reranker, settings.batch_size)
    trainer = build_trainer(reranker, rows, settings, checkpoint_dir, callbacks)
    trainable = sum(p.numel() for p in reranker.model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in reranker.model.parameters())
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    lr = effective_learning_rate(trainer)
    dev["after"] = dev_rerank_metrics(dev_samples, reranker, settings.batch_size)
    losses = [float(h["loss"]) for h in trainer.state.log_history if "loss" in h]
    positives = sum(r["label"] for r in rows)
    prior = binary_entropy(positives / len(rows))
    steps = int(trainer.state.global_step)
    loss_last = losses[-1] if losses else None
    warnings = training_warnings(steps=steps, loss_last=loss_last, prior=prior, dev=dev)
    reranker.save(out_dir)
    return {
        "effective": {
            "kind": "llm",
            "base": settings.base,
            "learning_rate": lr,  # read back from the optimizer, not from the settings
            "lr_logged_max": max(
                (float(h["learning_rate"]) for h in trainer.state.log_history if "learning_rate" in h), default=None
            ),
            "optimizer_steps": steps,
            "epochs": round(float(trainer.state.epoch or 0), 3),
            "effective_batch_size": settings.batch_size * settings.gradient_accumulation_steps,
            "trainable_params": trainable,
            "total_params": total,
            "bf16": bool(trainer.args.bf16),
            "fp16": bool(trainer.args.fp16),
            "label_token_ids": {"yes": reranker.yes_id, "no": reranker.no_id},
            "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(settings).items()},
        },
        "train": {
            "rows": len(rows),
            "positives": positives,
            "negatives": len(rows) - positives,
            "loss_first": round(losses[0], 4) if losses else None,
            "loss_last": round(loss_last, 4) if loss_last is not None else None,
            "random_baseline": round(RANDOM_BASELINE, 4),
            "prior_baseline": round(prior, 4),
            "seconds": round(seconds, 1),
            "timing": step_timing(trainer),  # steps and saves, for `ragtune plan`
        },
        "dev": {"n_queries": len(dev_samples), **dev},
        "warnings": warnings,
    }
