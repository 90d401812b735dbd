"""The model cards (README.md) both trainers write next to their weights: one frame, two contents.

A card says what the weights are (fine-tuned, or the start model unchanged, and why), the schedule the run used, how
to load the model, dev before → after, the warnings and every training param. The frame (front matter, sections)
is written once here so the embedder's and the reranker's cards cannot drift apart.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from ragtune.params import StageConfig


def card_sections(cfg: StageConfig, metrics: dict[str, Any]) -> tuple[str, str, str]:
    """Markdown shared by both model cards: dev before/after rows, the params table rows, the warnings list."""
    before, after = metrics["dev"]["before"], metrics["dev"]["after"]
    rows = "\n".join(
        f"| {k} | {before.get(k, float('nan')):.4f} | {after.get(k, float('nan')):.4f} |" for k in sorted(after)
    )
    # an empty max_access_level (every level trained, as before the key existed) leaves the card as it was
    params = "\n".join(
        f"| {k} | {v} |"
        for k, v in asdict(cfg).items()  # type: ignore[call-overload]
        if k != "extra" and not (k == "max_access_level" and v is None)
    )
    warn = "\n".join(f"- ⚠️ {w}" for w in metrics["warnings"]) or "- none"
    return rows, params, warn


def schedule_line(metrics: dict[str, Any]) -> str:
    """The plan the run used (or would have used: ``planned, not run`` when no optimizer step was taken)."""
    planned = "" if metrics["effective"]["optimizer_steps"] else " (planned, not run)"
    return f"Schedule{planned}: {metrics['plan']['reason']}" if "plan" in metrics else ""


def source_line(metrics: dict[str, Any]) -> str:
    """Which start model, exactly: the Hub commit it came from, or the sha256 fingerprint of a folder without one."""
    src = metrics["effective"].get("base_model")
    if not src:
        return ""
    if src["commit"] in ("local", "offline-build"):
        where = "a local folder" if src["commit"] == "local" else "ragtune's offline build"
        return f"Base model: `{src['name']}`, {where} (fingerprint `{src['fingerprint']}`)."
    pin = f"model.revision `{src['revision']}`" if src["revision"] else "model.revision empty: the Hub's main branch"
    return f"Base model: `{src['name']}` at Hub commit `{src['commit']}` ({pin})."


def access_line(cfg: Any) -> str:
    """What a ``max_access_level`` kept out of training, as a paragraph after the schedule; "" when it is empty."""
    level = getattr(cfg, "max_access_level", None)
    if level is None:
        return ""
    return (
        f"\n\nTrained only on documents at access level `{level}` or below ({cfg.SECTION}.max_access_level): "
        "this stage trained on no text of a document above it."
    )


# What differs between the two cards besides their heading: Hub tags, how to load the model, the dev table.
# ``{out_dir}``, ``{rows}``, ``{level}`` and ``{rerank_k}`` are filled in by :func:`write_model_card`.
CARDS = {
    "embedder": {
        "tags": "sentence-transformers, feature-extraction, retrieval, ragtune",
        "usage": """from sentence_transformers import SentenceTransformer
model = SentenceTransformer("{out_dir}")
q = model.encode_query(["Nhân viên được nghỉ phép bao nhiêu ngày?"])
d = model.encode_document(["Nhân viên chính thức có 12 ngày phép năm."])
print(model.similarity(q, d))""",
        "dev": """## Dev split ({level} level), before → after

| metric | base | fine-tuned |
|---|---:|---:|
{rows}

The held-out **test** comparison with BM25 and the base model is in the repository's `reports/evaluation.md`.""",
    },
    "reranker": {
        "tags": "sentence-transformers, cross-encoder, reranker, ragtune",
        "usage": """from sentence_transformers import CrossEncoder
model = CrossEncoder("{out_dir}")
hits = model.rank("Nhân viên được nghỉ phép bao nhiêu ngày?",
                  ["Nhân viên chính thức có 12 ngày phép năm.", "Quy trình mua sắm thiết bị."])
print(hits)  # [{'corpus_id': 0, 'score': ...}, ...]""",
        "dev": """## Dev split: reranking the embedder's top {rerank_k}, before → after training

`base_*` rows are the embedder's own order (the input); the others are after reranking. `accuracy`, `avg_*_score`
and `margin` are pair classification on dev groups (score > 0.5 = relevant).

| metric | before | after |
|---|---:|---:|
{rows}

How the reranker changes the held-out **test** ranking, and the fusion weight chosen on dev, are in the
repository's `reports/evaluation.md`.""",
    },
}


def embedder_heading(base_model: str, metrics: dict[str, Any]) -> tuple[str, str]:
    """Title and intro: fine-tuned (loss, steps, effective batch) or the base model unchanged, and why."""
    eff = metrics["effective"]
    shipped = str(metrics.get("shipped", "fine-tuned"))
    if shipped.startswith("base"):  # the weights are the base model's: the card must not call them fine-tuned
        why = shipped.removeprefix("base").strip(" ()") or (
            f"the {eff['optimizer_steps']}-step fine-tune scored below it on dev"
        )
        intro = f"`{base_model}` unchanged, written by the ragtune `train_embedder` stage ({why})."
        return "ragtune embedder: the base model, not fine-tuned", intro
    intro = f"""Fine-tuned from `{base_model}` by the ragtune `train_embedder` stage (loss: {eff["loss"]},
{eff["optimizer_steps"]} optimizer steps, effective batch {eff["effective_batch_size"]}; shipped: {shipped})."""
    return "ragtune fine-tuned embedder", intro


def reranker_heading(base_model: str, metrics: dict[str, Any], rank_max: int) -> tuple[str, str]:
    """Title and intro: its base and head (new or its own), trained or the untrained start model."""
    eff = metrics["effective"]
    shipped = str(metrics.get("shipped", "fine-tuned"))
    head = "new one-logit head" if eff["new_head"] else "its own head"
    if shipped.startswith("untrained"):  # the card must not call a model trained that never was
        state = "seeded, never trained" if eff["new_head"] else "unchanged"
        intro = f"`{base_model}` ({head}, {state}), written by the ragtune `train_reranker` stage: {shipped}."
        return "ragtune reranker: the untrained start model", intro
    intro = f"""Trained from `{base_model}` ({head}) by the ragtune
`train_reranker` stage: loss {eff["loss"]}, {eff["optimizer_steps"]} optimizer steps, negatives from the
fine-tuned embedder's top {rank_max} plus random ones (shipped: {shipped})."""
    return "ragtune fine-tuned reranker", intro


def write_model_card(out_dir: str | Path, kind: str, base_model: str, cfg: Any, metrics: dict[str, Any]) -> None:
    """README.md in ``out_dir`` for the ``embedder`` or the ``reranker``: front matter for the Hub, then title,
    intro, schedule, usage, dev before → after, warnings and every training param."""
    rows, params, warn = card_sections(cfg, metrics)
    if kind == "embedder":
        title, intro = embedder_heading(base_model, metrics)
    else:
        title, intro = reranker_heading(base_model, metrics, cfg.rank_max)
    fill = {"{out_dir}": str(out_dir), "{rows}": rows or "| not measured | | |"}
    if kind == "reranker":
        fill["{rerank_k}"] = str(cfg.rerank_k)
    else:  # the relevance the dev figures were measured with (train_embedder.dev_level)
        fill["{level}"] = {"doc": "document", "chunk": "chunk"}[cfg.dev_level]
    usage, dev = CARDS[kind]["usage"], CARDS[kind]["dev"]
    for key, value in fill.items():
        usage, dev = usage.replace(key, value), dev.replace(key, value)
    text = f"""---
library_name: sentence-transformers
base_model: {base_model}
language: [vi]
tags: [{CARDS[kind]["tags"]}]
---

# {title}

{intro}

{source_line(metrics)}

{schedule_line(metrics)}{access_line(cfg)}

```python
{usage}
```

{dev}

## Warnings

{warn}

## Training params

| param | value |
|---|---|
{params}
"""
    Path(out_dir, "README.md").write_text(text, encoding="utf-8")
