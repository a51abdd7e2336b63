"""Stage 00 config (to be folded into ``so8t_core/config.py`` by the lead)."""

from __future__ import annotations

from dataclasses import dataclass

from .config import StageConfig, _positive, check

COMPUTE_DTYPES = ("bfloat16", "float16")
MIN_VOCAB = 338  # equals base_model.MIN_VOCAB (bytes + special tokens + room); kept literal to avoid importing torch


@dataclass(frozen=True)
class BaseModelConfig(StageConfig):
    """Stage 00: corpus, tokenizer and pretraining of the embedded default base model, or a real checkpoint.

    ``base_model = ""`` means the embedded default (trained here); anything else is a model folder or a hub id
    that is loaded instead (tokenizer training and pretraining are skipped). ``corpus_files`` (comma-separated)
    replaces the generated corpus by the user's own text files.
    """

    seed: int = 0
    n_docs: int = 10000
    heldout_fraction: float = 0.1
    vocab_size: int = 2000
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 384
    steps: int = 1000
    batch_size: int = 16
    seq_len: int = 128
    lr: float = 3e-3
    warmup_steps: int = 50
    eval_batch_size: int = 32
    gen_tokens: int = 96
    base_model: str = ""
    corpus_files: str = ""
    load_in_4bit: bool = False
    compute_dtype: str = "bfloat16"

    def __post_init__(self) -> None:
        _positive(self, "n_docs", "vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size")
        _positive(self, "steps", "batch_size", "lr", "eval_batch_size", "gen_tokens")
        check(self.vocab_size >= MIN_VOCAB, "vocab_size", self.vocab_size, f"must be >= {MIN_VOCAB}")
        check(0.0 < self.heldout_fraction < 1.0, "heldout_fraction", self.heldout_fraction, "must be in (0, 1)")
        check(self.hidden_size % 8 == 0, "hidden_size", self.hidden_size, "must be a multiple of 8 (SO(8) blocks)")
        check(self.hidden_size % self.num_heads == 0, "num_heads", self.num_heads, "must divide hidden_size")
        check((self.hidden_size // self.num_heads) % 2 == 0, "num_heads", self.num_heads, "head size must be even")
        check(self.seq_len >= 2, "seq_len", self.seq_len, "must be >= 2")
        check(0 <= self.warmup_steps < self.steps, "warmup_steps", self.warmup_steps, "must be in [0, steps)")
        check(self.compute_dtype in COMPUTE_DTYPES, "compute_dtype", self.compute_dtype, f"one of {COMPUTE_DTYPES}")
        check(
            not (self.load_in_4bit and not self.base_model),
            "load_in_4bit",
            self.load_in_4bit,
            "applies to a real checkpoint (set base_model); the embedded default is trained in full precision",
        )

    @property
    def embedded(self) -> bool:
        """True when the stage trains the embedded default model instead of loading ``base_model``."""
        return not self.base_model.strip()
