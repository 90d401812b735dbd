"""When a trainer must not train, and what it then says: no dev question, or ``enabled: false``."""

from __future__ import annotations

from ragtune.params import StageConfig


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
