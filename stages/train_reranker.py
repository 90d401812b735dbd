"""train_reranker: the fine-tuned embedder's candidates → a cross-encoder reranker (resumable, measured on dev)."""

import os
import time
from dataclasses import asdict
from pathlib import Path

from ragtune import rerank, reranking, training
from ragtune.console import console, stage, warn
from ragtune.deps import stage_modules
from ragtune.io import read_jsonl, sha256_file, write_json, write_jsonl
from ragtune.models import model_fingerprint, resolve_model
from ragtune.params import load_params, section
from ragtune.reranking import RerankerTrainConfig
from ragtune.retrieval import DenseIndex, load_dense
from ragtune.training import clear_checkpoints, prepare_checkpoint_dir

EMBEDDER = "models/embedder"
OUT_DIR = "models/reranker"
CKPT_DIR = "models/reranker_checkpoints"
LIVE_DIR = "dvclive/train_reranker"


def main() -> None:
    params = load_params()
    model_p = section(params, "model")
    cfg = RerankerTrainConfig.from_params(section(params, "train_reranker"))
    with stage("train_reranker") as summary:
        chunks = read_jsonl("data/chunks/chunks.jsonl")
        chunk_text = {c["chunk_id"]: c["text"] for c in chunks}
        chunk_to_doc = {c["chunk_id"]: c["doc_id"] for c in chunks}
        train = read_jsonl("data/pairs/train.jsonl")
        synthetic = read_jsonl("data/pairs/synthetic.jsonl") if cfg.use_synthetic else []
        dev = read_jsonl("data/pairs/dev.jsonl")

        # Candidates as the reranker will see them: the fine-tuned embedder's ranking of the whole corpus.
        embedder = load_dense(model_p, name=EMBEDDER)
        index = DenseIndex(list(chunk_text), embedder.encode_passages(list(chunk_text.values())))
        depth = max(cfg.rank_max, cfg.rerank_k)
        pairs, capped = reranking.cap_per_document(train + synthetic, cfg.max_pos_per_doc, cfg.seed)
        qtext = {p["query_id"]: p["query"] for p in pairs + dev}
        ranking = index.search_vectors(list(qtext), embedder.encode_queries(list(qtext.values())), depth)
        groups, counts = reranking.mine_rerank_groups(pairs, ranking, chunk_text, chunk_to_doc, cfg)
        dev_groups, _ = reranking.mine_rerank_groups(
            [q for q in dev if q["positive_chunk_ids"]], ranking, chunk_text, chunk_to_doc, cfg
        )
        Path("data/reranker").mkdir(parents=True, exist_ok=True)
        write_jsonl("data/reranker/train_groups.jsonl", groups)
        write_jsonl("data/reranker/dev_groups.jsonl", dev_groups)
        # None: train. "no dev questions: unchecked": save the start model untrained (ship_unchecked: false)
        untrained = training.untrained_reason(cfg, has_dev=bool(dev))
        if untrained is None and len(groups) < cfg.batch_size:
            raise SystemExit(f"train_reranker: only {len(groups)} training groups; need ≥ batch_size={cfg.batch_size}")
        del embedder

        # embedder: the fine-tuned encoder; base: model.embedder; anything else: a reranker name or path
        base_path = (
            EMBEDDER
            if cfg.base == "embedder"
            else resolve_model(model_p["embedder"] if cfg.base == "base" else cfg.base)
        )
        new_head = reranking.head_is_new(base_path)
        model = reranking.load_reranker(base_path, cfg.max_length, cfg.head, seed=cfg.seed)
        attention, attention_warnings = training.apply_attention_dropout(model, cfg.attention_dropout, cfg.SECTION)
        train_ds = reranking.groups_to_dataset(groups, cfg.loss)
        # epochs / eval_steps / save_steps: auto → numbers for these rows (the resolved config builds the trainer,
        # the resume fingerprint and the model card)
        cfg, plan = training.resolve_schedule(cfg, len(train_ds), int(os.environ.get("WORLD_SIZE", "1")))
        if untrained is None:
            console.print(f"schedule: {plan.reason}", soft_wrap=True)
        pos_weight = cfg.pos_weight or (counts.get("negatives", 0) / max(counts.get("groups", 1), 1))
        samples = reranking.dev_samples(dev, ranking, chunk_text, chunk_to_doc, cfg.rerank_k)
        evaluator = reranking.build_evaluator(samples, cfg.batch_size) if samples else None
        dev_before = evaluator(model) if evaluator else {}
        pairs_before = reranking.pair_summary(model, dev_groups, cfg.batch_size)

        fingerprint = cfg.fingerprint(
            model_fingerprint(base_path),
            sha256_file("data/reranker/train_groups.jsonl"),
            sha256_file("data/pairs/dev.jsonl"),
            sha256_file(__file__),
            # a code change must not resume a checkpoint made by other code: every ragtune module this stage runs
            *(sha256_file(path) for path in stage_modules(__file__)),
        )
        resume = prepare_checkpoint_dir(CKPT_DIR, fingerprint) if untrained is None else None
        if resume:
            console.print(f"[bold]Resuming[/] from {resume}")
        callbacks = training.dvclive_callbacks(LIVE_DIR, resume=bool(resume)) if untrained is None else []
        # untrained: built, never run, so the metrics hold the values this run would have used, with 0 steps
        trainer = reranking.build_trainer(
            model, cfg, train_ds, evaluator, CKPT_DIR, new_head=new_head, pos_weight=pos_weight, callbacks=callbacks
        )
        t0 = time.perf_counter()
        result = trainer.train(resume_from_checkpoint=resume) if untrained is None else None
        seconds = time.perf_counter() - t0 if untrained is None else 0.0

        dev_after = evaluator(model) if evaluator else {}
        pairs_after = reranking.pair_summary(model, dev_groups, cfg.batch_size)
        dev_top = {q["query_id"]: ranking[q["query_id"]][: cfg.rerank_k] for q in dev}
        dev_scores = rerank.rerank_ranking(model, dev_top, qtext, chunk_text, cfg.rerank_k, cfg.batch_size)
        dev_reranked = rerank.apply_rerank(dev_top, dev_scores, weight=1.0)
        popular_doc, share = rerank.top1_concentration(dev_reranked, chunk_to_doc)
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        steps = trainer.state.global_step
        warnings = (
            reranking.reranker_warnings(
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
            warnings = [training.unchecked_warning(cfg.SECTION, OUT_DIR, trained=False, start=start)]
            shipped = f"untrained start model ({untrained})"
        elif not dev:
            warnings.append(training.unchecked_warning(cfg.SECTION, OUT_DIR, trained=True, start=start))
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
                "new_head": new_head,
                "head": cfg.head if new_head else "pretrained",
                "loss": type(trainer.loss).__name__,
                "pos_weight": round(pos_weight, 4) if cfg.loss == "bce" else None,
                "learning_rate": float(trainer.args.learning_rate),
                "head_learning_rate": cfg.head_lr
                if new_head and cfg.head_lr > 0
                else float(trainer.args.learning_rate),
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
                "resumed_from_step": int(resume.rsplit("-", 1)[-1]) if resume else 0,
            },
            "dev": {
                "n_queries": len(samples),
                "before": dev_metrics(dev_before, pairs_before),
                "after": dev_metrics(dev_after, pairs_after),
                "top1_most_common_doc": popular_doc,
                "top1_most_common_share": round(share, 4),
            },
            "plan": asdict(plan),
            "shipped": shipped,
            "warnings": warnings,
        }
        model.save_pretrained(OUT_DIR)
        reranking.write_model_card(OUT_DIR, str(base_path), cfg, metrics)
        write_json("metrics/train_reranker.json", metrics)
        if untrained is None:
            clear_checkpoints(CKPT_DIR)
        else:
            training.untrained_outputs(LIVE_DIR, CKPT_DIR)
        summary["read"] = f"{len(pairs)} training pairs ({sum(capped.values())} capped), {len(dev)} dev queries"
        summary["wrote"] = (
            f"{OUT_DIR} ({shipped}, {steps} steps, "
            f"dev ndcg@10 input {dev_after.get('dev_base_ndcg@10', float('nan')):.3f} → "
            f"reranked {dev_after.get('dev_ndcg@10', float('nan')):.3f}), data/reranker/*.jsonl, "
            "metrics/train_reranker.json"
        )


if __name__ == "__main__":
    main()
