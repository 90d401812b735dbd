"""What one request may ask of the server, with every default in one place.

A public endpoint that embeds whatever it is sent can be made to spend minutes of CPU on one request, so the size of
each request is bounded and a request over a bound gets a 4xx that names the bound, never a silent truncation or a
500. ``ragtune serve`` exposes each field as an option; a value not given keeps the default written here.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace


@dataclass(frozen=True)
class Limits:
    """Bounds on one request; the defaults suit a CPU serving an e5-small-sized model."""

    max_batch: int = 256
    """Items per request: inputs to /v1/embeddings, documents to /v1/rerank; also the most texts merged into one
    model call when concurrent embedding requests are batched together."""
    max_chars: int = 8192
    """Characters per input, query or document. The model reads at most its max_seq_length tokens (512 for e5) and
    truncates the rest, as the index stage did; this bound only stops absurd payloads."""
    max_top_k: int = 100
    """Results per /v1/search request."""
    max_body_bytes: int = 16 * 2**20
    """Request body size (Content-Length), refused with 413 before it is read: 256 inputs of 8192 characters, JSON
    escaped as \\uXXXX, stay under it."""

    def __post_init__(self) -> None:
        for f in fields(self):
            if getattr(self, f.name) < 1:
                raise ValueError(f"serve limit {f.name} must be at least 1, got {getattr(self, f.name)}")

    def with_overrides(self, **values: int | None) -> Limits:
        """These limits with the given fields replaced; ``None`` keeps a field's value (a CLI option not given)."""
        return replace(self, **{k: v for k, v in values.items() if v is not None})
