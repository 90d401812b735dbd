"""What both trainers (embedder and reranker) share: precision, attention dropout, callbacks and curves.

Each function here was written once for the embedder and copied for the reranker before; a fix to one (the bf16
wrapper left on the model after training) must reach both, so both import it from here.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ragtune.access import TrainingAccess, training_access
from ragtune.precision import use_cpu_bf16
from ragtune.train.schedule import require_resolved


def access_rule(
    cfg: Any, access_p: dict[str, Any] | None, documents: str | Path, chunks: Sequence[dict[str, Any]]
) -> TrainingAccess | None:
    """What ``cfg.max_access_level`` keeps out of training (:class:`ragtune.access.TrainingAccess`), or None when it
    is empty: every level trains, and nothing is read. Both stages call it before their first minute of work, so a
    level off the scale stops them at once; ``documents`` is documents.jsonl (each document's label)."""
    if cfg.max_access_level is None:
        return None
    if access_p is None:  # a caller that forgot the section must not train on everything
        raise ValueError(f"{cfg.SECTION}.max_access_level is set: pass the access: params section (access_p)")
    key = f"{cfg.SECTION}.max_access_level"
    return training_access(key, cfg.max_access_level, access_p, documents, chunks)


def precision_flags(cfg: Any, cuda: bool, bf16_supported: bool) -> dict[str, bool]:
    """fp16/bf16 flags for TrainingArguments: mixed precision on CUDA by default; on CPU, bf16 autocast as
    ``cpu_bf16`` says (``auto``: where the CPU computes bf16 natively, :mod:`ragtune.precision`)."""
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
    return {"fp16": False, "bf16": use_cpu_bf16(cfg.cpu_bf16)}


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


def step_timer() -> Any:
    """A trainer callback that times each optimizer step, dev check and checkpoint save (wall seconds).

    Why: a run's cost is steps × step time + checks × check time + saves; ``ragtune plan`` reads these from a
    probe run of a few steps to price the full schedule, and ``metrics/train_*.json`` → ``train.timing`` shows
    where a real run's time went. The Trainer calls ``on_step_end``, then evaluates, then saves, so the gaps
    between those calls are the check and the save.
    """
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.steps: list[float] = []
            self.evals: list[float] = []
            self.saves: list[float] = []
            self._t = 0.0

        def _lap(self) -> float:
            now = time.perf_counter()
            lap, self._t = now - self._t, now
            return lap

        def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self._t = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.steps.append(self._lap())

        def on_evaluate(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.evals.append(self._lap())

        def on_save(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.saves.append(self._lap())

    return StepTimer()


def step_timing(trainer: Any) -> dict[str, Any]:
    """What :func:`step_timer`'s callback measured in ``trainer``'s run: how many steps, dev checks and saves, and
    their seconds. The first step is reported apart (it warms up kernels, allocator and data loader); the mean of the
    others is what each further step costs, and the totals are what the run spent on each."""
    timer = next((c for c in trainer.callback_handler.callbacks if hasattr(c, "steps") and hasattr(c, "saves")), None)
    if timer is None or not timer.steps:
        return {"steps": 0}
    later = timer.steps[1:] or timer.steps
    return {
        "steps": len(timer.steps),
        "first_step_s": round(timer.steps[0], 3),
        "step_s_mean": round(statistics.fmean(later), 3),  # after the first
        "step_s_median": round(statistics.median(later), 3),
        "steps_s_total": round(sum(timer.steps), 3),
        "evals": len(timer.evals),
        "eval_s_mean": round(statistics.fmean(timer.evals), 3) if timer.evals else None,
        "evals_s_total": round(sum(timer.evals), 3),
        "saves": len(timer.saves),
        "save_s_mean": round(statistics.fmean(timer.saves), 3) if timer.saves else None,
        "saves_s_total": round(sum(timer.saves), 3),
    }


def trainer_callbacks(callbacks: list[Any] | None, early_stopping_patience: int, has_eval: bool) -> list[Any]:
    """The callbacks both trainers (embedder and reranker) get: the caller's, early stopping on the dev metric when
    asked for, a :func:`step_timer`, and ``Fp32AfterTraining``, which hands the model back without the
    mixed-precision wrapper as soon as ``train()`` ends, so no caller can forget it (see
    :func:`drop_mixed_precision_wrapper`)."""
    from transformers import EarlyStoppingCallback, TrainerCallback

    class Fp32AfterTraining(TrainerCallback):
        def on_train_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
            if model is not None:
                drop_mixed_precision_wrapper(model)

    out = [*(callbacks or []), Fp32AfterTraining(), step_timer()]
    if early_stopping_patience and has_eval:
        out.append(EarlyStoppingCallback(early_stopping_patience=early_stopping_patience))
    return out


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


def training_args_kwargs(
    cfg: Any, output_dir: str | Path, *, has_eval: bool, metric: str, cuda: bool | None, bf16_supported: bool | None
) -> dict[str, Any]:
    """The TrainingArguments fields both trainers set from their shared keys, every one mapped explicitly.

    ``metric`` is the dev evaluator's key that picks the best checkpoint (it differs: ST names the embedder's
    ``eval_dev_cosine_ndcg@10`` and the reranker's ``eval_dev_ndcg@10``). ``cfg`` must be resolved
    (:func:`ragtune.train.schedule.resolve_schedule`): ``auto`` is not a number of steps.
    """
    require_resolved(cfg)
    import torch

    cuda = torch.cuda.is_available() if cuda is None else cuda
    if bf16_supported is None:
        bf16_supported = bool(cuda and torch.cuda.is_bf16_supported())
    return dict(
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
        eval_strategy="steps" if has_eval else "no",
        eval_steps=cfg.eval_steps,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        load_best_model_at_end=cfg.load_best_model_at_end and has_eval,
        metric_for_best_model=metric if has_eval else None,
        greater_is_better=True,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        activation_checkpointing=cfg.gradient_checkpointing,
        logging_steps=cfg.logging_steps,
        logging_first_step=True,
        dataloader_num_workers=cfg.dataloader_num_workers,
        report_to="none",
        use_cpu=not cuda,
        **precision_flags(cfg, cuda, bf16_supported),
    )
