"""The Vietnamese prompt, a file under version control (and, once wired, a DVC dependency), and the request text."""

from __future__ import annotations

import hashlib
from pathlib import Path

from ragtune.questions.config import KINDS

PROMPT_PATH = Path(__file__).with_name("prompt.vi.md")


def load_prompt(path: str | Path = PROMPT_PATH) -> tuple[str, str]:
    """``(prompt text, sha256 of its bytes)``: the hash goes into the cache key, so editing the prompt re-asks."""
    data = Path(path).read_bytes()
    return data.decode("utf-8"), hashlib.sha256(data).hexdigest()


def user_message(chunk_text: str, per_kind: dict[str, int]) -> str:
    """The request for one chunk: how many questions of each kind, then the chunk itself.

    Only the counts and the chunk vary, and both are in the cache key (the counts through ``generation_params``),
    so the same key always means the same request.
    """
    counts = ", ".join(f'{per_kind[kind]} câu "{kind}"' for kind in KINDS if per_kind.get(kind))
    return f'Số câu hỏi cần viết: {counts}.\n\nĐoạn văn bản:\n"""\n{chunk_text}\n"""'
