"""Request and response bodies of the serve API.

Requests refuse unknown fields (``extra="forbid"``) and do not coerce types (``strict``): a client that misspells
``top_k`` or sends ``"5"`` learns it from a 422 naming the field, instead of silently getting the defaults. Limits that
depend on the server's configuration (item counts, lengths) are checked by the app against :class:`~.limits.Limits`,
and answered in the same 422 shape.

The embedding body follows OpenAI's ``/v1/embeddings``; the rerank body follows Cohere's / Jina's / TEI's
``/v1/rerank``; the search body is ragtune's own, with the caller's access level and metadata ``filters``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from ragtune.search import RETRIEVERS

PIPELINES = tuple(r + s for r in RETRIEVERS for s in ("", "+rerank"))
PipelineName = Literal[PIPELINES]  # type: ignore[valid-type]  # the names Pipeline.parse accepts


def _one_or_many(value: Any) -> Any:
    """OpenAI's ``input`` is a string or a list of strings; one string is a list of one (errors then point at
    ``input[i]`` rather than at both union branches)."""
    return [value] if isinstance(value, str) else value


class Request(BaseModel):
    """Base of every request body: unknown fields and coerced types are client mistakes, answered with 422."""

    model_config = ConfigDict(extra="forbid", strict=True)


class EmbeddingRequest(Request):
    """OpenAI's embeddings request, plus ``input_type``.

    ``input_type`` chooses the prompt the embedder was trained with (e5: ``query: `` / ``passage: ``, as the index
    manifest records them). It defaults to ``query`` because an application embeds questions at request time; a
    vector store is filled with ``passage``. OpenAI's own models use one space for both, so an OpenAI client that
    never sends the field gets query vectors, which is right for questions and wrong for documents: index documents
    with ``input_type: passage`` (``extra_body`` in the openai client) or with ``ragtune`` itself.
    """

    input: Annotated[list[str], BeforeValidator(_one_or_many)] = Field(
        description="a string, or a list of strings; token-id arrays are not supported"
    )
    model: str | None = Field(None, description="accepted and echoed for compatibility: one embedder is served")
    encoding_format: Literal["float", "base64"] = "float"
    input_type: Literal["query", "passage"] = "query"
    dimensions: int | None = Field(None, description="only the model's own dimension is accepted (no truncation)")
    user: str | None = None


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str = Field(description="floats, or base64 of little-endian float32 bytes")


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage


class RerankRequest(Request):
    """Cohere/Jina/TEI-style rerank: score each document against the query, best first."""

    query: str
    documents: list[str]
    top_n: int | None = Field(None, ge=1, description="how many results to return (default: all)")
    return_documents: bool = False
    model: str | None = Field(None, description="accepted and echoed for compatibility: one reranker is served")


class RerankDocument(BaseModel):
    text: str


class RerankResult(BaseModel):
    index: int
    relevance_score: float
    document: RerankDocument | None = None


class RerankResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"description": "results sorted by relevance_score, best first"})

    results: list[RerankResult]
    model: str


class SearchRequest(Request):
    """The pipeline chosen on dev, over the chunks the caller may see.

    ``access_level`` is asserted by the calling application, which authenticated its user: ragtune serve has no
    authentication of its own, so it must only be reachable through that application. A request without it is
    answered at the lowest level (fail closed): forgetting the field must never show restricted documents.
    ``filters`` is checked by the app (:func:`ragtune.access.parse_filters`), so an unknown field's 422 lists the
    fields that exist, as the CLI's error does.
    """

    query: str
    top_k: int = Field(5, ge=1)
    pipeline: PipelineName | None = Field(None, description="override the pipeline evaluate chose on dev")
    access_level: str | None = Field(
        None,
        description="the caller's level on the index's access scale (GET /v1/models: access.levels), "
        "case-insensitive; absent: the lowest level",
    )
    filters: dict[str, Any] | None = Field(
        None,
        description="{field: value or [values]} on doc_id, department, document_type, tags: a list matches any of "
        "its values, tags match when they share a value; applied within the caller's level",
    )


class SearchHit(BaseModel):
    rank: int
    chunk_id: str
    doc_id: str
    title: str
    section: str
    text: str
    metadata: dict[str, Any]
    scores: dict[str, float | None]


class SearchResponse(BaseModel):
    pipeline: str
    access_level: str = Field(description="the level the search was answered at (the lowest when none was sent)")
    results: list[SearchHit]
