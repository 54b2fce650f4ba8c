"""OpenAI-compatible gateway over real engines (llama-server, transformers, vLLM)."""
