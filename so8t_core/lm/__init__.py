"""The language model: tokenizer and tiny Phi-3 base, real models, loading, LoRA, soul injection and its training."""
