"""What ships after training: the fine-tune, its WiSE-FT merge with the base, or the base model itself."""

from __future__ import annotations

from typing import Any

from ragtune.train.embedder.config import EmbedderTrainConfig


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


def ship_base(cfg: EmbedderTrainConfig, metrics: dict[str, Any]) -> bool:
    """Whether to write the base model instead: ``keep_base_if_worse``, and dev cannot tell the trained model from a
    worse one (the 95% interval of its NDCG@10 gain over the base reaches 0 or below; see :func:`dev_evidence`).

    "Never ship something the evidence cannot tell from worse than the base model": a point estimate is not that
    evidence. With no dev split there is nothing to compare here (the no-dev rule, ``ship_unchecked``, decides).
    """
    evidence = metrics["dev"].get("evidence")
    return cfg.keep_base_if_worse and bool(evidence) and evidence["n_queries"] > 0 and evidence["ci_low"] <= 0
