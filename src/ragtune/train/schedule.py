"""How long a training run is and how often it checks dev: ``epochs: auto`` sized to the data, for both trainers.

A pure function of the counts (no torch, no model), so the plan is unit-tested on a million rows in microseconds and
the stage can print it before any model is loaded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

# ``epochs``, ``eval_steps`` and ``save_steps`` may be this word: sized to the data by :func:`plan_schedule`.
AUTO = "auto"
# the config keys (both trainers have them) that plan_schedule reads under the same names
PLAN_KEYS = (
    "epochs",
    "max_steps",
    "eval_steps",
    "save_steps",
    "auto_min_steps",
    "auto_max_epochs",
    "auto_max_steps",
    "eval_fraction",
)


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
        **{key: getattr(cfg, key) for key in PLAN_KEYS},
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
            "trainer's arguments: call ragtune.train.schedule.resolve_schedule(cfg, rows, world) first"
        )
