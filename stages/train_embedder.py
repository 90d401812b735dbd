"""train_embedder: training groups → a fine-tuned sentence-transformers embedder (resumable, measured on dev)."""

import math
import os
import time

from ragtune.console import console, stage, warn
from ragtune.jsonl import read_jsonl, write_json
from ragtune.models import load_embedder, model_fingerprint, resolve_model
from ragtune.pairs import query_key
from ragtune.params import load_params, section
from ragtune.retrieval import model_prompt
from ragtune.training import (
    EmbedderTrainConfig,
    build_ir_evaluator,
    build_trainer,
    column_prompts,
    freeze,
    groups_to_dataset,
    prepare_checkpoint_dir,
    training_warnings,
)

OUT_DIR = "models/embedder"
CKPT_DIR = "models/embedder_checkpoints"
LIVE_DIR = "dvclive/train_embedder"


def file_digest(path: str) -> str:
    import hashlib

    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def main() -> None:
    import torch
    from dvclive import Live
    from transformers.integrations import DVCLiveCallback

    params = load_params()
    model_p = section(params, "model")
    cfg = EmbedderTrainConfig.from_params(section(params, "train_embedder"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank0 = int(os.environ.get("RANK", "0")) == 0
    with stage("train_embedder") as summary:
        groups = read_jsonl("data/negatives/train_groups.jsonl")
        dev = read_jsonl("data/pairs/dev.jsonl")
        test = read_jsonl("data/pairs/test.jsonl")
        chunks = read_jsonl("data/chunks/chunks.jsonl")
        heldout = {query_key(q["query"]) for q in dev + test}
        leaked = sum(1 for g in groups if query_key(g["query"]) in heldout)

        base_path = resolve_model(model_p["embedder"])
        model = load_embedder(base_path)
        model.max_seq_length = cfg.max_seq_length
        qp = model_prompt(model, "query", model_p.get("query_prompt"))
        pp = model_prompt(model, "passage", model_p.get("passage_prompt"))
        counts = freeze(model, cfg)
        train_ds, dropped = groups_to_dataset(groups, cfg.n_hard_negatives)
        if len(train_ds) < cfg.batch_size:
            raise SystemExit(
                f"train_embedder: only {len(train_ds)} usable training groups ({dropped} had fewer than "
                f"n_hard_negatives={cfg.n_hard_negatives} negatives); need at least batch_size={cfg.batch_size}."
            )
        evaluator = build_ir_evaluator(dev, chunks, qp, pp, batch_size=cfg.batch_size) if dev else None
        dev_before = evaluator(model) if evaluator else {}
        guide = load_embedder(base_path) if cfg.loss == "gist" else None

        fingerprint = cfg.fingerprint(
            model_fingerprint(base_path),
            file_digest("data/negatives/train_groups.jsonl"),
            file_digest("data/pairs/dev.jsonl"),
            str(world),
        )
        resume = prepare_checkpoint_dir(CKPT_DIR, fingerprint) if rank0 else None
        if world > 1:
            torch.distributed.barrier() if torch.distributed.is_initialized() else None
            resume = prepare_checkpoint_dir(CKPT_DIR, fingerprint)
        if resume:
            console.print(f"[bold]Resuming[/] from {resume}")
        callbacks = []
        if rank0:
            live = Live(LIVE_DIR, resume=bool(resume), dvcyaml=None, save_dvc_exp=False, report=None)
            callbacks.append(DVCLiveCallback(live=live))
        trainer = build_trainer(
            model,
            cfg,
            train_ds,
            evaluator,
            CKPT_DIR,
            column_prompts(cfg.n_hard_negatives, qp, pp),
            guide=guide,
            distributed=world > 1,
            callbacks=callbacks,
        )
        loss = trainer.loss
        t0 = time.perf_counter()
        result = trainer.train(resume_from_checkpoint=resume)
        train_s = time.perf_counter() - t0
        if not rank0:
            return
        dev_after = evaluator(model) if evaluator else {}

        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        final_loss = losses[-1] if losses else None
        steps = trainer.state.global_step
        nb = "dev_cosine_ndcg@10"
        warnings = training_warnings(
            optimizer_steps=steps,
            final_loss=final_loss,
            batch_size=cfg.batch_size * world,
            dev_before=dev_before.get(nb),
            dev_after=dev_after.get(nb),
            leaked_queries=leaked,
        )
        for w in warnings:
            warn(w)
        model.save(OUT_DIR, safe_serialization=True)
        effective_lr = float(trainer.lr_scheduler.base_lrs[0]) if trainer.lr_scheduler else cfg.lr
        metrics = {
            "effective": {
                "learning_rate": effective_lr,
                "optimizer_steps": steps,
                "epochs": round(float(trainer.state.epoch or 0), 3),
                "per_device_batch_size": trainer.args.per_device_train_batch_size,
                "effective_batch_size": cfg.batch_size * cfg.gradient_accumulation_steps * world,
                "in_batch_negatives_per_query": cfg.batch_size * world - 1,
                "hard_negatives_per_query": cfg.n_hard_negatives,
                "warmup_steps": trainer.args.get_warmup_steps(steps) if steps else 0,
                "scheduler": str(trainer.args.lr_scheduler_type),
                "loss": type(loss).__name__,
                "bf16": bool(trainer.args.bf16),
                "fp16": bool(trainer.args.fp16),
                "world_size": world,
                **counts,
            },
            "train": {
                "groups": len(train_ds),
                "groups_dropped_short_of_negatives": dropped,
                "final_loss": round(final_loss, 4) if final_loss is not None else None,
                "chance_loss": round(math.log(cfg.batch_size * world), 4),
                "seconds": round(train_s, 1),
                "samples_per_second": round(result.metrics.get("train_samples_per_second", 0.0), 2),
                "resumed_from_step": int(resume.rsplit("-", 1)[-1]) if resume else 0,
            },
            "dev": {
                "before": {k.replace("dev_cosine_", ""): round(v, 4) for k, v in dev_before.items() if "cosine" in k},
                "after": {k.replace("dev_cosine_", ""): round(v, 4) for k, v in dev_after.items() if "cosine" in k},
            },
            "warnings": warnings,
        }
        write_json("metrics/train_embedder.json", metrics)
        from ragtune.training import write_model_card

        write_model_card(OUT_DIR, model_p["embedder"], cfg, metrics)
        summary["read"] = f"{len(groups)} training groups, {len(dev)} dev queries"
        before, after = metrics["dev"]["before"].get("ndcg@10"), metrics["dev"]["after"].get("ndcg@10")
        summary["wrote"] = f"{OUT_DIR} ({steps} steps, dev ndcg@10 {before} → {after}, {len(warnings)} warnings)"


if __name__ == "__main__":
    main()
