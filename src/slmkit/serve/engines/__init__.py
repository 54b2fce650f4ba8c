"""Serving engines: llama-server and vLLM children, and an in-process transformers engine."""
