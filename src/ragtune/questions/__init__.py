"""LLM-generated questions for label-free fine-tuning, through any OpenAI-compatible endpoint (issue 17).

``config`` (:class:`GenerationConfig`), ``prompt`` (the Vietnamese prompt file and its hash), ``client`` (the
``openai`` wrapper and its errors), ``cache`` (append-only answers), ``filters`` (parsing, language, copy, duplicate
and leak checks) and ``generate`` (the concurrent, rate-limited run).
"""

from ragtune.questions.cache import AnswerCache, cache_key
from ragtune.questions.client import ChatClient, Completion, EndpointError
from ragtune.questions.config import KINDS, GenerationConfig
from ragtune.questions.filters import DROP_REASONS, QUARANTINE_REASONS, QuestionFilter
from ragtune.questions.generate import generate
from ragtune.questions.prompt import load_prompt

__all__ = [
    "DROP_REASONS",
    "KINDS",
    "QUARANTINE_REASONS",
    "AnswerCache",
    "ChatClient",
    "Completion",
    "EndpointError",
    "GenerationConfig",
    "QuestionFilter",
    "cache_key",
    "generate",
    "load_prompt",
]
