"""Compression: quantization, GGUF export and pruning."""
