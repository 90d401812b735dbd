"""train_embedder: training groups → a fine-tuned sentence-transformers embedder (resumable, measured on dev).

Runs as a single process (`python stages/train_embedder.py`) or under DDP (`torchrun --nproc_per_node N ...`).
"""

import os
import time
from dataclasses import asdict

import torch

from ragtune import batching, training
from ragtune.console import console, stage, warn
from ragtune.deps import stage_modules
from ragtune.io import read_jsonl, sha256_file, write_json
from ragtune.models import load_embedder, model_fingerprint, resolve_model
from ragtune.pairs import query_key
from ragtune.params import load_params, section
from ragtune.retrieval import model_prompt
from ragtune.rows import training_rows
from ragtune.training import (
    EmbedderTrainConfig,
    build_ir_evaluator,
    build_trainer,
    clear_checkpoints,
    column_prompts,
    freeze,
    groups_to_dataset,
    prepare_checkpoint_dir,
    run_metrics,
    write_model_card,
)

OUT_DIR = "models/embedder"
CKPT_DIR = "models/embedder_checkpoints"
LIVE_DIR = "dvclive/train_embedder"


def main() -> None:
    params = load_params()
    model_p = section(params, "model")
    cfg = EmbedderTrainConfig.from_params(section(params, "train_embedder"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank0 = int(os.environ.get("RANK", "0")) == 0
    with stage("train_embedder") as summary:
        groups = read_jsonl("data/negatives/train_groups.jsonl")
        dev = read_jsonl("data/pairs/dev.jsonl")
        heldout = {query_key(q["query"]) for q in dev + read_jsonl("data/pairs/test.jsonl")}
        leaked = sum(1 for g in groups if query_key(g["query"]) in heldout)
        chunks = read_jsonl("data/chunks/chunks.jsonl")
        checkable = training.dev_questions(dev, cfg.dev_level)
        # None: train. Otherwise the base model ships untrained, and this says why (enabled: false, or no dev)
        untrained = training.untrained_reason(cfg, has_dev=bool(checkable))

        base_path = resolve_model(model_p["embedder"])
        model = load_embedder(base_path)
        model.max_seq_length = cfg.max_seq_length
        qp = model_prompt(model, "query", model_p.get("query_prompt"))
        pp = model_prompt(model, "passage", model_p.get("passage_prompt"))
        # before any work: a chunk longer than the training truncation would lose its end silently
        training.check_chunks_fit(
            max((int(c["n_tokens"]) for c in chunks), default=0),
            len(model.tokenizer(pp, add_special_tokens=False)["input_ids"]),
            model.tokenizer.num_special_tokens_to_add(pair=False),
            cfg.max_seq_length,
        )
        counts = freeze(model, cfg)
        attention, attention_warnings = training.apply_attention_dropout(model, cfg.attention_dropout, cfg.SECTION)
        counts |= attention
        train_ds, dropped = groups_to_dataset(groups, cfg.n_hard_negatives, cfg.positives)
        if untrained is None and len(train_ds) < cfg.batch_size:
            raise SystemExit(
                f"train_embedder: only {len(train_ds)} training rows from {len(groups) - dropped} usable groups "
                f"({dropped} had fewer than n_hard_negatives={cfg.n_hard_negatives} negatives); need at least "
                f"batch_size={cfg.batch_size}."
            )
        # epochs / eval_steps / save_steps: auto → numbers for these rows; the resolved config builds the trainer,
        # the resume fingerprint and the model card
        cfg, plan = training.resolve_schedule(cfg, len(train_ds), world)
        if rank0 and untrained is None:
            console.print(f"schedule: {plan.reason}", soft_wrap=True)
        # the rows' relevant documents, so that no batch shows a query a chunk of its own document as a negative
        batch_keys = batching.group_row_keys(
            groups, cfg.n_hard_negatives, {c["chunk_id"]: c["doc_id"] for c in chunks}, cfg.positives
        )
        evaluator = (
            build_ir_evaluator(checkable, chunks, qp, pp, batch_size=cfg.batch_size, level=cfg.dev_level)
            if checkable
            else None
        )
        if untrained is not None:
            if not rank0:
                return
            # built, never run: the metrics then hold the values this run would have used, with 0 optimizer steps
            trainer = build_trainer(
                model,
                cfg,
                train_ds,
                evaluator,
                CKPT_DIR,
                column_prompts(cfg.n_hard_negatives, qp, pp),
                guide=load_embedder(base_path) if cfg.loss == "gist" else None,
                batch_keys=batch_keys,
            )
            metrics = run_metrics(
                trainer,
                cfg,
                world=world,
                counts=counts,
                groups=len(groups) - dropped,
                rows=len(train_ds),
                dropped=dropped,
                seconds=0.0,
                samples_per_second=0.0,
                resumed_from=None,
                dev_before={},
                dev_after={},
                leaked_queries=leaked,
            )
            every_positive, _ = training_rows(groups, cfg.n_hard_negatives, "all")
            metrics["train"]["positives_not_trained"] = len(every_positive)  # none was trained
            ship_untrained(model_p, cfg, plan, base_path, metrics, untrained)
            summary["read"] = f"{len(groups)} training groups ({len(train_ds)} rows), {len(dev)} dev queries"
            summary["wrote"] = f"{OUT_DIR} ({metrics['shipped']}: not trained), metrics/train_embedder.json"
            return
        # ship_unchecked: true with no dev question: trained, and every report says nothing checked it
        unchecked = (
            []
            if checkable
            else [training.unchecked_warning(cfg.SECTION, OUT_DIR, trained=True, start="the base model")]
        )
        dev_before = evaluator(model) if evaluator and rank0 else {}

        fingerprint = cfg.fingerprint(
            model_fingerprint(base_path),
            sha256_file("data/negatives/train_groups.jsonl"),
            sha256_file("data/pairs/dev.jsonl"),
            sha256_file(__file__),
            # a code change must not resume a checkpoint made by other code: every ragtune module this stage runs
            *(sha256_file(path) for path in stage_modules(__file__)),
            f"world={world}",
        )
        resume = prepare_checkpoint_dir(CKPT_DIR, fingerprint, owner=rank0)
        if resume:
            console.print(f"[bold]Resuming[/] from {resume}")
        callbacks = training.dvclive_callbacks(LIVE_DIR, resume=bool(resume), before=dev_before) if rank0 else []
        trainer = build_trainer(
            model,
            cfg,
            train_ds,
            evaluator,
            CKPT_DIR,
            column_prompts(cfg.n_hard_negatives, qp, pp),
            guide=load_embedder(base_path) if cfg.loss == "gist" else None,
            distributed=world > 1,
            callbacks=callbacks,
            batch_keys=batch_keys,
        )
        # the first epoch's batches as the trainer will draw them (own generator: the global RNG stays untouched)
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
        fn_rows = first_epoch["rows_with_in_batch_false_negatives"]
        console.print(
            f"epoch 1: {first_epoch['batches']} batches ({cfg.batch_sampler}); {fn_rows} of {len(train_ds)} rows "
            "see a chunk of their own relevant document as an in-batch negative"
        )
        t0 = time.perf_counter()
        result = trainer.train(resume_from_checkpoint=resume)
        seconds = time.perf_counter() - t0
        if not rank0:
            return
        base = load_embedder(base_path) if cfg.merge_alpha < 1 else None
        dev_unmerged, dev_after, shipped = training.merge_checked_on_dev(model, base, cfg, evaluator)
        metrics = run_metrics(
            trainer,
            cfg,
            world=world,
            counts=counts,
            groups=len(groups) - dropped,
            rows=len(train_ds),
            dropped=dropped,
            seconds=seconds,
            samples_per_second=result.metrics.get("train_samples_per_second", 0.0),
            resumed_from=resume,
            dev_before=dev_before,
            dev_after=dev_after,
            leaked_queries=leaked,
        )
        metrics["warnings"] += attention_warnings + unchecked
        metrics["plan"] = asdict(plan)
        # labeled positives left out of training (positives: first) are counted, never dropped silently
        every_positive, _ = training_rows(groups, cfg.n_hard_negatives, "all")
        metrics["train"]["positives_not_trained"] = len(every_positive) - len(train_ds)
        metrics["train"]["first_epoch_batches"] = first_epoch
        if fn_rows > 0.1 * len(train_ds):
            metrics["warnings"].append(
                f"{fn_rows} of {len(train_ds)} training rows see a chunk of their own relevant document as an "
                f"in-batch negative in epoch 1 (batch_sampler: {cfg.batch_sampler}; document_disjoint avoids it "
                "unless one document has more questions than there are batches)"
            )
        if cfg.merge_alpha < 1:
            metrics["dev"]["unmerged"] = training.dev_metrics(dev_unmerged)
        metrics["shipped"] = shipped if checkable else f"{shipped} (no dev questions: unchecked)"
        if dev:
            base = base or load_embedder(base_path)  # the merge only read `base`: it is the base model unchanged
            base.max_seq_length = cfg.max_seq_length
            metrics["dev"]["evidence"] = training.dev_evidence(
                model, base, dev, chunks, qp, pp, base_fingerprint=model_fingerprint(base_path), seed=cfg.seed
            )
        if training.ship_base(cfg, metrics):
            # Never ship what dev cannot tell from a regression: the base model goes out, and every report says so.
            model = base
            metrics["shipped"] = "base"
            ev = metrics["dev"]["evidence"]
            metrics["warnings"].append(
                f"{OUT_DIR} is the BASE model, unchanged: on {ev['n_queries']} dev questions the trained model's "
                f"NDCG@10 gain is {100 * ev['gain']:+.1f} pts with a 95% interval of [{100 * ev['ci_low']:+.1f}, "
                f"{100 * ev['ci_high']:+.1f}], which does not rule out a loss. Label more dev questions "
                "(pairs.dev_ratio, or a dev file) for a fine-tune to earn its place; "
                "train_embedder.keep_base_if_worse: false ships it anyway"
            )
        for w in metrics["warnings"]:
            warn(w)
        model.save(OUT_DIR, safe_serialization=True)
        clear_checkpoints(CKPT_DIR)
        write_model_card(OUT_DIR, model_p["embedder"], cfg, metrics)
        write_json("metrics/train_embedder.json", metrics)
        before, after = metrics["dev"]["before"].get("ndcg@10"), metrics["dev"]["after"].get("ndcg@10")
        summary["read"] = f"{len(groups)} training groups ({len(train_ds)} rows), {len(dev)} dev queries"
        summary["wrote"] = (
            f"{OUT_DIR} ({metrics['shipped']}; {metrics['effective']['optimizer_steps']} steps, "
            f"dev ndcg@10 {before} → {after}, "
            f"{len(metrics['warnings'])} warnings)"
        )


def ship_untrained(
    model_p: dict, cfg: EmbedderTrainConfig, plan: training.SchedulePlan, base_path: str, metrics: dict, why: str
) -> None:
    """Write the base model to OUT_DIR unchanged, with every file a training run writes (metrics, card, folders).

    Why: index, train_reranker, evaluate and ``dvc metrics`` read these outputs whether or not training ran.
    ``enabled: false`` is a choice (a base-model bake-off) and says so once; no dev question is a warning.
    """
    metrics["plan"] = asdict(plan)
    metrics["shipped"] = f"base ({why})"
    # "only 0 optimizer steps" and the like say nothing here: what matters is why there are none
    unchecked = training.unchecked_warning(cfg.SECTION, OUT_DIR, trained=False, start="the BASE model")
    metrics["warnings"] = [unchecked] if cfg.enabled else []
    for w in metrics["warnings"]:
        warn(w)
    if not cfg.enabled:
        console.print(f"{OUT_DIR}: the base model {model_p['embedder']}, not trained (train_embedder.enabled: false)")
    model = load_embedder(base_path)  # fresh: the training copy's attention modules were changed in place
    model.max_seq_length = cfg.max_seq_length
    model.save(OUT_DIR, safe_serialization=True)
    training.untrained_outputs(LIVE_DIR, CKPT_DIR)
    write_model_card(OUT_DIR, model_p["embedder"], cfg, metrics)
    write_json("metrics/train_embedder.json", metrics)


if __name__ == "__main__":
    main()
