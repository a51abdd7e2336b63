"""An exact ``tokenizer.json`` for a SentencePiece BPE model.

transformers 5 rebuilds a fast tokenizer from ``tokenizer.model`` by its own rules. On a draft of this project's
corpus at 8,000 pieces that rebuild dropped 2,454 pieces (single kanji among them, which then fell back to bytes)
and reordered ids; on the final corpus at 5,000 pieces it happens to agree, so this is a guard, not a fix in use.
Writing ``tokenizer.json`` from the model itself keeps transformers and SentencePiece (and so llama.cpp, which
reads ``tokenizer.model``) in step; a test checks both encode the same ids.

Explained in notebooks/00_base_model.ipynb.
"""

from __future__ import annotations

from typing import Any

UNK = "<unk>"


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
