"""Fine-tuning the bi-encoder with sentence-transformers' Trainer, from params that all provably reach it.

The shape is the canonical one from sentence-transformers' examples: a ``datasets.Dataset`` of
``(anchor, positive, negative_1..n)`` columns, a MultipleNegativesRankingLoss-family loss, an
``InformationRetrievalEvaluator`` on the dev split, ``SentenceTransformerTrainingArguments`` and
``SentenceTransformerTrainer``. Nothing here re-implements what the Trainer does (optimizer, scheduler,
checkpointing, resume, early stopping, DDP); this module only translates params into those objects, and refuses
params it does not know, so a knob in params.yaml can never be silently ignored.
"""

from __future__ import annotations

import functools
import math
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ragtune.params import StageConfig
from ragtune.rows import POSITIVES, training_rows

if TYPE_CHECKING:
    from ragtune.batching import RowKeys

LOSSES = ("mnrl", "cached_mnrl", "gist")
BATCH_SAMPLERS = ("document_disjoint", "no_duplicates")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# MNRL interaction terms (sentence-transformers' ``directions``): query_to_doc is the classic InfoNCE; adding
# doc_to_query makes it symmetric (each passage must also pick its own query out of the batch), and all four are
# GTE's "improved contrastive loss".
DIRECTIONS = ("query_to_doc", "doc_to_query", "query_to_query", "doc_to_doc")
# MNRL hardness weighting: add strength·stop_grad(cos) to these negatives' logits, so harder negatives weigh more.
HARDNESS_MODES = ("none", "in_batch_negatives", "hard_negatives", "all_negatives")
# ``epochs``, ``eval_steps`` and ``save_steps`` may be this word: sized to the data by :func:`plan_schedule`.
AUTO = "auto"


class TrainConfigError(ValueError):
    """A train_embedder param is unknown or invalid; the message names the key and the fix."""


@dataclass(frozen=True)
class EmbedderTrainConfig(StageConfig):
    """Every knob of the train_embedder stage. Field names are the params.yaml keys under ``train_embedder:``.

    No field has a default: params.yaml's ``train_embedder:`` section holds every value (see :class:`StageConfig`).
    """

    SECTION = "train_embedder"
    ERROR = TrainConfigError

    seed: int
    loss: str
    scale: float  # MNRL logit scale = 1 / temperature; e5 was trained with temperature 0.01 (scale 100)
    directions: tuple[str, ...]  # mnrl / cached_mnrl interaction terms, see DIRECTIONS
    hardness_mode: str  # mnrl / cached_mnrl, see HARDNESS_MODES
    hardness_strength: float  # Lan et al. 2025 use 9 for in_batch_negatives, EmbeddingGemma 5 for hard_negatives
    mini_batch_size: int  # cached_mnrl: forward chunk size; memory, not the effective batch
    gist_temperature: float
    matryoshka_dims: tuple[int, ...]
    n_hard_negatives: int
    positives: str  # first | all: one training row per labeled positive (see training_rows)
    batch_sampler: str  # or no_duplicates (identical texts only): see ragtune.batching
    max_seq_length: int
    epochs: float | str  # auto: plan_schedule sizes it to the training rows; a number wins
    max_steps: int  # > 0 overrides epochs and the auto plan
    auto_min_steps: int  # epochs: auto trains whole epochs until at least this many optimizer steps …
    auto_max_epochs: int  # … but never more epochs than this …
    auto_max_steps: int  # … and stops here even mid-epoch (a deterministic compute budget, in steps)
    eval_fraction: float  # eval_steps / save_steps: auto = ceil(eval_fraction × total steps)
    batch_size: int
    lr: float
    warmup_ratio: float
    scheduler: str
    weight_decay: float
    dev_level: str  # dev evaluator relevance: doc (labeled documents, MaxP) | chunk (aligned chunks)
    eval_steps: int | str  # auto: see eval_fraction; a number wins
    save_steps: int | str  # auto: equal to eval_steps (load_best_model_at_end needs a multiple of it)
    save_total_limit: int
    early_stopping_patience: int  # 0 = off
    load_best_model_at_end: bool
    merge_alpha: float  # WiSE-FT: weights = (1 - alpha)·base + alpha·fine-tuned; 1.0 = no merge
    merge_tolerance: float  # keep the merge unless the unmerged model beats it on dev by more than this
    keep_base_if_worse: bool  # ship the base model (loudly) unless dev shows the trained one better (interval > 0)
    enabled: bool  # false: ship model.embedder untrained (a base-model bake-off)
    ship_unchecked: bool  # no labeled dev question: ship the base (false) or an unchecked fine-tune (true)
    gradient_accumulation_steps: int
    gradient_checkpointing: bool
    precision: str  # auto: fp16/bf16 on CUDA (bf16 if supported), cpu_bf16 setting on CPU
    cpu_bf16: bool  # bf16 autocast on CPU (see benchmarks/train_throughput.py)
    freeze_embeddings: bool
    freeze_layers: int
    attention_dropout: float | None  # None: the model's own; 0 lets SDPA use its fused kernel (see below)
    logging_steps: int
    dataloader_num_workers: int
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

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
        if self.precision not in PRECISIONS:
            raise TrainConfigError(f"train_embedder.precision={self.precision!r}: choose one of {PRECISIONS}")
        if self.batch_size < 2:
            raise TrainConfigError("train_embedder.batch_size must be ≥ 2: MNRL needs in-batch negatives")
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
        if self.lr <= 0 or self.lr > 1e-2:
            raise TrainConfigError(f"train_embedder.lr={self.lr} is outside (0, 1e-2]; typical: 1e-5 … 1e-4")
        check_attention_dropout(self.attention_dropout, TrainConfigError, self.SECTION)
        check_schedule(self, TrainConfigError)


def check_attention_dropout(p: Any, error: type[ValueError], section: str) -> None:
    """``attention_dropout`` is empty (keep the model's) or a probability in [0, 1)."""
    if p is not None and (isinstance(p, bool) or not isinstance(p, int | float) or not 0 <= p < 1):
        raise error(
            f"{section}.attention_dropout={p!r}: use a probability in [0, 1) (0 = off, the fast path), "
            "or leave it empty to keep the model's own setting"
        )


def check_chunks_fit(longest_chunk: int, prompt_tokens: int, special_tokens: int, max_seq_length: int) -> None:
    """Refuse to train when the longest chunk would be cut by ``train_embedder.max_seq_length``.

    Why: the chunk stage checks ``chunk.max_tokens`` against ``model.max_seq_length`` (512), but training truncates
    at ``train_embedder.max_seq_length`` (256), and the shipped model keeps that length for indexing and evaluation.
    A ``max_tokens: 400`` passed the chunk check and then lost the end of every long chunk, silently.

    The check is on the chunks the stage reads (their ``n_tokens``, counted by the chunk stage with this model's
    tokenizer), not on ``chunk.max_tokens`` itself: chunks end at sentence boundaries, so the sample's longest is
    247 tokens under ``max_tokens: 256`` and fits 256 with the 2-token prompt and 2 special tokens, while
    ``max_tokens`` + 4 would not. ``chunk.max_tokens`` + prompt + specials ≤ ``train_embedder.max_seq_length`` is
    what guarantees it for any corpus, so that is the limit the message suggests.
    """
    need = longest_chunk + prompt_tokens + special_tokens
    if need > max_seq_length:
        limit = max_seq_length - prompt_tokens - special_tokens
        raise TrainConfigError(
            f"train_embedder.max_seq_length={max_seq_length} would cut chunks: the longest has {longest_chunk} "
            f"tokens, {need} with the passage prompt ({prompt_tokens}) and {special_tokens} special tokens, and "
            "training (and the shipped model, which keeps this length) truncates the rest silently. Lower "
            f"chunk.max_tokens to ≤ {limit} or raise train_embedder.max_seq_length to ≥ {need} (to "
            f"chunk.max_tokens + {prompt_tokens + special_tokens} for any corpus; at most the model's own limit, "
            "model.max_seq_length)."
        )


# --------------------------------------------------------------------------------------------------- schedule
def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def check_schedule(cfg: Any, error: type[ValueError]) -> None:
    """The schedule keys both trainers share: ``epochs``/``eval_steps``/``save_steps`` are ``auto`` or > 0, the auto
    plan's bounds are ≥ 1 and ``eval_fraction`` is in (0, 1]. ``max_steps`` > 0 overrides everything, as before."""
    sec = cfg.SECTION
    if cfg.epochs != AUTO and not (_is_number(cfg.epochs) and cfg.epochs > 0):
        raise error(
            f"{sec}.epochs={cfg.epochs!r}: use auto (sized to the training rows, see {sec}.auto_min_steps) "
            "or a number of epochs > 0"
        )
    for key in ("eval_steps", "save_steps"):
        v = getattr(cfg, key)
        if v != AUTO and not (isinstance(v, int) and not isinstance(v, bool) and v > 0):
            raise error(
                f"{sec}.{key}={v!r}: use auto (a fraction of the run, see {sec}.eval_fraction) or a whole number "
                "of optimizer steps > 0"
            )
    for key in ("auto_min_steps", "auto_max_epochs", "auto_max_steps"):
        if getattr(cfg, key) < 1:
            raise error(f"{sec}.{key}={getattr(cfg, key)} must be ≥ 1 (it bounds the epochs: auto plan)")
    if not 0 < cfg.eval_fraction <= 1:
        raise error(
            f"{sec}.eval_fraction={cfg.eval_fraction} must be in (0, 1]: the share of the run between two dev "
            "checks (0.3 checks at 30%, 60%, 90% and the end)"
        )


@dataclass(frozen=True)
class SchedulePlan:
    """How long a training run is and how often it checks dev, resolved once the number of rows is known.

    ``epochs`` and ``max_steps`` are what TrainingArguments gets (``max_steps`` > 0 makes the Trainer ignore
    ``epochs``); ``total_steps`` is the number of optimizer steps the run will take either way.
    """

    rows: int
    steps_per_epoch: int
    epochs: float
    max_steps: int
    total_steps: int
    eval_steps: int
    save_steps: int
    reason: str


def steps_per_epoch(rows: int, batch_size: int, grad_accum: int = 1, world: int = 1) -> int:
    """Optimizer steps in one epoch, counted as the Trainer counts them.

    Each of ``world`` processes gets ``ceil(batches / world)`` batches (accelerate's even batches), and every
    sampler here fills all batches but the last (``batching.batch_count`` without drop_last: the document-disjoint
    plan keeps the default sampler's count), so one process sees ``ceil(rows / (batch_size·world))`` batches. The
    Trainer then takes ``ceil(batches / grad_accum)`` optimizer steps, and at least one.
    """
    batches = math.ceil(rows / (batch_size * world))
    return max(1, math.ceil(batches / grad_accum))


def _ceil(x: float) -> int:
    """``ceil`` that ignores float noise: 0.3 × 70 is 21.000000000000004, and 22 steps would surprise everyone."""
    return math.ceil(round(x, 9))


def plan_schedule(
    rows: int,
    batch_size: int,
    *,
    grad_accum: int = 1,
    world: int = 1,
    epochs: float | str = AUTO,
    max_steps: int = -1,
    eval_steps: int | str = AUTO,
    save_steps: int | str = AUTO,
    auto_min_steps: int,
    auto_max_epochs: int,
    auto_max_steps: int,
    eval_fraction: float,
) -> SchedulePlan:
    """The training schedule for ``rows`` training rows: a pure function of the counts (no torch, no model).

    Why: a hand-set ``epochs`` fits one corpus. 5 epochs are 60 steps on the sample's 184 questions, 10 steps on 40
    questions (barely trained) and 150,000 steps on 500,000 pairs (days on a CPU). The rule, in order:

    * ``max_steps`` > 0 wins: that many steps, whatever ``epochs`` says (as the Trainer does);
    * a number in ``epochs`` wins next: ``ceil(epochs × steps_per_epoch)`` steps;
    * ``epochs: auto``: the fewest whole epochs that reach ``auto_min_steps`` optimizer steps, between 1 and
      ``auto_max_epochs``; the run is then cut at ``auto_max_steps`` (``max_steps`` = the cut, a fraction of an
      epoch on very large data). Steps, not seconds, so the same data and params always train the same model.

    ``eval_steps`` / ``save_steps``: ``auto`` = ``max(1, ceil(eval_fraction × total steps))`` for both (with
    ``load_best_model_at_end`` the save interval must be a multiple of the eval interval: equal is simplest); an
    ``auto`` one next to a number takes that number. ``rows`` may be 0 (nothing will be trained): the Trainer
    still counts one step per epoch.

    The auto plan's bounds have no defaults here: they come from the config (params.yaml), which differs per trainer.
    """
    if rows < 0 or batch_size < 1 or grad_accum < 1 or world < 1:
        raise ValueError(
            f"plan_schedule: rows={rows}, batch_size={batch_size}, grad_accum={grad_accum}, world={world}: "
            "rows must be ≥ 0 and the others ≥ 1"
        )
    per_epoch = steps_per_epoch(rows, batch_size, grad_accum, world)
    per_step = batch_size * world * grad_accum
    size = f"{rows} rows / {per_step} per step = {per_epoch} step{'s' if per_epoch > 1 else ''} per epoch"
    if max_steps > 0:
        total, plan_max = max_steps, max_steps
        n_epochs = float(epochs) if epochs != AUTO else round(total / per_epoch, 4)
        why = f"max_steps {max_steps} overrides epochs: {total} steps ({total / per_epoch:.3g} epochs)"
    elif epochs != AUTO:
        n_epochs, plan_max = float(epochs), -1
        total = _ceil(n_epochs * per_epoch)
        why = f"epochs {epochs:g} set: {total} steps"
    else:
        whole = min(max(math.ceil(auto_min_steps / per_epoch), 1), auto_max_epochs)
        total = whole * per_epoch
        if total > auto_max_steps:
            total, plan_max = auto_max_steps, auto_max_steps
            n_epochs = round(total / per_epoch, 4)
            why = (
                f"epochs auto: {whole} epoch{'s' if whole > 1 else ''} would be {whole * per_epoch} steps, cut at "
                f"auto_max_steps {auto_max_steps} ({n_epochs:.3g} epochs)"
            )
        elif total >= auto_min_steps:
            n_epochs, plan_max = float(whole), -1
            why = (
                f"epochs auto: {whole} epoch{'s' if whole > 1 else ''} = {total} steps, the fewest whole epochs "
                f"reaching auto_min_steps {auto_min_steps}"
            )
        else:
            n_epochs, plan_max = float(whole), -1
            why = (
                f"epochs auto: capped at auto_max_epochs {auto_max_epochs} = {total} steps, short of "
                f"auto_min_steps {auto_min_steps} (more rows would train longer)"
            )
    every = max(1, _ceil(eval_fraction * total))
    if eval_steps == AUTO and save_steps == AUTO:
        ev = sv = every
        checks = f"dev check and checkpoint every {every} steps (eval_fraction {eval_fraction:g})"
    else:
        ev = int(save_steps if eval_steps == AUTO else eval_steps)
        sv = int(eval_steps if save_steps == AUTO else save_steps)
        checks = f"dev check every {ev}, checkpoint every {sv} steps"
    return SchedulePlan(
        rows=rows,
        steps_per_epoch=per_epoch,
        epochs=n_epochs,
        max_steps=plan_max,
        total_steps=total,
        eval_steps=ev,
        save_steps=sv,
        reason=f"{size}; {why}; {checks}.",
    )


def resolve_schedule(cfg: Any, rows: int, world: int = 1) -> tuple[Any, SchedulePlan]:
    """``cfg`` with its schedule (epochs, max_steps, eval_steps, save_steps) resolved for ``rows`` rows, and the plan.

    The resolved config is what builds TrainingArguments, the resume fingerprint and the model card, so each of
    them shows the numbers the run used, never the word ``auto``. Resolving a resolved config changes nothing.
    """
    plan = plan_schedule(
        rows,
        cfg.batch_size,
        grad_accum=cfg.gradient_accumulation_steps,
        world=world,
        epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        eval_steps=cfg.eval_steps,
        save_steps=cfg.save_steps,
        auto_min_steps=cfg.auto_min_steps,
        auto_max_epochs=cfg.auto_max_epochs,
        auto_max_steps=cfg.auto_max_steps,
        eval_fraction=cfg.eval_fraction,
    )
    resolved = replace(
        cfg, epochs=plan.epochs, max_steps=plan.max_steps, eval_steps=plan.eval_steps, save_steps=plan.save_steps
    )
    return resolved, plan


def unresolved(cfg: Any) -> list[str]:
    """The schedule keys of ``cfg`` still set to ``auto`` (see :func:`resolve_schedule`)."""
    return [k for k in ("epochs", "eval_steps", "save_steps") if getattr(cfg, k) == AUTO]


def require_resolved(cfg: Any) -> None:
    """Refuse to build TrainingArguments from ``auto``: only the row count turns it into steps."""
    keys = unresolved(cfg)
    if keys:
        raise cfg.ERROR(
            f"{cfg.SECTION}.{'/'.join(keys)}: auto must be resolved for the training rows before building the "
            "trainer's arguments: call ragtune.training.resolve_schedule(cfg, rows, world) first"
        )


# --------------------------------------------------------------------------------------------------- data
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


def _document_ir_evaluator_class() -> type:
    """Subclass of InformationRetrievalEvaluator that scores documents, not chunks (built lazily: ST import is slow)."""
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

    class DocumentIREvaluator(InformationRetrievalEvaluator):
        """Retrieves chunks, then ranks each document by its best chunk (MaxP) before computing ST's metrics.

        Why: the labels name documents. Chunk-level dev relevance needs one "aligned" positive chunk per query,
        chosen by BM25 + base-dense scores, so it favours the base model and can pick the wrong checkpoint.
        Document level is what the evaluate stage reports, so the checkpoint kept is the one evaluate would
        prefer. All metric code is sentence-transformers' own; only the chunk → document collapse is added.
        """

        def __init__(self, *args: Any, chunk_to_doc: dict[str, str], **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.chunk_to_doc = chunk_to_doc

        def compute_metrics(self, queries_result_list: list[object]) -> dict[str, Any]:
            collapsed = []
            for hits in queries_result_list:
                best: dict[str, float] = {}
                for hit in sorted(hits, key=lambda h: (-h["score"], h["corpus_id"])):
                    best.setdefault(self.chunk_to_doc[hit["corpus_id"]], hit["score"])
                collapsed.append([{"corpus_id": d, "score": sc} for d, sc in best.items()])
            return super().compute_metrics(collapsed)

    return DocumentIREvaluator


def build_ir_evaluator(
    dev: list[dict[str, Any]],
    chunks: list[dict[str, Any]],
    query_prompt: str,
    passage_prompt: str,
    name: str = "dev",
    batch_size: int = 32,
    level: str = "doc",
    candidate_k: int = 100,
) -> Any:
    """The dev InformationRetrievalEvaluator over all chunks, at document level (default) or chunk level.

    ``level="doc"``: a query's labeled documents are relevant, and each document scores as its best chunk among
    the top ``candidate_k`` chunks (as in the evaluate stage). ``level="chunk"``: the aligned positive chunks are
    relevant. Metrics keep ST's names (``dev_cosine_ndcg@10``), so ``metric_for_best_model`` is the same for both.
    """
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

    if level not in ("doc", "chunk"):
        raise TrainConfigError(f"train_embedder.dev_level={level!r}: use doc or chunk")
    key = "positive_doc_ids" if level == "doc" else "positive_chunk_ids"
    labeled = [q for q in dev if q.get(key)]
    kwargs: dict[str, Any] = dict(
        queries={q["query_id"]: q["query"] for q in labeled},
        corpus={c["chunk_id"]: c["text"] for c in chunks},
        relevant_docs={q["query_id"]: set(q[key]) for q in labeled},
        name=name,
        query_prompt=query_prompt or None,
        corpus_prompt=passage_prompt or None,
        mrr_at_k=[10],
        ndcg_at_k=[10],
        accuracy_at_k=[1, 10],
        precision_recall_at_k=[10],
        map_at_k=[10],
        batch_size=batch_size,
        show_progress_bar=False,
    )
    if level == "chunk":
        return InformationRetrievalEvaluator(**kwargs)
    # ST retrieves max(all k) hits per query; the extra recall@candidate_k widens that to candidate_k chunks,
    # so ten distinct documents survive the collapse. It reads: a labeled document among the candidates.
    kwargs["precision_recall_at_k"] = [10, candidate_k]
    return _document_ir_evaluator_class()(**kwargs, chunk_to_doc={c["chunk_id"]: c["doc_id"] for c in chunks})


# --------------------------------------------------------------------------------------------------- model
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


def set_attention_dropout(model: Any, p: float | None) -> int:
    """Set the dropout on attention probabilities in every attention module of ``model``; returns how many.

    Why: with attention dropout on, ``scaled_dot_product_attention`` cannot use PyTorch's fused flash-attention
    kernel on CPU and falls back to the math path, which materialises the batch × heads × seq × seq probabilities
    and draws a Bernoulli mask over them. Profiled on one e5-small MNRL step (16 × 3 texts, ≤256 tokens, bf16
    autocast) that path was half the step: ``p = 0`` made the step ~2.5× faster (10.1 s → 4.1 s). Dropout on the
    hidden states is left as the model has it. ``None`` changes nothing.

    Covers the two conventions in transformers: an ``nn.Dropout`` named ``dropout`` on the (self-)attention module
    (BERT, XLM-R, e5, bge-m3) and a float ``attention_dropout`` attribute (Qwen3, ModernBERT, most decoders). The
    value lives on the modules, not in the saved config, so the shipped model keeps its original config.
    """
    if p is None:
        return 0
    import torch

    n = 0
    for module in model.modules():
        if "Attention" not in type(module).__name__:
            continue
        drop = getattr(module, "dropout", None)
        if isinstance(drop, torch.nn.Dropout):
            drop.p = float(p)
            n += 1
        elif isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = float(p)
            n += 1
    return n


def apply_attention_dropout(model: Any, p: float | None, section: str) -> tuple[dict[str, Any], list[str]]:
    """:func:`set_attention_dropout`, plus what the metrics record: the value, the modules it reached, and a
    warning when a value was asked for but no module of this architecture took it (the param would be a no-op)."""
    n = set_attention_dropout(model, p)
    warnings = []
    if p is not None and n == 0:
        arch = type(getattr(model[0], "auto_model", model[0])).__name__
        warnings.append(
            f"{section}.attention_dropout={p} reached no attention module of {arch}: training used the model's own "
            "attention dropout (leave the param empty to silence this)"
        )
    return {"attention_dropout": p, "attention_dropout_modules": n}, warnings


def drop_mixed_precision_wrapper(model: Any) -> Any:
    """Give ``model`` back its own ``forward`` after a bf16/fp16 ``trainer.train()``; returns ``model``.

    Why: with mixed precision, accelerate replaces the model's ``forward`` with one that runs under autocast, and
    the replacement stays on the object after training. Every later use of the in-memory model (the dev scores
    after training, the WiSE-FT merge check, the reranker's dev reranking) then ran in bf16, while the shipped
    model, loaded from disk, runs in fp32. Found on the sample: a run reported dev NDCG@10 .8916 for a model that
    scores .8801 once saved and reloaded. :func:`trainer_callbacks` calls this at the end of every training run.
    """
    from accelerate.utils import extract_model_from_parallel

    extract_model_from_parallel(model, keep_fp32_wrapper=False)
    return model


def trainer_callbacks(callbacks: list[Any] | None, early_stopping_patience: int, has_eval: bool) -> list[Any]:
    """The callbacks both trainers (embedder and reranker) get: the caller's, early stopping on the dev metric when
    asked for, and ``Fp32AfterTraining``, which hands the model back without the mixed-precision wrapper as soon
    as ``train()`` ends, so no caller can forget it (see :func:`drop_mixed_precision_wrapper`)."""
    from transformers import EarlyStoppingCallback, TrainerCallback

    class Fp32AfterTraining(TrainerCallback):
        def on_train_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
            if model is not None:
                drop_mixed_precision_wrapper(model)

    out = [*(callbacks or []), Fp32AfterTraining()]
    if early_stopping_patience and has_eval:
        out.append(EarlyStoppingCallback(early_stopping_patience=early_stopping_patience))
    return out


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


def precision_flags(cfg: EmbedderTrainConfig, cuda: bool, bf16_supported: bool) -> dict[str, bool]:
    """fp16/bf16 flags for TrainingArguments: mixed precision on CUDA by default, bf16 autocast on CPU if asked."""
    if cfg.precision == "fp32":
        return {"fp16": False, "bf16": False}
    if cfg.precision == "bf16":
        return {"fp16": False, "bf16": True}
    if cfg.precision == "fp16":
        if not cuda:
            raise cfg.ERROR(f"{cfg.SECTION}.precision=fp16 needs CUDA; use bf16 (cpu_bf16) on CPU")
        return {"fp16": True, "bf16": False}
    if cuda:
        return {"fp16": not bf16_supported, "bf16": bf16_supported}
    return {"fp16": False, "bf16": cfg.cpu_bf16}


def batch_sampler(cfg: EmbedderTrainConfig, batch_keys: Sequence[RowKeys] | None) -> Any:
    """The Trainer's ``batch_sampler`` argument for ``cfg.batch_sampler``."""
    from sentence_transformers.base.sampler import BatchSamplers

    if cfg.batch_sampler == "no_duplicates":
        return BatchSamplers.NO_DUPLICATES
    if batch_keys is None:
        raise ValueError("batch_sampler=document_disjoint needs batch_keys (ragtune.batching.group_row_keys)")
    from ragtune.batching import DocumentDisjointBatchSampler

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
    """SentenceTransformerTrainingArguments from the config, every field mapped explicitly.

    ``batch_keys`` (one per training row) are what the document-disjoint sampler keeps apart; see
    ``ragtune.batching``. ``cfg`` must be resolved (:func:`resolve_schedule`): ``auto`` is not a number of steps.
    """
    require_resolved(cfg)
    import torch
    from sentence_transformers.sentence_transformer.training_args import SentenceTransformerTrainingArguments

    cuda = torch.cuda.is_available() if cuda is None else cuda
    if bf16_supported is None:
        bf16_supported = bool(cuda and torch.cuda.is_bf16_supported())
    eval_strategy = "steps" if has_eval else "no"
    return SentenceTransformerTrainingArguments(
        output_dir=str(output_dir),
        seed=cfg.seed,
        data_seed=cfg.seed,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        learning_rate=cfg.lr,
        warmup_steps=cfg.warmup_ratio,  # transformers v5: a float < 1 is a ratio of total steps
        lr_scheduler_type=cfg.scheduler,
        weight_decay=cfg.weight_decay,
        eval_strategy=eval_strategy,
        eval_steps=cfg.eval_steps,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        load_best_model_at_end=cfg.load_best_model_at_end and has_eval,
        metric_for_best_model="eval_dev_cosine_ndcg@10" if has_eval else None,
        greater_is_better=True,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        activation_checkpointing=cfg.gradient_checkpointing,
        logging_steps=cfg.logging_steps,
        logging_first_step=True,
        batch_sampler=batch_sampler(cfg, batch_keys),
        prompts=prompts,
        dataloader_num_workers=cfg.dataloader_num_workers,
        report_to="none",
        use_cpu=not cuda,
        # CPU processes under torchrun talk over gloo; a single process needs no backend at all
        ddp_backend="gloo" if not cuda and int(os.environ.get("WORLD_SIZE", "1")) > 1 else None,
        ddp_find_unused_parameters=False,
        **precision_flags(cfg, cuda, bf16_supported),
    )


def column_prompts(n_hard_negatives: int, query_prompt: str, passage_prompt: str) -> dict[str, str]:
    """Per-column prompts: e5 was trained with ``query: `` / ``passage: `` and must be fine-tuned with them too."""
    prompts = {"anchor": query_prompt, "positive": passage_prompt}
    prompts.update({f"negative_{i}": passage_prompt for i in range(1, n_hard_negatives + 1)})
    return {k: v for k, v in prompts.items() if v}


def dvclive_callbacks(live_dir: str, resume: bool, before: dict[str, float] | None = None) -> list[Any]:
    """DVCLive training curves for a trainer, with the optimizer step on the x axis.

    ``before``: the evaluator's scores before training (``dev_cosine_ndcg@10`` …), plotted at step 0 so every curve
    starts from the base model. Where DVCLive cannot log (e.g. a git repo without commits), training goes on
    without curves, and the stage says so.
    """
    from transformers.integrations import DVCLiveCallback

    from ragtune.console import warn

    class StepDVCLiveCallback(DVCLiveCallback):
        """transformers' callback plots against DVCLive's own counter, which advances once per log call, so loss
        and eval points interleave on a meaningless axis; here each point sits at its ``global_step``."""

        def on_log(self, args: Any, state: Any, control: Any, model: Any = None, logs: Any = None, **kw: Any) -> None:
            if state.is_world_process_zero:
                self.live.step = state.global_step
            super().on_log(args, state, control, model=model, logs=logs, **kw)

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            super().on_train_begin(args, state, control, **kw)
            if before and state.is_world_process_zero and state.global_step == 0:
                self.live.step = 0
                for key, value in before.items():
                    self.live.log_metric(f"eval/{key}", float(value))

    try:
        from dvclive import Live

        live = Live(live_dir, resume=resume, dvcyaml=None, save_dvc_exp=False, report=None)
        return [StepDVCLiveCallback(live=live)]
    except Exception as exc:
        warn(f"training curves will not be logged to {live_dir}: {exc}")
        return []


# --------------------------------------------------------------------------------------------------- resume
FINGERPRINT_FILE = "ragtune_fingerprint.txt"


def prepare_checkpoint_dir(path: str | Path, fingerprint: str, *, owner: bool = True) -> str | None:
    """Return the checkpoint to resume from, or None; wipe checkpoints made with different params or data.

    DVC keeps this folder between runs (``persist: true``). A checkpoint is only resumed if it was written for
    the same training fingerprint, so changing e.g. the learning rate starts fresh instead of continuing a stale
    trajectory.
    """
    path = Path(path)
    marker = path / FINGERPRINT_FILE
    has_checkpoints = path.exists() and any(path.glob("checkpoint-*"))
    stale = has_checkpoints and (not marker.exists() or marker.read_text().strip() != fingerprint)
    if not owner:  # other DDP ranks only read; rank 0 owns the folder
        return None if stale else _last_checkpoint(path)
    if stale:
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    marker.write_text(fingerprint + "\n")
    return _last_checkpoint(path)


def clear_checkpoints(path: str | Path) -> None:
    """Empty the checkpoint folder after a finished run.

    Checkpoints exist to resume an *interrupted* run; a later forced re-run must train again rather than "resume"
    at the final step and change nothing. Emptying the folder completely (marker and evaluator CSVs too) also
    leaves DVC the same empty ``persist`` output after every finished run, so switching experiments does not make
    the stage look modified.
    """
    path = Path(path)
    for child in path.iterdir() if path.exists() else ():
        if child.is_dir():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def untrained_outputs(live_dir: str | Path, ckpt_dir: str | Path) -> None:
    """Leave a stage's curve and checkpoint folders empty after a run that trained nothing.

    DVC requires every declared output to exist after a stage runs, and curves left from an earlier training run
    would be read as this run's.
    """
    shutil.rmtree(live_dir, ignore_errors=True)
    Path(live_dir, "plots", "metrics").mkdir(parents=True, exist_ok=True)
    Path(ckpt_dir).mkdir(parents=True, exist_ok=True)
    clear_checkpoints(ckpt_dir)


def _last_checkpoint(path: Path) -> str | None:
    if not path.exists():
        return None
    ckpts = sorted(
        (p for p in path.glob("checkpoint-*") if (p / "trainer_state.json").exists()),
        key=lambda p: int(p.name.split("-")[-1]),
    )
    return str(ckpts[-1]) if ckpts else None


# --------------------------------------------------------------------------------------------------- guards
def training_warnings(
    *,
    optimizer_steps: int,
    final_loss: float | None,
    batch_size: int,
    dev_before: float | None,
    dev_after: float | None,
    leaked_queries: int,
    min_steps: int = 50,
) -> list[str]:
    """Signs that "fine-tuned" did not mean trained. Each is printed, stored in metrics and shown in the report."""
    out = []
    if optimizer_steps < min_steps:
        out.append(f"only {optimizer_steps} optimizer steps (< {min_steps}): this model is barely trained")
    chance = math.log(batch_size)
    if final_loss is not None and final_loss >= chance:
        out.append(
            f"final train loss {final_loss:.3f} ≥ ln(batch size) = {chance:.3f}: no better than chance in-batch ranking"
        )
    if dev_before is not None and dev_after is not None and dev_after < dev_before:
        out.append(f"dev NDCG@10 fell from {dev_before:.4f} to {dev_after:.4f} after training")
    if leaked_queries:
        out.append(f"{leaked_queries} training queries are also dev/test queries")
    return out


def merge_with_base(model: Any, base: Any, alpha: float) -> None:
    """WiSE-FT (Wortsman et al., 2022): set ``model``'s weights to ``(1 - alpha)·base + alpha·model``, in place.

    Why: a few hundred labeled questions teach the task but also make the model forget what it knew. On the sample,
    fine-tuned e5 lost several test questions that the base model and BM25 ranked first; averaging the weights
    with the base keeps most of the gain and gets those back (README: "Weight averaging"). Both models must share
    one architecture, which they do: the fine-tuned model was trained from this base. Integer buffers (position
    ids) are copied, not averaged.
    """
    import torch

    if alpha >= 1:
        return
    base_state = base.state_dict()
    merged = {}
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            other = base_state[name]
            if other.shape != tensor.shape:
                raise ValueError(f"cannot merge: {name} is {tuple(tensor.shape)} here, {tuple(other.shape)} in base")
            merged[name] = torch.lerp(other.to(tensor.dtype), tensor, alpha) if tensor.is_floating_point() else tensor
    model.load_state_dict(merged)


def merge_lost_on_dev(unmerged: float, merged: float, tolerance: float) -> bool:
    """The merge rule: undo a WiSE-FT merge only when the unmerged model beats it on dev by more than ``tolerance``."""
    return unmerged > merged + tolerance


def merge_checked_on_dev(
    model: Any, base: Any, cfg: EmbedderTrainConfig, evaluate: Any
) -> tuple[dict[str, float], dict[str, float], str]:
    """Apply ``merge_alpha`` unless dev says the unmerged model is clearly better; returns (unmerged, after, label).

    The merge is the robust choice (WiSE-FT), so it stays when dev cannot tell the two apart (within
    ``merge_tolerance``). On ALQAC, 10 dev queries put the unmerged model at .840 and the merged one at .790
    (base .800): the merge is then undone, and the metrics keep both scores.
    """
    import copy

    unmerged = evaluate(model) if evaluate else {}
    if cfg.merge_alpha >= 1:
        return unmerged, unmerged, "fine-tuned"
    kept = copy.deepcopy(model.state_dict())
    merge_with_base(model, base, cfg.merge_alpha)
    merged = evaluate(model) if evaluate else {}
    key = "dev_cosine_ndcg@10"
    if key in unmerged and merge_lost_on_dev(unmerged[key], merged[key], cfg.merge_tolerance):
        model.load_state_dict(kept)
        return unmerged, unmerged, f"fine-tuned (the alpha {cfg.merge_alpha} merge lost on dev)"
    return unmerged, merged, f"fine-tuned, merged with base (alpha {cfg.merge_alpha})"


def dev_questions(dev: Sequence[dict[str, Any]], level: str) -> list[dict[str, Any]]:
    """The dev questions the dev evaluator can score at ``level``: those with relevance labels at that level."""
    key = "positive_doc_ids" if level == "doc" else "positive_chunk_ids"
    return [q for q in dev if q.get(key)]


def untrained_reason(cfg: StageConfig, has_dev: bool) -> str | None:
    """Why a stage ships its start model without training (the metrics' ``shipped`` suffix), or None to train.

    ``enabled: false`` (train_embedder only) is a choice: a base-model bake-off. No dev question is a guard: nothing
    could tell a fine-tune that lost to its start model (an unseen medical corpus without dev fell from MRR@10
    .842 to .783, and nothing saw it), so training needs ``ship_unchecked: true`` to go ahead.
    """
    if not getattr(cfg, "enabled", True):
        return f"{cfg.SECTION}.enabled: false"
    if not has_dev and not cfg.ship_unchecked:  # type: ignore[attr-defined]
        return "no dev questions: unchecked"
    return None


def unchecked_warning(section: str, out_dir: str, *, trained: bool, start: str) -> str:
    """The loud line for a run without dev questions: what ``out_dir`` holds, and the two ways out."""
    label = "label ~50 questions in ingest.queries (the pairs stage holds some out as dev)"
    if trained:
        return (
            f"no dev question: {out_dir} is an UNCHECKED fine-tune ({section}.ship_unchecked: true); nothing compared "
            f"it with {start}, and it may be worse. For a check, {label}"
        )
    return (
        f"no dev question, so nothing could check a trained model: {out_dir} is {start}, NOT TRAINED. For a check, "
        f"{label}; to ship an unchecked one anyway, set {section}.ship_unchecked: true"
    )


def dev_evidence(
    model: Any,
    base: Any,
    dev: Sequence[dict[str, Any]],
    chunks: Sequence[dict[str, Any]],
    query_prompt: str,
    passage_prompt: str,
    *,
    base_fingerprint: str,
    batch_size: int = 32,
    seed: int = 0,
) -> dict[str, float]:
    """The trained model's per-query dev NDCG@10 gain over its base, with a 95% paired-bootstrap interval.

    Scored as evaluate scores: every chunk retrieved, a document ranked by its best chunk. Why an interval and not
    the two means: with 10–15 dev questions one question moving a rank shifts the mean by several points, and a
    fine-tune that merely drew lucky dev questions must not replace a base model that may be better. The base
    model's vectors come from the embedding cache (``base_fingerprint``); the trained model is encoded afresh.
    """
    from ragtune.evaluation.metrics import ndcg_per_query, paired_bootstrap
    from ragtune.retrieval import DenseEncoder, DenseIndex

    ids = [c["chunk_id"] for c in chunks]
    chunk_to_doc = {c["chunk_id"]: c["doc_id"] for c in chunks}
    qids, texts = [q["query_id"] for q in dev], [q["query"] for q in dev]
    per_query = {}
    for name, m, fingerprint in (("base", base, base_fingerprint), ("trained", model, "")):
        enc = DenseEncoder(m, fingerprint, batch_size=batch_size, use_cache=bool(fingerprint))
        index = DenseIndex(ids, enc.encode([c["text"] for c in chunks], passage_prompt, f"Dev check: {name}"))
        ranking = index.search_vectors(qids, enc.encode(texts, query_prompt, f"Dev check: {name}"), 100)
        per_query[name] = {q: {"ndcg@10": v} for q, v in ndcg_per_query(ranking, dev, chunk_to_doc).items()}
    return paired_bootstrap(per_query["trained"], per_query["base"], seed=seed)


def ship_base(cfg: EmbedderTrainConfig, metrics: dict[str, Any]) -> bool:
    """Whether to write the base model instead: ``keep_base_if_worse``, and dev cannot tell the trained model from a
    worse one (the 95% interval of its NDCG@10 gain over the base reaches 0 or below; see :func:`dev_evidence`).

    "Never ship something the evidence cannot tell from worse than the base model": a point estimate is not that
    evidence. With no dev split there is nothing to compare here (the no-dev rule, ``ship_unchecked``, decides).
    """
    evidence = metrics["dev"].get("evidence")
    return cfg.keep_base_if_worse and bool(evidence) and evidence["n_queries"] > 0 and evidence["ci_low"] <= 0


# --------------------------------------------------------------------------------------------------- outputs
def model_card_sections(cfg: StageConfig, metrics: dict[str, Any]) -> tuple[str, str, str]:
    """Markdown shared by both model cards: dev before/after rows, the params table rows, the warnings list."""
    before, after = metrics["dev"]["before"], metrics["dev"]["after"]
    rows = "\n".join(
        f"| {k} | {before.get(k, float('nan')):.4f} | {after.get(k, float('nan')):.4f} |" for k in sorted(after)
    )
    params = "\n".join(f"| {k} | {v} |" for k, v in asdict(cfg).items() if k != "extra")  # type: ignore[call-overload]
    warn = "\n".join(f"- ⚠️ {w}" for w in metrics["warnings"]) or "- none"
    return rows, params, warn


def write_model_card(out_dir: str | Path, base_model: str, cfg: EmbedderTrainConfig, metrics: dict[str, Any]) -> None:
    """README.md for the model folder: what it was trained from, with which params, and what it measured."""
    rows, params, warn = model_card_sections(cfg, metrics)
    eff = metrics["effective"]
    shipped = str(metrics.get("shipped", "fine-tuned"))
    planned = "" if eff["optimizer_steps"] else " (planned, not run)"
    schedule = f"Schedule{planned}: {metrics['plan']['reason']}" if "plan" in metrics else ""
    if shipped.startswith("base"):  # the weights are the base model's: the card must not call them fine-tuned
        title = "ragtune embedder: the base model, not fine-tuned"
        why = shipped.removeprefix("base").strip(" ()") or (
            f"the {eff['optimizer_steps']}-step fine-tune scored below it on dev"
        )
        intro = f"`{base_model}` unchanged, written by the ragtune `train_embedder` stage ({why})."
    else:
        title = "ragtune fine-tuned embedder"
        intro = f"""Fine-tuned from `{base_model}` by the ragtune `train_embedder` stage (loss: {eff["loss"]},
{eff["optimizer_steps"]} optimizer steps, effective batch {eff["effective_batch_size"]}; shipped: {shipped})."""
    rows = rows or "| not measured | | |"
    text = f"""---
library_name: sentence-transformers
base_model: {base_model}
language: [vi]
tags: [sentence-transformers, feature-extraction, retrieval, ragtune]
---

# {title}

{intro}

{schedule}

```python
from sentence_transformers import SentenceTransformer
model = SentenceTransformer("{out_dir}")
q = model.encode_query(["Nhân viên được nghỉ phép bao nhiêu ngày?"])
d = model.encode_document(["Nhân viên chính thức có 12 ngày phép năm."])
print(model.similarity(q, d))
```

## Dev split (chunk level), before → after

| metric | base | fine-tuned |
|---|---:|---:|
{rows}

The held-out **test** comparison with BM25 and the base model is in the repository's `reports/evaluation.md`.

## Warnings

{warn}

## Training params

| param | value |
|---|---|
{params}
"""
    Path(out_dir, "README.md").write_text(text, encoding="utf-8")


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
        from ragtune.batching import dataset_row_keys

        batch_keys = dataset_row_keys(train_dataset)
    return SentenceTransformerTrainer(
        model=model,
        args=build_args(cfg, output_dir, prompts, has_eval=evaluator is not None, batch_keys=batch_keys),
        train_dataset=train_dataset,
        loss=build_loss(model, cfg, guide=guide, distributed=distributed),
        evaluator=evaluator,
        callbacks=trainer_callbacks(callbacks, cfg.early_stopping_patience, has_eval=evaluator is not None),
    )


def dev_metrics(scores: dict[str, float]) -> dict[str, float]:
    """The dev evaluator's ``dev_cosine_*`` scores as metrics keys (``ndcg@10``, ``mrr@10``, …), rounded."""
    return {k.replace("dev_cosine_", ""): round(float(v), 4) for k, v in scores.items() if "cosine" in k}


def run_metrics(
    trainer: Any,
    cfg: EmbedderTrainConfig,
    *,
    world: int,
    counts: dict[str, Any],
    groups: int,
    rows: int,
    dropped: int,
    seconds: float,
    samples_per_second: float,
    resumed_from: str | None,
    dev_before: dict[str, float],
    dev_after: dict[str, float],
    leaked_queries: int,
) -> dict[str, Any]:
    """metrics/train_embedder.json: the values the trainer *actually* used, read back from the trainer."""
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    final_loss = losses[-1] if losses else None
    steps = trainer.state.global_step
    key = "dev_cosine_ndcg@10"
    warnings = training_warnings(
        optimizer_steps=steps,
        final_loss=final_loss,
        batch_size=cfg.batch_size * world,
        dev_before=dev_before.get(key),
        dev_after=dev_after.get(key),
        leaked_queries=leaked_queries,
    )

    return {
        "effective": {
            "learning_rate": float(trainer.lr_scheduler.base_lrs[0]) if trainer.lr_scheduler else cfg.lr,
            "optimizer_steps": steps,
            "epochs": round(float(trainer.state.epoch or 0), 3),
            "per_device_batch_size": trainer.args.per_device_train_batch_size,
            "effective_batch_size": cfg.batch_size * cfg.gradient_accumulation_steps * world,
            "in_batch_negatives_per_query": cfg.batch_size * world - 1,
            "hard_negatives_per_query": cfg.n_hard_negatives,
            "warmup_steps": trainer.args.get_warmup_steps(steps) if steps else 0,
            "scheduler": str(getattr(trainer.args.lr_scheduler_type, "value", trainer.args.lr_scheduler_type)),
            "loss": type(trainer.loss).__name__,
            "bf16": bool(trainer.args.bf16),
            "fp16": bool(trainer.args.fp16),
            "world_size": world,
            **counts,
        },
        "train": {
            "groups": groups,
            "rows": rows,  # one per trained positive: more than groups with positives: all
            "positives": cfg.positives,
            "groups_dropped_short_of_negatives": dropped,
            "final_loss": round(final_loss, 4) if final_loss is not None else None,
            "chance_loss": round(math.log(cfg.batch_size * world), 4),
            "seconds": round(seconds, 1),
            "samples_per_second": round(samples_per_second, 2),
            "resumed_from_step": int(resumed_from.rsplit("-", 1)[-1]) if resumed_from else 0,
        },
        "dev": {"before": dev_metrics(dev_before), "after": dev_metrics(dev_after)},
        "warnings": warnings,
    }
