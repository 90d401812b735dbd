"""Whether to compute in bf16 on this CPU: the ``auto`` of ``cpu_bf16`` (training) and ``rerank_bf16`` (inference).

bf16 autocast is a large win on a CPU that computes bf16 natively and a disaster on one that does not. On the Intel
machine the defaults were measured on (AVX-512 with bf16), it trained 2.6× faster than fp32 with identical rankings
(docs/training.md). On an AMD EPYC with AVX2 only, oneDNN has no bf16 kernel and PyTorch falls back to reference
code: one e5-small-sized encoder layer's training step (16 × 256 tokens) took 9.6 s under bf16 autocast against
0.45 s in fp32, 21× slower, and the sample's first train_embedder step took 298 s. A fixed ``true`` default therefore
made the pipeline unusable on such a machine; ``auto`` asks oneDNN, the library that runs these kernels, whether
this CPU has them.
"""

from __future__ import annotations

from functools import cache
from typing import Any


@cache
def cpu_has_fast_bf16() -> bool:
    """True when oneDNN runs bf16 natively on this CPU (x86: AVX-512 BW/VL/DQ or AMX; ARM: the bf16 extension),
    the check PyTorch itself uses before choosing its bf16 CPU kernels."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN: no fast bf16
        return False


def use_cpu_bf16(setting: Any) -> bool:
    """A ``cpu_bf16`` / ``rerank_bf16`` setting as a yes/no for this machine: ``auto`` → :func:`cpu_has_fast_bf16`,
    ``true`` / ``false`` as given."""
    if setting == "auto":
        return cpu_has_fast_bf16()
    return bool(setting)


def bf16_setting_problem(name: str, value: Any) -> str | None:
    """The message for a value that is not ``auto``, ``true`` or ``false`` (None when it is one of them)."""
    if value == "auto" or isinstance(value, bool):
        return None
    return f"{name}={value!r}: use auto (bf16 only where this CPU computes it natively), true or false"
