"""Export: merge adapters, convert to GGUF, quantize, and measure what quantization broke."""
