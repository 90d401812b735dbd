"""The train_embedder stage as one function: training groups → a fine-tuned (or, on dev evidence, the base) embedder.

:func:`run_train_embedder` is the canonical sentence-transformers recipe, top to bottom: model, data, loss,
arguments, evaluator, trainer, train, evaluate, save. Around it sit ragtune's guards: the schedule sized to the
data, resuming only a checkpoint of the same params, data and code, a dev check before and after, WiSE-FT merging
checked on dev, and the base model shipped when dev cannot tell the fine-tune from a worse model.

Runs as a single process or under DDP (``torchrun``): ranks other than 0 train and return, rank 0 writes.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import asdict
from typing import Any

import torch

from ragtune.console import console, warn
from ragtune.io import dumps, read_jsonl, sha256_file, write_json
from ragtune.models import load_embedder, model_fingerprint, model_source, resolve_model
from ragtune.pairs import query_key
from ragtune.paths import Paths
from ragtune.retrieval import model_prompt, share_cached_vectors
from ragtune.train import batching
from ragtune.train.card import write_model_card
from ragtune.train.checkpoints import (
    ResumePoint,
    clear_checkpoints,
    code_hashes,
    prepare_checkpoint_dir,
    untrained_outputs,
)
from ragtune.train.common import access_rule, apply_attention_dropout, dvclive_callbacks, step_timing
from ragtune.train.embedder.config import EmbedderTrainConfig
from ragtune.train.embedder.dev import (
    DevPool,
    build_dev_pool,
    build_ir_evaluator,
    dev_evidence,
    dev_metrics,
    dev_questions,
)
from ragtune.train.embedder.merge import merge_checked_on_dev, ship_base
from ragtune.train.embedder.trainer import build_trainer, column_prompts, freeze, groups_to_dataset
from ragtune.train.guards import unchecked_warning, untrained_reason
from ragtune.train.rows import training_rows
from ragtune.train.schedule import SchedulePlan, resolve_schedule


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


def run_metrics(
    trainer: Any,
    cfg: EmbedderTrainConfig,
    *,
    world: int,
    counts: dict[str, Any],
    dev_before: dict[str, float],
    dev_after: dict[str, float],
    leaked_queries: int,
) -> dict[str, Any]:
    """metrics/train_embedder.json: the values the trainer *actually* used, read back from the trainer (the caller
    adds what only it knows: the rows, the time, the checkpoint resumed)."""
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
            "positives": cfg.positives,
            "final_loss": round(final_loss, 4) if final_loss is not None else None,
            "chance_loss": round(math.log(cfg.batch_size * world), 4),
        },
        "dev": {"before": dev_metrics(dev_before), "after": dev_metrics(dev_after)},
        "warnings": warnings,
    }


def share_base_vectors(out: str, base_path: str, model_p: dict[str, Any], probe: list[str]) -> bool:
    """Once the base model is saved as ``out``: let ``out`` read the base's cached corpus vectors, which pairs and
    negatives already paid for, so index does not encode the corpus again (:func:`share_cached_vectors` checks that
    both folders compute the same vectors on ``probe``, a few chunk texts, first)."""
    return share_cached_vectors(
        out, base_path, probe, max_seq_length=model_p.get("max_seq_length"), batch_size=int(model_p["batch_size"])
    )


def ship_untrained(
    model_p: dict,
    cfg: EmbedderTrainConfig,
    plan: SchedulePlan,
    base_path: str,
    metrics: dict,
    why: str,
    paths: Paths,
    probe: list[str],
) -> None:
    """Write the base model to ``paths.embedder`` unchanged, with every file a training run writes (metrics, card,
    folders). ``probe``: chunk texts for :func:`share_base_vectors`.

    Why: index, train_reranker, evaluate and ``dvc metrics`` read these outputs whether or not training ran.
    ``enabled: false`` is a choice (a base-model bake-off) and says so once; no dev question is a warning.
    """
    out = str(paths.embedder)
    metrics["plan"] = asdict(plan)
    metrics["shipped"] = f"base ({why})"
    # "only 0 optimizer steps" and the like say nothing here: what matters is why there are none
    unchecked = unchecked_warning(cfg.SECTION, out, trained=False, start="the BASE model")
    metrics["warnings"] = [unchecked] if cfg.enabled else []
    for w in metrics["warnings"]:
        warn(w)
    if not cfg.enabled:
        console.print(f"{out}: the base model {model_p['embedder']}, not trained (train_embedder.enabled: false)")
    model = load_embedder(base_path)  # fresh: the training copy's attention modules were changed in place
    model.max_seq_length = cfg.max_seq_length
    model.save(out, safe_serialization=True)
    metrics["reads_base_vectors"] = share_base_vectors(out, base_path, model_p, probe)
    untrained_outputs(paths.live("train_embedder"), paths.embedder_checkpoints)
    write_model_card(out, "embedder", model_p["embedder"], cfg, metrics)
    write_json(paths.metrics("train_embedder"), metrics)


EMPTY = {"read": "", "wrote": ""}  # what ranks other than 0 report under DDP: rank 0 reads and writes


def run_train_embedder(
    model_p: dict[str, Any],
    section: dict[str, Any],
    paths: Paths,
    *,
    bm25_p: dict[str, Any],
    access_p: dict[str, Any] | None = None,
) -> dict[str, str]:
    """Train the embedder the ``model:`` and ``train_embedder:`` params describe; write the model, its card, the
    metrics and the curves under ``paths``; return the stage summary (``read`` / ``wrote``). ``bm25_p`` (the
    ``bm25:`` params) builds the BM25 side of the dev candidate pool (``train_embedder.dev_pool_k``); ``access_p``
    (the ``access:`` params) places ``train_embedder.max_access_level`` on the scale, when it is set: the groups
    about documents above it, and their negatives, never reach the trainer (:class:`ragtune.access.TrainingAccess`;
    dev keeps the whole corpus, as its docstring says why).

    Under DDP every rank trains; only rank 0 evaluates, decides what ships and writes (the others return an empty
    summary). Without training (``enabled: false``, or no dev question) the trainer is built but never run, so the
    metrics hold the values a run would have used, with 0 optimizer steps.
    """
    cfg = EmbedderTrainConfig.from_params(section)
    out, ckpt, live = str(paths.embedder), str(paths.embedder_checkpoints), str(paths.live("train_embedder"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank0 = int(os.environ.get("RANK", "0")) == 0
    chunks = read_jsonl(paths.chunks)
    probe = [c["text"] for c in chunks[:8]]  # what share_base_vectors compares, when the base model ships
    access = access_rule(cfg, access_p, paths.documents, chunks)  # a level off the scale stops the stage here
    groups = read_jsonl(paths.train_groups)
    dev = read_jsonl(paths.dev)
    checkable = dev_questions(dev, cfg.dev_level)
    # None: train. Otherwise the base model ships untrained, and this says why (enabled: false, or no dev)
    untrained = untrained_reason(cfg, has_dev=bool(checkable))
    excluded: dict[str, Any] | None = None  # what max_access_level left out, for the metrics and the summary
    if access is not None:
        # the one place rows come from: everything below (dataset, sampler keys, counts) reads the kept groups
        groups, excluded = access.groups(groups, min_negatives=cfg.n_hard_negatives)
        if untrained is None:
            access.require_groups(excluded)
    heldout = {query_key(q["query"]) for q in dev + read_jsonl(paths.test)}
    leaked = sum(1 for g in groups if query_key(g["query"]) in heldout)

    # 1. the model, its prompts, what is frozen
    base_path = resolve_model(model_p["embedder"], revision=model_p.get("revision"))
    # the Hub commit (or the folder's fingerprint) of what was loaded, for the metrics and the model card
    base_source = model_source(model_p["embedder"], base_path, revision=model_p.get("revision"))
    model = load_embedder(base_path)
    model.max_seq_length = cfg.max_seq_length
    qp = model_prompt(model, "query", model_p.get("query_prompt"))
    pp = model_prompt(model, "passage", model_p.get("passage_prompt"))
    counts = freeze(model, cfg)
    attention, attention_warnings = apply_attention_dropout(model, cfg.attention_dropout, cfg.SECTION)
    counts |= attention
    # 2. the data, and the schedule sized to it
    train_ds, dropped = groups_to_dataset(groups, cfg.n_hard_negatives, cfg.positives)
    if untrained is None and len(train_ds) < cfg.batch_size:
        raise SystemExit(
            f"train_embedder: only {len(train_ds)} training rows from {len(groups) - dropped} usable groups "
            f"({dropped} had fewer than n_hard_negatives={cfg.n_hard_negatives} negatives"
            + (f"; {access.summary(excluded)}" if access is not None and excluded is not None else "")
            + f"); need at least batch_size={cfg.batch_size}."
        )
    # epochs / eval_steps / save_steps: auto → numbers for these rows; the resolved config builds the trainer,
    # the resume fingerprint and the model card
    cfg, plan = resolve_schedule(cfg, len(train_ds), world)
    if rank0 and untrained is None:
        console.print(f"schedule: {plan.reason}", soft_wrap=True)
    # the rows' relevant documents, so that no batch shows a query a chunk of its own document as a negative
    batch_keys = batching.group_row_keys(
        groups, cfg.n_hard_negatives, {c["chunk_id"]: c["doc_id"] for c in chunks}, cfg.positives
    )
    # 3. the dev evaluator, and the trainer (resuming only a checkpoint of the same params, data and code).
    # Its candidate pool is built once, by the base model (`model` is untrained until trainer.train(); attention
    # dropout and frozen layers change nothing at inference): the passage vectors go to the embedding cache, where
    # the final dev check finds them. Only rank 0 runs the evaluator (ST hands the other ranks a share of its
    # encoding), so only rank 0 builds the pool; the others' evaluator is never called.
    pool = (
        build_dev_pool(
            checkable,
            chunks,
            level=cfg.dev_level,
            k=cfg.dev_pool_k,
            base=model,
            base_fingerprint=base_source["fingerprint"],
            query_prompt=qp,
            passage_prompt=pp,
            bm25_params=bm25_p,
            batch_size=int(model_p["batch_size"]),
            max_seq_length=model_p.get("max_seq_length"),  # as pairs and negatives cached the base model's vectors
        )
        if checkable and cfg.dev_pool_k > 0 and untrained is None and rank0
        else None
    )
    if pool is not None:
        m = pool.metrics()
        console.print(
            f"dev pool: {m['chunks']} of {m['corpus_chunks']} chunks ({100 * m['fraction']:.1f}%; dev_pool_k "
            f"{cfg.dev_pool_k}, ≥ {m['docs_per_query_min']} documents per question), built in {m['seconds']} s"
        )
    evaluator = (
        build_ir_evaluator(
            checkable,
            chunks,
            qp,
            pp,
            batch_size=cfg.batch_size,
            level=cfg.dev_level,
            pool=pool.chunk_ids if pool is not None else None,
        )
        if checkable
        else None
    )
    if untrained is not None and not rank0:
        return EMPTY
    trains = untrained is None
    # the base model's pool vectors, not a re-encode: the pool was ranked with them (DevPool.base_corpus_embeddings)
    base_vectors = {"corpus_embeddings": pool.base_corpus_embeddings(model.device)} if pool is not None else {}
    dev_before = evaluator(model, **base_vectors) if evaluator and rank0 and trains else {}
    resume, callbacks = ResumePoint(), []
    if trains:
        fingerprint = cfg.fingerprint(
            base_source["fingerprint"],
            sha256_file(paths.train_groups),
            sha256_file(paths.dev),
            # a code change must not resume a checkpoint made by other code: every ragtune module this stage runs
            *code_hashes(__file__),
            f"world={world}",
            # the dev pool's BM25 side: another pool scores checkpoints differently, so a resumed best would be stale
            *([f"bm25={json.dumps(bm25_p, sort_keys=True)}"] if cfg.dev_pool_k else []),
            # the groups left after max_access_level: a document relabeled changes them, not train_groups.jsonl
            *([f"access={_digest(groups)}"] if excluded is not None else []),
        )
        resume = prepare_checkpoint_dir(ckpt, fingerprint, owner=rank0)  # warns of incomplete ones it removed
        if resume.checkpoint:
            console.print(f"[bold]Resuming[/] from {resume.checkpoint}")
        callbacks = dvclive_callbacks(live, resume=bool(resume.checkpoint), before=dev_before) if rank0 else []
    trainer = build_trainer(
        model,
        cfg,
        train_ds,
        evaluator,
        ckpt,
        column_prompts(cfg.n_hard_negatives, qp, pp),
        guide=load_embedder(base_path) if cfg.loss == "gist" else None,
        distributed=trains and world > 1,
        callbacks=callbacks,
        batch_keys=batch_keys,
    )
    # 4. train
    seconds, samples_per_second, dev_after, dev_unmerged, shipped = 0.0, 0.0, {}, {}, ""
    if trains:
        first_epoch = first_epoch_report(trainer, train_ds, batch_keys, cfg, world)
        t0 = time.perf_counter()
        result = trainer.train(resume_from_checkpoint=resume.checkpoint)
        seconds = time.perf_counter() - t0
        samples_per_second = result.metrics.get("train_samples_per_second", 0.0)
        if not rank0:
            return EMPTY
        base = load_embedder(base_path) if cfg.merge_alpha < 1 else None
        dev_unmerged, dev_after, shipped = merge_checked_on_dev(model, base, cfg, evaluator)
    metrics = run_metrics(
        trainer, cfg, world=world, counts=counts, dev_before=dev_before, dev_after=dev_after, leaked_queries=leaked
    )
    metrics["effective"]["base_model"] = base_source
    if trains and evaluator is not None:
        metrics["dev"]["pool"] = pool_metrics(pool, len(chunks))
    metrics["train"] |= {
        "groups": len(groups) - dropped,
        "rows": len(train_ds),  # one per trained positive: more than groups with positives: all
        "groups_dropped_short_of_negatives": dropped,
        "seconds": round(seconds, 1),
        "samples_per_second": round(samples_per_second, 2),
        "timing": step_timing(trainer) if trains else {"steps": 0},  # steps, dev checks, saves: `ragtune plan`
        "resumed_from_step": resume.step,
        "incomplete_checkpoints": resume.incomplete,  # left half-written by a killed run: removed, not resumed
    }
    if excluded is not None:
        metrics["train"]["access_excluded"] = excluded
    # labeled positives left out of training (positives: first) are counted, never dropped silently
    every_positive, _ = training_rows(groups, cfg.n_hard_negatives, "all")
    metrics["train"]["positives_not_trained"] = len(every_positive) - (len(train_ds) if trains else 0)
    read = f"{len(groups)} training groups ({len(train_ds)} rows), {len(dev)} dev queries"
    if access is not None and excluded is not None:
        read += f" ({access.summary(excluded)})"
    if not trains:
        ship_untrained(model_p, cfg, plan, base_path, metrics, untrained or "", paths, probe)
        return {"read": read, "wrote": f"{out} ({metrics['shipped']}: not trained), {paths.metrics('train_embedder')}"}

    # 5. what ships: the fine-tune (merged with the base when dev allows), or the base model without dev evidence
    # ship_unchecked: true with no dev question: trained, and every report says nothing checked it
    unchecked = [] if checkable else [unchecked_warning(cfg.SECTION, out, trained=True, start="the base model")]
    metrics["warnings"] += attention_warnings + unchecked
    metrics["plan"] = asdict(plan)
    metrics["train"]["first_epoch_batches"] = first_epoch
    fn_rows = first_epoch["rows_with_in_batch_false_negatives"]
    if fn_rows > 0.1 * len(train_ds):
        metrics["warnings"].append(
            f"{fn_rows} of {len(train_ds)} training rows see a chunk of their own relevant document as an "
            f"in-batch negative in epoch 1 (batch_sampler: {cfg.batch_sampler}; document_disjoint avoids it "
            "unless one document has more questions than there are batches)"
        )
    if cfg.merge_alpha < 1:
        metrics["dev"]["unmerged"] = dev_metrics(dev_unmerged)
    metrics["shipped"] = shipped if checkable else f"{shipped} (no dev questions: unchecked)"
    if dev:
        base = base or load_embedder(base_path)  # the merge only read `base`: it is the base model unchanged
        base.max_seq_length = cfg.max_seq_length
        # saved first, so that its corpus vectors are cached under the fingerprint the later stages load it by
        model.save(out, safe_serialization=True)
        metrics["dev"]["evidence"] = dev_evidence(
            model,
            base,
            dev,
            chunks,
            qp,
            pp,
            base_fingerprint=base_source["fingerprint"],
            trained_fingerprint=model_fingerprint(out),
            max_seq_length=model_p.get("max_seq_length"),
            batch_size=int(model_p["batch_size"]),  # the later stages' blocks, so the cached vectors are theirs
            seed=cfg.seed,
        )
    if ship_base(cfg, metrics):
        # Never ship what dev cannot tell from a regression: the base model goes out, and every report says so.
        model = base
        metrics["shipped"] = "base"
        ev = metrics["dev"]["evidence"]
        metrics["warnings"].append(
            f"{out} is the BASE model, unchanged: on {ev['n_queries']} dev questions the trained model's "
            f"NDCG@10 gain is {100 * ev['gain']:+.1f} pts with a 95% interval of [{100 * ev['ci_low']:+.1f}, "
            f"{100 * ev['ci_high']:+.1f}], which does not rule out a loss. Label more dev questions "
            "(pairs.dev_ratio, or a dev file) for a fine-tune to earn its place; "
            "train_embedder.keep_base_if_worse: false ships it anyway"
        )
    for w in metrics["warnings"]:
        warn(w)
    if not dev or metrics["shipped"] == "base":  # else the trained model was saved above, before its dev evidence
        shutil.rmtree(out, ignore_errors=True)  # no file of the trained model's save stays beside the base's
        model.save(out, safe_serialization=True)
    if metrics["shipped"] == "base":
        metrics["reads_base_vectors"] = share_base_vectors(out, base_path, model_p, probe)
    clear_checkpoints(ckpt)
    write_model_card(out, "embedder", model_p["embedder"], cfg, metrics)
    write_json(paths.metrics("train_embedder"), metrics)
    before, after = metrics["dev"]["before"].get("ndcg@10"), metrics["dev"]["after"].get("ndcg@10")
    return {
        "read": read,
        "wrote": (
            f"{out} ({metrics['shipped']}; {metrics['effective']['optimizer_steps']} steps, "
            f"dev ndcg@10 {before} → {after}, {len(metrics['warnings'])} warnings)"
        ),
    }


def _digest(groups: list[dict[str, Any]]) -> str:
    """sha256 of the groups as the trainer reads them, for the resume fingerprint."""
    return hashlib.sha256("\n".join(dumps(g) for g in groups).encode()).hexdigest()


def pool_metrics(pool: DevPool | None, corpus_chunks: int) -> dict[str, Any]:
    """What the dev evaluator scored against: the pool's size, share of the corpus and build time, or the whole
    corpus (``dev_pool_k: 0``). ``dev.before`` / ``after`` / ``unmerged`` are pooled scores; ``dev.evidence`` is not."""
    if pool is None:
        return {"k": 0, "chunks": corpus_chunks, "corpus_chunks": corpus_chunks, "fraction": 1.0, "seconds": 0.0}
    return pool.metrics()


def first_epoch_report(trainer: Any, train_ds: Any, batch_keys: Any, cfg: EmbedderTrainConfig, world: int) -> dict:
    """The first epoch's batches as the trainer will draw them, printed and kept in the metrics: how many rows see a
    chunk of their own relevant document as an in-batch negative (a false negative for MNRL)."""
    # own generator: the global RNG stays untouched
    sampler = trainer.get_batch_sampler(
        train_ds,
        cfg.batch_size,
        drop_last=trainer.args.dataloader_drop_last,
        generator=torch.Generator(),
        seed=cfg.seed,
    )
    # under DDP one step gathers `world` consecutive batches into MNRL's negatives: report them as one
    report = batching.batch_report(list(sampler), batch_keys, group_size=world)
    first_epoch = {"batch_sampler": cfg.batch_sampler, **report}
    console.print(
        f"epoch 1: {first_epoch['batches']} batches ({cfg.batch_sampler}); "
        f"{first_epoch['rows_with_in_batch_false_negatives']} of {len(train_ds)} rows "
        "see a chunk of their own relevant document as an in-batch negative"
    )
    return first_epoch
