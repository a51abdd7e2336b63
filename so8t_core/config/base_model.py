"""Stage 00's config: the corpus, tokenizer and pretraining of the base model."""

from __future__ import annotations

from dataclasses import dataclass

from so8t_core.config.common import COMPUTE_DTYPES, MIN_VOCAB, StageConfig, check, check_threads, require_positive


@dataclass(frozen=True)
class BaseModelConfig(StageConfig):
    """Stage 00: corpus, tokenizer and pretraining of the embedded default base model, or a real checkpoint.

    ``base_model = ""`` means the embedded default (trained here); anything else is a model folder or a hub id
    that is loaded instead (tokenizer training and pretraining are skipped). ``corpus_files`` (comma-separated)
    replaces the generated corpus by the user's own text files.
    """

    seed: int = 0
    n_docs: int = 30000
    heldout_fraction: float = 0.1
    vocab_size: int = 5000
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 384
    steps: int = 400
    batch_size: int = 16
    seq_len: int = 128
    lr: float = 3e-3
    warmup_steps: int = 50
    eval_batch_size: int = 32
    eval_every: int = 100  # held-out perplexity every this many steps (the curve); 0 = only before and after
    gen_tokens: int = 96
    probe: bool = True  # the precondition check: a linear probe on the base's pooled states vs baselines
    probe_batch_size: int = 64
    probe_max_length: int = 96
    probe_layers: str = "0,-1"  # hidden states pooled side by side (0: token embeddings, -1: after the final norm)
    probe_max_prompts: int = 0  # > 0: a seeded sample of at most this many generated train / dev prompts each
    probe_seeds: int = 3  # random-init models (one init seed each) the pretrained probe is compared with
    max_over_refusal: float = 0.05  # the dev rule every safety system is thresholded by
    n_boot: int = 1000  # bootstrap resamples of translation pairs
    base_model: str = ""
    corpus_files: str = ""
    load_in_4bit: bool = False
    compute_dtype: str = "bfloat16"
    torch_threads: int = 0  # 0 keeps torch's default (all cores); see Stage

    def __post_init__(self) -> None:
        require_positive(self, "n_docs", "vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size")
        require_positive(
            self,
            "steps",
            "batch_size",
            "lr",
            "eval_batch_size",
            "gen_tokens",
            "probe_batch_size",
            "probe_max_length",
            "n_boot",
        )
        check(self.eval_every >= 0, "eval_every", self.eval_every, "must be >= 0 (0: no curve)")
        check(self.probe_seeds >= 1, "probe_seeds", self.probe_seeds, "must be >= 1 (3 or more for a verdict)")
        check(self.probe_max_prompts >= 0, "probe_max_prompts", self.probe_max_prompts, "must be >= 0 (0: all)")
        try:
            layers = self.probe_layer_ids
        except ValueError:
            layers = ()
        check(len(layers) > 0, "probe_layers", self.probe_layers, "comma-separated hidden-state indices, e.g. '0,-1'")
        check(0.0 <= self.max_over_refusal <= 1.0, "max_over_refusal", self.max_over_refusal, "must be in [0, 1]")
        check(self.vocab_size >= MIN_VOCAB, "vocab_size", self.vocab_size, f"must be >= {MIN_VOCAB}")
        check(0.0 < self.heldout_fraction < 1.0, "heldout_fraction", self.heldout_fraction, "must be in (0, 1)")
        check(self.hidden_size % 8 == 0, "hidden_size", self.hidden_size, "must be a multiple of 8 (SO(8) blocks)")
        check(self.hidden_size % self.num_heads == 0, "num_heads", self.num_heads, "must divide hidden_size")
        check((self.hidden_size // self.num_heads) % 2 == 0, "num_heads", self.num_heads, "head size must be even")
        check(self.seq_len >= 2, "seq_len", self.seq_len, "must be >= 2")
        check(0 <= self.warmup_steps < self.steps, "warmup_steps", self.warmup_steps, "must be in [0, steps)")
        check_threads(self)
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

    @property
    def probe_layer_ids(self) -> tuple[int, ...]:
        """``probe_layers`` as integers (``"0,-1"`` -> ``(0, -1)``)."""
        return tuple(int(x) for x in self.probe_layers.split(",") if x.strip())
