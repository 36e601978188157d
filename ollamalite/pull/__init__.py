"""Pulling models: hf.co repositories and GGUF URLs, resumable verified downloads."""
