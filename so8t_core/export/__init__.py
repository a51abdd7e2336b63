"""Export: fusion of LoRA and the soul into a plain checkpoint, GGUF via llama.cpp, latency (notebook 04)."""
