"""What every key of params.yaml may hold: one declarative schema per section, checked when a stage reads it.

Why a schema: the sections travel as plain dicts (DVC tracks them key by key, and a stage passes them on as read),
so each library function used to convert its keys with ``int()``/``float()`` where it used them. A typo'd key
(``min_char:``) was then ignored silently, ``min_chars: "hai mươi"`` crashed with a traceback deep in ingest, and
``max_bad_fraction: -0.1`` with an ``IndexError`` even on clean input. Here each key has its type, its range or
choices and a one-line meaning, and :func:`check_section` reports every problem with the full key path
(``pairs.synthetic.per_doc.title``), the bad value and what to write instead, before any work starts.

Values are checked, never converted: a valid section reaches the stage exactly as it was read, so the outputs of
valid params do not change. A new key needs one entry here and one line (with its default) in params.yaml.

The trainer sections are typed dataclasses (:class:`ragtune.params.StageConfig`); they use :func:`check_value`
for their field types, so every section reports a wrong type the same way.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Key:
    """One params key: its kind (int, float, bool, str, choice, list, map), range and meaning."""

    kind: str
    meaning: str = ""
    low: float | None = None  # inclusive, unless low_open
    high: float | None = None  # inclusive, unless high_open
    low_open: bool = False
    high_open: bool = False
    choices: tuple[Any, ...] = ()
    null: bool = False  # empty (YAML null) is allowed: "use the model's own"
    nonempty: bool = False  # list: at least one item
    items: Key | None = None  # list: each item's schema (None: checked by the reader, e.g. ingest sources)
    fields: dict[str, Key] | None = None  # map: a nested section with fixed keys


def Int(meaning: str, low: float | None = None, high: float | None = None, **kw: Any) -> Key:
    return Key("int", meaning, low, high, **kw)


def Float(meaning: str, low: float | None = None, high: float | None = None, **kw: Any) -> Key:
    return Key("float", meaning, low, high, **kw)


def Bool(meaning: str) -> Key:
    return Key("bool", meaning)


def Str(meaning: str, **kw: Any) -> Key:
    return Key("str", meaning, **kw)


def Choice(meaning: str, *choices: Any) -> Key:
    return Key("choice", meaning, choices=choices)


def List(meaning: str, items: Key | None = None, **kw: Any) -> Key:
    return Key("list", meaning, items=items, **kw)


def Map(meaning: str, **fields: Key) -> Key:
    return Key("map", meaning, fields=fields)


PROBABILITY = {"low": 0, "high": 1}

SECTIONS: dict[str, dict[str, Key]] = {
    "model": {
        "embedder": Str("base embedder: a local folder or a model name", nonempty=True),
        "revision": Str(
            "Hub revision (commit, tag or branch) of model.embedder; empty = the default branch", null=True
        ),
        "max_seq_length": Int("inference truncation in tokens", low=1),
        "query_prompt": Str("prefix of queries; empty = the prompt stored in the model's config", null=True),
        "passage_prompt": Str("prefix of passages; empty = the model's own", null=True),
        "batch_size": Int("texts per encode batch at inference", low=1),
        "encode_on": Choice("where dense encoding runs: local (this process) | ray (a Ray cluster)", "local", "ray"),
        "ray_address": Str("encode_on ray: the cluster (auto = the one `ray start` made here; ray://host:10001)"),
        "ray_actors": Int("encode_on ray: actors, each holding one model", low=1),
        "ray_gpus_per_actor": Float("encode_on ray: GPUs each actor reserves", low=0),
        "devices": Key(
            "any",
            "encode_on local: auto (every GPU when there are 2 or more, one process each; else this process) | a "
            "list such as [cuda:0, cuda:1]",
            null=True,
        ),
    },
    "ingest": {
        "root": Str("input folder; source paths are relative to it", nonempty=True),
        "tone_style": Choice("tone mark placement for the whole corpus: old (hòa) | new (hoà)", "old", "new"),
        "min_chars": Int("shorter texts are quarantined as too_short", low=0),
        "max_bad_fraction": Float("more malformed lines than this in one file is a hard error", **PROBABILITY),
        "follow_external_links": Bool("also read links in document folders that lead outside root"),
        "documents": List("document sources: folders or tables", nonempty=True),
        "queries": List("question sources (tables)", null=True),
    },
    "chunk": {
        "max_tokens": Int("embedder tokens per chunk, title included", low=1),
        "overlap_tokens": Int("trailing sentences repeated in the next chunk", low=0),
        "prepend_title": Bool("put the title (and section) on top of each chunk"),
    },
    "bm25": {
        "tokenizer": Choice("BM25 tokenizer", "auto", "pyvi", "syllable", "bigram"),
        "backend": Choice("BM25 implementation", "bm25s", "rank_bm25"),
        "k1": Float("BM25 term-frequency saturation", low=0),
        "b": Float("BM25 length normalisation", **PROBABILITY),
    },
    "access": {
        "levels": List(
            "access levels, lowest first: a caller at a level sees documents at it or below",
            Str("a level name", nonempty=True),
            nonempty=True,
        ),
        "unlabeled": Str("the level of a document with no metadata access_level (one of access.levels)", nonempty=True),
    },
    "questions": {
        "generator": Choice("where questions come from: none | llm", "none", "llm"),
        "base_url": Str("the OpenAI-compatible server root, e.g. http://localhost:8000/v1"),
        "model": Str("the model name the server serves"),
        "api_key_env": Str("NAME of the environment variable with the key (empty: no key)"),
        "prompt_file": Str("the Vietnamese prompt file"),
        "temperature": Float("sampling temperature", low=0),
        "max_tokens": Int("tokens per answer", low=1),
        "per_chunk": Map(
            "questions per chunk, by kind",
            factual=Int("factual questions per chunk", low=0),
            how_to=Int("how-to questions per chunk", low=0),
            yes_no=Int("yes/no questions per chunk", low=0),
            multi_sentence=Int("questions needing several sentences per chunk", low=0),
        ),
        "max_chunks": Int("ask about N chunks only, spread by id hash (0 = all)", low=0),
        "concurrency": Int("requests in flight", low=1),
        "requests_per_second": Float("request starts per second (0 = no limit)", low=0),
        "timeout_s": Float("seconds to wait for one answer", low=0, low_open=True),
        "max_retries": Int("retries on 429, 5xx and timeouts", low=0),
        "price_per_1k_tokens": Float("price per 1,000 tokens, for the cost estimate", low=0, null=True),
        "consistency": Map(
            "round-trip filter: keep a question whose own chunk ranks in the top_k",
            retriever=Choice("the retriever asked: embedder | bm25 | none", "embedder", "bm25", "none"),
            top_k=Int("rank the question's chunk must reach", low=1),
        ),
    },
    "pairs": {
        "seed": Int("seed of the split draw and the synthetic pairs"),
        "dev_ratio": Float("share of the unassigned questions drawn into dev", **PROBABILITY),
        "test_ratio": Float("share of the unassigned questions drawn into test", **PROBABILITY),
        "synthetic": Map(
            "self-supervised pairs when labels are few",
            enabled=Choice("add synthetic pairs: auto (when labels are few) | true | false", "auto", True, False),
            min_labeled_train=Int("the auto threshold: fewer labeled training questions than this", low=0),
            per_doc=Map(
                "synthetic pairs per document, by kind",
                title=Int("title pairs per document", low=0),
                heading=Int("heading pairs per document", low=0),
                ict=Int("inverse-cloze pairs per document", low=0),
            ),
            max_pairs=Int("cap on synthetic pairs in all", low=0),
            max_per_labeled=Float("synthetic pairs per labeled training question (0 = no cap)", low=0),
            ict_keep_sentence=Float("probability that the ICT query sentence stays in its passage", **PROBABILITY),
        ),
        "generated": Map(
            "how LLM-written questions (the questions stage) join the pairs",
            max_per_labeled=Float("generated pairs per labeled training question (0 = no cap)", low=0),
            held_out_chunks=Int("with no labeled dev/test: chunks whose questions form each held-out split", low=0),
        ),
    },
    "negatives": {
        "seed": Int("seed of the random negatives"),
        "n_bm25": Int("BM25 negatives per pair", low=0),
        "n_dense": Int("base-embedder negatives per pair", low=0),
        "dense": Choice(
            "base-embedder mining: auto (if encoding the corpus fits dense_budget_s) | on | off",
            *("auto", "on", "off", True, False),
        ),
        "dense_budget_s": Float("negatives.dense auto: the most seconds of corpus encoding it accepts", low=0),
        "n_random": Int("random negatives per pair", low=0),
        "bm25_skip_top": Int("top BM25 ranks skipped", low=0),
        "bm25_max_ratio": Float("drop BM25 candidates scoring ≥ this × the positive's score", low=0, low_open=True),
        "dense_range_min": Int("first base-embedder rank dense negatives come from", low=0),
        "dense_range_max": Int("end (exclusive) of that rank range", low=1),
        "dense_relative_margin": Float("keep dense negatives this far below the positive's similarity", low=0),
    },
    "evaluate": {
        "rerank_k": Int("candidates the reranker scores per query", low=1),
        "rerank_bf16": Choice(
            "reranker inference under bf16 autocast on CPU: auto (where the CPU has native bf16) | true | false",
            "auto",
            True,
            False,
        ),
        "fusion_weights": List("reranker weight grid", Float("a reranker weight", **PROBABILITY), nonempty=True),
        "convex_alphas": List("convex hybrid weight grid", Float("a dense weight", **PROBABILITY), nonempty=True),
        "select_folds": Int("folds over dev that judge a tuned weight", low=1),
        "select_seed": Int("seed of the folds and the bootstrap"),
        "rerank_proxy_queries": Int("train questions in the late-interaction reranker's base-model evidence", low=0),
        "bakeoff_passages": Int("chunks each dense model encodes for the speed and memory bake-off", low=1),
        "out_of_domain": List(
            "labeled sets outside the corpus for the forgetting check",
            Map("one set", name=Str("the set's name", nonempty=True), ingest=Str("its ingest file", nonempty=True)),
            null=True,
        ),
        "forgetting_max_drop": Float("largest NDCG@10 drop on an out-of-domain set before a warning", low=0),
        "ks": List("cutoffs of the reported metrics", Int("a cutoff", low=1), nonempty=True),
        "candidate_k": Int("chunks retrieved per system", low=1),
        "rrf_k": Int("reciprocal rank fusion constant", low=0),
        "plot_ks": List("recall@k points of the recall curve", Int("a cutoff", low=1), nonempty=True),
    },
}

# The sections checked by their typed config (ragtune.train), not by SECTIONS.
TRAINER_SECTIONS = ("train_embedder", "train_reranker")

# Keys both trainer sections share whose rule is more than their type annotation says (the typed configs check them
# with it; ragtune.train.config.TrainerConfig).
TRAINER_KEYS: dict[str, Key] = {
    "max_access_level": Str(
        "the highest access level (one of access.levels) whose documents may train this model; empty = every level. "
        "Model weights can leak the text they were trained on, and the shipped model answers callers at every level",
        nonempty=True,
        null=True,
    ),
}

# Keys of a trainer section that another stage reads (chunk checks that chunks fit the training truncation).
READ_ELSEWHERE: dict[str, Key] = {
    "train_embedder.max_seq_length": Int("training truncation in tokens", low=1),
}


def _rule_ratios(p: dict[str, Any]) -> str | None:
    dev, test = float(p["dev_ratio"]), float(p["test_ratio"])  # a float key may be a string such as "1e-1"
    if dev + test > 1:
        return (
            f"pairs.dev_ratio ({dev:g}) + pairs.test_ratio ({test:g}) = {dev + test:g} is over 1: they are shares "
            "of the same questions; lower one of them"
        )
    return None


def _rule_overlap(p: dict[str, Any]) -> str | None:
    if p["overlap_tokens"] >= p["max_tokens"] // 2:
        return (
            f"chunk.overlap_tokens ({p['overlap_tokens']}) must be less than half of chunk.max_tokens "
            f"({p['max_tokens']}): lower overlap_tokens or raise max_tokens"
        )
    return None


def _rule_dense_range(p: dict[str, Any]) -> str | None:
    if p["dense_range_min"] >= p["dense_range_max"]:
        return (
            f"negatives.dense_range_min ({p['dense_range_min']}) must be below negatives.dense_range_max "
            f"({p['dense_range_max']}): the ranks [min, max) are where dense negatives come from"
        )
    return None


def _rule_plot_ks(p: dict[str, Any]) -> str | None:
    if not any(int(k) <= p["candidate_k"] for k in p["plot_ks"]):
        return (
            f"evaluate.plot_ks ({p['plot_ks']}) has no cutoff ≤ evaluate.candidate_k ({p['candidate_k']}): the recall "
            "curve would be empty; add a smaller cutoff or raise candidate_k"
        )
    return None


def devices_problem(devices: Any) -> str | None:
    """What is wrong with a ``model.devices`` value (None: nothing). The one check: params checking runs it, and so
    does :func:`ragtune.retrieval.encode_devices` for a caller that built its params by hand."""
    if devices in (None, "auto") or (
        isinstance(devices, list | tuple) and devices and all(isinstance(d, str) and d.strip() for d in devices)
    ):
        return None
    return (
        f"model.devices is {show(devices)}: write auto, or a list of devices such as [cuda:0, cuda:1] "
        "(one encoding process each; [cuda:1] alone encodes on that GPU in this process)"
    )


def _rule_devices(p: dict[str, Any]) -> str | None:
    return devices_problem(p.get("devices"))


# Checks across keys of one section, run once every key has passed its own check.
RULES: dict[str, tuple[Callable[[dict[str, Any]], str | None], ...]] = {
    "model": (_rule_devices,),
    "pairs": (_rule_ratios,),
    "chunk": (_rule_overlap,),
    "negatives": (_rule_dense_range,),
    "evaluate": (_rule_plot_ks,),
}


def show(value: Any) -> str:
    """A value as the user would write it in YAML (true, null, "text", [20])."""
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(value)


# PyYAML (YAML 1.1) reads 5e-5 and 1e3 as strings; they are still numbers to whoever wrote them, and float() reads
# them. An int key takes no string: int("1e3") fails.
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        return float(value)
    return None


def _range(key: Key) -> str:
    lo = None if key.low is None else f"{'>' if key.low_open else '≥'} {key.low:g}"
    hi = None if key.high is None else f"{'<' if key.high_open else '≤'} {key.high:g}"
    if lo and hi:
        return f" in {'(' if key.low_open else '['}{key.low:g}, {key.high:g}{')' if key.high_open else ']'}"
    return f" {lo or hi}" if lo or hi else ""


def expected(key: Key) -> str:
    """What a key accepts, in words: 'a whole number ≥ 0', 'one of old, new'."""
    if key.kind == "int":
        text = f"a whole number{_range(key)}"
    elif key.kind == "float":
        text = f"a number{_range(key)}"
    elif key.kind == "bool":
        text = "true or false"
    elif key.kind == "str":
        text = "a non-empty text" if key.nonempty else "a text"
    elif key.kind == "choice":
        text = "one of " + ", ".join(show(c) if not isinstance(c, str) else c for c in key.choices)
    elif key.kind == "list":
        text = f"a {'non-empty ' if key.nonempty else ''}list" + (f" (each {expected(key.items)})" if key.items else "")
    else:
        text = f"a mapping with the keys {', '.join(key.fields or {})}"
    return f"{text}, or empty" if key.null else text


def _in_range(x: float, key: Key) -> bool:
    if key.low is not None and (x < key.low or (key.low_open and x == key.low)):
        return False
    return key.high is None or (x < key.high or (not key.high_open and x == key.high))


def _problem(value: Any, key: Key) -> str | None:
    """Why ``value`` does not fit ``key``, or None. Lists and maps are checked item by item by :func:`check_value`."""
    if value is None:
        return None if key.null else "is empty"
    if key.kind in ("int", "float"):
        x = _number(value) if key.kind == "float" or not isinstance(value, str) else None
        if x is None or not math.isfinite(x):
            return "is not a number"
        if key.kind == "int" and not x.is_integer():
            return "is not a whole number"
        return None if _in_range(x, key) else "is out of range"
    if key.kind == "bool":
        return None if isinstance(value, bool) else "is not true or false"
    if key.kind == "str":
        if not isinstance(value, str):
            return "is not a text (put it in quotes if it is one)"
        return "is empty" if key.nonempty and not value.strip() else None
    if key.kind == "choice":
        ok = any(value == c and type(value) is type(c) for c in key.choices)
        return None if ok else "is not an allowed value"
    if key.kind == "list":
        if not isinstance(value, list):
            return "is not a list"
        return "is an empty list" if key.nonempty and not value else None
    if key.kind == "map":
        return None if isinstance(value, dict) else "is not a mapping"
    return None  # any: checked elsewhere


def check_value(path: str, value: Any, key: Key) -> list[str]:
    """Every problem of ``value`` at ``path`` (``ingest.min_chars``), each a sentence with the path and the fix."""
    why = _problem(value, key)
    if why:
        meaning = f" ({key.meaning})" if key.meaning else ""
        return [f"{path} = {show(value)} {why}: set it to {expected(key)}{meaning}"]
    if key.kind == "list" and key.items and value:
        return [p for i, item in enumerate(value) for p in check_value(f"{path}[{i}]", item, key.items)]
    if key.kind == "map" and key.fields is not None and value is not None:
        return check_mapping(path, value, key.fields)
    return []


def unknown_key(path: str, name: Any, known: list[str], what: str = "key") -> str:
    """The message for a key nobody reads: the closest known key, and all of them."""
    close = difflib.get_close_matches(str(name), known, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return (
        f"{path}: unknown {what} {name}{hint}; known {what}s: {', '.join(known)}. A {what} nobody reads would be "
        "ignored silently, so it is refused"
    )


def check_mapping(path: str, data: dict[str, Any], fields: dict[str, Key], *, partial: bool = False) -> list[str]:
    """Problems of a mapping with fixed keys: unknown keys, missing keys (unless ``partial``), then each value."""
    known = list(fields)
    problems = [unknown_key(path, k, known) for k in data if k not in fields]
    if not partial:
        missing = [k for k in known if k not in data]
        if missing:
            problems.append(
                f"{path}: missing key(s) {', '.join(missing)}: add them (the shipped params.yaml has every key with "
                "its default and meaning)"
            )
    for name, key in fields.items():
        if name in data:
            problems += check_value(f"{path}.{name}", data[name], key)
    return problems


def check_section(name: str, data: dict[str, Any], *, partial: bool = False) -> list[str]:
    """Every problem of params section ``name`` (empty: valid); ``partial`` checks only the keys present."""
    problems = check_mapping(name, data, SECTIONS[name], partial=partial)
    if not problems and not partial:
        problems += [p for rule in RULES.get(name, ()) if (p := rule(data))]
    return problems


ANY = Key("any", null=True)  # unions (float | None, float | str): the config's validate() checks them


def annotation_key(annotation: Any) -> Key:
    """The :class:`Key` a typed-config field's annotation stands for; ``any`` for unions (``epochs: float | str``),
    which the config's validate() checks."""
    text = str(getattr(annotation, "__name__", annotation))
    simple = {"int": Int(""), "float": Float(""), "bool": Bool(""), "str": Str("")}
    if text in simple:
        return simple[text]
    if text.startswith("tuple[") and text.endswith(", ...]"):
        item = annotation_key(text[len("tuple[") : -len(", ...]")])
        item = None if item is ANY else item
        return List("", item, null=True)
    return ANY
