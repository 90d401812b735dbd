"""The train_reranker stage as one function: the fine-tuned embedder's candidates → a cross-encoder reranker.

:func:`run_train_reranker` mines training groups from the embedder's own ranking (what the reranker will be asked
to reorder), loads the start model (a new seeded head, or a reranker's own), trains with sentence-transformers'
CrossEncoderTrainer, checks dev reranking before and after, and writes the model, its card and the metrics.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict
from typing import Any

from ragtune import rerank
from ragtune.console import console, warn
from ragtune.io import read_jsonl, sha256_file, write_json, write_jsonl
from ragtune.models import model_source, resolve_model
from ragtune.paths import Paths
from ragtune.retrieval import DenseIndex, load_dense
from ragtune.train.card import write_model_card
from ragtune.train.checkpoints import (
    ResumePoint,
    clear_checkpoints,
    code_hashes,
    prepare_checkpoint_dir,
    untrained_outputs,
)
from ragtune.train.common import access_rule, apply_attention_dropout, dvclive_callbacks, step_timing
from ragtune.train.guards import unchecked_warning, untrained_reason
from ragtune.train.reranker.config import DistillSettings, RerankerTrainConfig
from ragtune.train.reranker.data import Candidates, cap_per_document, dev_samples, groups_to_dataset, mine_rerank_groups
from ragtune.train.reranker.distill import distill, distill_lists
from ragtune.train.reranker.kinds import kind_settings, run_kind
from ragtune.train.reranker.trainer import (
    build_evaluator,
    build_trainer,
    head_is_new,
    load_reranker,
    pair_summary,
)
from ragtune.train.schedule import resolve_schedule


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


def run_train_reranker(
    model_p: dict[str, Any], section: dict[str, Any], paths: Paths, *, access_p: dict[str, Any] | None = None
) -> dict[str, str]:
    """Train the reranker the ``model:`` and ``train_reranker:`` params describe; write its groups, the model, its
    card, the metrics and the curves under ``paths``; return the stage summary (``read`` / ``wrote``).

    ``access_p`` (the ``access:`` params) places ``train_reranker.max_access_level`` on the scale, when it is set.
    Every kind trains on the mined groups and the cross-encoder's warm start on the distillation lists; both pass
    :class:`ragtune.access.TrainingAccess` before they are written, so the files hold what the trainer saw: no
    question about a document above the level, no negative, random draw or teacher candidate from one. Dev samples
    and dev groups keep the whole corpus (evaluation only; see that class).
    """
    cfg = RerankerTrainConfig.from_params(section)
    if cfg.kind != "cross_encoder":  # refuse a bad sub-section before minutes of mining
        kind_settings(cfg, dict(getattr(cfg, cfg.kind)), 1.0, -1)
    embedder_dir, out = str(paths.embedder), str(paths.reranker)
    ckpt, live = str(paths.reranker_checkpoints), str(paths.live("train_reranker"))
    chunks = read_jsonl(paths.chunks)
    access = access_rule(cfg, access_p, paths.documents, chunks)  # a level off the scale stops the stage here
    chunk_text = {c["chunk_id"]: c["text"] for c in chunks}
    chunk_to_doc = {c["chunk_id"]: c["doc_id"] for c in chunks}
    train = read_jsonl(paths.train)
    all_synthetic = read_jsonl(paths.synthetic)
    synthetic = all_synthetic if cfg.use_synthetic else []
    dev = read_jsonl(paths.dev)
    warm = DistillSettings.from_params(cfg.distill)
    warm_on = cfg.kind == "cross_encoder" and warm.lists > 0

    # Candidates as the reranker will see them: the fine-tuned embedder's ranking of the whole corpus.
    embedder = load_dense(model_p, name=embedder_dir)
    index = DenseIndex(list(chunk_text), embedder.encode_passages(list(chunk_text.values())))
    depth = max(cfg.rank_max, cfg.rerank_k, warm.list_size if warm_on else 0)
    pairs, capped = cap_per_document(train + synthetic, cfg.max_pos_per_doc, cfg.seed)
    # the warm start's queries need no label, so none is capped or left out: every training and synthetic query
    qtext = {p["query_id"]: p["query"] for p in pairs + dev + ((train + all_synthetic) if warm_on else [])}
    ranking = index.search_vectors(list(qtext), embedder.encode_queries(list(qtext.values())), depth)
    candidates = Candidates(ranking, chunk_text, chunk_to_doc)
    groups, counts = mine_rerank_groups(pairs, candidates, cfg)
    dev_groups, _ = mine_rerank_groups([q for q in dev if q["positive_chunk_ids"]], candidates, cfg)
    summary_read = f"{len(pairs)} training pairs ({sum(capped.values())} capped), {len(dev)} dev queries"
    lists, list_counts = (
        distill_lists({"train": train, "synthetic": all_synthetic}, ranking, chunk_text, warm, cfg.seed)
        if warm_on
        else ([], {})
    )
    excluded: dict[str, Any] | None = None  # what max_access_level left out, for the metrics and the summary
    if access is not None:
        # a group keeps one positive; its question is about every document its pair names
        relevant: dict[str, list[str]] = {}
        for p in train + all_synthetic:
            relevant.setdefault(p["query_id"], []).extend(p["positive_doc_ids"])
        groups, excluded = access.groups(groups, min_negatives=cfg.n_hard + cfg.n_random, relevant_docs=relevant)
        if warm_on:
            lists, excluded["distill"] = access.lists(lists, relevant_docs=relevant)
        summary_read += f" ({access.summary(excluded)})"
    write_jsonl(paths.reranker_train_groups, groups)
    write_jsonl(paths.reranker_dev_groups, dev_groups)
    write_jsonl(paths.reranker_distill_lists, lists)
    # None: train. "no dev questions: unchecked": save the start model untrained (ship_unchecked: false)
    untrained = untrained_reason(cfg, has_dev=bool(dev))
    if access is not None and excluded is not None and untrained is None:
        access.require_groups(excluded)
    if untrained is None and len(groups) < cfg.batch_size:
        raise SystemExit(f"train_reranker: only {len(groups)} training groups; need ≥ batch_size={cfg.batch_size}")
    del embedder
    if cfg.kind != "cross_encoder":  # late_interaction / llm: same groups and dev, their own trainer
        return _run_other_kind(cfg, groups, dev, candidates, paths, untrained, summary_read, excluded)

    # embedder: the fine-tuned encoder; base: model.embedder (at model.revision); anything else: a reranker name or path
    base_name = {"embedder": embedder_dir, "base": model_p["embedder"]}.get(cfg.base, cfg.base)
    revision = model_p.get("revision") if cfg.base == "base" else None
    base_path = embedder_dir if cfg.base == "embedder" else resolve_model(base_name, revision=revision)
    base_source = model_source(base_name, base_path, revision=revision)  # for the metrics and the model card
    new_head = head_is_new(base_path)
    model = load_reranker(base_path, cfg.max_length, cfg.head, seed=cfg.seed)
    attention, attention_warnings = apply_attention_dropout(model, cfg.attention_dropout, cfg.SECTION)
    train_ds = groups_to_dataset(groups, cfg.loss)
    # epochs / eval_steps / save_steps: auto → numbers for these rows (the resolved config builds the trainer,
    # the resume fingerprint and the model card)
    cfg, plan = resolve_schedule(cfg, len(train_ds), int(os.environ.get("WORLD_SIZE", "1")))
    if untrained is None:
        console.print(f"schedule: {plan.reason}", soft_wrap=True)
    # negatives per positive of the groups trained on (the mined counts, less what max_access_level removed)
    pos_weight = cfg.pos_weight or (sum(len(g["neg"]) for g in groups) / max(len(groups), 1))
    samples = dev_samples(dev, candidates, cfg.rerank_k)
    evaluator = build_evaluator(samples, cfg.batch_size) if samples else None
    dev_before = evaluator(model) if evaluator else {}
    pairs_before = pair_summary(model, dev_groups, cfg.batch_size)

    fingerprint = cfg.fingerprint(
        base_source["fingerprint"],
        sha256_file(paths.reranker_train_groups),
        sha256_file(paths.reranker_distill_lists),
        sha256_file(paths.dev),
        # a code change must not resume a checkpoint made by other code: every ragtune module this stage runs
        *code_hashes(__file__),
    )
    # warns of incomplete checkpoints (a killed run's) it removed
    resume = prepare_checkpoint_dir(ckpt, fingerprint) if untrained is None else ResumePoint()
    if resume.checkpoint:
        console.print(f"[bold]Resuming[/] from {resume.checkpoint}")
    warm_metrics: dict[str, Any] = {"lists": 0, **list_counts}
    # the warm start runs before the label stage's first step; a resumed run's checkpoint already holds its result
    if lists and untrained is None and not resume.checkpoint:
        console.print(f"warm start: distilling the embedder's ranking of {len(lists)} lists", soft_wrap=True)
        warm_metrics = {**list_counts, **distill(model, lists, cfg, warm, ckpt, new_head=new_head)}
        after_warm = evaluator(model) if evaluator else {}
        warm_metrics["dev_after"] = {
            k.replace("dev_", ""): round(float(v), 4) for k, v in after_warm.items() if k.startswith("dev_")
        }
    callbacks = dvclive_callbacks(live, resume=bool(resume.checkpoint)) if untrained is None else []
    # untrained: built, never run, so the metrics hold the values this run would have used, with 0 steps
    trainer = build_trainer(
        model, cfg, train_ds, evaluator, ckpt, new_head=new_head, pos_weight=pos_weight, callbacks=callbacks
    )
    t0 = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=resume.checkpoint) if untrained is None else None
    seconds = time.perf_counter() - t0 if untrained is None else 0.0

    dev_after = evaluator(model) if evaluator else {}
    pairs_after = pair_summary(model, dev_groups, cfg.batch_size)
    dev_top = {q["query_id"]: ranking[q["query_id"]][: cfg.rerank_k] for q in dev}
    dev_scores = rerank.rerank_ranking(model, dev_top, qtext, chunk_text, cfg.rerank_k, cfg.batch_size)
    dev_reranked = rerank.apply_rerank(dev_top, dev_scores, weight=1.0)
    popular_doc, share = rerank.top1_concentration(dev_reranked, chunk_to_doc)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    steps = trainer.state.global_step
    warnings = (
        reranker_warnings(
            optimizer_steps=steps,
            dev_input_ndcg=dev_after.get("dev_base_ndcg@10"),
            dev_reranked_ndcg=dev_after.get("dev_ndcg@10"),
            popular_doc=popular_doc,
            popular_share=share,
        )
        + attention_warnings
    )
    start = f"the start model ({base_path}{' + a new head' if new_head else ''})"
    if untrained is not None:  # "only 0 steps" says nothing: what matters is why there are none
        warnings = [unchecked_warning(cfg.SECTION, out, trained=False, start=start)]
        shipped = f"untrained start model ({untrained})"
    elif not dev:
        warnings.append(unchecked_warning(cfg.SECTION, out, trained=True, start=start))
        shipped = "fine-tuned (no dev questions: unchecked)"
    else:
        shipped = "fine-tuned"
    for w in warnings:
        warn(w)

    def dev_metrics(scores: dict[str, float], pairs: dict[str, float]) -> dict[str, float]:
        out = {k.replace("dev_", ""): round(float(v), 4) for k, v in scores.items() if k.startswith("dev_")}
        return {**out, **pairs}

    metrics = {
        "effective": {
            "base": cfg.base,
            "base_path": str(base_path),
            "base_model": base_source,
            "new_head": new_head,
            "head": cfg.head if new_head else "pretrained",
            "loss": type(trainer.loss).__name__,
            "pos_weight": round(pos_weight, 4) if cfg.loss == "bce" else None,
            "learning_rate": float(trainer.args.learning_rate),
            "head_learning_rate": cfg.head_lr if new_head and cfg.head_lr > 0 else float(trainer.args.learning_rate),
            "optimizer_steps": steps,
            "epochs": round(float(trainer.state.epoch or 0), 3),
            "per_device_batch_size": trainer.args.per_device_train_batch_size,
            "effective_batch_size": cfg.batch_size * cfg.gradient_accumulation_steps,
            "bf16": bool(trainer.args.bf16),
            "fp16": bool(trainer.args.fp16),
            **attention,
        },
        "train": {
            **counts,
            "pairs_in": len(train) + len(synthetic),
            "pairs_capped_per_doc": sum(capped.values()),
            "rows": len(train_ds),
            "final_loss": round(losses[-1], 4) if losses else None,
            "first_loss": round(losses[0], 4) if losses else None,
            "seconds": round(seconds, 1),
            "samples_per_second": round(result.metrics.get("train_samples_per_second", 0.0), 2) if result else 0.0,
            "timing": step_timing(trainer) if result else {"steps": 0},  # steps, dev checks, saves: `ragtune plan`
            "resumed_from_step": resume.step,
            "incomplete_checkpoints": resume.incomplete,  # left half-written by a killed run: removed, not resumed
            **({"access_excluded": excluded} if excluded is not None else {}),
        },
        "dev": {
            "n_queries": len(samples),
            "before": dev_metrics(dev_before, pairs_before),
            "after": dev_metrics(dev_after, pairs_after),
            "top1_most_common_doc": popular_doc,
            "top1_most_common_share": round(share, 4),
        },
        "distill": warm_metrics,
        "plan": asdict(plan),
        "shipped": shipped,
        "warnings": warnings,
    }
    model.save_pretrained(out)
    write_model_card(out, "reranker", str(base_path), cfg, metrics)
    write_json(paths.metrics("train_reranker"), metrics)
    if untrained is None:
        clear_checkpoints(ckpt)
    else:
        untrained_outputs(live, ckpt)
    return {
        "read": summary_read,
        "wrote": (
            f"{out} ({shipped}, {steps} steps, "
            f"dev ndcg@10 input {dev_after.get('dev_base_ndcg@10', float('nan')):.3f} → "
            f"reranked {dev_after.get('dev_ndcg@10', float('nan')):.3f}), "
            f"{paths.reranker_train_groups.parent}/*.jsonl, {paths.metrics('train_reranker')}"
        ),
    }


def _run_other_kind(
    cfg: RerankerTrainConfig,
    groups: list[dict[str, Any]],
    dev: list[dict[str, Any]],
    candidates: Candidates,
    paths: Paths,
    untrained: str | None,
    summary_read: str,
    excluded: dict[str, Any] | None = None,
) -> dict[str, str]:
    """The stage for ``kind: late_interaction`` / ``llm``: train on the mined groups, score dev reranking before and
    after with the same candidates, write the metrics (same top-level keys as the cross-encoder's). ``excluded``:
    what ``max_access_level`` left out of ``groups``, for ``train.access_excluded``."""
    live, ckpt = str(paths.live("train_reranker")), str(paths.reranker_checkpoints)
    callbacks = dvclive_callbacks(live, resume=False) if untrained is None else []
    metrics = run_kind(cfg, groups, dev_samples(dev, candidates, cfg.rerank_k), paths, untrained, callbacks)
    if excluded is not None:
        metrics.setdefault("train", {})["access_excluded"] = excluded
    start = f"the untrained {cfg.kind} start"
    if untrained is not None:
        metrics["warnings"] = [unchecked_warning(cfg.SECTION, str(paths.reranker), trained=False, start=start)]
        shipped = f"untrained start model ({untrained})"
    elif not dev:
        metrics["warnings"].append(unchecked_warning(cfg.SECTION, str(paths.reranker), trained=True, start=start))
        shipped = "fine-tuned (no dev questions: unchecked)"
    elif metrics.get("kept") == "start":
        shipped = "untrained start (training made dev worse)"
    else:
        shipped = "fine-tuned"
    metrics["shipped"] = shipped
    for w in metrics["warnings"]:
        warn(w)
    write_json(paths.metrics("train_reranker"), metrics)
    if untrained is None:
        clear_checkpoints(ckpt)
    else:
        untrained_outputs(live, ckpt)
    after = metrics.get("dev", {}).get("after", {}).get("ndcg@10")
    return {
        "read": summary_read,
        "wrote": f"{paths.reranker} ({cfg.kind}, {shipped}, {metrics['effective']['optimizer_steps']} steps"
        + (f", dev ndcg@10 reranked {after:.3f}" if after is not None else "")
        + f"), {paths.metrics('train_reranker')}",
    }
