"""The language model: corpus, tokenizer and tiny Phi-3 base, loading, LoRA, soul injection (notebooks 00, 03)."""
