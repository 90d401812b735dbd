"""The LLM reranker (``train_reranker.kind: llm``): a causal LM asked "yes" or "no", scored as P(yes).

This is Qwen3-Reranker's recipe (model card of ``Qwen/Qwen3-Reranker-0.6B``): a system prompt that allows only
"yes" or "no", then ``<Instruct>: … <Query>: … <Document>: …`` as the user turn, then an empty thinking block as the
start of the assistant's turn. The score is the softmax over the two logits ``[no, yes]`` at the last position, read
as P(yes): higher = more relevant. The whole vocabulary's other tokens take no part, so the score is the same
whatever the model would otherwise say.

Two choices differ from the card, both to keep a long passage from costing the question:

* only the document is truncated to ``max_length`` (the card truncates the formatted pair as a whole, which could cut
  the end of the prompt's question part when the query is long);
* pairs are batched by length (fewer pad tokens); the scores come back in input order.

Batches are left-padded, as in the card, so the last position is every row's last real token.

Inference only: the trainer (:mod:`ragtune.train.reranker.llm`) imports this, never the other way round, so a
search or serve process that loads a trained LLM reranker needs neither ``peft`` nor the Trainer.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ragtune.rerankers import MARKER

KIND = "llm"
YES, NO = "yes", "no"
SYSTEM = (
    "Judge whether the Document meets the requirements based on the Query and the Instruct provided. Note that the "
    'answer can only be "yes" or "no".'
)
PREFIX = f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n"
SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"


class LLMRerankerError(ValueError):
    """The model or tokenizer cannot serve as a yes/no reranker (e.g. "yes" is not one token of its vocabulary)."""


def label_token_id(tokenizer: Any, token: str) -> int:
    """The vocabulary id of ``token`` as one whole token (as the card's ``convert_tokens_to_ids``), or an error: a
    tokenizer that splits "yes" or maps it to its unknown token would score an unrelated logit."""
    tid = tokenizer.convert_tokens_to_ids(token)
    if tid is None or (tokenizer.unk_token_id is not None and tid == tokenizer.unk_token_id):
        raise LLMRerankerError(f"the tokenizer has no single token {token!r}: it cannot be a yes/no reranker")
    return int(tid)


class LLMReranker:
    """A causal LM with its tokenizer, the prompt's instruction and its token budget; see the module docstring."""

    def __init__(self, model: Any, tokenizer: Any, *, base: str, instruction: str, max_length: int) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.base, self.instruction, self.max_length = base, instruction, max_length
        self.yes_id, self.no_id = label_token_id(tokenizer, YES), label_token_id(tokenizer, NO)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad is None:
            raise LLMRerankerError("the tokenizer has neither a pad nor an eos token to left-pad batches with")
        self.pad_id = int(pad)
        self._prefix = self._ids(PREFIX)
        self._suffix = self._ids(SUFFIX)
        if len(self._prefix) + len(self._suffix) >= max_length:
            raise LLMRerankerError(f"max_length={max_length} leaves no room after the prompt's fixed parts")

    @classmethod
    def from_pretrained(
        cls, path: str | Path, *, instruction: str, max_length: int, base: str | None = None, dtype: Any = None
    ) -> LLMReranker:
        """A model folder (or a name in the local HF cache) as a reranker, on CUDA when there is one. ``dtype``
        None: bf16 on a GPU that has it, fp32 otherwise."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        cuda = torch.cuda.is_available()
        if dtype is None:
            dtype = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float32
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
        model.to("cuda" if cuda else "cpu").eval()
        return cls(model, tokenizer, base=base or str(path), instruction=instruction, max_length=max_length)

    @classmethod
    def load(cls, path: str | Path) -> LLMReranker:
        """A reranker :meth:`save` wrote: the merged model, its tokenizer, and the prompt from the marker file."""
        marker = json.loads(Path(path, MARKER).read_text(encoding="utf-8"))
        if marker.get("kind") != KIND:
            raise LLMRerankerError(f"{Path(path, MARKER)}: kind {marker.get('kind')!r} is not an LLM reranker")
        prompt = marker["prompt"]
        return cls.from_pretrained(
            path, instruction=prompt["instruction"], max_length=prompt["max_length"], base=marker["base"]
        )

    def save(self, path: str | Path) -> None:
        """The model with any LoRA adapter merged into its weights, the tokenizer, and the marker.

        Merged, not base + adapter: the folder is then a plain causal LM, as the published Qwen3-Reranker is, so
        loading it needs no ``peft`` and no copy of the base model (the base may have been a local path that is
        gone), vLLM or transformers can serve it as is, and inference pays no adapter overhead. The cost is disk: a
        full model instead of a few MB of adapter. Merging happens in place; the scores do not change.
        """
        if hasattr(self.model, "merge_and_unload"):
            self.model = self.model.merge_and_unload()
        Path(path).mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(str(path))
        self.tokenizer.save_pretrained(str(path))
        marker = {
            "kind": KIND,
            "base": self.base,
            "prompt": {
                "prefix": PREFIX,
                "instruction": self.instruction,
                "template": "<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {document}",
                "suffix": SUFFIX,
                "max_length": self.max_length,
                "label_tokens": {"yes": self.yes_id, "no": self.no_id},
            },
        }
        Path(path, MARKER).write_text(json.dumps(marker, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def pair_ids(self, query: str, document: str) -> list[int]:
        """The prompt's token ids for one pair, the document cut to fit ``max_length``.

        The text is split at ``<Document>:`` and the document tokenized with its leading space, so the tokens are
        the card's (a BPE pre-tokenizer splits there anyway). A query too long to leave the document any room is
        cut too: the prompt's fixed parts always survive, since the answer is read right after them.
        """
        head = self._ids(f"<Instruct>: {self.instruction}\n<Query>: {query}\n<Document>:")
        budget = self.max_length - len(self._prefix) - len(self._suffix) - len(head)
        if budget < 0:
            head, budget = head[:budget], 0
        return self._prefix + head + self._ids(f" {document}")[:budget] + self._suffix

    def encode(self, pairs: Sequence[tuple[str, str]], device: Any = None) -> dict[str, Any]:
        """A left-padded batch (``input_ids``, ``attention_mask``) on ``device`` (None: the model's). The training
        collator asks for the CPU: the Trainer's DataLoader pins batches in memory, which CUDA tensors refuse."""
        import torch

        ids = [self.pair_ids(q, d) for q, d in pairs]
        width = max(len(x) for x in ids)
        input_ids = torch.full((len(ids), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for i, x in enumerate(ids):
            input_ids[i, width - len(x) :] = torch.tensor(x, dtype=torch.long)
            mask[i, width - len(x) :] = 1
        device = next(self.model.parameters()).device if device is None else device
        return {"input_ids": input_ids.to(device), "attention_mask": mask.to(device)}

    def yes_no_logits(self, model: Any, batch: dict[str, Any]) -> Any:
        """The ``[no, yes]`` logits at the last position, shape (n, 2), in fp32: what the score and the training
        loss both read. ``model`` is passed in so the trainer can hand over its wrapped (LoRA) model."""
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=1)
        last = out.logits[:, -1, :]
        return last[:, [self.no_id, self.yes_id]].float()

    @property
    def device(self) -> Any:
        """The model's device (what :func:`ragtune.rerank.predict` checks before CPU bf16 autocast)."""
        return next(self.model.parameters()).device

    def predict(
        self, pairs: Sequence[tuple[str, str]], batch_size: int = 8, show_progress_bar: bool = False
    ) -> np.ndarray:
        """P(yes) for each (query, document) pair, in input order; higher = more relevant. ``show_progress_bar`` is
        accepted (and ignored) so :func:`ragtune.rerank.predict` calls every kind alike."""
        import torch

        if not pairs:
            return np.zeros(0, dtype=np.float32)
        order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]) + len(pairs[i][1]))
        scores = np.zeros(len(pairs), dtype=np.float32)
        was_training = self.model.training
        self.model.eval()
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                logits = self.yes_no_logits(self.model, self.encode([pairs[i] for i in idx]))
                scores[idx] = torch.softmax(logits, dim=-1)[:, 1].cpu().numpy()
        self.model.train(was_training)
        return scores
