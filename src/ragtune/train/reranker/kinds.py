"""The reranker kinds beyond the cross-encoder, trained by the same stage on the same mined groups.

``train_reranker.kind`` picks one. The shared keys of ``train_reranker:`` (seed, schedule, batch size, learning
rate, warmup, weight decay, precision, logging) drive every kind, so there is one learning rate in params and it is
the one the optimizer gets; a kind's sub-section (``late_interaction:`` / ``llm:``) holds only what no other kind
has. Keys only the cross-encoder reads (``base``, ``head``, ``loss``, ``pos_weight``, ``mnrl_scale``, ``head_lr``,
``max_length``, ``distill``) are listed in :data:`CROSS_ENCODER_ONLY`, and the metrics of another kind say they were
not used.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from ragtune.train.common import precision_flags
from ragtune.train.reranker.config import KINDS, RerankerConfigError, RerankerTrainConfig

CROSS_ENCODER_ONLY = (
    "base",
    "head",
    "loss",
    "pos_weight",
    "mnrl_scale",
    "head_lr",
    "max_length",
    "attention_dropout",
    "distill",
)


def _bf16(cfg: RerankerTrainConfig) -> bool:
    """What ``precision`` means for a kind whose trainer takes one bf16 switch (CPU or CUDA autocast): the bf16 flag
    of :func:`ragtune.train.common.precision_flags`, the rule the cross-encoder and the embedder use (fp16 asked for
    on a CPU is refused there, for every kind)."""
    import torch

    cuda = torch.cuda.is_available()
    return precision_flags(cfg, cuda, bool(cuda and torch.cuda.is_bf16_supported()))["bf16"]


def kind_settings(cfg: RerankerTrainConfig, sub: dict[str, Any], epochs: float, max_steps: int) -> Any:
    """The kind's settings dataclass from the shared keys (``cfg``, its schedule resolved to ``epochs`` /
    ``max_steps``) and the kind's own sub-section ``sub``; its ``from_params`` refuses a missing or unknown key."""
    shared = {
        "seed": cfg.seed,
        "lr": cfg.lr,
        "epochs": epochs,
        "max_steps": max_steps,
        "batch_size": cfg.batch_size,
        "warmup_ratio": cfg.warmup_ratio,
        "weight_decay": cfg.weight_decay,
        "logging_steps": cfg.logging_steps,
    }
    if cfg.kind == "late_interaction":
        from ragtune.train.reranker.late_interaction import LateInteractionSettings as Settings

        shared |= {"scheduler": cfg.scheduler, "bf16": _bf16(cfg)}
    elif cfg.kind == "llm":
        from ragtune.train.reranker.llm import LLMRerankerSettings as Settings

        shared |= {"gradient_accumulation_steps": cfg.gradient_accumulation_steps, "precision": cfg.precision}
    else:
        raise RerankerConfigError(f"train_reranker.kind={cfg.kind!r}: choose one of {KINDS}")
    own = sorted(f.name for f in fields(Settings) if f.name not in shared and f.name != "extra")
    stray = sorted(set(sub) - set(own))
    if stray:  # a shared key set here would be silently shadowed, or never read: say where it belongs
        raise RerankerConfigError(
            f"train_reranker.{cfg.kind}: unknown key(s) {', '.join(stray)}; this section holds only "
            f"{', '.join(own)}. The learning rate, batch size, schedule, seed and precision are the train_reranker "
            "keys themselves, shared by every kind"
        )
    return Settings.from_params({**shared, **sub})


def rows_per_epoch(kind: str, groups: Sequence[dict[str, Any]]) -> int:
    """Rows per epoch as the kind's trainer counts them, which is what ``epochs: auto`` sizes: a group for late
    interaction (query, positive, its negatives), a (query, passage) pair for the pointwise yes/no LLM."""
    if kind == "late_interaction":
        return sum(1 for g in groups if g["pos"])
    return sum(len(g["pos"]) + len(g["neg"]) for g in groups)


def train_kind(
    cfg: RerankerTrainConfig,
    settings: Any,
    groups: Sequence[dict[str, Any]],
    samples: Sequence[dict[str, Any]],
    out_dir: Path,
    checkpoint_dir: Path,
    embedder_dir: Path,
    callbacks: Sequence[Any] = (),
) -> dict[str, Any]:
    """Train the configured kind and save it to ``out_dir``; returns its trainer's metrics plus ``kind`` and the
    cross-encoder keys this run did not read."""
    if cfg.kind == "late_interaction":
        from ragtune.train.reranker.late_interaction import train_late_interaction

        metrics = train_late_interaction(
            groups, samples, settings, out_dir, checkpoint_dir, callbacks, embedder_dir=embedder_dir
        )
    else:
        from ragtune.train.reranker.llm import train_llm_reranker

        metrics = train_llm_reranker(groups, samples, settings, out_dir, checkpoint_dir, callbacks)
    return {"kind": cfg.kind, "not_read": list(CROSS_ENCODER_ONLY), **metrics}


def save_start(cfg: RerankerTrainConfig, settings: Any, out_dir: Path, embedder_dir: Path) -> None:
    """The kind's untrained start, saved as the shipped reranker (no labeled dev question and ``ship_unchecked``
    false: nothing can check a fine-tune, so the start ships, as for the cross-encoder)."""
    if cfg.kind == "late_interaction":
        from ragtune.rerankers.late_interaction import LateInteractionReranker

        start = LateInteractionReranker.from_embedder(
            embedder_dir, max_query_length=settings.max_query_length, max_doc_length=settings.max_doc_length
        )
    else:
        from ragtune.models import resolve_model
        from ragtune.rerankers.llm import LLMReranker

        start = LLMReranker.from_pretrained(
            resolve_model(settings.base),
            instruction=settings.instruction,
            max_length=settings.max_length,
            base=settings.base,
        )
    start.save(out_dir)


def run_kind(
    cfg: RerankerTrainConfig,
    groups: Sequence[dict[str, Any]],
    samples: Sequence[dict[str, Any]],
    paths: Any,
    untrained: str | None,
    callbacks: Sequence[Any] = (),
) -> dict[str, Any]:
    """Schedule, train (or save the untrained start) and return the metrics of a kind other than the cross-encoder.

    ``epochs: auto`` is sized to the kind's own rows (:func:`rows_per_epoch`), as the cross-encoder's is to its.
    """
    from dataclasses import asdict

    from ragtune.train.schedule import resolve_schedule

    sub = dict(getattr(cfg, cfg.kind))
    resolved, plan = resolve_schedule(cfg, rows_per_epoch(cfg.kind, groups))
    settings = kind_settings(cfg, sub, float(resolved.epochs), int(resolved.max_steps))
    if untrained is not None:
        save_start(cfg, settings, paths.reranker, paths.embedder)
        return {"kind": cfg.kind, "plan": asdict(plan), "effective": {"optimizer_steps": 0}, "warnings": []}
    metrics = train_kind(
        cfg, settings, groups, samples, paths.reranker, paths.reranker_checkpoints, paths.embedder, callbacks
    )
    metrics["kept"] = kept_model(metrics.get("dev", {}))
    if metrics["kept"] == "start":  # dev says training hurt: the start ships, loudly
        import shutil

        shutil.rmtree(paths.reranker)  # an LLM's trained adapter must not stay beside the start's files
        save_start(cfg, settings, paths.reranker, paths.embedder)
        before, after = metrics["dev"]["before"]["ndcg@10"], metrics["dev"]["after"]["ndcg@10"]
        metrics["warnings"].append(
            f"training made the {cfg.kind} reranker worse on dev (ndcg@10 {before:.4f} untrained → {after:.4f} "
            f"trained): {paths.reranker} holds the untrained start instead"
        )
    return {**metrics, "plan": asdict(plan)}


def kept_model(dev: dict[str, Any]) -> str:
    """``"start"`` when dev reranking got worse with training (``after`` below ``before`` on NDCG@10), else
    ``"trained"``. Both are scored on the same dev lists by the trainer, so the comparison is like for like; without
    dev scores (no dev question) the trained model ships, as ``ship_unchecked`` already decided."""
    before, after = dev.get("before", {}).get("ndcg@10"), dev.get("after", {}).get("ndcg@10")
    return "start" if before is not None and after is not None and after < before else "trained"
