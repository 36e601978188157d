"""The `ollamalite` client commands (`list`, `ps`, `show`, `run`, `pull`, `create`, ...).

They talk to a running server over HTTP at OLLAMA_HOST, as the `ollama` CLI does.
"""
