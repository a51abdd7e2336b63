"""The embedded base's tokenizer: SentencePiece BPE training, and an exact ``tokenizer.json`` for it.

The tokenizer is a SentencePiece BPE model with byte fallback (so no text is ever ``<unk>``) loaded as a
transformers ``LlamaTokenizer`` (the class real Phi-3 checkpoints use). The Phi-3 chat tokens and the quad-thinking
tags are user-defined symbols of the SentencePiece model, so each is one id both in transformers and in tools that
read ``tokenizer.model`` directly (llama.cpp's GGUF converter refuses a phi3 vocab without ``<|endoftext|>``).

transformers 5 rebuilds a fast tokenizer from ``tokenizer.model`` by its own rules. On a draft of this project's
corpus at 8,000 pieces that rebuild dropped 2,454 pieces (single kanji among them, which then fell back to bytes)
and reordered ids; on the final corpus at 5,000 pieces it happens to agree, so this is a guard, not a fix in use.
Writing ``tokenizer.json`` from the model itself keeps transformers and SentencePiece (and so llama.cpp, which
reads ``tokenizer.model``) in step; a test checks both encode the same ids.

Explained in notebooks/00_base_model.ipynb.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transformers import LlamaTokenizer, PreTrainedTokenizerBase

from so8t_core.artifacts import atomic_path
from so8t_core.config import check
from so8t_core.think import FINAL_TAG, THINK_PARTS

UNK = "<unk>"
SPM_FILE = "tokenizer.model"
CHAT_TOKENS = ("<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>")
QUAD_TAGS = tuple(t for p in (*(f"think-{p}" for p in THINK_PARTS), FINAL_TAG) for t in (f"<{p}>", f"</{p}>"))
BOS = "<s>"
EOS = PAD = "<|endoftext|>"  # as in Phi-3: documents end with <|endoftext|>, which also pads
# 256 byte pieces + 3 control pieces + the user-defined symbols, and room for some merges
MIN_VOCAB = 256 + 3 + len(CHAT_TOKENS) + len(QUAD_TAGS) + 64
PHI3_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


def spm_merges(model_bytes: bytes) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The vocabulary (piece -> SentencePiece id) and the BPE merges that reproduce a SentencePiece BPE model.

    A merge builds each normal piece from two shorter pieces; SentencePiece applies higher-scored (lower-id)
    pieces first, so merges are listed by the id of the piece they build, ties by the ids of their two parts.
    """
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    proto.ParseFromString(model_bytes)
    vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
    normal = pb.ModelProto.SentencePiece.NORMAL
    merges = []
    for p in proto.pieces:
        if p.type != normal or len(p.piece) < 2:
            continue
        parts = [(p.piece[:k], p.piece[k:]) for k in range(1, len(p.piece))]
        found = sorted((vocab[a], vocab[b]) for a, b in parts if a in vocab and b in vocab)
        merges += [(proto.pieces[a].piece, proto.pieces[b].piece) for a, b in found]
    return vocab, merges


def exact_fast_tokenizer(model_bytes: bytes) -> Any:
    """A ``tokenizers.Tokenizer`` with exactly the SentencePiece model's pieces, ids and merges.

    transformers 5 rebuilds a fast tokenizer from ``tokenizer.model`` by its own rules, and on this project's
    Japanese + English vocabulary that rebuild drops thousands of pieces (single kanji among them, which then
    fall back to bytes) and reorders ids. Writing ``tokenizer.json`` from the model itself keeps the two in step:
    a test checks that both encode the same ids.
    """
    from sentencepiece import sentencepiece_model_pb2 as pb
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    vocab, merges = spm_merges(model_bytes)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=UNK, byte_fallback=True, fuse_unk=True))
    tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    tk.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    proto = pb.ModelProto()
    proto.ParseFromString(model_bytes)
    kinds = {
        pb.ModelProto.SentencePiece.CONTROL,
        pb.ModelProto.SentencePiece.UNKNOWN,
        pb.ModelProto.SentencePiece.USER_DEFINED,
    }
    tk.add_special_tokens(
        [AddedToken(p.piece, normalized=False, special=True) for p in proto.pieces if p.type in kinds]
    )
    return tk


def train_tokenizer(
    texts: Sequence[str], out_dir: str | Path, vocab_size: int = 2000, character_coverage: float = 0.9995
) -> PreTrainedTokenizerBase:
    """Train a SentencePiece BPE tokenizer on ``texts`` and save it as a transformers tokenizer folder.

    Args:
        texts: training documents (newlines inside a document are kept as characters).
        out_dir: folder to write ``tokenizer.model``, ``tokenizer.json`` and ``tokenizer_config.json`` into.
        vocab_size: target vocabulary size (a soft limit: a small corpus may give fewer pieces).
    Returns:
        The tokenizer, loaded back from ``out_dir``.
    Explained in notebooks/00_base_model.ipynb.
    """
    import sentencepiece as spm

    check(vocab_size >= MIN_VOCAB, "vocab_size", vocab_size, f"must be >= {MIN_VOCAB} (bytes + special tokens)")
    docs = [t for t in texts if t.strip()]
    check(bool(docs), "texts", len(texts), "no non-blank text to train a tokenizer on")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()  # in memory: a file prefix would be recorded in the model and change its bytes
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(docs),
        model_writer=model,
        model_type="bpe",
        vocab_size=vocab_size,
        hard_vocab_limit=False,
        byte_fallback=True,
        character_coverage=character_coverage,
        normalization_rule_name="identity",  # transformers' LlamaTokenizer does not normalise either
        remove_extra_whitespaces=False,
        split_digits=True,  # one token per digit helps a small model with arithmetic
        user_defined_symbols=list(CHAT_TOKENS + QUAD_TAGS),
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        max_sentence_length=1 << 16,
        num_threads=1,  # single-threaded, so the pieces do not depend on the machine
        minloglevel=2,
    )
    with atomic_path(out_dir / SPM_FILE) as tmp:  # a reader never sees half a model
        tmp.write_bytes(model.getvalue())
    with atomic_path(out_dir / "tokenizer.json") as tmp:
        exact_fast_tokenizer(model.getvalue()).save(str(tmp))
    tokenizer = load_spm_tokenizer(out_dir)
    tokenizer.save_pretrained(out_dir)
    return tokenizer


def load_spm_tokenizer(folder: str | Path) -> PreTrainedTokenizerBase:
    """A ``LlamaTokenizer`` built from ``folder/tokenizer.model`` with the Phi-3 special tokens and chat template.

    Args:
        folder: a folder holding ``tokenizer.model`` (passing ``vocab_file=`` alone gives a 3-token vocabulary).
    Returns:
        The tokenizer (adds ``<s>`` in front of encodings, pads with ``<|endoftext|>``).
    """
    check((Path(folder) / SPM_FILE).is_file(), "folder", str(folder), f"holds no {SPM_FILE}")
    tokenizer = LlamaTokenizer.from_pretrained(
        str(folder), unk_token=UNK, bos_token=BOS, eos_token=EOS, pad_token=PAD, add_bos_token=True
    )
    tokenizer.chat_template = PHI3_CHAT_TEMPLATE
    return tokenizer


def special_ids(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    """``bos_token_id``, ``eos_token_id`` and ``pad_token_id`` of a tokenizer, for ``tiny_phi3_config``."""
    return {k: getattr(tokenizer, k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
