"""The model registry: what models exist and what each one is.

models.yaml (read with line numbers, edited round-trip), models found in folders and an
Ollama store, Ollama names, GGUF headers, create/copy/delete as models.yaml edits, uploaded
blobs, and the registry in service (reloads). Nothing here loads weights or speaks HTTP.
"""
