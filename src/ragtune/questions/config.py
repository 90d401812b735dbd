"""The generator's knobs, in one frozen dataclass so a run's settings cannot drift while threads are reading them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# The question kinds the prompt asks for, in the order the output lists them (a stable order keeps the bytes stable).
KINDS = ("factual", "how_to", "yes_no", "multi_sentence")


@dataclass(frozen=True)
class GenerationConfig:
    """Where to ask (endpoint, model, key), what to ask for (counts by kind, sampling), and how hard to push.

    ``api_key_env`` is the NAME of an environment variable, never the key: params.yaml, logs and metrics are committed
    and shared, a key in them would leak. ``""`` means a local server that needs no key.
    """

    base_url: str
    model: str
    api_key_env: str = ""
    temperature: float = 0.0
    max_tokens: int = 512
    per_kind: dict[str, int] = field(default_factory=lambda: {"factual": 1})
    max_chunks: int | None = None
    concurrency: int = 4
    requests_per_second: float = 0.0  # 0 = no limit (a local server applies its own back-pressure)
    timeout_s: float = 60.0
    max_retries: int = 3
    price_per_1k_tokens: float | None = None

    def generation_params(self) -> dict[str, Any]:
        """What changes an answer, besides the chunk, prompt and model: these go into the cache key.

        Concurrency, rate limit, timeouts and price are left out on purpose: they change how fast answers come,
        not what they say, so changing them must not re-ask (and re-pay for) anything.
        """
        return {
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "per_kind": {kind: self.per_kind[kind] for kind in KINDS if self.per_kind.get(kind)},
        }
