"""A thin wrapper over the ``openai`` client: it speaks to OpenAI, vLLM, Ollama, llama.cpp server and TGI alike.

Retries with backoff on 429, 5xx, connection errors and timeouts are the ``openai`` client's own (``max_retries``,
honouring ``Retry-After``): re-implementing them here would only add a second, differently-behaved retry loop.
What this module adds is the two errors a user can act on: a key variable that is named but unset, and an endpoint
that cannot be reached.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import openai

from ragtune.errors import UserError
from ragtune.questions.config import GenerationConfig

# Local servers (vLLM, Ollama, llama.cpp) ignore the key, but the openai client refuses to start without one.
NO_KEY_PLACEHOLDER = "no-key"


class EndpointError(UserError):
    """The LLM endpoint is unreachable, refused the request, or its key is missing; the message names the fix."""


@dataclass(frozen=True)
class Completion:
    """One answer's text and what it cost in tokens (for the progress bar and the cost estimate)."""

    text: str
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def api_key(env_name: str) -> str:
    """The key from the environment variable ``env_name``; checked before any request so a run fails in a second.

    An empty name means a local server with no key. A named but unset (or empty) variable is an error rather than
    a silent placeholder: the remote server would answer 401 only after the first request, once per thread.
    """
    if not env_name:
        return NO_KEY_PLACEHOLDER
    key = os.environ.get(env_name, "")
    if not key:
        raise EndpointError(
            f"questions.api_key_env names the environment variable {env_name}, but it is not set: "
            f"export {env_name}=<your key> before running, or set questions.api_key_env to '' for a local "
            f"server (vLLM, Ollama, llama.cpp) that needs no key"
        )
    return key


class ChatClient:
    """Asks one chat completion at a time; safe to share between threads (the ``openai`` client is)."""

    def __init__(self, config: GenerationConfig) -> None:
        self.config = config
        self._client = openai.OpenAI(
            base_url=config.base_url,
            api_key=api_key(config.api_key_env),
            timeout=config.timeout_s,
            max_retries=config.max_retries,
        )

    def _fix(self) -> str:
        """What to check when the endpoint fails; the key itself is never part of a message."""
        return (
            f"check that the server is running and questions.base_url ({self.config.base_url}) is right "
            f"(it usually ends in /v1), that questions.model ({self.config.model}) is served there, "
            f"and questions.timeout_s / questions.max_retries"
        )

    def complete(self, system: str, user: str) -> Completion:
        """Send one request; a failure after the client's own retries becomes an :class:`EndpointError`."""
        config = self.config
        try:
            response = self._client.chat.completions.create(
                model=config.model,
                messages=[{"role": "system", "content": system}, {"role": "user", "content": user}],
                temperature=config.temperature,
                max_tokens=config.max_tokens,
            )
        except openai.APITimeoutError as exc:
            raise EndpointError(
                f"LLM endpoint {config.base_url} did not answer within {config.timeout_s}s "
                f"after {config.max_retries} retries: {self._fix()}"
            ) from exc
        except openai.APIConnectionError as exc:
            raise EndpointError(
                f"LLM endpoint {config.base_url} cannot be reached after {config.max_retries} retries "
                f"({exc.__cause__ or exc}): {self._fix()}"
            ) from exc
        except openai.APIStatusError as exc:
            raise EndpointError(
                f"LLM endpoint {config.base_url} answered HTTP {exc.status_code} "
                f"({str(exc.message)[:200]}): {self._fix()}; a 401/403 means the key in "
                f"{config.api_key_env or '(no key variable)'} is wrong"
            ) from exc
        choices = response.choices or []
        text = (choices[0].message.content or "") if choices else ""
        usage = response.usage
        return Completion(
            text=text,
            prompt_tokens=getattr(usage, "prompt_tokens", 0) or 0,
            completion_tokens=getattr(usage, "completion_tokens", 0) or 0,
        )
