"""What both trainers' configs share: the schedule, optimizer, precision and checkpoint keys, validated once.

:class:`TrainerConfig` holds the keys that ``train_embedder:`` and ``train_reranker:`` have in common (26 of them);
each trainer's config adds its own. The checks on a shared key live here, so the two sections cannot drift apart
(they did: the reranker once accepted an ``attention_dropout`` the embedder refused).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ragtune.params import StageConfig
from ragtune.precision import bf16_setting_problem
from ragtune.schema import TRAINER_KEYS
from ragtune.train.schedule import check_schedule

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def check_attention_dropout(p: Any, error: type[ValueError], section: str) -> None:
    """``attention_dropout`` is empty (keep the model's) or a probability in [0, 1)."""
    if p is not None and (isinstance(p, bool) or not isinstance(p, int | float) or not 0 <= p < 1):
        raise error(
            f"{section}.attention_dropout={p!r}: use a probability in [0, 1) (0 = off, the fast path), "
            "or leave it empty to keep the model's own setting"
        )


@dataclass(frozen=True, kw_only=True)
class TrainerConfig(StageConfig):
    """The keys both trainers read. Field names are params.yaml keys; none has a default (see :class:`StageConfig`).

    Subclasses add their own keys and extend :meth:`validate`.
    """

    KEYS = TRAINER_KEYS  # max_access_level: a level name or empty, with its meaning for the messages

    seed: int
    epochs: float | str  # auto: ragtune.train.schedule.plan_schedule sizes it to the training rows; a number wins
    max_steps: int  # > 0 overrides epochs and the auto plan
    auto_min_steps: int  # epochs: auto trains whole epochs until at least this many optimizer steps …
    auto_max_epochs: int  # … but never more epochs than this …
    auto_max_steps: int  # … and stops here even mid-epoch (a deterministic compute budget, in steps)
    eval_fraction: float  # eval_steps / save_steps: auto = ceil(eval_fraction × total steps)
    batch_size: int
    lr: float
    warmup_ratio: float
    scheduler: str
    weight_decay: float
    eval_steps: int | str  # auto: see eval_fraction; a number wins
    save_steps: int | str  # auto: equal to eval_steps (load_best_model_at_end needs a multiple of it)
    save_total_limit: int
    early_stopping_patience: int  # 0 = off
    load_best_model_at_end: bool
    ship_unchecked: bool  # no labeled dev question: ship the start model (false) or an unchecked fine-tune (true)
    gradient_accumulation_steps: int
    gradient_checkpointing: bool
    precision: str  # auto: fp16/bf16 on CUDA (bf16 if supported), cpu_bf16 setting on CPU
    cpu_bf16: bool | str  # bf16 autocast on CPU: auto (where the CPU has native bf16, ragtune.precision) | true | false
    attention_dropout: float | None  # None: the model's own; 0 lets SDPA use its fused kernel (~2× faster steps)
    logging_steps: int
    dataloader_num_workers: int
    # None: train on every level. A level: leave out what documents above it hold (ragtune.access.TrainingAccess),
    # checked on the access scale by the stage, which reads the access: section
    max_access_level: str | None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def validate(self) -> None:
        sec = self.SECTION
        if self.precision not in PRECISIONS:
            raise self.ERROR(f"{sec}.precision={self.precision!r}: choose one of {PRECISIONS}")
        if self.lr <= 0 or self.lr > 1e-2:
            raise self.ERROR(f"{sec}.lr={self.lr} is outside (0, 1e-2]; typical: 1e-5 … 1e-4")
        check_attention_dropout(self.attention_dropout, self.ERROR, sec)
        problem = bf16_setting_problem(f"{sec}.cpu_bf16", self.cpu_bf16)
        if problem:
            raise self.ERROR(problem)
        check_schedule(self, self.ERROR)
